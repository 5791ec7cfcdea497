"""A whole session in the editor, as a person runs it: upload, paint, edit, save, apply, download."""

from __future__ import annotations

import io
import json
import re
import secrets
import shutil
from typing import Any

import httpx
import numpy as np
import torch
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from engine.images import dilate
from schemas.edits import LATENT_ID
from tests.web.page import ARTIFACTS, ROOT, EditorPage, decode_png, labels_from_colours

MOUTH = 7  # the demo model's mouth class
INVERT_STEPS, EDIT_STEPS, REFINE_STEPS = 20, 12, 3  # fewer than the model's defaults: the CPU runs it


def fetch_png(api: httpx.Client, url: str) -> np.ndarray:
    response = api.get(url)
    assert response.status_code == 200, response.text
    return decode_png(response.content)


def test_upload_paint_edit_save_apply_and_download(page: EditorPage, api: httpx.Client) -> None:
    model: dict[str, Any] = api.get("/models").json()["models"][0]
    classes = model["classes"]
    page.open()

    # The model is listed, and its palette names every class exactly once.
    options = page.driver.find_elements(By.CSS_SELECTOR, "#model option")
    assert [o.get_attribute("value") for o in options] == [model["name"]]
    assert sorted(page.palette()) == sorted((c["id"], c["name"]) for c in classes)
    # The steps inputs stop where the service does (EDITGAN_MAX_STEPS), not at the page's own 5000.
    steps_inputs = ("invert-steps", "edit-steps", "refine-steps")
    assert {page.attr(i, "max") for i in steps_inputs} == {str(model["max_steps"])} != {"5000"}

    # Upload a shipped example photo: the inversion is a job whose progress the page follows to the end.
    page.fill("invert-steps", str(INVERT_STEPS))
    page.el("image-file").send_keys(str(ROOT / "examples" / "face-0.png"))
    page.click("invert-button")
    assert page.wait_job("Embedding").endswith("done."), page.messages()
    assert page.progress() == 100
    latent_id = page.text("latent-id")
    assert re.match(LATENT_ID, latent_id)
    assert api.get(f"/latents/{latent_id}").status_code == 200
    source_src = page.attr("source-image", "src") or ""
    assert "/results/img_" in source_src and page.attr("before-image", "src") == source_src
    assert "/results/img_" in (page.attr("uncertainty-image", "src") or "")

    # The mask canvas starts as the service's segmentation of the latent (the job's result has it).
    inversion = api.get(page.attr("job-link", "href") or "").json()
    assert inversion["kind"] == "invert" and inversion["result"]["latent_id"] == latent_id
    assert np.array_equal(page.mask_labels(classes), fetch_png(api, inversion["result"]["images"]["segmentation"]))
    page.screenshot("1-inverted")

    # The rest edits one of the model's example latents (embedded with the full step count: a clearer face).
    page.select("example", "1")
    page.click("example-button")
    page.wait(lambda: page.text("latent-id") != latent_id, what="the example latent")
    latent_id = page.text("latent-id")
    assert re.match(LATENT_ID, latent_id) and page.text("job-label") == "Example loaded."
    source_src = page.attr("source-image", "src") or ""
    original = page.mask_labels(classes)

    # Paint a wider mouth: one stroke of the mouth class with a square 3 px brush.
    page.choose_class("mouth")
    assert page.checked_class() == MOUTH
    page.select("brush-shape", "square")
    rows, cols = np.nonzero(original == MOUTH)
    assert rows.size, "the example face has no mouth to widen"
    row, col = int(rows.mean()), int(cols.mean())
    page.stroke([(col - 9, row), (col, row), (col + 9, row)])
    painted = page.mask_labels(classes)
    changed = painted != original
    assert changed.any() and (painted[changed] == MOUTH).all()
    assert (painted[row - 1 : row + 2, col - 10 : col + 11] == MOUTH).all()  # 3 px square brush, no gaps
    assert page.text("painted") == f"{int(changed.sum())} pixels painted."

    # Run the edit: the bar follows GET /jobs/{id} to 100 %, then before and after stand side by side.
    page.fill("edit-steps", str(EDIT_STEPS))
    page.click("edit-button")
    seen: list[float] = []  # the bar's values while the progress line is the edit's

    def record() -> None:
        if page.text("job-label").startswith("Editing"):
            seen.append(page.progress())

    label = page.wait_job("Editing", on_poll=record)
    seen.append(page.progress())  # a poll can read the bar just before the line turns "done": read it after
    assert label.endswith(f"step {EDIT_STEPS}/{EDIT_STEPS} (100 %) - done."), label
    assert seen == sorted(seen) and seen[-1] == 100  # the bar never goes back
    job = api.get(page.attr("job-link", "href") or "").json()
    assert job["status"] == "finished" and job["kind"] == "optimize"
    assert job["progress"]["step"] == job["progress"]["total"] == EDIT_STEPS
    after_src = page.attr("after-image", "src") or ""
    assert after_src.endswith(job["result"]["images"]["image"])
    before, after = fetch_png(api, source_src), fetch_png(api, after_src)
    assert before.shape == after.shape and not np.array_equal(before, after)
    # the edit's region is the pixels painted (the stroke), dilated by the model's edit setting (the official 3)
    region = fetch_png(api, job["result"]["images"]["region"]) > 0
    defaults = json.loads((ROOT / "models" / model["name"] / "bundle.json").read_text())["defaults"]
    radius = defaults["edit"]["roi_dilation"]
    assert np.array_equal(region, dilate(torch.from_numpy(changed), radius).numpy())
    # "Reset scales" with no vector applied leaves the optimisation edit where it is
    page.click("reset-scales")
    page.driver.execute_script("return new Promise((done) => setTimeout(done, 400));")  # past the debounce
    assert page.attr("after-image", "src") == after_src and page.el("save-button").is_enabled()
    shutil.copy(page.screenshot("2-edited", full_page=True), ARTIFACTS / "editor.png")  # docs/editor.png

    # Save the edit's vector under a name: the registry has it and the vector list offers it.
    name = f"web_{secrets.token_hex(4)}"
    page.fill("vector-name", name)
    page.fill("vector-description", "wider mouth, painted in the browser")
    page.click("save-button")
    page.wait(lambda: f"Saved vector {name}" in page.text("job-label"), what="the save")
    registry = api.get("/vectors", params={"model": model["name"]}).json()["vectors"]
    saved = next(v for v in registry if v["name"] == name)
    assert saved["source"] == "registry" and saved["description"] == "wider mouth, painted in the browser"
    assert page.el(f"vector-{name}").is_displayed()

    # Every slider starts at no edit, whatever its vector's range (a calibrated range can be +-2.67).
    sliders = page.driver.find_elements(By.CSS_SELECTOR, "#vector-list input[type=range]")
    assert len(sliders) >= 2 and all(float(s.get_property("value")) == 0.0 for s in sliders)

    # Apply a shipped vector in real time with its slider (keyboard: End = the top of its range).
    smile = page.el("vector-smile")
    top = float(smile.get_attribute("max") or 0)
    smile.send_keys(Keys.END)  # an input event (a preview at once) and a change (the full edit after it)

    def full_edit_shown() -> str:  # image and caption read together: the page may change between two reads
        src, caption = page.driver.execute_script(
            "return [document.getElementById('after-image').src, document.getElementById('after-caption').textContent]"
        )
        stored = "/results/img_" in src and src != after_src  # not a preview's inline image, nor the edit's
        return src if stored and f"smile {top:g}" in caption else ""

    shown = page.wait(full_edit_shown, what="the real-time vector edit")
    expected = api.post(
        "/edit/vector", json={"latent_id": latent_id, "vectors": [{"vector": "smile", "scale": top}]}
    ).json()
    realtime = fetch_png(api, shown)
    assert np.array_equal(realtime, fetch_png(api, expected["images"]["image"]))  # the page shows the API's answer

    # While a slider moves (input events, no change yet) the page asks for previews, whose images come back
    # inline: no request per image, and nothing kept in Redis for them.
    page.driver.execute_script("const s = arguments[0]; s.value = s.min; s.dispatchEvent(new Event('input'))", smile)
    bottom = float(smile.get_attribute("min") or 0)
    page.wait(lambda: f"smile {bottom:g}" in page.text("after-caption"), what="the preview while dragging")
    assert (page.attr("after-image", "src") or "").startswith("data:image/png;base64,")
    # A drag that never pauses (an input event every 40 ms for 1.6 s) shows edits while it moves
    captions = page.driver.execute_async_script(
        """const [s, done] = arguments; const seen = []; let i = 0;
        const tick = setInterval(() => {
          s.value = Number(s.min) + ((Number(s.max) - Number(s.min)) * (i % 20)) / 20;
          s.dispatchEvent(new Event("input"));
          seen.push(document.getElementById("after-caption").textContent);
          if (++i === 40) { clearInterval(tick); done(seen); }
        }, 40);""",
        smile,
    )
    assert len(set(captions)) >= 4, captions  # several previews shown during the drag, not one after it

    # With refinement steps, the same sliders make a job.
    page.fill("refine-steps", str(REFINE_STEPS))
    page.click("apply-button")
    assert page.wait_job("Refining").endswith("done."), page.messages()
    assert page.text("after-caption").endswith("refined")
    page.screenshot("3-vectors")

    # Downloads: the edited image, the painted mask, the saved vector.
    image = page.download("download-image", "edited.png")
    assert np.array_equal(decode_png(image), fetch_png(api, page.attr("after-image", "src") or ""))
    mask = labels_from_colours(decode_png(page.download("download-mask", "mask.png")), classes)
    assert np.array_equal(mask, painted)
    vector = page.download("download-vector", f"{name}@{saved['version']}.npy")
    assert vector == api.get(f"/vectors/{model['name']}/{name}/npy").content
    array = np.load(io.BytesIO(vector), allow_pickle=False)
    assert array.shape == (1, model["n_latent"], model["style_dim"]) and np.abs(array).sum() > 0
    assert page.messages() == ""

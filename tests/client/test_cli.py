"""`editgan invert|edit|apply|vectors` as real processes against the live service.

`--json` output is compared with what the API itself returns for the same job, vector or request.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.client.conftest import load_npy, load_png, npy, photo, png
from tests.live import Live
from tests.processes import free_port


def editgan(*args: str, url: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "service.cli", *args, *(["--url", url] if url else [])]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env=os.environ | (env or {}))


def as_json(run: subprocess.CompletedProcess[str]) -> Any:
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_invert_edit_and_apply_print_what_the_api_returns(live: Live, tmp_path: Path) -> None:
    image = tmp_path / "face.png"
    image.write_bytes(photo(7))
    url_env = {"EDITGAN_URL": live.base_url}  # instead of --url: the default for scripts
    run = editgan("invert", str(image), "--steps", "40", "--json", "--out", str(tmp_path / "inv"), env=url_env)
    job = as_json(run)
    assert job == live.http.get(f"/jobs/{job['job_id']}").json()
    assert job["status"] == "finished" and job["kind"] == "invert" and job["progress"]["step"] == 40
    assert "invert:" in run.stderr and "40/40" in run.stderr  # the progress bar
    result = job["result"]
    for kind, ref in result["images"].items():
        saved = tmp_path / "inv" / f"{kind}.png"
        assert saved.is_file() == (ref is not None)
        if ref is not None:
            assert saved.read_bytes() == live.http.get(ref).content

    labels = load_png((tmp_path / "inv" / "segmentation.png").read_bytes()).copy()
    labels[6:14, 8:20] = 1
    mask = tmp_path / "mask.png"
    mask.write_bytes(png(labels))
    brushed = np.zeros_like(labels)
    brushed[6:14, 8:20] = 255
    roi = tmp_path / "roi.png"
    roi.write_bytes(png(brushed))
    options = ["--steps", "3", "--save-vector", "cli_block", "--roi", str(roi), "--json", "-q"]
    edit = as_json(editgan("edit", result["latent_id"], str(mask), *options, url=live.base_url))
    assert edit == live.http.get(f"/jobs/{edit['job_id']}").json() and edit["kind"] == "optimize"
    assert edit["result"]["vector"]["saved_as"]["name"] == "cli_block"
    region = load_png(live.http.get(edit["result"]["images"]["region"]).content)
    assert region.sum() == 255 * 14 * 18  # rows 3-16, columns 5-22: the brushed block dilated by 3, so sent

    applied = as_json(editgan("apply", result["latent_id"], "cli_block:0.5", "grow:-1", "--json", url=live.base_url))
    same = live.http.post(
        "/edit/vector",
        json={
            "latent_id": result["latent_id"],
            "vectors": [{"vector": "cli_block", "scale": 0.5}, {"vector": "grow", "scale": -1}],
        },
    ).json()
    assert (
        applied["vectors"]
        == same["vectors"]
        == [{"vector": "cli_block@1", "scale": 0.5}, {"vector": "grow@0", "scale": -1.0}]
    )

    def latent(latent_id: str) -> np.ndarray:
        return load_npy(live.http.get(f"/latents/{latent_id}").content)

    np.testing.assert_allclose(latent(applied["latent_id"]), latent(same["latent_id"]), atol=1e-6)

    options = ["--refine-steps", "2", "--json", "--out", str(tmp_path / "ref")]
    refined = as_json(editgan("apply", result["latent_id"], "cli_block", *options, url=live.base_url))
    assert refined == live.http.get(f"/jobs/{refined['job_id']}").json() and refined["kind"] == "refine"
    assert refined["result"]["metrics"]["steps"] == 2
    assert (tmp_path / "ref" / "image.png").read_bytes() == live.http.get(refined["result"]["images"]["image"]).content
    assert live.http.delete("/vectors/tiny/cli_block").status_code == 204


def test_human_output_names_the_latent(live: Live, tmp_path: Path) -> None:
    image = tmp_path / "face.png"
    image.write_bytes(photo(8))
    run = editgan("invert", str(image), "--steps", "2", "-q", url=live.base_url)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # -q: no progress bar
    latent_id = run.stdout.split()[run.stdout.split().index("latent") + 1]
    assert live.http.get(f"/latents/{latent_id}").status_code == 200


def test_vectors_list_get_put_rm(live: Live, tmp_path: Path) -> None:
    delta = np.random.default_rng(9).normal(size=(1, 8, 32)).astype(np.float32)
    (tmp_path / "v.npy").write_bytes(npy(delta))
    options = ["--classes", "1,2", "--description", "from the cli", "--scale-range", "-1", "3", "--json"]
    put = as_json(editgan("vectors", "put", str(tmp_path / "v.npy"), "cli_vec", *options, url=live.base_url))
    assert put == live.http.get("/vectors/tiny/cli_vec").json()
    assert put["version"] == 1 and put["classes"] == [1, 2] and put["scale_range"] == [-1.0, 3.0]

    options = ["--model", "tiny", "--version", "1", "--json", "--out", str(tmp_path / "back.npy")]
    got = as_json(editgan("vectors", "get", "cli_vec", *options, url=live.base_url))
    assert got == put == live.http.get("/vectors/tiny/cli_vec", params={"version": 1}).json()
    np.testing.assert_array_equal(load_npy((tmp_path / "back.npy").read_bytes()), delta)

    listed = as_json(editgan("vectors", "list", "--json", url=live.base_url))
    assert listed == live.http.get("/vectors").json() and "cli_vec" in {v["name"] for v in listed["vectors"]}
    human = editgan("vectors", "list", "--model", "tiny", url=live.base_url)
    assert "tiny/cli_vec@1" in human.stdout and "tiny/grow@0" in human.stdout

    removed = as_json(editgan("vectors", "rm", "cli_vec", "--json", url=live.base_url))
    assert removed == {"model": "tiny", "name": "cli_vec", "deleted": True}
    assert live.http.get("/vectors/tiny/cli_vec").json()["code"] == "vector_not_found"


def test_errors_exit_non_zero_with_the_api_code_and_message(live: Live, tmp_path: Path) -> None:
    missing = "lat_" + "A" * 22
    run = editgan("apply", missing, "grow", "--json", url=live.base_url)
    api = live.http.post("/edit/vector", json={"latent_id": missing, "vectors": [{"vector": "grow"}]})
    assert run.returncode == 1
    body = json.loads(run.stdout)
    expected = api.json()
    assert (body["code"], body["message"], body["status"]) == (expected["code"], expected["message"], api.status_code)
    assert run.stderr.startswith(f"editgan: error: latent_not_found: {expected['message']}")

    (tmp_path / "junk.png").write_bytes(b"not an image")
    run = editgan("invert", str(tmp_path / "junk.png"), url=live.base_url)
    assert run.returncode == 1 and "unsupported_media_type" in run.stderr and run.stdout == ""

    run = editgan("vectors", "list", "--json", url=f"http://127.0.0.1:{free_port()}")
    assert run.returncode == 3 and json.loads(run.stdout)["code"] == "unreachable"

    run = editgan("invert", str(tmp_path / "absent.png"), url=live.base_url)
    assert run.returncode == 2 and "absent.png" in run.stderr

    (tmp_path / "a-file").write_text("")  # an --out the results could not be saved in: refused before the job
    for argv in (
        ["invert", str(tmp_path / "junk.png"), "--out", str(tmp_path / "a-file")],
        ["apply", missing, "grow", "--refine-steps", "-1"],
        ["invert", "x.png", "--timeout", "-5"],
    ):
        run = editgan(*argv, url=live.base_url)
        assert run.returncode == 2 and "Traceback" not in run.stderr, argv
    for term in ("grow:nan", "grow:inf", "grow:x"):  # refused before any request, as a usage error
        run = editgan("apply", missing, term, url=live.base_url)
        assert run.returncode == 2 and "finite number" in run.stderr and "Traceback" not in run.stderr, term


def test_ctrl_c_cancels_the_job_it_waits_on(live: Live, tmp_path: Path) -> None:
    image = tmp_path / "face.png"
    image.write_bytes(photo(10))
    argv = [sys.executable, "-m", "service.cli", "invert", str(image), "--steps", "3000", "--json"]
    proc = subprocess.Popen([*argv, "--url", live.base_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None and proc.stdout is not None
    stderr: list[bytes] = []
    pipe = proc.stderr

    def drain() -> None:  # the progress bar never ends its line: read chunks, not lines
        while chunk := os.read(pipe.fileno(), 4096):
            stderr.append(chunk)

    threading.Thread(target=drain, daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while b"optimizing" not in b"".join(stderr) and time.monotonic() < deadline:  # the bar shows it running
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130, b"".join(stderr).decode()
    finally:
        proc.kill()
    body = json.loads(proc.stdout.read())
    assert body["code"] == "cancelled"
    job = live.wait_job(f"/jobs/{body['job_id']}", timeout=30)
    assert job["status"] == "stopped" and 0 < job["progress"]["step"] < 3000

"""The editing endpoints over real HTTP against `editgan serve` + `editgan worker` (tiny random model)."""

from __future__ import annotations

import io
import json
import re
import select
import socket
import time
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from schemas.edits import IMAGE_ID, LATENT_ID
from tests.service.conftest import Live
from workers.store import PREFIX


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def photo(seed: int = 0, size: tuple[int, int] = (40, 50)) -> bytes:
    rng = np.random.default_rng(seed)
    return png(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def fetch_png(live: Live, url: str) -> np.ndarray:
    response = live.http.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert "immutable" in response.headers["cache-control"]
    return np.asarray(Image.open(io.BytesIO(response.content)))


def fetch_latent(live: Live, latent_id: str) -> np.ndarray:
    response = live.http.get(f"/latents/{latent_id}")
    assert response.status_code == 200
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def inverted(live: Live, seed: int = 0) -> dict[str, Any]:
    response = live.http.post("/invert", files={"image": ("photo.png", photo(seed), "image/png")})
    assert response.status_code == 202, response.text
    info = live.wait_job(response.headers["location"])
    assert info["status"] == "finished", info
    result: dict[str, Any] = info["result"]
    return result


def test_invert_is_a_job_whose_result_holds_a_latent_and_images(live: Live) -> None:
    response = live.http.post("/invert", files={"image": ("photo.png", photo(1), "image/png")}, data={"steps": "3"})
    assert response.status_code == 202
    body = response.json()
    assert response.headers["location"] == body["location"] == f"/jobs/{body['job_id']}"
    assert body["status"] == "queued" and body["kind"] == "invert" and body["model"] == "tiny"
    info = live.wait_job(body["location"])
    assert info["status"] == "finished" and info["error"] is None
    assert info["progress"]["step"] == info["progress"]["total"] == 3
    result = info["result"]
    assert re.match(LATENT_ID, result["latent_id"]) and result["metrics"]["steps"] == 3
    # content box of the tiny model: 24 x 32
    assert fetch_png(live, result["images"]["image"]).shape == (24, 32, 3)
    labels = fetch_png(live, result["images"]["segmentation"])
    colours = fetch_png(live, result["images"]["segmentation_color"])
    assert labels.shape == (24, 32) and int(labels.max()) < 5
    palette = {c["id"]: c["color"] for c in live.http.get("/models/tiny").json()["classes"]}
    y, x = 7, 9
    assert "#{:02x}{:02x}{:02x}".format(*colours[y, x]) == palette[int(labels[y, x])]
    assert fetch_latent(live, result["latent_id"]).shape == (1, 8, 32)


def test_a_vector_edit_is_synchronous_and_adds_scale_times_the_vector(live: Live) -> None:
    result = inverted(live)
    w = fetch_latent(live, result["latent_id"])[0]
    delta = np.load(io.BytesIO(live.http.get("/vectors/tiny/grow/npy").content))[0]
    response = live.http.post(
        "/edit/vector", json={"latent_id": result["latent_id"], "vectors": [{"vector": "grow", "scale": 1.5}]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["vectors"] == [{"vector": "grow@0", "scale": 1.5}]
    edited = fetch_latent(live, body["latent_id"])[0]
    np.testing.assert_allclose(edited, w + 1.5 * delta, atol=1e-5)
    assert fetch_png(live, body["images"]["image"]).shape == (24, 32, 3)


def test_inline_outputs_come_back_as_data_urls(live: Live) -> None:
    result = inverted(live)
    body = live.http.post(
        "/edit/vector",
        json={"latent_id": result["latent_id"], "vectors": [{"vector": "grow"}], "outputs": ["image"], "inline": True},
    ).json()
    assert body["images"]["image"].startswith("data:image/png;base64,")
    assert body["images"]["segmentation"] is None
    # The uncertainty map alone (rendered only when asked for): a grey map of the content box.
    body = live.http.post(
        "/edit/vector",
        json={"latent_id": result["latent_id"], "vectors": [{"vector": "grow"}], "outputs": ["uncertainty"]},
    ).json()
    assert body["images"]["image"] is None
    assert fetch_png(live, body["images"]["uncertainty"]).shape == (24, 32)


def test_a_preview_is_kept_for_the_preview_ttl_and_a_full_edit_for_the_result_ttl(live: Live) -> None:
    """A slider drag makes many provisional results: they expire soon, whatever the result TTL."""
    latent_id = inverted(live)["latent_id"]
    kept = {}
    for preview in (True, False):
        body = {"latent_id": latent_id, "vectors": [{"vector": "grow", "scale": 0.5}], "preview": preview}
        result = live.http.post("/edit/vector", json=body).json()
        image_ids = [url.removeprefix("/results/").removesuffix(".png") for url in result["images"].values() if url]
        keys = [f"{PREFIX}:latent:{result['latent_id']}"] + [f"{PREFIX}:image:{i}" for i in image_ids]
        kept[preview] = [live.redis.ttl(k) for k in keys]
        assert len(keys) == 5 and fetch_png(live, result["images"]["image"]).shape == (24, 32, 3)
        # and clients may cache them as long as they live, no longer
        answers = [live.http.get(f"/latents/{result['latent_id']}"), live.http.get(result["images"]["image"])]
        kept[preview] += [int(a.headers["Cache-Control"].split("max-age=")[1].split(",")[0]) for a in answers]
        for answer in answers:  # HEAD: the same headers, no body
            head = live.http.head(str(answer.request.url))
            assert head.status_code == 200 and head.content == b""
            assert head.headers["content-length"] == str(len(answer.content))
            assert head.headers["content-type"] == answer.headers["content-type"]
    assert all(0 < t <= 900 for t in kept[True]), kept  # EDITGAN_PREVIEW_TTL's default
    assert all(t > 80_000 for t in kept[False]), kept  # EDITGAN_RESULT_TTL's default, 86400


def test_optimize_edit_saves_a_versioned_vector_that_applies_again(live: Live) -> None:
    result = inverted(live, seed=2)
    labels = fetch_png(live, result["images"]["segmentation"]).copy()
    labels[6:14, 8:20] = 1  # paint a block of class 1
    response = live.http.post(
        "/edit/optimize",
        data={"latent_id": result["latent_id"], "save_vector_as": "block", "steps": "3"},
        files={"mask": ("mask.png", png(labels.astype(np.uint8)), "image/png")},
    )
    assert response.status_code == 202, response.text
    info = live.wait_job(response.headers["location"])
    assert info["status"] == "finished", info
    edit = info["result"]
    assert edit["vector"]["saved_as"]["name"] == "block" and 1 in edit["vector"]["classes"]
    region = fetch_png(live, edit["images"]["region"])
    assert region.shape == (24, 32) and region[6:14, 8:20].min() == 255
    # the edit's vector is the latent difference, by id and by name
    before, after = fetch_latent(live, result["latent_id"]), fetch_latent(live, edit["latent_id"])
    for ref in (edit["vector"]["edit_id"], f"block@{edit['vector']['saved_as']['version']}"):
        body = live.http.post("/edit/vector", json={"latent_id": result["latent_id"], "vectors": [{"vector": ref}]})
        assert body.status_code == 200, body.text
        np.testing.assert_allclose(fetch_latent(live, body.json()["latent_id"]), after, atol=1e-5)
    assert not np.allclose(before, after)


def test_refinement_is_a_job_returning_a_vector_edit(live: Live) -> None:
    result = inverted(live)
    # random weights: give the vector every class, so that its region is never empty
    delta = np.random.default_rng(0).normal(size=(1, 8, 32)).astype(np.float32) * 0.1
    buf = io.BytesIO()
    np.save(buf, delta)
    saved = live.http.post("/vectors", data={"name": "every", "classes": "0,1,2,3,4"}, files={"file": buf.getvalue()})
    assert saved.status_code == 201, saved.text
    response = live.http.post(
        "/edit/vector",
        json={"latent_id": result["latent_id"], "vectors": [{"vector": "every", "scale": 0.5}], "refine_steps": 2},
    )
    assert response.status_code == 202 and response.json()["kind"] == "refine"
    info = live.wait_job(response.headers["location"])
    assert info["status"] == "finished", info
    assert info["result"]["metrics"]["steps"] == 2 and info["result"]["vectors"][0]["vector"] == "every@1"
    assert re.match(IMAGE_ID, info["result"]["images"]["image"].removeprefix("/results/").removesuffix(".png"))


def _save_npy(live: Live, name: str, delta: np.ndarray) -> httpx.Response:
    buf = io.BytesIO()
    np.save(buf, delta)
    return live.http.post("/vectors", data={"name": name, "classes": "0,1,2,3,4"}, files={"file": buf.getvalue()})


def test_a_brushed_roi_makes_the_edit_region_those_pixels_dilated(live: Live) -> None:
    result = inverted(live, seed=2)
    labels = fetch_png(live, result["images"]["segmentation"]).copy()
    labels[6:14, 8:20] = 1
    brush = np.zeros((24, 32, 4), np.uint8)  # a brush layer: strokes opaque, the rest transparent
    brush[6:14, 8:20] = (255, 0, 0, 255)
    files = {"mask": ("m.png", png(labels.astype(np.uint8)), "image/png"), "roi": ("r.png", png(brush), "image/png")}
    response = live.http.post("/edit/optimize", data={"latent_id": result["latent_id"], "steps": "2"}, files=files)
    assert response.status_code == 202, response.text
    info = live.wait_job(response.headers["location"])
    assert info["status"] == "finished", info
    expected = np.zeros((24, 32), np.uint8)
    expected[3:17, 5:23] = 255  # the block grown by the default dilation, 3 pixels
    np.testing.assert_array_equal(fetch_png(live, info["result"]["images"]["region"]), expected)

    def refused(roi: np.ndarray) -> dict[str, Any]:
        files["roi"] = ("r.png", png(roi), "image/png")
        answer = live.http.post("/edit/optimize", data={"latent_id": result["latent_id"]}, files=files)
        assert answer.status_code == 422, answer.text
        body: dict[str, Any] = answer.json()
        return body

    assert "paints no pixel" in refused(np.zeros((24, 32), np.uint8))["message"]
    assert "this model edits" in refused(np.full((24, 31), 255, np.uint8))["message"]
    corner = np.zeros((24, 32), np.uint8)  # part of the block only: the job refuses, naming the pixels left out
    corner[6:8, 8:10] = 255
    files["roi"] = ("r.png", png(corner), "image/png")
    job = live.http.post("/edit/optimize", data={"latent_id": result["latent_id"]}, files=files)
    failed = live.wait_job(job.headers["location"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_input"
    assert "outside the painted region" in failed["error"]["message"]


def test_a_refinement_retried_with_its_key_replays_after_the_vector_changed_or_went(live: Live) -> None:
    result = inverted(live)
    delta = np.random.default_rng(1).normal(size=(8, 32)).astype(np.float32) * 0.1
    assert _save_npy(live, "idem_vec", delta).status_code == 201
    body = {"latent_id": result["latent_id"], "vectors": [{"vector": "idem_vec"}], "refine_steps": 1}
    headers = {"Idempotency-Key": "refine-retry-1"}
    first = live.http.post("/edit/vector", json=body, headers=headers)
    assert first.status_code == 202, first.text
    assert _save_npy(live, "idem_vec", -delta).status_code == 201  # version 2: `idem_vec` now means another vector
    again = live.http.post("/edit/vector", json=body, headers=headers)
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["job_id"] == first.json()["job_id"]
    assert live.http.delete("/vectors/tiny/idem_vec").status_code == 204
    gone = live.http.post("/edit/vector", json=body, headers=headers)
    assert gone.status_code == 202 and gone.json()["job_id"] == first.json()["job_id"]
    info = live.wait_job(first.headers["location"])
    assert info["status"] == "finished" and info["result"]["vectors"][0]["vector"] == "idem_vec@1"  # pinned at first
    late = live.http.post("/edit/vector", json=body, headers=headers)  # a replay says where the job is now
    assert late.json()["job_id"] == first.json()["job_id"] and late.json()["status"] == "finished"
    # a new key after the deletion: the name resolves now, and is gone; the key stays free for a corrected request
    missing = live.http.post("/edit/vector", json=body, headers={"Idempotency-Key": "refine-retry-2"})
    assert missing.status_code == 404 and missing.json()["code"] == "vector_not_found"
    assert _save_npy(live, "idem_vec", delta).status_code == 201
    retried = live.http.post("/edit/vector", json=body, headers={"Idempotency-Key": "refine-retry-2"})
    assert retried.status_code == 202 and retried.json()["job_id"] != first.json()["job_id"]


def test_names_that_read_as_edit_ids_are_refused_everywhere_a_vector_is_named(live: Live) -> None:
    delta = np.zeros((8, 32), np.float32)
    refused = _save_npy(live, "edv_smile", delta)
    assert refused.status_code == 422 and refused.json()["code"] == "invalid_input", refused.text
    assert "edv_" in refused.json()["message"]
    assert live.http.get("/vectors/tiny/edv_smile").status_code == 404
    result = inverted(live)
    labels = fetch_png(live, result["images"]["segmentation"])
    edited = labels.copy()
    edited[6:14, 8:20] = (labels[6:14, 8:20] + 1) % 5
    optimize = live.http.post(
        "/edit/optimize",
        data={"latent_id": result["latent_id"], "save_vector_as": "edv_block"},
        files={"mask": ("m.png", png(edited), "image/png")},
    )
    assert optimize.status_code == 422 and optimize.json()["code"] == "invalid_input"  # before any job is queued
    from_edit = live.http.post("/vectors/from-edit", json={"edit_id": "edv_" + "A" * 22, "name": "edv_x"})
    assert from_edit.status_code in (404, 422)  # the id is unknown or the name reserved: never a 201
    unknown = live.http.post("/vectors/from-edit", json={"edit_id": "edv_" + "A" * 22, "name": "ok_name"})
    assert unknown.status_code == 404 and unknown.json()["code"] == "vector_not_found"  # as /edit/vector says


def test_values_beyond_float32_are_refused_not_stored_as_infinity(live: Live) -> None:
    wide = np.zeros((8, 32))  # float64: finite here, infinite once cast to float32
    wide[0, 5] = 1e300
    buf = io.BytesIO()
    np.save(buf, wide)
    latent = live.http.post("/latents", files={"file": buf.getvalue()})
    assert latent.status_code == 422 and latent.json()["code"] == "invalid_input"
    huge = _save_npy(live, "huge_vec", np.full((8, 32), 3e38, np.float32))  # finite, and so is its norm
    assert huge.status_code == 201 and huge.json()["norm"] > 3e38
    result = inverted(live)
    edit = live.http.post(
        "/edit/vector", json={"latent_id": result["latent_id"], "vectors": [{"vector": "huge_vec", "scale": 2}]}
    )
    assert edit.status_code == 422 and edit.json()["code"] == "invalid_input" and "float32" in edit.json()["message"]


def _running(live: Live, location: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info: dict[str, Any] = live.http.get(location).json()
        if info["status"] == "started" and info["progress"]["step"] > 0:
            return info
        time.sleep(0.05)
    raise AssertionError(f"job never reported progress: {info}")


def test_cancel_a_queued_job_and_stop_a_running_one(live: Live) -> None:
    long = live.http.post("/invert", files={"image": ("p.png", photo(3), "image/png")}, data={"steps": "3000"})
    queued = live.http.post("/invert", files={"image": ("p.png", photo(4), "image/png")}, data={"steps": "3"})
    running = _running(live, long.headers["location"])
    assert 0 < running["progress"]["step"] < 3000 and running["progress"]["losses"]

    cancelled = live.http.delete(queued.headers["location"])
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "canceled"
    assert live.http.delete(long.headers["location"]).status_code == 200
    info = live.wait_job(long.headers["location"], timeout=20)
    assert info["status"] == "stopped" and info["error"]["code"] == "cancelled"
    assert info["progress"]["step"] < 3000
    again = live.http.delete(long.headers["location"])
    assert again.status_code == 409 and again.json()["code"] == "job_not_cancellable"
    assert live.wait_job(queued.headers["location"])["status"] == "canceled"


@pytest.mark.parametrize(
    ("request_kwargs", "path", "status", "code"),
    [
        ({"files": {"image": ("x.png", b"not an image", "image/png")}}, "/invert", 415, "unsupported_media_type"),
        ({"files": {"image": ("x.gif", b"GIF89a" + b"\0" * 40)}}, "/invert", 415, "unsupported_media_type"),
        ({"files": {"image": ("x.png", b"\0" * 400_000, "image/png")}}, "/invert", 413, "payload_too_large"),
        ({"files": {"image": ("x.png", photo())}, "data": {"model": "nope"}}, "/invert", 404, "unknown_model"),
        ({"files": {"image": ("x.png", photo())}, "data": {"steps": "4000"}}, "/invert", 422, "invalid_input"),
        ({"files": {"image": ("x.png", photo())}, "data": {"fit": "zoom"}}, "/invert", 422, "validation_error"),
        ({"json": {"latent_id": "lat_" + "A" * 22, "vectors": [{"vector": "grow"}]}}, "/edit/vector", 404,
         "latent_not_found"),
        ({"json": {"latent_id": "nope", "vectors": [{"vector": "grow"}]}}, "/edit/vector", 422, "validation_error"),
        ({"content": b"{", "headers": {"content-type": "application/json"}}, "/edit/vector", 400, "malformed_body"),
        ({"content": b"x", "headers": {"content-type": "multipart/form-data"}}, "/invert", 400, "malformed_body"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_4xx_with_code_and_message(
    live: Live, request_kwargs: dict[str, Any], path: str, status: int, code: str
) -> None:
    response = live.http.post(path, **request_kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code and isinstance(body["message"], str) and body["message"]
    assert not re.search(r" at 0x[0-9a-f]+", body["message"]), "a Python object's address in the message"


def test_a_chunked_body_without_length_is_refused_while_it_streams(live: Live) -> None:
    """No Content-Length to check up front: the limit must hold on the bytes as they arrive. The body is
    never finished (no last chunk), so a 413 proves the gateway refused it mid-stream, unread."""
    from tests.live import MAX_UPLOAD

    refused_before = _too_large_count(live)
    host, port = live.base_url.removeprefix("http://").split(":")
    head = (
        f"POST /invert HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n\r\n"
    )
    preamble = b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'
    chunks = [preamble] + [b"\0" * 65536] * ((2 * MAX_UPLOAD) // 65536 + 4)
    reply = b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        for chunk in chunks:  # stop sending as soon as the answer arrives
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except OSError:
                break
        else:
            select.select([sock], [], [], 30)
        while not reply.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    status_line, _, rest = reply.partition(b"\r\n")
    assert b" 413 " in status_line, reply[:300]
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["code"] == "payload_too_large" and "limit" in body["message"]
    assert _too_large_count(live) == refused_before + 1  # counted like every other error response


def _too_large_count(live: Live) -> float:
    families = text_string_to_metric_families(live.http.get("/metrics").text)
    errors = next(f for f in families if f.name == "editgan_http_errors")
    found = [s.value for s in errors.samples if s.labels == {"code": "payload_too_large", "status": "413"}]
    return found[0] if found else 0.0


def test_mask_errors_are_refused_before_queueing(live: Live) -> None:
    result = inverted(live)
    labels = fetch_png(live, result["images"]["segmentation"])

    def post(mask: bytes, **data: str) -> dict[str, Any]:
        response = live.http.post(
            "/edit/optimize", data={"latent_id": result["latent_id"], **data}, files={"mask": ("m.png", mask)}
        )
        assert response.status_code in (404, 409, 415, 422), response.text
        body: dict[str, Any] = response.json()
        return body

    assert post(png(labels[:10]))["code"] == "invalid_input"  # wrong size
    too_big = labels.copy()
    too_big[0, 0] = 9
    assert post(png(too_big))["code"] == "invalid_input"  # class id out of range
    colours = np.zeros((24, 32, 3), np.uint8)
    colours[:] = (1, 2, 3)  # not in the palette: an error, never background
    assert "palette" in post(png(colours))["message"]
    assert post(png(labels), region="nowhere")["code"] == "invalid_input"
    assert post(png(labels), save_vector_as="grow")["code"] == "vector_read_only"
    assert post(png(labels), save_vector_as="Bad Name")["code"] == "validation_error"


def test_unknown_routes_and_jobs_answer_json_errors(live: Live) -> None:
    for path, code in (("/nowhere", "not_found"), ("/jobs/0123456789abcdef", "job_not_found")):
        response = live.http.get(path)
        assert response.status_code == 404 and response.json()["code"] == code
    response = live.http.put("/invert")
    assert response.status_code == 405 and response.json()["code"] == "method_not_allowed"
    # Allow names every method of the path, though separate routes answer them.
    shared = (("/jobs/x", {"GET", "DELETE"}), ("/vectors", {"GET", "POST"}), ("/latents/x", {"GET", "HEAD"}))
    for path, methods in shared:
        response = live.http.put(path)
        assert response.status_code == 405 and set(response.headers["allow"].split(", ")) == methods, path
    assert live.http.get("/results/img_" + "A" * 22 + ".png").json()["code"] == "image_not_found"


def test_replayed_or_conflicting_submissions_store_no_upload(live: Live) -> None:
    def uploads() -> int:
        return sum(1 for k in live.redis.scan_iter(match="*:upload:upl_*", count=1000) if not k.endswith(b":owner"))

    def post_invert(seed: int) -> httpx.Response:
        files = {"image": ("p.png", photo(seed), "image/png")}
        return live.http.post("/invert", files=files, headers={"Idempotency-Key": "stores-once-1"})

    first = post_invert(3)
    assert first.status_code == 202, first.text
    before = uploads()
    assert post_invert(3).headers["Idempotent-Replayed"] == "true" and post_invert(4).status_code == 422
    assert uploads() == before

    result = live.wait_job(first.headers["location"])["result"]
    labels = fetch_png(live, result["images"]["segmentation"]).copy()
    labels[6:14, 8:20] = 1
    brush = np.zeros((24, 32), np.uint8)
    brush[6:14, 8:20] = 255
    files = {"mask": ("m.png", png(labels.astype(np.uint8)), "image/png"), "roi": ("r.png", png(brush), "image/png")}
    data, headers = {"latent_id": result["latent_id"], "steps": "1"}, {"Idempotency-Key": "stores-once-2"}
    assert live.http.post("/edit/optimize", data=data, files=files, headers=headers).status_code == 202
    before = uploads()
    again = live.http.post("/edit/optimize", data=data, files=files, headers=headers)
    assert again.headers["Idempotent-Replayed"] == "true"
    other = live.http.post("/edit/optimize", data=data | {"steps": "2"}, files=files, headers=headers)
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    assert uploads() == before

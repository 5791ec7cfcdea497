"""Concurrent synchronous vector edits through the real gateway: each caller gets its own, correct answer,
whether or not its render shared a batched pass (the gateway's /metrics counts every request's batch)."""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Callable

import httpx
import numpy as np
from PIL import Image

from tests.service.conftest import Live

CLIENTS = 8


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array.astype(np.float32))
    return buf.getvalue()


def _png(live: Live, url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(live.http.get(url).content)))


def _latent(live: Live, latent_id: str) -> np.ndarray:
    return np.load(io.BytesIO(live.http.get(f"/latents/{latent_id}").content), allow_pickle=False)[0]


def _batched_requests(live: Live) -> float:
    """Requests counted by the batch-size histogram of the tiny model so far (the sum of batch sizes)."""
    text = live.http.get("/metrics").text
    found = re.search(r'^editgan_vector_batch_size_sum\{model="tiny"\} (\S+)$', text, flags=re.M)
    return float(found.group(1)) if found else 0.0


def _concurrent_edits(live: Live, body: Callable[[int], dict[str, object]]) -> dict[int, dict[str, object]]:
    """CLIENTS `POST /edit/vector` at once, each on its own connection: client i sends `body(i)`."""
    start = threading.Barrier(CLIENTS)
    bodies: dict[int, dict[str, object]] = {}

    def edit(i: int) -> None:
        with httpx.Client(base_url=live.base_url, timeout=60) as http:
            start.wait(30)
            response = http.post("/edit/vector", json=body(i))
            assert response.status_code == 200, response.text
            bodies[i] = response.json()

    threads = [threading.Thread(target=edit, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(bodies) == list(range(CLIENTS))
    return bodies


def test_concurrent_vector_edits_each_get_their_own_result(live: Live) -> None:
    rng = np.random.default_rng(11)
    latents = [rng.standard_normal((8, 32)).astype(np.float32) for _ in range(CLIENTS)]
    ids = []
    for w in latents:
        response = live.http.post("/latents", files={"file": ("w.npy", _npy(w), "application/octet-stream")})
        assert response.status_code == 201, response.text
        ids.append(response.json()["latent_id"])
    scales = [0.25 * i - 1.0 for i in range(CLIENTS)]
    delta = np.load(io.BytesIO(live.http.get("/vectors/tiny/grow/npy").content))[0]
    before = _batched_requests(live)

    bodies = _concurrent_edits(
        live, lambda i: {"latent_id": ids[i], "vectors": [{"vector": "grow", "scale": scales[i]}]}
    )
    assert _batched_requests(live) - before == CLIENTS  # every request went through the batcher

    for i, body in bodies.items():
        assert body["vectors"] == [{"vector": "grow@0", "scale": scales[i]}]
        np.testing.assert_allclose(_latent(live, str(body["latent_id"])), latents[i] + scales[i] * delta, atol=1e-5)
        # the same edit alone (nothing else in flight) renders the same images
        alone = live.http.post(
            "/edit/vector", json={"latent_id": ids[i], "vectors": [{"vector": "grow", "scale": scales[i]}]}
        ).json()
        images, reference = body["images"], alone["images"]
        assert isinstance(images, dict)
        np.testing.assert_array_equal(_png(live, images["segmentation"]), _png(live, reference["segmentation"]))
        a = _png(live, images["image"]).astype(int)
        b = _png(live, reference["image"]).astype(int)
        assert np.abs(a - b).max() <= 1  # float rounding of a batched pass may move a pixel by one level


def test_previews_and_full_renders_batched_together_each_get_their_ensemble(live: Live) -> None:
    """Slider drags (`preview`) and releases arrive together: one generator pass per member count, the
    same image either way, the preview's labels from the first EDITGAN_PREVIEW_MEMBERS classifiers."""
    rng = np.random.default_rng(12)
    w = rng.standard_normal((8, 32)).astype(np.float32)
    latent_id = live.http.post("/latents", files={"file": ("w.npy", _npy(w))}).json()["latent_id"]
    bodies = _concurrent_edits(
        live, lambda i: {"latent_id": latent_id, "vectors": [{"vector": "grow", "scale": 0.5}], "preview": i % 2 == 0}
    )
    members = {i: b["segmentation_members"] for i, b in bodies.items()}
    assert members == {i: 2 if i % 2 == 0 else 3 for i in range(CLIENTS)}
    segs = {i: _png(live, b["images"]["segmentation"]) for i, b in bodies.items()}  # type: ignore[index]
    images = {i: _png(live, b["images"]["image"]).astype(int) for i, b in bodies.items()}  # type: ignore[index]
    for i in range(CLIENTS):
        assert np.abs(images[i] - images[1]).max() <= 1  # the generator pass is the same
        np.testing.assert_array_equal(segs[i], segs[i % 2])  # each ensemble labels alike every time

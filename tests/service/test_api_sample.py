"""`POST /latents/sample`: a latent to edit without a photo (a seeded sample or one of the model's examples)."""

from __future__ import annotations

import io

import numpy as np
import torch

from engine.bundle import load_bundle
from tests.service.conftest import Live


def latent(live: Live, latent_id: str) -> np.ndarray:
    response = live.http.get(f"/latents/{latent_id}")
    assert response.status_code == 200
    return np.load(io.BytesIO(response.content), allow_pickle=False)[0]


def test_a_seeded_sample_is_stored_rendered_and_reproducible(live: Live) -> None:
    first = live.http.post("/latents/sample", json={"seed": 11})
    assert first.status_code == 201, first.text
    body = first.json()
    assert first.headers["location"] == f"/latents/{body['latent_id']}"
    assert body["model"] == "tiny" and body["seed"] == 11 and body["example"] is None
    assert all(body["images"][k].startswith("/results/img_") for k in ("image", "segmentation", "uncertainty"))
    again = live.http.post("/latents/sample", json={"model": "tiny", "seed": 11}).json()
    other = live.http.post("/latents/sample", json={"seed": 12}).json()
    assert again["latent_id"] != body["latent_id"]  # a new stored latent, the same code
    np.testing.assert_array_equal(latent(live, again["latent_id"]), latent(live, body["latent_id"]))
    assert not np.array_equal(latent(live, other["latent_id"]), latent(live, body["latent_id"]))
    image = live.http.get(body["images"]["image"]).content
    assert image == live.http.get(again["images"]["image"]).content
    # without a seed, the service draws one and says which
    drawn = live.http.post("/latents/sample", json={}).json()
    assert isinstance(drawn["seed"], int)
    np.testing.assert_array_equal(
        latent(live, drawn["latent_id"]),
        latent(live, live.http.post("/latents/sample", json={"seed": drawn["seed"]}).json()["latent_id"]),
    )


def test_an_example_latent_is_the_bundles_own(live: Live) -> None:
    bundle = load_bundle(live.models_dir / "tiny")
    assert bundle.examples is not None
    count = int(bundle.examples.shape[0])
    assert live.http.get("/models/tiny").json()["examples"] == count
    body = live.http.post("/latents/sample", json={"example": count - 1}).json()
    assert body["example"] == count - 1 and body["seed"] is None
    torch.testing.assert_close(torch.from_numpy(latent(live, body["latent_id"])), bundle.examples[count - 1])


def test_impossible_samples_are_refused_with_the_reason(live: Live) -> None:
    count = live.http.get("/models/tiny").json()["examples"]
    out_of_range = live.http.post("/latents/sample", json={"example": count})
    assert out_of_range.status_code == 422 and out_of_range.json()["code"] == "invalid_input"
    assert f"has {count} example latents" in out_of_range.json()["message"]
    both = live.http.post("/latents/sample", json={"seed": 1, "example": 0})
    assert both.status_code == 422 and "not both" in both.json()["message"]
    negative = live.http.post("/latents/sample", json={"seed": -1})
    assert negative.status_code == 422 and negative.json()["code"] == "validation_error"
    unknown = live.http.post("/latents/sample", json={"model": "nope"})
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_model"

"""`EditganClient.sample_latent` against the live service: a latent to edit without a photo."""

from __future__ import annotations

import numpy as np
import pytest

from client import ApiError, EditganClient
from tests.client.conftest import load_npy, load_png


def test_sample_latent_returns_a_stored_rendered_latent(api: EditganClient) -> None:
    first, again = api.sample_latent(seed=5), api.sample_latent("tiny", seed=5)
    assert first.seed == 5 and first.example is None and first.model == "tiny"
    np.testing.assert_array_equal(
        load_npy(api.download_latent(first.latent_id).npy), load_npy(api.download_latent(again.latent_id).npy)
    )
    assert first.images.segmentation is not None
    assert load_png(api.download_image(first.images.segmentation)).ndim == 2  # class ids
    example = api.sample_latent(example=0)
    assert example.example == 0 and example.seed is None


def test_sample_latent_errors_carry_the_api_code(api: EditganClient) -> None:
    count = api.get_model("tiny").examples
    with pytest.raises(ApiError) as caught:
        api.sample_latent(example=count)
    assert caught.value.code == "invalid_input" and caught.value.status == 422

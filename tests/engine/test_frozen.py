"""Values cached from frozen parameters (`engine.frozen`) must follow every change the code base makes."""

from __future__ import annotations

import torch
from torch import nn

from engine.frozen import frozen_derived
from engine.generator import Generator
from engine.segmenter import Segmenter, SegmenterConfig
from tests.conftest import TINY_GENERATOR, randomise_batch_norm


def test_a_frozen_value_is_computed_once_per_version() -> None:
    layer = nn.Linear(4, 3).requires_grad_(False)
    calls = []

    def make() -> torch.Tensor:
        calls.append(1)
        return layer.weight * 2

    first = frozen_derived(layer, "double", (layer.weight,), make)
    assert frozen_derived(layer, "double", (layer.weight,), make) is first
    assert len(calls) == 1
    with torch.no_grad():
        layer.weight.add_(1.0)  # in place: the version counter moves
    assert torch.equal(frozen_derived(layer, "double", (layer.weight,), make), layer.weight * 2)
    layer.load_state_dict({"weight": torch.zeros(3, 4), "bias": torch.zeros(3)})
    assert torch.equal(frozen_derived(layer, "double", (layer.weight,), make), torch.zeros(3, 4))
    layer.to(torch.float64)  # new storage and dtype
    assert frozen_derived(layer, "double", (layer.weight,), make).dtype == torch.float64
    assert len(calls) == 4


def test_parameters_that_train_are_never_cached() -> None:
    layer = nn.Linear(4, 3)
    out = frozen_derived(layer, "double", (layer.weight,), lambda: layer.weight * 2)
    assert out.requires_grad  # autograd reaches the parameter
    with torch.no_grad():
        layer.weight.data.mul_(-1)  # even a write the version counter misses is seen
    assert torch.equal(frozen_derived(layer, "double", (layer.weight,), lambda: layer.weight * 2), layer.weight * 2)


def _fresh_render(state: dict[str, torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    twin = Generator(TINY_GENERATOR).eval().requires_grad_(False)
    twin.load_state_dict(state)
    return twin.synthesis(w).image


def test_a_frozen_generator_renders_its_current_weights() -> None:
    torch.manual_seed(0)
    g = Generator(TINY_GENERATOR).eval().requires_grad_(False)
    w = g.sample_w_plus(2, seed=1)
    first = g.synthesis(w).image
    assert torch.equal(first, g.synthesis(w).image)
    assert torch.equal(first, _fresh_render(g.state_dict(), w))
    other = Generator(TINY_GENERATOR).state_dict()  # new random weights, loaded in place
    g.load_state_dict(other)
    torch.testing.assert_close(g.synthesis(w).image, _fresh_render(other, w), rtol=0, atol=0)
    with torch.no_grad():  # an EMA-style in-place update
        for p in g.parameters():
            p.mul_(0.9)
    torch.testing.assert_close(g.synthesis(w).image, _fresh_render(g.state_dict(), w), rtol=0, atol=0)


def test_a_frozen_segmenter_segments_with_its_current_weights() -> None:
    torch.manual_seed(0)
    g = Generator(TINY_GENERATOR).eval()
    out = g.synthesis(g.sample_w_plus(2, seed=0), return_features=True)
    assert out.features is not None
    config = SegmenterConfig(tuple(c for c, _ in TINY_GENERATOR.feature_shapes), 5, TINY_GENERATOR.size, 3)
    s = Segmenter(config).eval()
    randomise_batch_norm(s)
    s.requires_grad_(False)
    before = s.segment(out.features)
    with torch.no_grad():
        for m in s.models:
            m.layers[0].weight.mul_(-1.5)
            m.layers[5].running_var.mul_(3.0)
    twin = Segmenter(config).eval().requires_grad_(False)
    twin.load_state_dict(s.state_dict())
    after, expected = s.segment(out.features), twin.segment(out.features)
    assert torch.equal(after.labels, expected.labels)
    assert not torch.allclose(after.uncertainty, before.uncertainty)  # the change reached the output
    torch.testing.assert_close(after.uncertainty, expected.uncertainty)


def test_a_value_cached_under_inference_mode_still_serves_gradients() -> None:
    g = Generator(TINY_GENERATOR).eval().requires_grad_(False)
    w = g.sample_w_plus(1, seed=0)
    with torch.inference_mode():
        g.synthesis(w)  # the first call fills the cache
    latent = w.clone().requires_grad_(True)
    g.synthesis(latent).image.square().sum().backward()  # an edit differentiates through the cached weights
    assert latent.grad is not None and bool(latent.grad.abs().sum() > 0)

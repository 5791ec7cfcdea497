from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from engine import layers
from engine.errors import BundleError, InputError
from engine.generator import Generator, GeneratorConfig
from tests.conftest import TINY_GENERATOR, reference


def test_car_generator_matches_official_keys_order_and_shapes() -> None:
    ref = reference("generator_car.json")
    cfg = GeneratorConfig(**{k: ref["constructor"][k] for k in ("size", "style_dim", "n_mlp", "channel_multiplier")})
    with torch.device("meta"):
        g = Generator(cfg)
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in g.state_dict().items()]
    theirs = [(e["key"], e["shape"], e["dtype"]) for e in ref["entries"]]
    assert ours == theirs
    assert sum(p.numel() for p in g.parameters()) == ref["totals"]["parameter_elements"]
    assert cfg.n_latent == ref["derived"]["n_latent"]
    assert {str(k): v for k, v in cfg.widths.items()} == ref["derived"]["channels"]
    assert cfg.feature_dim == 6016  # EDITGAN.md 1.5: D = 2 * sum of widths from 4 to 512 px


def test_feature_maps_follow_the_config_and_official_order() -> None:
    g = Generator(TINY_GENERATOR).eval()
    out = g.synthesis(g.sample_w_plus(2, seed=0), return_features=True)
    assert out.image.shape == (2, 3, 32, 32)
    assert out.features is not None
    assert [(f.shape[1], f.shape[2]) for f in out.features] == TINY_GENERATOR.feature_shapes
    assert len(out.features) == TINY_GENERATOR.n_latent
    # the first map is the learned constant, identical for every latent
    assert torch.equal(out.features[0][0], out.features[0][1])
    assert torch.equal(out.features[0][0], g.input.input[0])


def test_one_latent_always_renders_one_image() -> None:
    torch.manual_seed(3)
    g = Generator(TINY_GENERATOR).eval()
    twin = Generator(TINY_GENERATOR).eval()
    twin.load_state_dict(g.state_dict(), strict=True)
    w = torch.randn(2, TINY_GENERATOR.n_latent, TINY_GENERATOR.style_dim)
    first = g.synthesis(w).image
    assert torch.equal(first, g.synthesis(w).image)
    assert torch.equal(first, twin.synthesis(w).image)
    # per-sample independence: rendering in a batch equals rendering alone
    torch.testing.assert_close(first[1:], g.synthesis(w[1:]).image, rtol=1e-5, atol=1e-5)
    # random noise is opt-in and changes the picture once its weights are non-zero
    for m in g.modules():
        if type(m).__name__ == "NoiseInjection":
            m.weight.data.fill_(0.5)
    assert not torch.allclose(g.synthesis(w).image, g.synthesis(w, noise="random").image)


def test_memory_layout_changes_speed_only(monkeypatch: pytest.MonkeyPatch) -> None:
    g = Generator(TINY_GENERATOR).eval()
    w = g.sample_w_plus(3, seed=1)
    outputs = {}
    for layout in (torch.channels_last, torch.contiguous_format):
        monkeypatch.setattr(layers, "CPU_MEMORY_FORMAT", layout)
        x = w.clone().requires_grad_(True)
        out = g.synthesis(x, return_features=True)
        assert out.features is not None
        assert out.features[-1].is_contiguous(memory_format=layout)  # the layout reaches the last map
        out.image.square().sum().backward()
        outputs[layout] = (out.image, out.features[-1], x.grad)
    for a, b in zip(outputs[torch.channels_last], outputs[torch.contiguous_format], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5 * float(b.detach().abs().max()))  # summation order only


@pytest.mark.parametrize("autocast", [False, True])
def test_rendering_without_autograd_gives_the_same_numbers(autocast: bool) -> None:
    g = Generator(TINY_GENERATOR).eval()
    for m in g.modules():  # non-zero noise strengths, so that the noise step counts too
        if type(m).__name__ == "NoiseInjection":
            m.weight.data.fill_(0.3)
    w = g.sample_w_plus(2, seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with torch.no_grad():
            fast = g.synthesis(w, return_features=True)  # in place where it is safe
        slow = g.synthesis(w.clone().requires_grad_(True), return_features=True)  # the module composition
    assert fast.features is not None and slow.features is not None
    for a, b in zip([fast.image, *fast.features], [slow.image, *slow.features], strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b.detach())


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 5, 3), (1, 2, 1)])
def test_skip_upsampling_is_zero_insertion_padding_and_convolution(taps: tuple[int, ...]) -> None:
    up = layers.Upsample(taps)
    x = torch.randn(3, 5, 6, 7).contiguous(memory_format=torch.channels_last)  # odd sizes, several channels
    kernel = up.kernel
    # as written: insert zeros, pad, convolve (true convolution: the flipped kernel under conv2d)
    z = torch.zeros(3, 5, 12, 14)
    z[:, :, ::2, ::2] = x
    before, after = up.pad
    z = torch.nn.functional.pad(z, [before, after, before, after])
    k = kernel.flip([0, 1]).expand(5, 1, *kernel.shape)
    expected = torch.nn.functional.conv2d(z, k, groups=5)
    assert expected.shape == (3, 5, 12, 14)
    torch.testing.assert_close(up(x), expected, rtol=1e-5, atol=1e-6)


def test_every_w_plus_row_reaches_the_image() -> None:
    g = Generator(TINY_GENERATOR).eval()
    w = g.sample_w_plus(1, seed=0).requires_grad_(True)
    g.synthesis(w).image.square().sum().backward()
    assert w.grad is not None
    per_row = w.grad.abs().sum(-1)[0]
    assert bool((per_row > 0).all()), per_row


def test_sampling_is_seeded_and_truncation_pulls_to_the_average() -> None:
    g = Generator(TINY_GENERATOR).eval()
    g.w_avg.copy_(g.mean_latent(512, seed=0))
    assert torch.equal(g.sample_w_plus(3, seed=7), g.sample_w_plus(3, seed=7))
    assert not torch.equal(g.sample_w_plus(1, seed=7), g.sample_w_plus(1, seed=8))
    w = g.sample_w_plus(2, seed=1)
    assert torch.allclose(g.sample_w_plus(2, seed=1, psi=0.0), g.w_avg.expand_as(w))
    half = g.sample_w_plus(2, seed=1, psi=0.5)
    torch.testing.assert_close(half, g.w_avg + 0.5 * (w - g.w_avg))
    # every row of a sampled W+ is the same w
    assert torch.equal(w[:, 0], w[:, -1])


def test_mean_latent_is_deterministic_and_batch_independent() -> None:
    g = Generator(TINY_GENERATOR).eval()
    a = g.mean_latent(300, seed=2, batch=64)
    b = g.mean_latent(300, seed=2, batch=300)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a, g.mean_latent(300, seed=3))


@pytest.mark.parametrize("size", [32, 64, 128])
def test_configurable_resolution_and_widths(size: int) -> None:
    cfg = GeneratorConfig(size=size, style_dim=16, n_mlp=1, channel_multiplier=1)
    widths = GeneratorConfig(size=size, style_dim=16, n_mlp=1, channels=tuple(8 for _ in cfg.widths))
    for c in (cfg, widths):
        g = Generator(c).eval()
        assert g.synthesis(g.sample_w_plus(1, seed=0)).image.shape == (1, 3, size, size)
        assert c.n_latent == 2 * (size.bit_length() - 1) - 2


def test_config_round_trip_and_validation() -> None:
    assert GeneratorConfig.from_dict(TINY_GENERATOR.to_dict()) == TINY_GENERATOR
    with pytest.raises(BundleError, match="power of two"):
        GeneratorConfig(size=48)
    with pytest.raises(BundleError, match="power of two"):
        GeneratorConfig(size=2048)
    with pytest.raises(BundleError, match="widths"):
        GeneratorConfig(size=32, channels=(8, 8))
    with pytest.raises(BundleError, match="unknown generator config keys"):
        GeneratorConfig.from_dict({"size": 32, "resolution": 32})


def test_bad_latents_are_refused() -> None:
    g = Generator(TINY_GENERATOR)
    with pytest.raises(InputError, match="W\\+ must be"):
        g.synthesis(torch.zeros(1, TINY_GENERATOR.n_latent + 1, TINY_GENERATOR.style_dim))
    with pytest.raises(InputError, match="z must be"):
        g.mapping(torch.zeros(1, 3))


def test_a_compiled_synthesis_renders_and_differentiates_as_eager_mode() -> None:
    torch.manual_seed(0)
    eager = Generator(TINY_GENERATOR).eval().requires_grad_(False)
    compiled = Generator(TINY_GENERATOR).eval().requires_grad_(False)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_synthesis()
    counters.clear()
    for n in (1, 3, 2):  # the second size makes the batch dimension dynamic; the third reuses that graph
        w = eager.sample_w_plus(n, seed=n)
        a, b = eager.synthesis(w, return_features=True), compiled.synthesis(w, return_features=True)
        assert a.features is not None and b.features is not None
        for x, y in zip([a.image, *a.features], [b.image, *b.features], strict=True):
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)
        assert compiled.synthesis(w).features is None
    # One whole graph per kind of call: no break (the weight caches step aside while compiling), and the
    # batch sizes after the first two share a graph.
    assert not counters["graph_break"] and counters["stats"]["unique_graphs"] == 2
    grads = []
    for g in (eager, compiled):  # an optimisation loop's forward and backward pass
        w = eager.sample_w_plus(1, seed=5).requires_grad_(True)
        out = g.synthesis(w, return_features=True)
        (out.image.square().mean() + sum(f.abs().mean() for f in out.features or [])).backward()
        grads.append(w.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)
    with pytest.raises(InputError, match="W\\+ must be"):  # checked before the compiled graph
        compiled.synthesis(torch.zeros(1, 3, TINY_GENERATOR.style_dim))

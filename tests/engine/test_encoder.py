"""Encoder: official key layout, shapes, determinism, BatchNorm modes and config validation."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from engine.encoder import Encoder, EncoderConfig
from engine.errors import BundleError, InputError
from tests.conftest import reference

TINY = EncoderConfig(resolution=64, n_latent=10, style_dim=32, base_width=8, blocks=(1, 1, 1, 1), fpn_channels=32)


def _tiny(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(TINY).eval()


def _images(n: int, resolution: int = 64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, resolution, resolution, generator=g) * 2 - 1  # [N, 3, R, R] in [-1, 1]


def _randomise_running_stats(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(7)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            assert m.num_batches_tracked is not None
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.num_batches_tracked.fill_(123)


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


def test_car_state_dict_matches_official_layout() -> None:
    ref = reference("encoder_car.json")
    with torch.device("meta"):  # no 1.1 GB allocation
        model = Encoder(EncoderConfig(resolution=512, n_latent=16))
    got = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    expected = [(e["key"], e["shape"], e["dtype"]) for e in ref["entries"]]
    assert len(got) == len(expected) == ref["totals"]["entries"]
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g == e, f"entry {i}: got {g}, official {e}"
    assert sum(p.numel() for p in model.parameters()) == ref["totals"]["parameter_elements"]


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_output_shape_at_small_resolutions(resolution: int) -> None:
    cfg = EncoderConfig(
        resolution=resolution, n_latent=9, style_dim=16, base_width=4, blocks=(1, 1, 1, 1), fpn_channels=8
    )
    out = Encoder(cfg).eval()(_images(2, resolution))
    assert out.shape == (2, 9, 16)


def test_tiny_shapes_determinism_and_batch_independence() -> None:
    model = _tiny()
    x = _images(3)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (3, 10, 32)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        assert torch.equal(model(x), out)
        # eval-mode BatchNorm: each sample is encoded independently of its batch mates
        single = torch.cat([model(x[i : i + 1]) for i in range(3)])
    assert single.shape == (3, 10, 32)
    torch.testing.assert_close(single, out, rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip_strict() -> None:
    source, target = _tiny(seed=0), _tiny(seed=1)
    x = _images(2)
    with torch.no_grad():
        assert not torch.equal(source(x), target(x))
        target.load_state_dict(source.state_dict(), strict=True)
        assert torch.equal(source(x), target(x))


def test_rejects_wrong_input_shape() -> None:
    with pytest.raises(InputError, match=r"\[N, 3, 64, 64\]"):
        _tiny()(torch.zeros(1, 3, 32, 32))
    with pytest.raises(InputError):
        _tiny()(torch.zeros(3, 64, 64))


def test_batch_statistics_mode_is_side_effect_free_and_matches_train_mode() -> None:
    model = _tiny()
    _randomise_running_stats(model)
    x = _images(3)
    before = _buffers(model)
    with torch.no_grad():
        eval_out = model(x)
        faithful = model.use_batch_statistics(True)(x)
    assert model.batch_statistics
    assert not torch.allclose(faithful, eval_out, atol=1e-3)
    after = _buffers(model)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"buffer {k} changed in batch-statistics mode"

    # The official behaviour: a plain train-mode forward (which, unlike ours, mutates the running stats).
    official = copy.deepcopy(model).use_batch_statistics(False).train()
    with torch.no_grad():
        reference = official(x)
    torch.testing.assert_close(faithful, reference, rtol=1e-5, atol=1e-6)
    assert not torch.equal(official.state_dict()["FPN_module.bn1.running_mean"], before["FPN_module.bn1.running_mean"])

    # switching back restores running-stats behaviour
    with torch.no_grad():
        assert torch.equal(model.use_batch_statistics(False)(x), eval_out)


def test_batch_statistics_constructor_flag() -> None:
    model = Encoder(TINY, batch_statistics=True)
    assert model.batch_statistics
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(getattr(m, "batch_statistics", False) for m in bns)


def test_config_round_trip() -> None:
    for cfg in (TINY, EncoderConfig(resolution=512, n_latent=16)):
        d = cfg.to_dict()
        assert json.loads(json.dumps(d)) == d
        assert EncoderConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert EncoderConfig(resolution=512, n_latent=16).fine_rows == 9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resolution": 512, "n_latent": 7}, "fine rows"),
        ({"resolution": 500, "n_latent": 16}, "power of two"),
        ({"resolution": 16, "n_latent": 16}, "power of two"),
        ({"resolution": 2048, "n_latent": 16}, "power of two"),
        ({"resolution": 512, "n_latent": 16, "blocks": (3, 4, 6)}, "blocks"),
        ({"resolution": 512, "n_latent": 16, "style_dim": 0}, "style_dim"),
        ({"resolution": 512.0, "n_latent": 16}, "resolution must be an int"),
    ],
)
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(BundleError, match=message):
        EncoderConfig(**kwargs)  # type: ignore[arg-type]


def test_from_dict_rejects_unknown_and_missing_keys() -> None:
    d = TINY.to_dict()
    with pytest.raises(BundleError, match=r"unknown keys \['use_style_head'\]"):
        EncoderConfig.from_dict({**d, "use_style_head": False})
    del d["n_latent"]
    with pytest.raises(BundleError, match=r"missing required keys \['n_latent'\]"):
        EncoderConfig.from_dict(d)

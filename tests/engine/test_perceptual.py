"""Perceptual losses: local LPIPS backbones (never downloaded), equality with the official lpips call,
strict key checks, the random-backbone warning, distance invariants and bundle specs."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import lpips
import pytest
import torch
import torchvision  # type: ignore[import-untyped]
from torch import Tensor

from engine import perceptual
from engine.errors import BundleError, CheckpointError, InputError, MissingWeightsError
from engine.perceptual import (
    BACKBONE_FILES,
    ConvPerceptual,
    ConvPerceptualConfig,
    LPIPSLoss,
    PerceptualLoss,
    build_perceptual,
    load_lpips,
)

# lpips itself passes torchvision's deprecated `pretrained=` argument when the reference is built
pytestmark = pytest.mark.filterwarnings(
    "ignore:The parameter 'pretrained':UserWarning", "ignore:Arguments other than:UserWarning"
)

TV_MODELS = {"vgg": torchvision.models.vgg16, "alex": torchvision.models.alexnet}
SMALL = ConvPerceptualConfig(widths=(8, 16), layers_per_stage=1)
LPIPS_SIZE = 32  # VGG still has 2x2 maps at its last layer; keeps the CPU tests fast


def _images(n: int = 2, size: int = 64, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * 2 - 1  # [N, 3, H, W] in [-1, 1]
    y = (x + 0.5 * torch.randn(n, 3, size, size, generator=g)).clamp(-1, 1)
    return x, y


@pytest.fixture(scope="module", params=["vgg", "alex"])
def backbone(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, torch.nn.Module]:
    """A torchvision model and its full state dict (classifier included) under the official file name."""
    net: str = request.param
    torch.manual_seed(0)
    model = TV_MODELS[net](weights=None)
    path = tmp_path_factory.mktemp(f"backbone_{net}") / BACKBONE_FILES[net]
    torch.save(model.state_dict(), path)
    return net, path, model


@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def _official(net: str, tv: torch.nn.Module) -> torch.nn.Module:
    """lpips built its own way, with the backbone copied in module by module from torchvision."""
    ref = lpips.LPIPS(net=net, version="0.1", pnet_rand=True, verbose=False)
    features: torch.nn.Sequential = tv.features  # type: ignore[assignment]
    for sl in ref.net.children():
        for name, module in sl.named_children():
            module.load_state_dict(features[int(name)].state_dict())
    return ref.eval()  # type: ignore[no-any-return]


def test_backbone_file_names_are_torchvisions() -> None:
    assert torchvision.models.VGG16_Weights.IMAGENET1K_V1.url.endswith("/" + BACKBONE_FILES["vgg"])
    assert torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url.endswith("/" + BACKBONE_FILES["alex"])


@pytest.mark.parametrize("allow_random", [False, True])
def test_missing_explicit_backbone_raises(tmp_path: Path, allow_random: bool) -> None:
    with pytest.raises(MissingWeightsError, match=re.escape(BACKBONE_FILES["vgg"])) as info:
        load_lpips("vgg", tmp_path / "nope.pth", allow_random_backbone=allow_random)
    assert "backbone_path" in str(info.value) and "hub/checkpoints" in str(info.value)


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_missing_default_backbone_raises(empty_torch_home: Path, net: perceptual.LPIPSNet) -> None:
    with pytest.raises(MissingWeightsError, match=re.escape(BACKBONE_FILES[net])) as info:
        load_lpips(net)
    assert str(empty_torch_home / "hub" / "checkpoints") in str(info.value)


def test_lpips_equals_official_call(backbone: tuple[str, Path, torch.nn.Module]) -> None:
    net, path, tv = backbone
    x, y = _images(size=LPIPS_SIZE)
    d = load_lpips(net, path)(x, y)  # type: ignore[arg-type]
    with torch.no_grad():  # both backbones start random (and differ) until the same file is copied in
        expected = _official(net, tv)((x + 1) / 2, (y + 1) / 2, normalize=True).reshape(-1)
    assert d.shape == (2,)
    torch.testing.assert_close(d, expected, atol=1e-5, rtol=1e-5)


def test_lpips_default_location_under_torch_home(
    backbone: tuple[str, Path, torch.nn.Module], empty_torch_home: Path
) -> None:
    net, path, tv = backbone
    target = empty_torch_home / "hub" / "checkpoints" / path.name
    target.parent.mkdir(parents=True)
    os.link(path, target)  # a hard link: no second copy of a 0.5 GB file
    by_default = build_perceptual({"kind": "lpips", "net": net})
    assert isinstance(by_default, LPIPSLoss)
    state = tv.state_dict()
    for name, value in by_default.model.net.state_dict().items():  # `slice2.5.weight` <- `features.5.weight`
        assert torch.equal(value, state["features." + name.split(".", 1)[1]]), name


def _features_only(net: str) -> dict[str, Tensor]:
    return {f"features.{k}": v for k, v in TV_MODELS[net](weights=None).features.state_dict().items()}


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda s: s.pop("features.3.weight"), "features.3.weight"),
        (lambda s: s.__setitem__("features.0.bias", torch.zeros(5)), "features.0.bias"),
        (lambda s: s.__setitem__("features.99.weight", torch.zeros(1)), "features.99.weight"),
    ],
)
def test_backbone_mismatch_names_file_and_key(
    tmp_path: Path, edit: Callable[[dict[str, Tensor]], object], key: str
) -> None:
    state = _features_only("alex")
    edit(state)
    path = tmp_path / BACKBONE_FILES["alex"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=re.escape(key)) as info:
        load_lpips("alex", path)
    assert str(path) in str(info.value)


def test_unreadable_backbone_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / BACKBONE_FILES["alex"]
    path.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=re.escape(BACKBONE_FILES["alex"])):
        load_lpips("alex", path)
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="state dict"):
        load_lpips("alex", path)


def test_random_backbone_warns_once(
    empty_torch_home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(perceptual, "_WARNED", set())
    caplog.set_level(logging.WARNING, logger="engine.perceptual")
    first = load_lpips("alex", allow_random_backbone=True)
    second = load_lpips("alex", allow_random_backbone=True)
    warnings = [r for r in caplog.records if r.name == "engine.perceptual"]
    assert len(warnings) == 1 and "RANDOM" in warnings[0].getMessage()
    assert isinstance(first, LPIPSLoss) and isinstance(second, LPIPSLoss)
    build_perceptual({"kind": "conv", "config": SMALL.to_dict()}, allow_random_backbone=True)
    build_perceptual({"kind": "conv", "config": SMALL.to_dict()}, allow_random_backbone=True)
    assert len([r for r in caplog.records if r.name == "engine.perceptual"]) == 2


def _random_lpips(net: perceptual.LPIPSNet) -> Callable[[], PerceptualLoss]:
    def make() -> PerceptualLoss:
        torch.manual_seed(0)
        return LPIPSLoss(net).freeze()

    return make


def _random_conv() -> PerceptualLoss:
    torch.manual_seed(0)
    model = ConvPerceptual(ConvPerceptualConfig())
    with torch.no_grad():
        for w in model.log_weights or []:
            w.uniform_(-1, 1)  # make the learned weights matter
    return build_perceptual({"kind": "conv", "config": model.config.to_dict()}, state_dict=model.state_dict())


@pytest.mark.parametrize("make", [_random_lpips("vgg"), _random_lpips("alex"), _random_conv])
def test_distance_invariants(make: Callable[[], PerceptualLoss]) -> None:
    loss = make()
    assert not loss.training
    loss.train()  # a parent module switching to train mode must not wake dropout up
    assert not any(m.training for m in loss.modules())
    assert all(not p.requires_grad for p in loss.parameters())
    x, y = _images(size=LPIPS_SIZE if isinstance(loss, LPIPSLoss) else 64)
    x.requires_grad_(True)
    d = loss(x, y)
    assert d.shape == (2,) and bool((d > 0).all())
    torch.testing.assert_close(loss(y, x.detach()), d.detach())
    torch.testing.assert_close(loss(x.detach(), x.detach()), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(loss(x.detach(), y), d.detach(), atol=0, rtol=0)  # deterministic
    d.sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and bool(x.grad.abs().sum() > 0)


def test_inputs_are_checked() -> None:
    loss = build_perceptual({"kind": "conv", "config": SMALL.to_dict()}, allow_random_backbone=True)
    x, y = _images()
    with pytest.raises(InputError, match="got"):
        loss(x, y[:1])
    with pytest.raises(InputError):
        loss(x[:, :1], y[:, :1])
    with pytest.raises(InputError, match="float"):
        loss(x.to(torch.uint8), y.to(torch.uint8))


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "nope"},
        {"net": "vgg"},
        {"kind": "lpips", "net": "squeeze"},
        {"kind": "lpips", "net": "vgg", "extra": 1},
        {"kind": "conv"},
        {"kind": "conv", "config": {"widths": [8], "colour": True}},
        {"kind": "conv", "config": {"widths": []}},
        {"kind": "conv", "config": {"layers_per_stage": 0}},
    ],
)
def test_bad_specs_are_bundle_errors(spec: dict[str, object]) -> None:
    with pytest.raises(BundleError):
        build_perceptual(spec, allow_random_backbone=True)


def test_unknown_kind_names_allowed_kinds() -> None:
    with pytest.raises(BundleError, match="'conv', 'lpips'"):
        build_perceptual({"kind": "vgg"})


def test_weights_are_required_or_refused() -> None:
    with pytest.raises(BundleError, match="state_dict"):
        build_perceptual({"kind": "conv", "config": SMALL.to_dict()})
    with pytest.raises(BundleError, match="state_dict"):
        build_perceptual({"kind": "lpips", "net": "alex"}, state_dict={}, allow_random_backbone=True)


def test_conv_config_round_trip() -> None:
    config = ConvPerceptualConfig(in_channels=1, widths=(4, 8, 12), layers_per_stage=3, learned_weights=False)
    assert ConvPerceptualConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    spec = {"kind": "conv", "config": config.to_dict()}
    built = build_perceptual(spec, allow_random_backbone=True)
    assert isinstance(built, ConvPerceptual) and built.config == config


def test_conv_state_dict_round_trip_is_strict() -> None:
    torch.manual_seed(0)
    source = ConvPerceptual(SMALL)
    with torch.no_grad():
        for w in source.log_weights or []:
            w.uniform_(-1, 1)
    spec = {"kind": "conv", "config": SMALL.to_dict()}
    copy = build_perceptual(spec, state_dict=source.state_dict())
    assert copy.state_dict().keys() == source.state_dict().keys()
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in copy.state_dict().items())
    x, y = _images()
    torch.testing.assert_close(copy(x, y), source(x, y), atol=0, rtol=0)
    torch.manual_seed(1)
    assert not torch.allclose(ConvPerceptual(SMALL)(x, y), source(x, y))  # weights matter

    missing = {k: v for k, v in source.state_dict().items() if k != "log_weights.1"}
    with pytest.raises(CheckpointError, match=r"log_weights\.1"):
        build_perceptual(spec, state_dict=missing)
    unweighted = {"kind": "conv", "config": {**SMALL.to_dict(), "learned_weights": False}}
    with pytest.raises(CheckpointError, match=r"log_weights\.0"):
        build_perceptual(unweighted, state_dict=source.state_dict())
    reshaped = {**source.state_dict(), "stages.0.0.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"stages\.0\.0\.weight"):
        build_perceptual(spec, state_dict=reshaped)


def test_prepared_target_equals_the_direct_distance() -> None:
    torch.manual_seed(0)
    for loss in (
        load_lpips("vgg", allow_random_backbone=True),
        build_perceptual({"kind": "conv", "config": {"widths": [4, 8]}}, allow_random_backbone=True),
    ):
        x, y = torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
        target = loss.target(y)
        torch.testing.assert_close(loss.to_target(x, target), loss(x, y.expand_as(x)), rtol=1e-5, atol=1e-6)

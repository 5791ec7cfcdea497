"""Perceptual distances d(x, y) -> [N] used as optimisation losses; a bundle picks one by its spec.

`LPIPSLoss` is the official LPIPS v0.1 (linear heads shipped inside the `lpips` package, backbone read from a
local torchvision file: nothing here downloads). `ConvPerceptual` is a small CNN a bundle trains on its own
domain and uses the same way. Images are float NCHW in [-1, 1], as everywhere in the engine.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self, cast

import lpips
import torch
from torch import Tensor, nn

from engine.checkpoints import check_state_dict, load_state_file
from engine.errors import BundleError, InputError, MissingWeightsError

logger = logging.getLogger(__name__)

LPIPSNet = Literal["vgg", "alex"]
# The torchvision ImageNet files lpips would download (torchvision.models.*_Weights.IMAGENET1K_V1).
BACKBONE_FILES: dict[str, str] = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}
_BACKBONE_URL = "https://download.pytorch.org/models/"
_WARNED: set[str] = set()  # warnings already logged by this process


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)


def _check_net(net: str) -> str:
    if net not in BACKBONE_FILES:
        raise InputError(f"LPIPS net must be one of {sorted(BACKBONE_FILES)}, got {net!r}")
    return net


class PerceptualLoss(nn.Module, ABC):
    """Base of every perceptual distance: `forward(x, y)` with x, y [N, C, H, W] in [-1, 1] -> [N] >= 0.

    Subclasses implement `distance`; `forward` checks the inputs first. After `freeze()` the parameters
    need no gradient and the module stays in eval mode, but gradients still flow to x and y.
    """

    in_channels: int = 3

    def __init__(self) -> None:
        super().__init__()
        self._frozen = False

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Distance per image: x, y float [N, C, H, W] in [-1, 1] -> [N]."""
        if x.ndim != 4 or x.shape != y.shape or x.shape[1] != self.in_channels:
            raise InputError(
                f"perceptual loss wants two [N, {self.in_channels}, H, W] images of one shape, "
                f"got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if not (x.is_floating_point() and y.is_floating_point()):
            raise InputError(f"perceptual loss wants float images, got {x.dtype} and {y.dtype}")
        return self.distance(x, y)

    def distance(self, x: Tensor, y: Tensor) -> Tensor:
        """The distance itself, on checked inputs."""
        return self.compare(self.features(x), self.features(y))

    @abstractmethod
    def features(self, x: Tensor) -> list[Tensor]:
        """Per-layer features, unit-normalised over channels: what `compare` reads."""

    @abstractmethod
    def compare(self, fx: list[Tensor], fy: list[Tensor]) -> Tensor:
        """Distance [N] between two feature lists (fy may have batch 1 and broadcast)."""

    def target(self, y: Tensor) -> list[Tensor]:
        """Features of a fixed target, computed once and reused by `to_target` at every step."""
        with torch.no_grad():
            return [f.detach() for f in self.features(y)]

    def to_target(self, x: Tensor, target: list[Tensor]) -> Tensor:
        """Distance [N] from x to a prepared target; equals `self(x, y)` for `target = self.target(y)`."""
        return self.compare(self.features(x), target)

    def freeze(self) -> Self:
        """Use as a fixed loss: no parameter gradients, eval mode even if a parent calls `train()`."""
        self.requires_grad_(False)
        self._frozen = True
        return self.eval()

    def train(self, mode: bool = True) -> Self:
        return super().train(mode and not self._frozen)


class LPIPSLoss(PerceptualLoss):
    """LPIPS v0.1 (`lpips.LPIPS`) with its shipped linear heads; the backbone is random until
    `load_backbone` reads a torchvision file (use `load_lpips`, which does both and freezes).

    The official EditGAN calls LPIPS with [0, 1] images and `normalize=True`, which only maps them to
    [-1, 1] by 2x - 1; feeding the engine's [-1, 1] images with `normalize=False` is therefore the same.
    """

    def __init__(self, net: LPIPSNet = "vgg") -> None:
        super().__init__()
        _check_net(net)
        self.net_name = net
        with warnings.catch_warnings():
            # lpips passes torchvision's deprecated `pretrained=False`; the warnings are not ours to fix.
            warnings.filterwarnings("ignore", r"(The parameter 'pretrained'|Arguments other than)")
            # pnet_rand=True: lpips never downloads; pretrained=False: heads are loaded strictly below.
            self.model = lpips.LPIPS(net=net, version="0.1", pnet_rand=True, pretrained=False, verbose=False)
        heads_path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
        heads = load_state_file(heads_path)
        # The file names heads `lin{k}.*`; lpips also aliases them as `lins.{k}.*`, which we load through.
        expected = {f"lin{k}": v for k, v in self.model.lins.state_dict().items()}
        check_state_dict(expected, heads, str(heads_path))
        self.model.lins.load_state_dict({k[3:]: v for k, v in heads.items()}, strict=True)

    def load_backbone(self, path: Path) -> None:
        """Copy a torchvision ImageNet state dict (`features.{i}.*`) onto lpips' `net.slice{k}.{i}.*`.

        `classifier.*` keys are ignored (LPIPS uses the convolutional features only); any other
        difference raises CheckpointError naming the file and the keys.
        """
        state = {k: v for k, v in load_state_file(path).items() if not k.startswith("classifier.")}
        net: nn.Module = self.model.net
        # lpips keeps torchvision's module index inside each slice: `slice2.5.weight` is `features.5.weight`.
        to_slice = {f"features.{k.split('.', 1)[1]}": k for k in net.state_dict()}
        check_state_dict({f: net.state_dict()[k] for f, k in to_slice.items()}, state, str(path))
        net.load_state_dict({to_slice[f]: v for f, v in state.items()}, strict=True)

    def features(self, x: Tensor) -> list[Tensor]:
        outs = self.model.net(self.model.scaling_layer(x))
        return [lpips.normalize_tensor(o) for o in outs]

    def compare(self, fx: list[Tensor], fy: list[Tensor]) -> Tensor:
        # lpips.LPIPS.forward, split in two so that a fixed target's features are computed once
        total = sum(lin((a - b).square()).mean((2, 3)) for lin, a, b in zip(self.model.lins, fx, fy, strict=True))
        return cast(Tensor, total).reshape(-1)  # [N, 1] -> [N]


def load_lpips(
    net: LPIPSNet = "vgg",
    backbone_path: Path | None = None,
    *,
    allow_random_backbone: bool = False,
    device: torch.device | str = "cpu",
) -> LPIPSLoss:
    """Official LPIPS, frozen, with its backbone read from a local torchvision file.

    Args:
        net: "vgg" (EditGAN's choice) or "alex".
        backbone_path: the torchvision file; if None, `<torch.hub.get_dir()>/checkpoints/<file name>`
            (that is `<TORCH_HOME>/hub/checkpoints/`). An explicit path that does not exist always raises.
        allow_random_backbone: tests only: with no file at the default place, use a random backbone and
            log a warning once per process instead of raising MissingWeightsError.
        device: where the module lives.
    """
    name = BACKBONE_FILES[_check_net(net)]
    path = backbone_path if backbone_path is not None else Path(torch.hub.get_dir()) / "checkpoints" / name
    found = path.is_file()
    if not found and not (allow_random_backbone and backbone_path is None):
        raise MissingWeightsError(
            f"LPIPS {net} backbone not found at {path}. It needs the torchvision file '{name}' "
            f"({_BACKBONE_URL}{name}); nothing is downloaded here. Either pass its path (backbone_path, "
            f"the LPIPS backbone setting) or copy it into <TORCH_HOME>/hub/checkpoints/ "
            f"(now {Path(torch.hub.get_dir()) / 'checkpoints'})."
        )
    loss = LPIPSLoss(net)
    if found:
        loss.load_backbone(path)
    else:
        _warn_once(net, f"LPIPS {net}: no backbone at {path}; using a RANDOM backbone (tests only)")
    return loss.freeze().to(device)


@dataclass(frozen=True)
class ConvPerceptualConfig:
    """Everything needed to build a `ConvPerceptual`; saved in the bundle's perceptual spec."""

    # image channels of the inputs
    in_channels: int = 3
    # output channels of each stage; every stage after the first starts with a 2x average pool
    widths: tuple[int, ...] = (16, 32, 64)
    # 3x3 conv + LeakyReLU pairs per stage
    layers_per_stage: int = 2
    # learned non-negative per-channel weights on the squared differences (LPIPS' lin layers)
    learned_weights: bool = True

    def __post_init__(self) -> None:
        widths = self.widths if isinstance(self.widths, tuple) else ()
        sizes = (self.in_channels, self.layers_per_stage, *widths)
        ok = bool(widths) and all(type(v) is int and v > 0 for v in sizes)
        if not ok or type(self.learned_weights) is not bool:
            raise BundleError(f"conv perceptual config: positive int sizes and non-empty widths needed: {self}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (widths as a list)."""
        return {**dataclasses.asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConvPerceptualConfig:
        """Inverse of `to_dict`; unknown keys raise BundleError."""
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - known):
            raise BundleError(f"conv perceptual config: unknown keys {unknown}; known {sorted(known)}")
        values = dict(data)
        if isinstance(values.get("widths"), list):
            values["widths"] = tuple(values["widths"])
        return cls(**values)


class ConvPerceptual(PerceptualLoss):
    """LPIPS-style distance over a small CNN: per stage, channel-unit-normalised features, squared
    differences, optional learned weights per channel, spatial mean; summed over stages -> [N].

    Built trainable (the demo bundle trains it); `build_perceptual` returns it frozen. Its weights are
    its state_dict.
    """

    def __init__(self, config: ConvPerceptualConfig) -> None:
        super().__init__()
        self.config = config
        self.in_channels = config.in_channels
        stages: list[nn.Module] = []
        c = config.in_channels
        for k, w in enumerate(config.widths):
            layers: list[nn.Module] = [nn.AvgPool2d(2)] if k > 0 else []
            for _ in range(config.layers_per_stage):
                layers += [nn.Conv2d(c, w, 3, padding=1), nn.LeakyReLU(0.2)]
                c = w
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        # log-parametrised so the weights stay positive under any optimiser; zeros = unit weights
        weights = [nn.Parameter(torch.zeros(w)) for w in config.widths]
        self.log_weights = nn.ParameterList(weights) if config.learned_weights else None

    def features(self, x: Tensor) -> list[Tensor]:
        out = []
        for stage in self.stages:
            x = stage(x)
            # vector_norm's gradient is 0 at a zero vector, where sqrt(sum(f^2)) would give NaN
            out.append(x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + 1e-10))
        return out

    def compare(self, fx: list[Tensor], fy: list[Tensor]) -> Tensor:
        total: Tensor | None = None
        for k, (a, b) in enumerate(zip(fx, fy, strict=True)):
            d = (a - b).square()  # [N, C_k, H_k, W_k]
            if self.log_weights is not None:
                d = d * self.log_weights[k].exp().view(1, -1, 1, 1)
            term = d.sum(1).mean((1, 2))
            total = term if total is None else total + term
        assert total is not None
        return total


def build_perceptual(
    spec: Mapping[str, Any],
    *,
    state_dict: Mapping[str, Tensor] | None = None,
    lpips_backbone_path: Path | None = None,
    allow_random_backbone: bool = False,
    device: torch.device | str = "cpu",
) -> PerceptualLoss:
    """Build the frozen perceptual loss a bundle's JSON spec names.

    Args:
        spec: `{"kind": "lpips", "net": "vgg" | "alex"}` or `{"kind": "conv", "config": {...}}`.
        state_dict: the conv network's weights (required unless allow_random_backbone); must be None for
            lpips, whose weights come from the lpips package and `lpips_backbone_path`.
        lpips_backbone_path: see `load_lpips`'s backbone_path.
        allow_random_backbone: tests only: random weights where none are given, with a warning.
        device: where the module lives.
    """
    kind = spec.get("kind")
    allowed = {"lpips": {"kind", "net"}, "conv": {"kind", "config"}}
    if kind not in allowed:
        raise BundleError(f"perceptual spec: unknown kind {kind!r}; allowed {sorted(allowed)}")
    if unknown := sorted(set(spec) - allowed[kind]):
        raise BundleError(f"perceptual spec ({kind}): unknown keys {unknown}")
    if kind == "lpips":
        net = spec.get("net", "vgg")
        if net not in BACKBONE_FILES:
            raise BundleError(f"perceptual spec: lpips net must be one of {sorted(BACKBONE_FILES)}, got {net!r}")
        if state_dict is not None:
            raise BundleError("perceptual spec: lpips takes no state_dict (its weights are lpips' + backbone)")
        allow = allow_random_backbone
        return load_lpips(cast(LPIPSNet, net), lpips_backbone_path, allow_random_backbone=allow, device=device)
    if not isinstance(spec.get("config"), Mapping):
        raise BundleError(f"perceptual spec: conv needs a 'config' object, got {spec.get('config')!r}")
    model = ConvPerceptual(ConvPerceptualConfig.from_dict(spec["config"]))
    if state_dict is not None:
        check_state_dict(model.state_dict(), state_dict, "conv perceptual state_dict")
        model.load_state_dict(state_dict, strict=True)
    elif allow_random_backbone:
        _warn_once("conv", "conv perceptual: no state_dict given; using RANDOM weights (tests only)")
    else:
        raise BundleError("perceptual spec: conv needs its state_dict (the bundle's perceptual weights)")
    return model.freeze().to(device)

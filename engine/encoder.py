"""FPN encoder: an image in [-1, 1] to a W+ code, in the official EditGAN layout.

A ResNet bottom-up path (ResNet-50 at the defaults) feeds an FPN top-down path that yields p2, p3 and p4
(strides 4, 8 and 16). Each W+ row has its own head: stride-2 3x3 convs down to 1x1, then a linear layer.
Coarse rows read p4, medium rows p3, fine rows p2. Attribute names, their order and the shapes equal the
official `FPNEncoder` state_dict, so its checkpoint loads with `strict=True`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import BundleError, InputError

_EXPANSION = 4  # bottleneck output channels = 4 x its inner width, as in ResNet-50


@dataclass(frozen=True)
class EncoderConfig:
    """Everything needed to build an `Encoder`; saved beside its weights in `bundle.json`."""

    # side of the square input canvas in pixels (power of two, 32..1024)
    resolution: int
    # number of W+ rows the encoder outputs (L)
    n_latent: int
    # width of one W+ row (S)
    style_dim: int = 512
    # image channels of the input (3 for RGB)
    in_channels: int = 3
    # ResNet stem width; stage i has inner width base_width * 2**i and output 4x that
    base_width: int = 64
    # bottleneck blocks per ResNet stage ((3, 4, 6, 3) is ResNet-50)
    blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
    # channels of the FPN maps p2, p3, p4
    fpn_channels: int = 512
    # W+ rows predicted from p4 (the official code spells these heads `course_styles`)
    coarse_rows: int = 3
    # W+ rows predicted from p3; the remaining rows come from p2
    medium_rows: int = 4
    # width of the heads' stride-2 convs; None = style_dim (the official layout). Small bundles narrow it:
    # at style_dim 256 the official heads alone would be 13 M parameters for a 64 px model.
    head_channels: int | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            items = value if f.name == "blocks" else (value,)
            if f.name == "head_channels" and value is None:
                continue
            if f.name == "blocks" and (not isinstance(value, tuple) or len(value) != 4):
                raise BundleError(f"encoder config: blocks must be a tuple of 4 ints, got {value!r}")
            if any(not isinstance(v, int) or isinstance(v, bool) for v in items):
                raise BundleError(f"encoder config: {f.name} must be an int, got {value!r}")
        r = self.resolution
        if not (32 <= r <= 1024 and r & (r - 1) == 0):
            raise BundleError(f"encoder config: resolution must be a power of two in 32..1024, got {r}")
        for name in ("style_dim", "in_channels", "base_width", "fpn_channels", "head_width"):
            if getattr(self, name) < 1:
                raise BundleError(f"encoder config: {name} must be >= 1, got {getattr(self, name)}")
        if min(self.blocks) < 1:
            raise BundleError(f"encoder config: every stage needs >= 1 block, got {self.blocks}")
        if self.coarse_rows < 0 or self.medium_rows < 0:
            raise BundleError("encoder config: coarse_rows and medium_rows must be >= 0")
        if self.fine_rows < 1:
            raise BundleError(
                f"encoder config: n_latent={self.n_latent} leaves {self.fine_rows} fine rows after "
                f"coarse_rows={self.coarse_rows} and medium_rows={self.medium_rows}; at least 1 is needed"
            )

    @property
    def head_width(self) -> int:
        """Channels of every head conv."""
        return self.style_dim if self.head_channels is None else self.head_channels

    @property
    def fine_rows(self) -> int:
        """W+ rows predicted from p2: whatever the coarse and medium heads leave."""
        return self.n_latent - self.coarse_rows - self.medium_rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists); `from_dict` inverts it."""
        d = dataclasses.asdict(self)
        d["blocks"] = list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EncoderConfig:
        """Build a config from `to_dict` output (e.g. read from `bundle.json`); refuses unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise BundleError(f"encoder config: unknown keys {unknown}; allowed keys are {sorted(names)}")
        missing = sorted(k for k in ("resolution", "n_latent") if k not in d)
        if missing:
            raise BundleError(f"encoder config: missing required keys {missing}")
        kwargs = dict(d)
        if isinstance(kwargs.get("blocks"), list):
            kwargs["blocks"] = tuple(kwargs["blocks"])  # JSON has no tuples
        return cls(**kwargs)


class _BatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that can normalise with the current batch's statistics, leaving running stats alone.

    The official tool never calls `.eval()` on its encoder, so at inference its BatchNorms use the
    statistics of the batch being encoded (and, as a side effect, overwrite the running stats). With
    `batch_statistics` set we reproduce those outputs exactly but mutate nothing, so faithful mode stays
    safe to call from a shared, loaded model.
    """

    batch_statistics: bool = False

    def forward(self, x: Tensor) -> Tensor:
        if not self.batch_statistics:
            out: Tensor = super().forward(x)
            return out
        # running_mean/var = None: F.batch_norm then normalises with batch stats and updates nothing
        return F.batch_norm(x, None, None, self.weight, self.bias, training=True, momentum=0.0, eps=self.eps)


class _Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 reduce, 3x3 (carries the stride), 1x1 expand, plus a shortcut."""

    def __init__(self, in_ch: int, width: int, stride: int) -> None:
        super().__init__()
        out_ch = width * _EXPANSION
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = _BatchNorm(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _BatchNorm(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = _BatchNorm(out_ch)
        # A projection only where the shape changes (each stage's first block); otherwise no keys at all.
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), _BatchNorm(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + self.shortcut(x))


class _FPN(nn.Module):
    """ResNet bottom-up + FPN top-down; returns (p2, p3, p4) at strides 4, 8, 16 of the input."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        b, c = cfg.base_width, cfg.fpn_channels
        self.conv1 = nn.Conv2d(cfg.in_channels, b, 7, stride=2, padding=3, bias=False)
        self.bn1 = _BatchNorm(b)
        in_ch = b
        stages = []
        for i, n_blocks in enumerate(cfg.blocks):
            width = b * 2**i
            strides = [1 if i == 0 else 2] + [1] * (n_blocks - 1)  # stage 1 follows the maxpool: no stride
            blocks = []
            for s in strides:
                blocks.append(_Bottleneck(in_ch, width, s))
                in_ch = width * _EXPANSION
            stages.append(nn.Sequential(*blocks))
        # Assigned one by one: registration order is the official state_dict order.
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        stage_out = [b * 2**i * _EXPANSION for i in range(4)]  # 256, 512, 1024, 2048 at base 64
        self.toplayer = nn.Conv2d(stage_out[3], c, 1)
        self.smooth1 = nn.Conv2d(c, c, 3, padding=1)
        self.smooth2 = nn.Conv2d(c, c, 3, padding=1)
        self.smooth3 = nn.Conv2d(c, c, 3, padding=1)
        self.latlayer1 = nn.Conv2d(stage_out[2], c, 1)
        self.latlayer2 = nn.Conv2d(stage_out[1], c, 1)
        self.latlayer3 = nn.Conv2d(stage_out[0], c, 1)

    @staticmethod
    def _up_add(top: Tensor, lateral: Tensor) -> Tensor:
        # bilinear resize to the lateral map's size (align_corners=False), then add
        return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=False) + lateral

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c1 = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)  # R/4
        c2 = self.layer1(c1)  # [N, 4b, R/4, R/4]
        c3 = self.layer2(c2)  # [N, 8b, R/8, R/8]
        c4 = self.layer3(c3)  # [N, 16b, R/16, R/16]
        c5 = self.layer4(c4)  # [N, 32b, R/32, R/32]
        # The top-down path adds the *unsmoothed* maps; smoothing applies to the outputs only.
        p4 = self._up_add(self.toplayer(c5), self.latlayer1(c4))
        p3 = self._up_add(p4, self.latlayer2(c3))
        p2 = self._up_add(p3, self.latlayer3(c2))
        return self.smooth3(p2), self.smooth2(p3), self.smooth1(p4)


class _StyleHead(nn.Module):
    """One W+ row: n x (3x3 stride-2 conv + LeakyReLU 0.01) down to 1x1, then a plain linear layer."""

    def __init__(self, in_ch: int, width: int, style_dim: int, n_convs: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n_convs):  # convs at even indices, activations at odd ones (the official keys)
            layers += [nn.Conv2d(in_ch if i == 0 else width, width, 3, stride=2, padding=1)]
            layers += [nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.linear = nn.Linear(width, style_dim)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.linear(self.convs(x).flatten(1))  # [N, S, 1, 1] -> [N, S]
        return out


def _log2(n: int) -> int:
    return n.bit_length() - 1


class Encoder(nn.Module):
    """Image [N, in_channels, R, R] in [-1, 1] -> W+ [N, n_latent, style_dim] (no latent_avg offset).

    Args:
        config: the architecture.
        batch_statistics: start in the official tool's BatchNorm behaviour; see `use_batch_statistics`.
    """

    def __init__(self, config: EncoderConfig, *, batch_statistics: bool = False) -> None:
        super().__init__()
        self.config = config
        c, h, s, r = config.fpn_channels, config.head_width, config.style_dim, config.resolution
        self.FPN_module = _FPN(config)
        # Each head halves its map down to 1x1: p4 is R/16 wide, p3 R/8, p2 R/4 (5/6/7 convs at 512 px).
        self.course_styles = nn.ModuleList(_StyleHead(c, h, s, _log2(r // 16)) for _ in range(config.coarse_rows))
        self.medium_styles = nn.ModuleList(_StyleHead(c, h, s, _log2(r // 8)) for _ in range(config.medium_rows))
        self.fine_styles = nn.ModuleList(_StyleHead(c, h, s, _log2(r // 4)) for _ in range(config.fine_rows))
        self.batch_statistics = False
        self.use_batch_statistics(batch_statistics)

    def use_batch_statistics(self, enabled: bool = True) -> Encoder:
        """Make every BatchNorm normalise with the current batch's statistics (the official behaviour).

        The official tool runs its encoder in training mode, so codes depend on the batch's own statistics;
        `eval()` with the stored running stats gives different codes. Enabled, this reproduces the official
        outputs without updating running stats. Note that the samples of a batch then influence one another.
        Disabled (the default), BatchNorm follows `train()`/`eval()` as usual. Returns self.
        """
        self.batch_statistics = enabled
        for m in self.modules():
            if isinstance(m, _BatchNorm):
                m.batch_statistics = enabled
        return self

    def forward(self, image: Tensor) -> Tensor:
        cfg = self.config
        expected = (cfg.in_channels, cfg.resolution, cfg.resolution)
        if image.ndim != 4 or tuple(image.shape[1:]) != expected:
            raise InputError(f"encoder expects images [N, {', '.join(map(str, expected))}], got {list(image.shape)}")
        p2, p3, p4 = self.FPN_module(image)  # [N, C, R/4 | R/8 | R/16, same]
        rows = [head(p4) for head in self.course_styles]
        rows += [head(p3) for head in self.medium_styles]
        rows += [head(p2) for head in self.fine_styles]
        return torch.stack(rows, dim=1)  # [N, L, S]

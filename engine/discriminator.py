"""StyleGAN2 residual discriminator: image [N, 3, S, S] in [-1, 1] -> realness logits [N].

Attribute names, order and shapes follow rosinality's `Discriminator(size, channel_multiplier)` (the `d` entry
of the official training checkpoints), so those weights load with `strict=True`:
`convs.0` (1x1 fromRGB), `convs.{1..}` residual blocks (`conv1`, `conv2`, `skip`), `final_conv` after the
minibatch-stddev channel, `final_linear` (two dense layers). Plain PyTorch only; the blur and the biased
leaky ReLU come from `engine.layers`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.configs import config_from_dict, widths
from engine.errors import BundleError, InputError
from engine.layers import Blur, EqualLinear, FusedLeakyReLU


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Architecture of a StyleGAN2 discriminator; saved beside the weights in training checkpoints."""

    size: int  # input resolution (square), a power of two in [8, 1024]
    channel_multiplier: int = 2  # widens layers at 64 px and above (config-f uses 2)
    # Explicit widths at 4, 8, ..., size px (the same order as `GeneratorConfig.channels`, so one tuple can
    # configure both networks); overrides the table.
    channels: tuple[int, ...] | None = None
    blur_kernel: tuple[int, ...] = (1, 3, 3, 1)  # FIR taps of the anti-aliasing filter before each downsampling
    stddev_group: int = 4  # samples per minibatch-stddev group (the batch must divide into such groups)

    def __post_init__(self) -> None:
        if self.size < 8 or self.size > 1024 or self.size & (self.size - 1):
            raise BundleError(f"discriminator size must be a power of two in [8, 1024], got {self.size}")
        if self.channels is not None:
            if len(self.channels) != self.log_size - 1:
                raise BundleError(
                    f"discriminator channels must list {self.log_size - 1} widths (4 px to {self.size} px), "
                    f"got {len(self.channels)}"
                )
            if min(self.channels) < 1:
                raise BundleError(f"discriminator channels must be positive, got {list(self.channels)}")
        if self.channel_multiplier < 1 or self.stddev_group < 1:
            raise BundleError("discriminator channel_multiplier and stddev_group must be positive")
        if not self.blur_kernel:
            raise BundleError("discriminator blur_kernel must have at least one tap")

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def widths(self) -> dict[int, int]:
        """Channels per resolution, 4 px up to `size`."""
        return widths(self.size, self.channel_multiplier, self.channels)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels) if self.channels is not None else None
        d["blur_kernel"] = list(self.blur_kernel)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiscriminatorConfig:
        return config_from_dict(cls, d, "discriminator")


class EqualConv2d(nn.Module):
    """Conv2d with equalised learning rate: weight stored at unit scale, multiplied by 1/sqrt(fan_in) at run time."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, padding: int = 0, bias: bool
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.stride = stride
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        out_ch, in_ch, k, _ = self.weight.shape
        return f"{in_ch}, {out_ch}, k={k}, stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"


class ConvLayer(nn.Sequential):
    """[Blur ->] EqualConv2d [-> FusedLeakyReLU], as a Sequential so the keys read `<i>.weight`, `<i>.bias`.

    Downsampling blurs first and then convolves with stride 2 (anti-aliased, as StyleGAN2). With an
    activation the bias lives in the FusedLeakyReLU, so the conv itself has none.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        downsample: bool = False,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
        bias: bool = True,
        activate: bool = True,
    ) -> None:
        layers: list[nn.Module] = []
        if downsample:
            # Pad so that blur + stride-2 conv maps S px to S/2 px for any kernel size.
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(
            EqualConv2d(
                in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias and not activate
            )
        )
        if activate:
            layers.append(FusedLeakyReLU(out_channels))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Two 3x3 convs (the second downsampling) plus a 1x1 downsampling skip, summed at unit variance."""

    def __init__(self, in_channels: int, out_channels: int, blur_kernel: Sequence[float]) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_channels, in_channels, 3, blur_kernel=blur_kernel)
        self.conv2 = ConvLayer(in_channels, out_channels, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(
            in_channels, out_channels, 1, downsample=True, blur_kernel=blur_kernel, bias=False, activate=False
        )

    def forward(self, x: Tensor) -> Tensor:
        # Dividing by sqrt(2) keeps the sum of two unit-variance branches at unit variance.
        out: Tensor = (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2.0)
        return out


def minibatch_stddev(x: Tensor, group: int) -> Tensor:
    """Append one channel: the feature stddev across each group of samples, averaged over C, H, W.

    x: [N, C, H, W] -> [N, C + 1, H, W]. Sample i belongs to group i mod (N / group), as in rosinality's
    view-based grouping, so the statistic is identical to the official network's.
    """
    n, c, h, w = x.shape
    g = min(n, group)
    if n % g:
        raise InputError(f"batch of {n} does not split into minibatch-stddev groups of {g}; use a multiple of {g}")
    y = x.reshape(g, -1, 1, c, h, w)
    std = torch.sqrt(y.var(0, unbiased=False) + 1e-8)  # [N/g, 1, C, H, W]
    std = std.mean(dim=(2, 3, 4)).reshape(-1, 1, 1, 1)  # [N/g, 1, 1, 1]
    return torch.cat([x, std.repeat(g, 1, h, w)], dim=1)


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator in the rosinality key layout: image [N, 3, S, S] -> logits [N]."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        widths, blur = config.widths, config.blur_kernel
        blocks: list[nn.Module] = [ConvLayer(3, widths[config.size], 1, blur_kernel=blur)]
        in_ch = widths[config.size]
        for res in range(config.log_size, 2, -1):
            out_ch = widths[2 ** (res - 1)]
            blocks.append(ResBlock(in_ch, out_ch, blur))
            in_ch = out_ch
        self.convs = nn.Sequential(*blocks)
        self.final_conv = ConvLayer(in_ch + 1, widths[4], 3, blur_kernel=blur)
        self.final_linear = nn.Sequential(
            EqualLinear(widths[4] * 4 * 4, widths[4], activation=True),
            EqualLinear(widths[4], 1),
        )

    def forward(self, image: Tensor) -> Tensor:
        """image [N, 3, S, S] in [-1, 1] -> logits [N] (positive means "real")."""
        s = self.config.size
        if image.ndim != 4 or tuple(image.shape[1:]) != (3, s, s):
            raise InputError(f"discriminator input must be [N, 3, {s}, {s}], got {list(image.shape)}")
        x = self.convs(image)  # [N, C4, 4, 4]
        x = minibatch_stddev(x, self.config.stddev_group)
        x = self.final_conv(x)
        out: Tensor = self.final_linear(x.flatten(1))
        return out.squeeze(1)

"""StyleGAN2 building blocks in plain PyTorch (no compiled extensions).

Attribute names are an on-disk contract: they reproduce the rosinality layout that the official EditGAN
checkpoints use (`weight`, `bias`, `modulation`, `blur.kernel`, `noise.weight`, `activate.bias`,
`upsample.kernel`), and registration order fixes the `state_dict()` order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.frozen import frozen_derived

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)  # keeps activations at unit variance after the leaky ReLU
# oneDNN's CPU convolutions run channels-last natively and reorder NCHW maps and weights around every call:
# with channels-last maps and weights the demo model renders 7% faster alone and 17% per image in batches of
# 16, and edits 13% faster (2 cores). On CUDA maps and weights stay NCHW until a GPU run measures
# channels-last there (`scripts/gpu_profile.py`, `layouts`: cuDNN's tensor-core kernels work channels-last).
CPU_MEMORY_FORMAT = torch.channels_last
CUDA_MEMORY_FORMAT = torch.contiguous_format


def memory_format(device: torch.device) -> torch.memory_format:
    """The layout of the generator's maps and convolution weights on `device`."""
    return CPU_MEMORY_FORMAT if device.type == "cpu" else CUDA_MEMORY_FORMAT


def make_kernel(taps: Sequence[float]) -> Tensor:
    """Separable FIR kernel from 1-D taps, normalised to sum to one: [k, k]."""
    k1 = torch.tensor(list(taps), dtype=torch.float32)
    k = torch.outer(k1, k1)
    return k / k.sum()


def depthwise(kernel: Tensor, channels: int, dtype: torch.dtype, *, transposed: bool = False) -> Tensor:
    """`kernel` [kh, kw] as the weight of a depthwise `F.conv2d` over `channels` that convolves (flipped), or
    of a `F.conv_transpose2d` (`transposed`: as it is)."""
    kh, kw = kernel.shape
    taps = kernel if transposed else kernel.flip([0, 1])
    return taps.to(dtype).reshape(1, 1, kh, kw).expand(channels, 1, kh, kw).contiguous()


def kept_depthwise(module: nn.Module, kernel: Tensor, x: Tensor, *, transposed: bool = False) -> Tensor:
    """`depthwise(kernel)` for x's channels and dtype, kept on `module` while the kernel is unchanged."""
    c, dtype = x.shape[1], x.dtype
    return frozen_derived(
        module,
        f"depthwise:{c}:{dtype}:{transposed}",
        (kernel,),
        lambda: depthwise(kernel, c, dtype, transposed=transposed),
    )


def upfirdn2d(
    x: Tensor,
    kernel: Tensor,
    *,
    up: int = 1,
    down: int = 1,
    pad: tuple[int, int] = (0, 0),
    weight: Tensor | None = None,
) -> Tensor:
    """Upsample by zero insertion, pad, convolve with `kernel` (true convolution), then decimate.

    x: [N, C, H, W]; kernel: [kh, kw]; pad = (before, after), applied to both axes; `weight`: the
    kernel's `depthwise` form for C channels, when the caller keeps one.
    """
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    if weight is None:
        weight = depthwise(kernel, c, x.dtype)
    if pad[0] == pad[1] >= 0:  # the convolution pads: no padded copy of the map (the upsampling convs' blur)
        x = F.conv2d(x, weight, groups=c, padding=pad[0])
    else:
        x = F.conv2d(F.pad(x, [pad[0], pad[1], pad[0], pad[1]]), weight, groups=c)  # depthwise: channel by channel
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def fused_leaky_relu(x: Tensor, bias: Tensor) -> Tensor:
    """Add a per-channel bias (channel axis 1), leaky ReLU (0.2), scale by sqrt(2)."""
    shape = [1, -1] + [1] * (x.ndim - 2)
    return F.leaky_relu(x + bias.reshape(shape), LRELU_SLOPE) * LRELU_GAIN


class PixelNorm(nn.Module):
    """Normalise each latent vector to unit mean square."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: weights stored at unit scale, scaled at run time.

    `lr_mul` slows the layer down (the mapping network uses 0.01); `activation=True` fuses a leaky ReLU.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        weight = frozen_derived(self, "weight", (self.weight,), lambda: self.weight * self.scale)
        bias = None
        if self.bias is not None:
            b = self.bias
            bias = frozen_derived(self, "bias", (b,), lambda: b * self.lr_mul)
        if self.activation:
            out = F.linear(x, weight)
            return fused_leaky_relu(out, bias) if bias is not None else F.leaky_relu(out, LRELU_SLOPE) * LRELU_GAIN
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}"


class FusedLeakyReLU(nn.Module):
    """Per-channel bias + scaled leaky ReLU (key `bias`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias)


class Blur(nn.Module):
    """Low-pass FIR filter (buffer `kernel`)."""

    kernel: Tensor

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        # After zero-insertion upsampling the signal energy drops by factor**2; the kernel restores it.
        self.register_buffer("kernel", make_kernel(taps) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad, weight=kept_depthwise(self, self.kernel, x))


class Upsample(nn.Module):
    """2x FIR upsampling used on the toRGB skip path (buffer `kernel`)."""

    kernel: Tensor

    def __init__(self, taps: Sequence[float], factor: int = 2) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps) * factor**2)
        self.factor = factor
        p = len(taps) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        before, after = self.pad
        if after != before + 1 - self.factor:  # odd taps: zero insertion, padding, convolution, as written
            return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad, weight=kept_depthwise(self, self.kernel, x))
        # Zero insertion, padding and a true convolution are one strided transposed convolution by the kernel
        # itself: no zero-filled copy of factor**2 the pixels (4 of the 4.5 ms that a batch of 16 spent here).
        weight = kept_depthwise(self, self.kernel, x, transposed=True)
        padding = self.kernel.shape[0] - 1 - before
        return F.conv_transpose2d(x, weight, stride=self.factor, padding=padding, groups=x.shape[1])


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution with optional demodulation and 2x upsampling.

    The weight is shared by the batch: the style scales the input channels and the demodulation
    coefficient scales the output channels, which equals convolving each sample with its own
    modulated-and-demodulated kernel (StyleGAN2 eq. 1-3) without a grouped convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        *,
        demodulate: bool = True,
        upsample: bool = False,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.upsample = upsample
        self.demodulate = demodulate
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        if upsample:
            # Registered before `modulation` so that the state_dict order matches the official files.
            factor = 2
            p = len(blur_kernel) - factor - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        """x: [N, Cin, H, W]; w: [N, S] -> [N, Cout, H', W'] (H' = 2H when upsampling)."""
        x, dcoef = self.convolve(x, w)
        return x if dcoef is None else x * dcoef[:, :, None, None]

    def convolve(self, x: Tensor, w: Tensor) -> tuple[Tensor, Tensor | None]:
        """The convolution before demodulation, and the demodulation coefficients [N, Cout] (None without)."""
        n = x.shape[0]
        style = self.modulation(w)  # [N, Cin]
        sources = (self.weight,)
        layout = memory_format(x.device)  # kept in the maps' layout, so that no call reorders it
        weight = frozen_derived(
            self, f"weight:{layout}", sources, lambda: (self.weight[0] * self.scale).contiguous(memory_format=layout)
        )  # [Cout, Cin, k, k]
        x = x * style.reshape(n, -1, 1, 1)
        if self.upsample:
            # conv_transpose2d wants [Cin, Cout, k, k]
            weight_t = frozen_derived(
                self, f"weight_t:{layout}", sources, lambda: weight.transpose(0, 1).contiguous(memory_format=layout)
            )
            x = F.conv_transpose2d(x, weight_t, stride=2)
            x = self.blur(x)
        else:
            x = F.conv2d(x, weight, padding=self.padding)
        if not self.demodulate:
            return x, None
        # sum over (Cin, kh, kw) of (W * s)^2 = s^2 @ sum_k W^2: one [N, Cin] x [Cin, Cout] product.
        w2t = frozen_derived(self, "w2t", sources, lambda: weight.pow(2).sum(dim=(2, 3)).t())  # [Cin, Cout]
        return x, torch.rsqrt(style.pow(2) @ w2t + 1e-8)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, k={self.kernel_size}, "
            f"upsample={self.upsample}, demodulate={self.demodulate}"
        )


class NoiseInjection(nn.Module):
    """Adds per-pixel noise scaled by one learned scalar (key `weight`)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        return x + self.weight * noise


class ConstantInput(nn.Module):
    """The learned 4x4 starting tensor of the synthesis network (key `input`)."""

    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    """Modulated conv -> noise -> biased leaky ReLU: one synthesis layer, one W+ row."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        *,
        upsample: bool = False,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channels, out_channels, kernel_size, style_dim, upsample=upsample, blur_kernel=blur_kernel
        )
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: Tensor, w: Tensor, noise: Tensor) -> Tensor:
        y, dcoef = self.conv.convolve(x, w)
        bias = self.activate.bias
        if torch.is_grad_enabled() or y.dtype != bias.dtype or dcoef is None:  # (autocast: y may be bfloat16)
            out: Tensor = self.activate(self.noise(y if dcoef is None else y * dcoef[:, :, None, None], noise))
            return out
        # Without autograd the same arithmetic, step for step, runs in place on the convolution's fresh
        # output: the same numbers, and no map allocated five times (a third of a CPU render was these).
        y.mul_(dcoef[:, :, None, None]).add_(self.noise.weight * noise).add_(bias[None, :, None, None])
        return F.leaky_relu_(y, LRELU_SLOPE).mul_(LRELU_GAIN)


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (no demodulation) added to the upsampled previous RGB skip."""

    def __init__(
        self,
        in_channels: int,
        style_dim: int,
        *,
        upsample: bool = True,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)

    def forward(self, x: Tensor, w: Tensor, skip: Tensor | None = None) -> Tensor:
        out: Tensor = self.conv(x, w) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out

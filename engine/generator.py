"""StyleGAN2 generator: mapping z -> w, synthesis W+ -> image (+ the feature maps DatasetGAN reads).

Parameter names, order and shapes follow the rosinality layout of the official EditGAN `g_ema`, so an
official checkpoint loads with `strict=True`. Rendering is deterministic by default: the fixed noise
buffers `noises.noise_{i}` are used unless random noise is asked for (GAN training).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from engine.configs import config_from_dict, widths
from engine.errors import BundleError, InputError
from engine.layers import ConstantInput, EqualLinear, PixelNorm, StyledConv, ToRGB, memory_format


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of a StyleGAN2 generator; saved in `bundle.json` beside the weights."""

    size: int  # output resolution (square), a power of two in [32, 1024]
    style_dim: int = 512  # dimension of z, w and every W+ row
    n_mlp: int = 8  # depth of the mapping network
    channel_multiplier: int = 2  # widens layers at 64 px and above (config-f uses 2)
    channels: tuple[int, ...] | None = None  # explicit widths at 4, 8, ..., size; overrides the table
    blur_kernel: tuple[int, ...] = (1, 3, 3, 1)  # FIR taps of the up-sampling filters
    lr_mlp: float = 0.01  # learning-rate multiplier of the mapping network

    def __post_init__(self) -> None:
        if self.size < 32 or self.size > 1024 or self.size & (self.size - 1):
            raise BundleError(f"generator size must be a power of two in [32, 1024], got {self.size}")
        if self.channels is not None and len(self.channels) != self.log_size - 1:
            raise BundleError(
                f"generator channels must list {self.log_size - 1} widths (4 px to {self.size} px), "
                f"got {len(self.channels)}"
            )
        if self.style_dim < 1 or self.n_mlp < 1:
            raise BundleError("generator style_dim and n_mlp must be positive")

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        """Number of W+ rows: one per styled conv plus the last toRGB (16 at 512 px)."""
        return self.log_size * 2 - 2

    @property
    def num_noise(self) -> int:
        return (self.log_size - 2) * 2 + 1

    @property
    def widths(self) -> dict[int, int]:
        """Channels per resolution, 4 px up to `size`."""
        return widths(self.size, self.channel_multiplier, self.channels)

    @property
    def feature_shapes(self) -> list[tuple[int, int]]:
        """(channels, resolution) of the maps `synthesis(return_features=True)` returns, in order."""
        widths = self.widths
        shapes = [(widths[4], 4), (widths[4], 4)]
        for r in range(3, self.log_size + 1):
            shapes += [(widths[2**r], 2**r)] * 2
        return shapes

    @property
    def feature_dim(self) -> int:
        """D: per-pixel feature depth after concatenating every map (6016 for the 512 px car model)."""
        return sum(c for c, _ in self.feature_shapes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels) if self.channels is not None else None
        d["blur_kernel"] = list(self.blur_kernel)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GeneratorConfig:
        return config_from_dict(cls, d, "generator")


@dataclass
class SynthesisOutput:
    """What `Generator.synthesis` returns."""

    image: Tensor  # [N, 3, size, size], nominally in [-1, 1] (no clamp, as the official network)
    features: list[Tensor] | None  # n_latent maps [N, C_i, r_i, r_i] in the official order, or None


class Generator(nn.Module):
    """StyleGAN2 generator in the official (rosinality) key layout.

    Sub-modules: `style` (mapping MLP), `input`, `conv1`, `to_rgb1`, `convs`, `to_rgbs`, `noises`.
    `w_avg` (the average w used for truncation) is a non-persistent buffer: it is not part of the
    official `g_ema` state dict, so bundles store it on its own.
    """

    w_avg: Tensor
    _compiled: Callable[[Tensor, list[Tensor]], tuple[Tensor, list[Tensor]]] | None = None  # compile_synthesis

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        c, widths, blur = config.style_dim, config.widths, config.blur_kernel
        self.style = nn.Sequential(
            PixelNorm(),
            *[EqualLinear(c, c, lr_mul=config.lr_mlp, activation=True) for _ in range(config.n_mlp)],
        )
        self.input = ConstantInput(widths[4])
        self.conv1 = StyledConv(widths[4], widths[4], 3, c, blur_kernel=blur)
        self.to_rgb1 = ToRGB(widths[4], c, upsample=False, blur_kernel=blur)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_ch = widths[4]
        for res in range(3, config.log_size + 1):
            out_ch = widths[2**res]
            self.convs.append(StyledConv(in_ch, out_ch, 3, c, upsample=True, blur_kernel=blur))
            self.convs.append(StyledConv(out_ch, out_ch, 3, c, blur_kernel=blur))
            self.to_rgbs.append(ToRGB(out_ch, c, blur_kernel=blur))
            in_ch = out_ch
        self.noises = nn.Module()
        for i in range(config.num_noise):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))
        self.register_buffer("w_avg", torch.zeros(c), persistent=False)

    @property
    def n_latent(self) -> int:
        return self.config.n_latent

    # ------------------------------------------------------------------ mapping and truncation

    def mapping(self, z: Tensor) -> Tensor:
        """z [N, S] (standard normal) -> w [N, S]."""
        if z.ndim != 2 or z.shape[1] != self.config.style_dim:
            raise InputError(f"z must be [N, {self.config.style_dim}], got {list(z.shape)}")
        out: Tensor = self.style(z)
        return out

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, *, seed: int = 0, batch: int = 1024) -> Tensor:
        """Average of mapping(z) over `n` draws of a seeded CPU generator: [S]. Device independent."""
        gen = torch.Generator().manual_seed(seed)
        total = torch.zeros(self.config.style_dim, dtype=torch.float64)
        done = 0
        while done < n:
            k = min(batch, n - done)
            z = torch.randn(k, self.config.style_dim, generator=gen).to(self.w_avg.device)
            total += self.mapping(z).double().sum(0).cpu()
            done += k
        return (total / n).float()

    def truncate(self, w: Tensor, psi: float) -> Tensor:
        """Pull w (or W+) towards `w_avg`: w_avg + psi * (w - w_avg)."""
        return self.w_avg + psi * (w - self.w_avg)

    def broadcast(self, w: Tensor) -> Tensor:
        """w [N, S] -> W+ [N, L, S] with every row equal."""
        return w.unsqueeze(1).expand(-1, self.n_latent, -1).contiguous()

    @torch.no_grad()
    def sample_w_plus(self, n: int, *, seed: int, psi: float = 1.0) -> Tensor:
        """Seeded random W+ codes (16 equal rows at 512 px), truncated when psi < 1: [N, L, S]."""
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.config.style_dim, generator=gen).to(self.w_avg.device)
        w = self.mapping(z)
        if psi != 1.0:
            w = self.truncate(w, psi)
        return self.broadcast(w)

    # ------------------------------------------------------------------ synthesis

    def fixed_noise(self) -> list[Tensor]:
        return [getattr(self.noises, f"noise_{i}") for i in range(self.config.num_noise)]

    def random_noise(self, batch: int, generator: torch.Generator | None = None) -> list[Tensor]:
        device = self.w_avg.device
        return [torch.randn(batch, 1, *t.shape[2:], generator=generator, device=device) for t in self.fixed_noise()]

    def synthesis(
        self,
        w_plus: Tensor,
        *,
        noise: Literal["fixed", "random"] | list[Tensor] = "fixed",
        return_features: bool = False,
    ) -> SynthesisOutput:
        """Render W+ [N, L, S]; optionally also return the L intermediate maps in the official order.

        The maps are: the constant input, then every styled conv's output after noise and activation
        (4, 4, 8, 8, ..., size, size px). One W+ row feeds each styled conv; a toRGB shares its row
        with the next conv.
        """
        n, length, dim = w_plus.shape
        if length != self.n_latent or dim != self.config.style_dim:
            raise InputError(f"W+ must be [N, {self.n_latent}, {self.config.style_dim}], got {list(w_plus.shape)}")
        if noise == "fixed":
            noises = self.fixed_noise()
        elif noise == "random":
            noises = self.random_noise(n)
        else:
            noises = noise
        image, features = (self._compiled or self._synthesize)(w_plus, noises)
        return SynthesisOutput(image=image, features=features if return_features else None)

    def compile_synthesis(self) -> None:
        """Opt-in (EDITGAN_COMPILE): from now on the layers of `synthesis` run through `torch.compile`.

        The first call of each kind (batch size, with or without gradients) compiles a graph: tens of
        seconds on a CPU. Later calls fuse the small element-wise operations between the convolutions;
        `editgan bench --only compile` measures the gain and the losses against eager mode."""
        self._compiled = torch.compile(self._synthesize)

    def _synthesize(self, w_plus: Tensor, noises: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """The layers: the image and the maps (the maps cost nothing to keep: each is an output anyway)."""
        n = w_plus.shape[0]
        features: list[Tensor] = []
        x = self.input(n)
        x = x.contiguous(memory_format=memory_format(x.device))  # every later map keeps this layout
        features.append(x)
        x = self.conv1(x, w_plus[:, 0], noises[0])
        features.append(x)
        skip = self.to_rgb1(x, w_plus[:, 1])
        row = 1
        for j, to_rgb in enumerate(self.to_rgbs):
            x = self.convs[2 * j](x, w_plus[:, row], noises[2 * j + 1])
            features.append(x)
            x = self.convs[2 * j + 1](x, w_plus[:, row + 1], noises[2 * j + 2])
            features.append(x)
            skip = to_rgb(x, w_plus[:, row + 2], skip)
            row += 2
        return skip, features

    def forward(self, z: Tensor, *, psi: float = 1.0, noise: Literal["fixed", "random"] = "random") -> Tensor:
        """z [N, S] -> image [N, 3, size, size]: mapping, optional truncation, synthesis (training use)."""
        w = self.mapping(z)
        if psi != 1.0:
            w = self.truncate(w, psi)
        return self.synthesis(self.broadcast(w), noise=noise).image

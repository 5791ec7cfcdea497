"""DatasetGAN segmentation branch: an ensemble of per-pixel MLPs over the generator's feature maps.

The official code upsamples all L maps to the output resolution, concatenates them into a
[D, H, W] stack (D = 6016 and 6.3 GB at 512 px) and runs each MLP on every pixel. Here the first
Linear layer is applied *before* upsampling: interpolation (nearest or bilinear) is a per-channel
linear map over space, so it commutes with a per-pixel channel projection. Each map is projected at
its own low resolution, maps of equal resolution are summed, and only the pixels asked for are
interpolated. The result equals the official computation up to float rounding
(`logits_reference` keeps the literal version for tests and baselines).

`segment`, the dense path behind every render, goes further for speed: all members' first layers
run as one product, each projected map is interpolated separably (a small product down the rows,
then one weighted gather across the columns for all resolutions at once), the later layers run
batched over members with BatchNorm folded in, and the canvas is walked in row chunks that fit in
cache, so that memory stays a few chunks whatever the canvas.

The machinery lives in two modules: `engine.segmentation_kernels` (interpolation taps, the pixel-set
gather and the chunked cross-entropy of `region_loss`) and `engine.dense_segmentation` (the chunked
dense path of `segment`). This module keeps the model, its configuration and the public entry points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.dense_segmentation import DensePlan, DenseWeights, segment_in_chunks
from engine.errors import BundleError, InputError
from engine.frozen import frozen_derived
from engine.segmentation_kernels import (
    Layout,
    PixelSet,
    Prepared,
    RegionCrossEntropy,
    chunked_cross_entropy,
    first_layer,
    running_mean,
    running_var,
)
from engine.segmentation_kernels import Upsample as Upsample  # re-exported: `engine.rendering` imports it here

HeadLayer = tuple[Tensor, Tensor, Tensor, Tensor]  # BatchNorm scale, shift [M, C]; Linear weight [M, out, in], bias


@dataclass(frozen=True)
class SegmenterConfig:
    """Architecture of the pixel-classifier ensemble; saved in `bundle.json`."""

    feature_channels: tuple[int, ...]  # channels of each generator map, in the official order
    num_classes: int  # K, background included
    out_size: int  # resolution the maps are upsampled to (the generator's output size)
    num_models: int = 10  # M, ensemble members
    hidden: tuple[int, int] | None = None  # None: the official rule, (256, 128) if K >= 32 else (128, 32)

    def __post_init__(self) -> None:
        if self.num_classes < 2 or self.num_models < 1 or not self.feature_channels:
            raise BundleError("segmenter needs >= 2 classes, >= 1 model and at least one feature map")

    @property
    def feature_dim(self) -> int:
        return sum(self.feature_channels)

    @property
    def hidden_sizes(self) -> tuple[int, int]:
        if self.hidden is not None:
            return self.hidden
        return (256, 128) if self.num_classes >= 32 else (128, 32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_channels": list(self.feature_channels),
            "num_classes": self.num_classes,
            "out_size": self.out_size,
            "num_models": self.num_models,
            "hidden": list(self.hidden) if self.hidden is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SegmenterConfig:
        known = {"feature_channels", "num_classes", "out_size", "num_models", "hidden"}
        if set(d) - known:
            raise BundleError(f"unknown segmenter config keys {sorted(set(d) - known)}; allowed: {sorted(known)}")
        hidden = d.get("hidden")
        return cls(
            feature_channels=tuple(int(c) for c in d["feature_channels"]),
            num_classes=int(d["num_classes"]),
            out_size=int(d["out_size"]),
            num_models=int(d.get("num_models", 10)),
            hidden=(int(hidden[0]), int(hidden[1])) if hidden is not None else None,
        )


class PixelClassifier(nn.Module):
    """One ensemble member, official layout: Linear, ReLU, BN, Linear, ReLU, BN, Linear (key `layers`)."""

    def __init__(self, in_dim: int, hidden: tuple[int, int], num_classes: int) -> None:
        super().__init__()
        h1, h2 = hidden
        self.layers = nn.Sequential(
            nn.Linear(in_dim, h1),
            nn.ReLU(),
            nn.BatchNorm1d(h1),
            nn.Linear(h1, h2),
            nn.ReLU(),
            nn.BatchNorm1d(h2),
            nn.Linear(h2, num_classes),
        )

    @property
    def first(self) -> nn.Linear:
        """The only layer that reads the D-dimensional features."""
        layer = self.layers[0]
        assert isinstance(layer, nn.Linear)
        return layer

    def head(self, h: Tensor) -> Tensor:
        """Everything after the first Linear: [P, h1] -> logits [P, K]."""
        out: Tensor = self.layers[1:](h)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """x: [P, D] -> logits [P, K]."""
        out: Tensor = self.layers(x)
        return out


@dataclass
class Segmentation:
    """Ensemble prediction over a rectangle of the canvas."""

    labels: Tensor  # [N, H, W] int64: argmax of the mean logits (EditGAN's rule)
    uncertainty: Tensor | None  # [N, H, W] float: members' Jensen-Shannon divergence, in [0, log M]; None: not asked


def all_pixels(size: int, device: torch.device | None = None) -> Tensor:
    """Flat row-major indices of every pixel of a size x size canvas: [size*size]."""
    return torch.arange(size * size, device=device)


def pixels_from_mask(mask: Tensor) -> Tensor:
    """Boolean [H, W] mask -> flat row-major indices [P] (the official ROI order)."""
    if mask.ndim != 2:
        raise InputError(f"pixel mask must be [H, W], got {list(mask.shape)}")
    return mask.reshape(-1).nonzero().squeeze(1)


# First-layer activations (pixels * M*h1 floats) that `segment` evaluates at once. On a CPU a chunk of
# output rows (2 MiB) and its interpolated source rows stay in cache, which measured faster than fewer,
# larger products; elsewhere big chunks keep the number of kernel launches down.
_CHUNK_FLOATS = {"cpu": 1 << 19}
_CHUNK_FLOATS_DEFAULT = 1 << 26
# The dense path's horizontal pass (`DensePlan.horizontal`): 0 is a weighted gather, else tiles of that
# many output columns in one batched product. On 2 CPU cores the gather is 1.6-3.5x faster alone (its
# chunks fit in cache; a whole render is the same within noise); on an H100 it was 46 % of a 512 px render,
# bound by memory, whose bytes the tiles cut to a third (`scripts/gpu_profile.py` measures both).
_HORIZONTAL_TILE = {"cpu": 0}
_HORIZONTAL_TILE_DEFAULT = 64


class Segmenter(nn.Module):
    """Ensemble of `PixelClassifier`s (key `models.{i}.layers.*`) with a low-memory evaluation path."""

    def __init__(self, config: SegmenterConfig) -> None:
        super().__init__()
        self.config = config
        self.models = nn.ModuleList(
            PixelClassifier(config.feature_dim, config.hidden_sizes, config.num_classes)
            for _ in range(config.num_models)
        )

    def classifiers(self) -> list[PixelClassifier]:
        return [m for m in self.models if isinstance(m, PixelClassifier)]

    def _check(self, features: Sequence[Tensor]) -> None:
        got = tuple(f.shape[1] for f in features)
        if got != self.config.feature_channels:
            raise InputError(f"feature maps have channels {got}, segmenter expects {self.config.feature_channels}")

    def _first_weights(self, features: Sequence[Tensor]) -> dict[int, Tensor]:
        """Per resolution, the slice of every member's first weight that reads its maps: {r: [M*h1, C_r]}."""
        members = self.classifiers()
        layout = tuple((f.shape[1], f.shape[-1]) for f in features)

        def make() -> dict[int, Tensor]:
            w1 = torch.cat([m.first.weight for m in members], dim=0)  # [M*h1, D]
            parts: dict[int, list[Tensor]] = {}
            offset = 0
            for c, r in layout:
                parts.setdefault(r, []).append(w1[:, offset : offset + c])
                offset += c
            return {r: torch.cat(w, dim=1) for r, w in parts.items()}

        return frozen_derived(self, f"first:{layout}", [m.first.weight for m in members], make)

    def _prepare(self, features: Sequence[Tensor], n_pixels: int) -> Prepared:
        """Decide, per resolution, whether the first Linear runs before or after interpolation.

        When r*r <= n_pixels the maps are projected now, at low resolution, and stacked in one table
        [N * sum(r*r), M*h1] ("early"); otherwise fewer pixels are needed than the map has, so the raw maps
        are kept [N * r*r, C] and projected after interpolation ("late"). Full-resolution maps are never
        projected early: that would be the official [H*W, M*h1] tensor.
        """
        weights = self._first_weights(features)
        by_size: dict[int, list[Tensor]] = {}
        for f in features:
            by_size.setdefault(f.shape[-1], []).append(f)
        n = features[0].shape[0]
        early, late, projected, raws, late_weights = [], [], [], [], []
        for r, maps in by_size.items():
            stacked = maps[0] if len(maps) == 1 else torch.cat(maps, dim=1)
            x = stacked.permute(0, 2, 3, 1).reshape(n, r * r, -1)  # channels last: a pixel is a row
            if r < self.config.out_size and r * r <= n_pixels:
                early.append(r)
                projected.append(x @ weights[r].t())
            else:
                late.append(r)
                raws.append(x.reshape(n * r * r, -1))
                late_weights.append(weights[r])
        table = None
        if projected:
            table = projected[0] if len(projected) == 1 else torch.cat(projected, dim=1)
            table = table.reshape(-1, table.shape[-1])  # sample-major rows: sample s starts at s * sum(r*r)
        return Prepared(Layout(tuple(early), tuple(late), n), table, raws, late_weights)

    def _head_weights(self, members: list[PixelClassifier]) -> tuple[Tensor, list[HeadLayer]]:
        """The eval-mode heads' constants, stacked over members: the first bias [M*h1], then per (BatchNorm,
        Linear) pair its scale and shift [M, C] and the Linear's weight [M, out, in] and bias [M, out]."""

        def make() -> tuple[Tensor, list[HeadLayer]]:
            layers: list[HeadLayer] = []
            for a, b in ((2, 3), (5, 6)):  # (BatchNorm, Linear) index pairs of the official layout
                bns = [cast(nn.BatchNorm1d, m.layers[a]) for m in members]
                lins = [cast(nn.Linear, m.layers[b]) for m in members]
                scale = torch.stack([bn.weight * torch.rsqrt(running_var(bn) + bn.eps) for bn in bns])
                shift = torch.stack([bn.bias for bn in bns]) - torch.stack([running_mean(bn) for bn in bns]) * scale
                weight = torch.stack([lin.weight for lin in lins])
                layers.append((scale, shift, weight, torch.stack([lin.bias for lin in lins])))
            return torch.cat([m.first.bias for m in members]), layers

        sources = [t for m in members for t in (*m.parameters(), *m.buffers())]
        return frozen_derived(self, f"heads:{len(members)}", sources, make)

    def _heads(self, h: Tensor) -> Tensor:
        """First-layer outputs [N, P, M*h1] -> member logits [N, M, P, K].

        In eval mode the members run together as batched matrix products (BatchNorm is then a fixed
        affine map); in train mode each member's own modules run, so BatchNorm uses batch statistics.
        """
        n, p = h.shape[0], h.shape[1]
        members = self.classifiers()
        if self.training:
            b1 = torch.cat([m.first.bias for m in members])
            x = (h + b1).reshape(n * p, len(members), -1)  # [P', M, h1]
            logits = torch.stack([m.head(x[:, i]) for i, m in enumerate(members)], dim=1)
        else:
            b1, layers = self._head_weights(members)
            x = (h + b1).reshape(n * p, len(members), -1)
            for scale, shift, weight, bias in layers:
                x = torch.einsum("pmi,moi->pmo", torch.relu(x) * scale + shift, weight) + bias
            logits = x  # [P', M, K]
        return logits.reshape(n, p, len(members), -1).permute(0, 2, 1, 3)

    def _evaluate(self, prepared: Prepared, pixels: PixelSet, mode: Upsample) -> Tensor:
        (plan,) = pixels.plans(prepared.layout, mode, max(len(pixels), 1))
        h = first_layer(prepared, plan)
        return self._heads(h.view(prepared.layout.batch, len(pixels), -1))

    def forward(
        self, features: Sequence[Tensor], pixels: Tensor | PixelSet | None = None, *, mode: Upsample = "bilinear"
    ) -> Tensor:
        """Logits of every member at the given pixels: [N, M, P, K].

        features: the generator's L maps [N, C_i, r_i, r_i]; pixels: flat row-major indices into the
        out_size x out_size canvas (None: all), or a `PixelSet` of them that keeps its interpolation plans
        between calls. Differentiable with respect to the features. Memory grows with P * M * h1; use
        `segment` for whole images.
        """
        self._check(features)
        if pixels is None:
            pixels = all_pixels(self.config.out_size, features[0].device)
        region = pixels if isinstance(pixels, PixelSet) else PixelSet(pixels, self.config.out_size)
        return self._evaluate(self._prepare(features, len(region)), region, mode)

    def region_loss(
        self,
        features: Sequence[Tensor],
        pixels: Tensor | PixelSet,
        targets: Tensor,
        *,
        mode: Upsample = "nearest",
        chunk: int = 8192,
    ) -> tuple[Tensor, Tensor]:
        """Cross-entropy of the ensemble's mean logits against `targets` [P] at `pixels`, averaged over
        pixels (and batch), plus the fraction of pixels already right: (loss, accuracy). A loop that
        evaluates one region at every step passes it as a `PixelSet`, whose interpolation plans are then
        built once.

        With frozen classifiers (editing) large regions are evaluated in chunks, forward and backward,
        so memory stays bounded by `chunk` pixels plus the low-resolution projections whatever the
        region's size; the result equals the unchunked computation.
        """
        self._check(features)
        region = pixels if isinstance(pixels, PixelSet) else PixelSet(pixels, self.config.out_size)
        if len(region) == 0 or targets.shape != region.pixels.shape:
            raise InputError("region_loss needs a non-empty pixel set and one target per pixel")
        prepared = self._prepare(features, len(region))
        count = len(region) * features[0].shape[0]
        frozen = not any(p.requires_grad for p in self.parameters())
        if frozen:  # editing: chunks, whose backward (when one is wanted) recomputes them
            plans = region.plans(prepared.layout, mode, chunk)
            if torch.is_grad_enabled():
                tensors = prepared.tensors()
                total, correct = RegionCrossEntropy.apply(self._heads, prepared, plans, targets, chunk, *tensors)
            else:  # a loop's last iterate, only measured
                total, correct = chunked_cross_entropy(self._heads, prepared, plans, targets, chunk)
        else:  # training the segmenter itself: plain autograd
            logits = self._evaluate(prepared, region, mode).mean(1)
            flat, wanted = logits.reshape(-1, logits.shape[-1]), targets.repeat(logits.shape[0])
            total = F.cross_entropy(flat, wanted, reduction="sum")
            correct = (flat.argmax(-1) == wanted).sum()
        return total / count, correct.float() / count

    def logits_reference(
        self, features: Sequence[Tensor], pixels: Tensor | None = None, *, mode: Upsample = "bilinear"
    ) -> Tensor:
        """The official computation: full upsampled [N, D, H, W] stack, every member on it: [N, M, P, K]."""
        self._check(features)
        stack = upsample_features(features, self.config.out_size, mode)
        n, d = stack.shape[:2]
        flat = stack.reshape(n, d, -1).transpose(1, 2)  # [N, H*W, D], row-major pixels
        if pixels is not None:
            flat = flat[:, pixels]
        p = flat.shape[1]
        logits = torch.stack([m(flat.reshape(n * p, d)) for m in self.models], dim=0)
        return logits.reshape(len(self.models), n, p, -1).transpose(0, 1)

    def _plan(self, sizes: tuple[int, ...], box: tuple[int, int, int, int], mode: Upsample, like: Tensor) -> DensePlan:
        tile = _HORIZONTAL_TILE.get(like.device.type, _HORIZONTAL_TILE_DEFAULT)
        key = (sizes, box, mode, like.device, like.dtype, tile)
        plans: dict[Any, DensePlan] = self.__dict__.setdefault("_plans", {})  # not state: never saved
        if key not in plans:
            if len(plans) >= 8:
                plans.clear()
            plans[key] = DensePlan(sizes, self.config.out_size, box, mode, like, tile)
        return plans[key]

    @torch.no_grad()
    def segment(
        self,
        features: Sequence[Tensor],
        *,
        box: tuple[int, int, int, int] | None = None,
        mode: Upsample = "bilinear",
        members: int | None = None,
        uncertainty: bool = True,
    ) -> Segmentation:
        """Labels and uncertainty over a rectangle of the canvas (top, left, height, width; None: all),
        by the first `members` classifiers of the ensemble (None: all of them; fewer is a faster preview,
        the cost being linear in the number). Without `uncertainty` the map is not computed (None).

        Dense path for display, a chunk of output rows at a time (about `_CHUNK_FLOATS` first-layer
        activations; in train mode one chunk, so that BatchNorm sees the whole box). Per chunk, every
        member's first layer is evaluated at once as [pixels, M*h1]: full-resolution maps by one matrix
        product; every other map by interpolating its low-resolution projection, vertically (a small
        product over the few source rows that the chunk reads, each source row projected once) then
        horizontally (on a CPU one `embedding_bag` weighted sum over all resolutions, two taps per
        resolution and pixel; elsewhere one batched product per tile of output columns). The later
        layers run batched over members, BatchNorm folded into the next Linear.
        Memory: a few chunks plus the projected source rows held, whatever the canvas (the official
        stack is N * D * H * W floats). Returns [N, height, width] maps. The loop itself lives in
        `engine.dense_segmentation`.
        """
        self._check(features)
        size = self.config.out_size
        top, left, height, width = box if box is not None else (0, 0, size, size)
        if top < 0 or left < 0 or height < 1 or width < 1 or top + height > size or left + width > size:
            raise InputError(f"box {box} does not fit a {size}x{size} canvas")
        region = (top, left, height, width)
        like = features[0]
        others = tuple(sorted({f.shape[-1] for f in features} - {size}))  # the maps to interpolate
        plan = self._plan(others, region, mode, like)
        budget = _CHUNK_FLOATS.get(like.device.type, _CHUNK_FLOATS_DEFAULT)
        chosen = self.classifiers()
        if members is not None:
            if not 1 <= members <= len(chosen):
                raise InputError(f"members must be 1..{len(chosen)}, got {members}")
            chosen = chosen[:members]
        sources = [t for m in chosen for t in (*m.parameters(), *m.buffers())]
        layout = tuple((f.shape[1], f.shape[-1]) for f in features)  # what `build` reads of the maps
        weights = frozen_derived(
            self, f"dense:{len(chosen)}:{layout}", sources, lambda: DenseWeights.build(chosen, features)
        )
        labels, disagreement = segment_in_chunks(
            chosen, weights, features, plan, size, region, budget, training=self.training, uncertainty=uncertainty
        )
        return Segmentation(labels=labels, uncertainty=disagreement)


def upsample_features(features: Sequence[Tensor], size: int, mode: Upsample) -> Tensor:
    """Every map interpolated to size x size and concatenated in order: [N, D, size, size]."""
    return torch.cat([F.interpolate(f, size=(size, size), mode=mode) for f in features], dim=1)


def _entropy(p: Tensor) -> Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def js_uncertainty(logits: Tensor) -> Tensor:
    """Ensemble disagreement from member logits [N, M, P, K]: [N, P].

    The generalised Jensen-Shannon divergence of the members' class distributions:
    H(mean_i p_i) - mean_i H(p_i), zero when all members agree and at most log M. (DatasetGAN's code
    takes the first entropy over the softmax of the mean *logits*, which can go negative; averaging
    probabilities keeps the map a true divergence.)
    """
    probs = F.softmax(logits, dim=-1)
    return _entropy(probs.mean(1)) - _entropy(probs).mean(1)

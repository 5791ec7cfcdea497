"""DatasetGAN segmentation branch: an ensemble of per-pixel MLPs over the generator's feature maps.

The official code upsamples all L maps to the output resolution, concatenates them into a
[D, H, W] stack (D = 6016 and 6.3 GB at 512 px) and runs each MLP on every pixel. Here the first
Linear layer is applied *before* upsampling: interpolation (nearest or bilinear) is a per-channel
linear map over space, so it commutes with a per-pixel channel projection. Each map is projected at
its own low resolution, maps of equal resolution are summed, and only the pixels asked for are
interpolated. The result equals the official computation up to float rounding
(`logits_reference` keeps the literal version for tests and baselines).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import BundleError, InputError

Upsample = Literal["bilinear", "nearest"]
Prepared = list[tuple[int, Tensor, Tensor | None]]  # (resolution, values [N, r*r, X], late weight)


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
    uncertainty: Tensor  # [N, H, W] float: members' Jensen-Shannon divergence, in [0, log M]


def all_pixels(size: int, device: torch.device | None = None) -> Tensor:
    """Flat row-major indices of every pixel of a size x size canvas: [size*size]."""
    return torch.arange(size * size, device=device)


def pixels_from_mask(mask: Tensor) -> Tensor:
    """Boolean [H, W] mask -> flat row-major indices [P] (the official ROI order)."""
    if mask.ndim != 2:
        raise InputError(f"pixel mask must be [H, W], got {list(mask.shape)}")
    return mask.reshape(-1).nonzero().squeeze(1)


def _taps(dst: Tensor, src_size: int, dst_size: int, mode: Upsample) -> list[tuple[Tensor, Tensor]]:
    """Source indices and weights that 1-D `F.interpolate` (align_corners=False) reads for `dst`."""
    scale = src_size / dst_size
    if mode == "nearest":
        idx = torch.clamp((dst.to(torch.float64) * scale).floor().long(), max=src_size - 1)
        return [(idx, torch.ones_like(dst, dtype=torch.float32))]
    src = torch.clamp((dst.to(torch.float64) + 0.5) * scale - 0.5, min=0.0)
    i0 = src.floor().long()
    i1 = torch.clamp(i0 + 1, max=src_size - 1)
    frac = (src - i0).float()
    return [(i0, 1.0 - frac), (i1, frac)]


class _InterpolateRows(torch.autograd.Function):
    """out[:, p] = sum_t weights[t, p] * values[:, index[t, p]], saving only the indices for backward.

    Autograd through plain indexing would keep one [N, P, X] temporary per tap alive until backward
    (tens of GB for a large region at 512 px); this keeps none.
    """

    @staticmethod
    def forward(ctx: Any, values: Tensor, index: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(index, weights)
        ctx.rows = values.shape[1]
        if index.shape[0] == 1:  # nearest: one tap of weight 1
            return values[:, index[0]]
        out = values[:, index[0]] * weights[0][None, :, None]
        for t in range(1, index.shape[0]):
            out.addcmul_(values[:, index[t]], weights[t][None, :, None])
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        index, weights = ctx.saved_tensors
        out = grad.new_zeros(grad.shape[0], ctx.rows, grad.shape[2])
        for t in range(index.shape[0]):
            out.index_add_(1, index[t], grad * weights[t][None, :, None])
        return out, None, None


def _interp_matrix(src: int, dst: int, mode: Upsample, like: Tensor) -> Tensor:
    """The [dst, src] matrix of 1-D `F.interpolate` (align_corners=False) from src to dst samples."""
    out = like.new_zeros(dst, src)
    rows = torch.arange(dst, device=like.device)
    for idx, weight in _taps(rows, src, dst, mode):
        out.index_put_((rows, idx.to(like.device)), weight.to(like), accumulate=True)
    return out


def _var(bn: nn.BatchNorm1d) -> Tensor:
    assert bn.running_var is not None
    return bn.running_var


def _mean(bn: nn.BatchNorm1d) -> Tensor:
    assert bn.running_mean is not None
    return bn.running_mean


def _merge_nearest(prepared: Prepared) -> Prepared:
    """With nearest interpolation, sum all projected maps into the finest projected one.

    Nearest sampling between power-of-two sizes composes exactly (reading a 2x pixel-replicated map at
    the finer index lands on the same coarse pixel), so one gather per pixel replaces one per map.
    """
    projected = sorted((e for e in prepared if e[2] is None), key=lambda e: e[0])
    if len(projected) < 2:
        return prepared
    r, merged, _ = projected[0]
    n, x = merged.shape[0], merged.shape[2]
    for r_next, values, _ in projected[1:]:
        factor = r_next // r
        grid = merged.reshape(n, r, r, x).repeat_interleave(factor, 1).repeat_interleave(factor, 2)
        merged = grid.reshape(n, r_next * r_next, x) + values
        r = r_next
    return [(r, merged, None), *(e for e in prepared if e[2] is not None)]


def _interpolate_rows(values: Tensor, index: Tensor, weights: Tensor) -> Tensor:
    out: Tensor = _InterpolateRows.apply(values, index, weights)
    return out


class _RegionCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of the ensemble's mean logits over a pixel set, evaluated in chunks.

    Autograd through a chunked loop would allocate a full-size gradient for every projected map per
    chunk. Here backward recomputes each chunk, differentiates the (frozen) heads with respect to the
    chunk's first-layer outputs only, and scatters those gradients into one buffer per map. Memory is
    the projected maps, their gradients and one chunk.
    """

    @staticmethod
    def forward(
        ctx: Any,
        seg: Segmenter,
        prepared: Prepared,
        pixels: Tensor,
        targets: Tensor,
        mode: Upsample,
        chunk: int,
        *values: Tensor,
    ) -> tuple[Tensor, Tensor]:
        total = values[0].new_zeros(())
        correct = torch.zeros((), dtype=torch.long, device=pixels.device)
        for part, wanted in zip(pixels.split(chunk), targets.split(chunk), strict=True):
            logits = seg._evaluate(prepared, part, mode).mean(1)  # [N, p, K]
            flat, wanted_n = logits.reshape(-1, logits.shape[-1]), wanted.repeat(logits.shape[0])
            total += F.cross_entropy(flat, wanted_n, reduction="sum")
            correct += (flat.argmax(-1) == wanted_n).sum()
        ctx.seg, ctx.prepared, ctx.mode, ctx.chunk = seg, [(r, None, w) for r, _, w in prepared], mode, chunk
        ctx.save_for_backward(pixels, targets, *values)
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx: Any, grad_total: Tensor, _: Tensor) -> tuple[Tensor | None, ...]:
        pixels, targets, *values = ctx.saved_tensors
        seg: Segmenter = ctx.seg
        prepared = [(r, v, w) for (r, _, w), v in zip(ctx.prepared, values, strict=True)]
        grads = [torch.zeros_like(v) for v in values]
        for part, wanted in zip(pixels.split(ctx.chunk), targets.split(ctx.chunk), strict=True):
            plan = seg._tap_plan(prepared, part, ctx.mode)
            h = seg._first_layer(prepared, plan).requires_grad_(True)
            with torch.enable_grad():
                logits = seg._heads(h).mean(1)
                loss = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), wanted.repeat(logits.shape[0]), reduction="sum"
                )
                (dh,) = torch.autograd.grad(loss, h)
            dh = dh * grad_total
            for (_, _, weight), (index, weights), g in zip(prepared, plan, grads, strict=True):
                d = dh @ weight if weight is not None else dh  # back through the late projection
                if index.shape[0] == 1:
                    g.index_add_(1, index[0], d)
                    continue
                for t in range(index.shape[0]):
                    g.index_add_(1, index[t], d * weights[t][None, :, None])
        return (None, None, None, None, None, None, *grads)


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

    def _groups(self, features: Sequence[Tensor]) -> list[tuple[int, Tensor, Tensor]]:
        """Maps of equal resolution concatenated, with their slice of every member's first weight.

        Returns (r, maps [N, C_r, r, r], weight [M*h1, C_r]) per resolution.
        """
        w1 = torch.cat([m.first.weight for m in self.classifiers()], dim=0)  # [M*h1, D]
        groups: dict[int, tuple[list[Tensor], list[Tensor]]] = {}
        offset = 0
        for f in features:
            c, r = f.shape[1], f.shape[-1]
            maps, weights = groups.setdefault(r, ([], []))
            maps.append(f)
            weights.append(w1[:, offset : offset + c])
            offset += c
        return [(r, torch.cat(m, dim=1), torch.cat(w, dim=1)) for r, (m, w) in groups.items()]

    def _prepare(self, features: Sequence[Tensor], n_pixels: int, mode: Upsample) -> Prepared:
        """Decide, per resolution, whether the first Linear runs before or after interpolation.

        Returns (r, values [N, r*r, X], weight) triples, channels last so that gathering pixels copies
        rows. When r*r <= n_pixels the maps are projected now, at low resolution (X = M*h1, weight
        None); otherwise fewer pixels are needed than the map has, so the raw features are kept
        (X = C) and projected after interpolation with `weight` [M*h1, C].
        """
        prepared: Prepared = []
        for r, maps, w in self._groups(features):
            x = maps.permute(0, 2, 3, 1).reshape(maps.shape[0], r * r, -1)
            # early: r*r rows of M*h1 floats, kept with their gradient; late: P rows, one chunk at a time
            # Full-resolution maps are never projected early: that would be the official [H*W, M*h1] tensor.
            early = r < self.config.out_size and r * r <= n_pixels
            prepared.append((r, x @ w.t(), None) if early else (r, x, w))
        if mode == "nearest":
            prepared = _merge_nearest(prepared)
        return prepared

    def _tap_plan(self, prepared: Prepared, pixels: Tensor, mode: Upsample) -> list[tuple[Tensor, Tensor]]:
        """Per resolution: source rows [T, P] and weights [T, P] that interpolation reads for `pixels`."""
        size = self.config.out_size
        if pixels.numel() and (int(pixels.min()) < 0 or int(pixels.max()) >= size * size):
            raise InputError(f"pixel indices must lie in [0, {size * size})")
        ys, xs = pixels // size, pixels % size
        plan = []
        for r, values, _ in prepared:
            taps = [
                (yi * r + xi, wy * wx) for yi, wy in _taps(ys, r, size, mode) for xi, wx in _taps(xs, r, size, mode)
            ]
            plan.append((torch.stack([t[0] for t in taps]), torch.stack([t[1] for t in taps]).to(values.dtype)))
        return plan

    def _first_layer(self, prepared: Prepared, plan: list[tuple[Tensor, Tensor]]) -> Tensor:
        """Every member's first Linear (without bias) at the planned pixels: [N, P, M*h1]."""
        h: Tensor | None = None
        for (_, values, weight), (index, weights) in zip(prepared, plan, strict=True):
            acc = _interpolate_rows(values, index, weights)  # [N, P, X]
            if weight is not None:
                acc = acc @ weight.t()
            h = acc if h is None else h + acc
        assert h is not None
        return h

    def _heads(self, h: Tensor) -> Tensor:
        """First-layer outputs [N, P, M*h1] -> member logits [N, M, P, K].

        In eval mode the members run together as batched matrix products (BatchNorm is then a fixed
        affine map); in train mode each member's own modules run, so BatchNorm uses batch statistics.
        """
        n, p = h.shape[0], h.shape[1]
        members = self.classifiers()
        b1 = torch.cat([m.first.bias for m in members])
        x = (h + b1).reshape(n * p, len(members), -1)  # [P', M, h1]
        if self.training:
            logits = torch.stack([m.head(x[:, i]) for i, m in enumerate(members)], dim=1)
        else:
            for a, b in ((2, 3), (5, 6)):  # (BatchNorm, Linear) index pairs of the official layout
                bns = [cast(nn.BatchNorm1d, m.layers[a]) for m in members]
                lins = [cast(nn.Linear, m.layers[b]) for m in members]
                scale = torch.stack([bn.weight * torch.rsqrt(_var(bn) + bn.eps) for bn in bns])  # [M, C]
                shift = torch.stack([bn.bias for bn in bns]) - torch.stack([_mean(bn) for bn in bns]) * scale
                x = torch.relu(x) * scale + shift
                weight = torch.stack([lin.weight for lin in lins])  # [M, out, in]
                x = torch.einsum("pmi,moi->pmo", x, weight) + torch.stack([lin.bias for lin in lins])
            logits = x  # [P', M, K]
        return logits.reshape(n, p, len(members), -1).permute(0, 2, 1, 3)

    def _evaluate(self, prepared: Prepared, pixels: Tensor, mode: Upsample) -> Tensor:
        return self._heads(self._first_layer(prepared, self._tap_plan(prepared, pixels, mode)))

    def forward(
        self, features: Sequence[Tensor], pixels: Tensor | None = None, *, mode: Upsample = "bilinear"
    ) -> Tensor:
        """Logits of every member at the given pixels: [N, M, P, K].

        features: the generator's L maps [N, C_i, r_i, r_i]; pixels: flat row-major indices into the
        out_size x out_size canvas (None: all). Differentiable with respect to the features. Memory
        grows with P * M * h1; use `segment` for whole images.
        """
        self._check(features)
        if pixels is None:
            pixels = all_pixels(self.config.out_size, features[0].device)
        return self._evaluate(self._prepare(features, pixels.numel(), mode), pixels, mode)

    def region_loss(
        self,
        features: Sequence[Tensor],
        pixels: Tensor,
        targets: Tensor,
        *,
        mode: Upsample = "nearest",
        chunk: int = 8192,
    ) -> tuple[Tensor, Tensor]:
        """Cross-entropy of the ensemble's mean logits against `targets` [P] at `pixels`, averaged over
        pixels (and batch), plus the fraction of pixels already right: (loss, accuracy).

        With frozen classifiers (editing) large regions are evaluated in chunks, forward and backward,
        so memory stays bounded by `chunk` pixels plus the low-resolution projections whatever the
        region's size; the result equals the unchunked computation.
        """
        self._check(features)
        if pixels.numel() == 0 or targets.shape != pixels.shape:
            raise InputError("region_loss needs a non-empty pixel set and one target per pixel")
        prepared = self._prepare(features, pixels.numel(), mode)
        count = pixels.numel() * features[0].shape[0]
        frozen = not any(p.requires_grad for p in self.parameters())
        if frozen and torch.is_grad_enabled():
            values = [v for _, v, _ in prepared]
            total, correct = _RegionCrossEntropy.apply(self, prepared, pixels, targets, mode, chunk, *values)
        else:  # training the segmenter itself, or no gradient wanted: plain autograd
            logits = self._evaluate(prepared, pixels, mode).mean(1)
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

    @torch.no_grad()
    def segment(
        self,
        features: Sequence[Tensor],
        *,
        box: tuple[int, int, int, int] | None = None,
        mode: Upsample = "bilinear",
    ) -> Segmentation:
        """Labels and uncertainty over a rectangle of the canvas (top, left, height, width; None: all).

        Dense path for display: each member's first layer is projected at every map's resolution and
        upsampled with `F.interpolate`, one member at a time, so peak memory is N * h1 * H * W floats
        instead of the official N * D * H * W. Returns [N, height, width] maps.
        """
        self._check(features)
        size = self.config.out_size
        top, left, height, width = box if box is not None else (0, 0, size, size)
        if top < 0 or left < 0 or height < 1 or width < 1 or top + height > size or left + width > size:
            raise InputError(f"box {box} does not fit a {size}x{size} canvas")
        n = features[0].shape[0]
        h1 = self.config.hidden_sizes[0]
        # Coarse maps are projected for all members at once (small); full-resolution ones per member.
        groups = [
            (r, F.conv2d(maps, w[:, :, None, None]) if r < size else maps, w) for r, maps, w in self._groups(features)
        ]
        matrices = {
            r: (
                _interp_matrix(r, size, mode, maps)[top : top + height],
                _interp_matrix(r, size, mode, maps)[left : left + width],
            )
            for r, maps, _ in groups
            if r < size and r * (r + size) <= 64 * size  # separable matrix products beat F.interpolate here
        }
        sum_logits: Tensor | None = None
        sum_probs: Tensor | None = None
        sum_entropy: Tensor | None = None
        for i, member in enumerate(self.classifiers()):
            h: Tensor | None = None
            rows = slice(i * h1, (i + 1) * h1)
            for r, maps, w in groups:
                if r == size:
                    part = F.conv2d(maps, w[rows, :, None, None])[:, :, top : top + height, left : left + width]
                elif r in matrices:
                    uy, ux = matrices[r]  # [height, r], [width, r]: interpolation is separable
                    part = uy @ maps[:, rows] @ ux.t()
                else:
                    part = F.interpolate(maps[:, rows], size=(size, size), mode=mode)
                    part = part[:, :, top : top + height, left : left + width]
                h = part.clone() if h is None else h.add_(part)
            assert h is not None
            x = (h + member.first.bias[:, None, None]).permute(0, 2, 3, 1).reshape(-1, h1)
            logits = member.head(x).reshape(n, height * width, -1)  # [N, P, K]
            probs = F.softmax(logits, dim=-1)
            entropy = _entropy(probs)
            sum_logits = logits if sum_logits is None else sum_logits.add_(logits)
            sum_probs = probs if sum_probs is None else sum_probs.add_(probs)
            sum_entropy = entropy if sum_entropy is None else sum_entropy.add_(entropy)
        assert sum_logits is not None and sum_probs is not None and sum_entropy is not None
        m = len(self.models)
        uncertainty = _entropy(sum_probs / m) - sum_entropy / m
        return Segmentation(
            labels=sum_logits.argmax(-1).reshape(n, height, width),
            uncertainty=uncertainty.reshape(n, height, width),
        )


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

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
"""

from __future__ import annotations

import itertools
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


# First-layer activations (pixels * M*h1 floats) that `segment` evaluates at once. On a CPU a chunk of
# output rows (2 MiB) and its interpolated source rows stay in cache, which measured faster than fewer,
# larger products; elsewhere big chunks keep the number of kernel launches down.
_CHUNK_FLOATS = {"cpu": 1 << 19}
_CHUNK_FLOATS_DEFAULT = 1 << 26


@dataclass(frozen=True)
class _DenseWeights:
    """The ensemble as `segment` evaluates it: every member at once. Derived from the parameters on each
    call (about a millisecond for the demo model), so it can never be stale."""

    first: dict[int, Tensor]  # map resolution -> [C_r, M*h1]: all members' first-layer columns for its maps
    bias: Tensor  # [M*h1]: all members' first-layer biases
    layers: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]  # later Linears: [M, out, in], [M, out, 1]

    @staticmethod
    def build(members: Sequence[PixelClassifier], features: Sequence[Tensor]) -> _DenseWeights:
        """Each BatchNorm (in eval mode a fixed affine map s x + t after a ReLU) is folded into the Linear
        after it: W (s x + t) + b = (W s) x + (W t + b)."""
        w1 = torch.cat([m.first.weight for m in members])  # [M*h1, D]
        spans: dict[int, list[tuple[int, int]]] = {}
        offset = 0
        for f in features:
            spans.setdefault(f.shape[-1], []).append((offset, offset + f.shape[1]))
            offset += f.shape[1]
        first = {}
        for r, s in spans.items():
            adjacent = all(a == b for (_, b), (a, _) in itertools.pairwise(s))  # as in the official order
            first[r] = (w1[:, s[0][0] : s[-1][1]] if adjacent else torch.cat([w1[:, a:b] for a, b in s], 1)).t()
        layers = []
        for a, b in ((2, 3), (5, 6)):  # (BatchNorm, Linear) index pairs of the official layout
            bns = [cast(nn.BatchNorm1d, m.layers[a]) for m in members]
            lins = [cast(nn.Linear, m.layers[b]) for m in members]
            eps = w1.new_tensor([bn.eps for bn in bns])[:, None]
            scale = torch.stack([bn.weight for bn in bns]) * torch.rsqrt(torch.stack([_var(bn) for bn in bns]) + eps)
            shift = torch.stack([bn.bias for bn in bns]) - torch.stack([_mean(bn) for bn in bns]) * scale  # [M, in]
            weight = torch.stack([lin.weight for lin in lins])  # [M, out, in]
            bias = torch.stack([lin.bias for lin in lins])[:, :, None] + torch.bmm(weight, shift[:, :, None])
            layers.append((weight * scale[:, None], bias))
        return _DenseWeights(first, torch.cat([m.first.bias for m in members]), (layers[0], layers[1]))


def _pixels_last(maps: Sequence[Tensor], rows: slice, cols: slice) -> Tensor:
    """A window of maps [N, C_i, r, r] of one resolution as one contiguous [rows, cols, N, sum C_i]."""
    parts = [m[:, :, rows, cols].permute(2, 3, 0, 1) for m in maps]
    return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0].contiguous()


class _Plan:
    """Interpolation geometry of `segment` for one canvas, box, mode and set of map resolutions (those
    other than the canvas's); it depends on no weight or feature value, so segmenters cache it."""

    def __init__(
        self, sizes: Sequence[int], size: int, box: tuple[int, int, int, int], mode: Upsample, like: Tensor
    ) -> None:
        _, left, _, width = box
        self.sizes, self.width, self.device = tuple(sizes), width, like.device
        self.columns = sum(sizes)  # J: the source columns of all these maps together
        # Per resolution, vertically: the [size, r] matrix and the first and last source row of each output row.
        self.vertical: dict[int, tuple[Tensor, list[int], list[int]]] = {}
        self.horizontal: dict[int, list[tuple[Tensor, Tensor]]] = {}  # per tap: source column, weight [width]
        everywhere, columns = torch.arange(size), torch.arange(left, left + width)
        for r in sizes:
            taps = _taps(everywhere, r, size, mode)
            self.vertical[r] = (_interp_matrix(r, size, mode, like), taps[0][0].tolist(), taps[-1][0].tolist())
            self.horizontal[r] = [(i.to(like.device), w.to(like)) for i, w in _taps(columns, r, size, mode)]
        self._across: dict[int, tuple[Tensor, Tensor]] = {}

    def across(self, k: int) -> tuple[Tensor, Tensor]:
        """The horizontal pass of k output rows as `F.embedding_bag` sums over the vertically interpolated
        rows [k * J, X] (map by map, row-major): source indices and weights [k * width, T], T taps per
        pixel (two per map for bilinear, one for nearest; a clamped edge tap may repeat a column)."""
        if k not in self._across:
            index, weight = [], []
            y = torch.arange(k, device=self.device)[:, None]
            offset = 0
            for r in self.sizes:
                for i, w in self.horizontal[r]:
                    index.append((offset + y * r + i[None, :]).reshape(-1))
                    weight.append(w.expand(k, -1).reshape(-1))
                offset += k * r
            self._across[k] = (torch.stack(index, dim=1), torch.stack(weight, dim=1))
        return self._across[k]


class _RowWindow:
    """The maps of one resolution, projected by every member's first layer for the source rows that the
    current chunk of output rows reads. Chunks go top to bottom, so the rows needed only move down: each
    source row is projected once, in blocks of at least `ahead` rows, and a block is dropped as soon as
    no later chunk reads it."""

    def __init__(self, maps: list[Tensor], weight: Tensor, bias: Tensor | None, plan: _Plan, ahead: int) -> None:
        self.maps, self.weight, self.bias = maps, weight, bias  # [N, C_i, r, r], [C, M*h1], [M*h1]
        self.size = maps[0].shape[-1]
        self.matrix, self.low, self.high = plan.vertical[self.size]
        self.ahead = ahead
        self.blocks: list[tuple[int, Tensor]] = []  # (first source row, projection [rows, r, N, M*h1])

    def _project(self, a: int, b: int) -> Tensor:
        x = _pixels_last(self.maps, slice(a, b), slice(None))  # [rows, r, N, C]
        out = x.view(-1, x.shape[-1]) @ self.weight
        if self.bias is not None:
            out.add_(self.bias)
        return out.view(*x.shape[:3], -1)

    def interpolate(self, y0: int, y1: int, out: Tensor) -> None:
        """Output rows y0..y1 of the projection, interpolated vertically only: out [y1 - y0, r * N * M*h1]."""
        lo, hi = self.low[y0], self.high[y1 - 1] + 1
        self.blocks = [(a, v) for a, v in self.blocks if a + v.shape[0] > lo]
        end = self.blocks[-1][0] + self.blocks[-1][1].shape[0] if self.blocks else lo
        if hi > end:
            start = max(end, lo)
            self.blocks.append((start, self._project(start, min(self.size, max(hi, start + self.ahead)))))
        first = True
        for a, v in self.blocks:  # out = matrix[y0:y1, lo:hi] @ projection[lo:hi], block by block
            s, e = max(a, lo), min(a + v.shape[0], hi)
            if s < e:
                part = (self.matrix[y0:y1, s:e], v[s - a : e - a].view(e - s, -1))
                if first:
                    torch.mm(*part, out=out)
                else:
                    out.addmm_(*part)
                first = False


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

    def _plan(self, sizes: tuple[int, ...], box: tuple[int, int, int, int], mode: Upsample, like: Tensor) -> _Plan:
        key = (sizes, box, mode, like.device, like.dtype)
        plans: dict[Any, _Plan] = self.__dict__.setdefault("_plans", {})  # not state: never saved
        if key not in plans:
            if len(plans) >= 8:
                plans.clear()
            plans[key] = _Plan(sizes, self.config.out_size, box, mode, like)
        return plans[key]

    @torch.no_grad()
    def segment(
        self,
        features: Sequence[Tensor],
        *,
        box: tuple[int, int, int, int] | None = None,
        mode: Upsample = "bilinear",
    ) -> Segmentation:
        """Labels and uncertainty over a rectangle of the canvas (top, left, height, width; None: all).

        Dense path for display, a chunk of output rows at a time (about `_CHUNK_FLOATS` first-layer
        activations; in train mode one chunk, so that BatchNorm sees the whole box). Per chunk, every
        member's first layer is evaluated at once as [pixels, M*h1]: full-resolution maps by one matrix
        product; every other map by interpolating its low-resolution projection, vertically (a small
        product over the few source rows that the chunk reads, `_RowWindow`: each source row projected
        once) then horizontally (one `embedding_bag` weighted sum over all resolutions: two taps per
        resolution and pixel). The later layers run batched over members, BatchNorm folded into the
        next Linear. Memory: a few chunks plus the projected source rows held, whatever the canvas
        (the official stack is N * D * H * W floats). Returns [N, height, width] maps.
        """
        self._check(features)
        size = self.config.out_size
        top, left, height, width = box if box is not None else (0, 0, size, size)
        if top < 0 or left < 0 or height < 1 or width < 1 or top + height > size or left + width > size:
            raise InputError(f"box {box} does not fit a {size}x{size} canvas")
        weights = _DenseWeights.build(self.classifiers(), features)
        like = features[0]
        n, mh = like.shape[0], weights.bias.numel()
        maps: dict[int, list[Tensor]] = {}
        for f in features:
            maps.setdefault(f.shape[-1], []).append(f)
        others = tuple(sorted(r for r in maps if r != size))
        plan = self._plan(others, (top, left, height, width), mode, like)
        budget = _CHUNK_FLOATS.get(like.device.type, _CHUNK_FLOATS_DEFAULT)
        # The first layer's bias rides on the coarsest projection (interpolation weights sum to one).
        windows = [
            _RowWindow(maps[r], weights.first[r], weights.bias if i == 0 else None, plan, budget // (r * n * mh))
            for i, r in enumerate(others)
        ]
        step = height if self.training else max(1, min(height, budget // (n * width * mh)))
        rows_buffer = like.new_empty(step * plan.columns * n * mh)  # reused by every chunk
        labels = torch.empty(n, height, width, dtype=torch.long, device=like.device)
        uncertainty = like.new_empty(n, height, width)
        pending: list[Tensor] = []  # member logits [M, K, pixels] of the chunks not yet summarised
        done = top
        for y0 in range(top, top + height, step):
            y1 = min(y0 + step, top + height)
            k = y1 - y0
            # Every member's first layer at the chunk's pixels, rows then columns then images: [P, M*h1].
            h: Tensor | None = None
            if others:
                rows = rows_buffer[: k * plan.columns * n * mh].view(-1, n * mh)  # vertically, map by map
                offset = 0
                for r, window in zip(others, windows, strict=True):
                    window.interpolate(y0, y1, rows[offset : offset + k * r].view(k, -1))
                    offset += k * r
                index, weight = plan.across(k)
                h = F.embedding_bag(index, rows, per_sample_weights=weight, mode="sum").view(-1, mh)
            if size in maps:
                x = _pixels_last(maps[size], slice(y0, y1), slice(left, left + width))
                x = x.view(-1, x.shape[-1])
                h = (x @ weights.first[size]).add_(weights.bias) if h is None else h.addmm_(x, weights.first[size])
            assert h is not None
            pending.append(self._dense_heads(h, weights))
            if y1 == top + height or sum(p.numel() for p in pending) >= budget:
                logits = torch.cat(pending, dim=2) if len(pending) > 1 else pending[0]  # [M, K, P]
                pending = []
                log_p = torch.log_softmax(logits, dim=1)
                probs = log_p.exp()
                member_entropy = (probs * log_p).sum((0, 1)).div_(-logits.shape[0])  # mean_i H(p_i)
                mean = probs.mean(0)
                u = (mean * mean.clamp_min(1e-12).log()).sum(0).neg_().sub_(member_entropy)
                out = slice(done - top, y1 - top)
                labels[:, out] = logits.sum(0).argmax(0).view(y1 - done, width, n).permute(2, 0, 1)
                uncertainty[:, out] = u.view(y1 - done, width, n).permute(2, 0, 1)
                done = y1
        return Segmentation(labels=labels, uncertainty=uncertainty)

    def _dense_heads(self, h: Tensor, weights: _DenseWeights) -> Tensor:
        """First-layer outputs [P, M*h1], bias included -> member logits [M, K, P].

        Pixels last: the products then have P columns rather than K (8 for the demo model).
        """
        members = self.classifiers()
        x = h.relu_().view(h.shape[0], len(members), -1).permute(1, 2, 0)  # [M, h1, P], a view
        if self.training:  # BatchNorm on batch statistics: each member's own modules
            return torch.stack([m.layers[2:](x[i].t()).t() for i, m in enumerate(members)])
        (w2, b2), (w3, b3) = weights.layers
        return torch.baddbmm(b3, w3, torch.baddbmm(b2, w2, x).relu_())


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

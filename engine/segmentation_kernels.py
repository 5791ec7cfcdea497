"""Interpolation kernels of the segmenter's pixel-set path (`Segmenter.forward` and `region_loss`).

`engine.segmenter` applies each member's first Linear before upsampling, so evaluating a set of pixels
comes down to reading a few rows of low-resolution projections with the weights `F.interpolate` would
use. That arithmetic lives here, apart from the model classes: the taps of 1-D interpolation, the sparse
row mixes that read a pixel set (one gather each way, whatever the number of maps and taps), the pixel set
that keeps its mixes from one optimisation step to the next, and the chunked cross-entropy that editing
optimises. It imports no model class, so `engine.segmenter` and `engine.dense_segmentation` can both build
on it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import InputError

Upsample = Literal["bilinear", "nearest"]


def interpolation_taps(dst: Tensor, src_size: int, dst_size: int, mode: Upsample) -> list[tuple[Tensor, Tensor]]:
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


def running_var(bn: nn.BatchNorm1d) -> Tensor:
    """The running variance that eval-mode BatchNorm divides by (the official layout tracks it)."""
    assert bn.running_var is not None
    return bn.running_var


def running_mean(bn: nn.BatchNorm1d) -> Tensor:
    """The running mean that eval-mode BatchNorm subtracts (the official layout tracks it)."""
    assert bn.running_mean is not None
    return bn.running_mean


class RowMix:
    """A fixed sparse mix of table rows: out[p] = sum_t weight[p, t] * table[index[p, t]], p < P.

    Both directions are one `embedding_bag` gather: forward with P bags of T taps, the transpose (the
    gradient's scatter) with the same pairs grouped by table row, one bag per row. On 2 CPU cores the
    per-tap gathers and `index_add_` it replaces took 5-12x longer (a 480-pixel region of the demo model:
    0.22 + 0.28 ms against 0.02 + 0.03; 8192 pixels of the paper's width: 254 + 159 ms against 28 + 35); on
    a GPU they launched 2T kernels instead of 2, and `index_add_` adds there in no fixed order. Indices are
    int32: a mix is kept for a whole optimisation (`PixelSet`), for up to every pixel of the canvas.
    """

    def __init__(self, index: Tensor, weight: Tensor, rows: int) -> None:
        self.weight, self.rows = weight, rows  # [P, T] float32
        self.index = index.to(torch.int32)  # [P, T]

    def apply(self, table: Tensor) -> Tensor:
        """table [rows, X] -> [P, X]."""
        w = self.weight.to(table.dtype)
        return F.embedding_bag(self.index, table, per_sample_weights=w, mode="sum")

    def transpose(self, grad: Tensor) -> Tensor:
        """grad [P, X] -> [rows, X]: the gradient of `apply` with respect to the table."""
        pixels, weight, offsets = self._by_row
        return F.embedding_bag(pixels, grad, offsets, per_sample_weights=weight.to(grad.dtype), mode="sum")

    @functools.cached_property
    def _by_row(self) -> tuple[Tensor, Tensor, Tensor]:
        """The pairs grouped by table row: each pair's pixel and weight, and each row's first pair (a row read
        by no pixel: an empty bag). Built at the first backward: a forward-only mix never needs it."""
        flat = self.index.reshape(-1).long()
        order = torch.argsort(flat, stable=True)
        pixels = (order // self.index.shape[1]).to(torch.int32)
        counts = torch.bincount(flat, minlength=self.rows)
        offsets = (torch.cumsum(counts, 0) - counts).to(torch.int32)
        return pixels, self.weight.reshape(-1)[order].contiguous(), offsets


class _Mixed(torch.autograd.Function):
    """`RowMix.apply`, differentiable in the table through the mix's transpose."""

    @staticmethod
    def forward(ctx: Any, table: Tensor, mix: RowMix) -> Tensor:
        ctx.mix = mix
        return mix.apply(table)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return ctx.mix.transpose(grad.contiguous()), None


def mixed(table: Tensor, mix: RowMix) -> Tensor:
    """`mix.apply(table)`, through autograd only when a gradient is wanted."""
    if not (torch.is_grad_enabled() and table.requires_grad):
        return mix.apply(table)
    out: Tensor = _Mixed.apply(table, mix)
    return out


@dataclass(frozen=True)
class Layout:
    """How `Segmenter._prepare` laid out the maps for a pixel set: the resolutions projected before
    interpolation (stacked in one table, in this order) and those interpolated raw, then projected."""

    early: tuple[int, ...]
    late: tuple[int, ...]
    batch: int


@dataclass
class Prepared:
    """One call's maps, laid out for pixel reads: the early projections stacked [N * sum(r*r), X] (None when
    there is none), and per late resolution its raw maps [N * r*r, C] with the first-layer weight [X, C]."""

    layout: Layout
    table: Tensor | None
    raws: list[Tensor]
    weights: list[Tensor]

    def tensors(self) -> list[Tensor]:
        """The differentiable inputs, table first."""
        return ([] if self.table is None else [self.table]) + self.raws

    @classmethod
    def of(cls, layout: Layout, weights: list[Tensor], tensors: Sequence[Tensor]) -> Prepared:
        """The inverse of `tensors`."""
        early = 1 if layout.early else 0
        return cls(layout, tensors[0] if early else None, list(tensors[early:]), weights)


@dataclass(frozen=True)
class ChunkPlan:
    """The mixes that read one chunk of a pixel set: the early table's, then each late resolution's."""

    early: RowMix | None
    late: tuple[RowMix, ...]


class PixelSet:
    """A fixed set of canvas pixels (flat row-major indices) and, built once per layout, the mixes that read
    them: an optimisation loop evaluates the same region at every step, so its interpolation taps (and the
    bounds check, a device sync) are computed at the first step only."""

    def __init__(self, pixels: Tensor, size: int) -> None:
        if pixels.ndim != 1:
            raise InputError(f"pixels must be a flat index vector, got {list(pixels.shape)}")
        if pixels.numel() and (int(pixels.min()) < 0 or int(pixels.max()) >= size * size):
            raise InputError(f"pixel indices must lie in [0, {size * size})")
        self.pixels, self.size = pixels, size
        self._plans: dict[tuple[Layout, Upsample, int], list[ChunkPlan]] = {}

    def __len__(self) -> int:
        return self.pixels.numel()

    def plans(self, layout: Layout, mode: Upsample, chunk: int) -> list[ChunkPlan]:
        key = (layout, mode, chunk)
        if key not in self._plans:
            self._plans[key] = [self._plan(part, layout, mode) for part in self.pixels.split(chunk)]
        return self._plans[key]

    def _plan(self, part: Tensor, layout: Layout, mode: Upsample) -> ChunkPlan:
        early: list[tuple[Tensor, Tensor]] = []
        offset = 0
        for r in layout.early:
            index, weight = self._taps(part, r, mode)
            early.append((index + offset, weight))
            offset += r * r
        early_mix = None
        if early:
            index, weight = torch.cat([i for i, _ in early], 1), torch.cat([w for _, w in early], 1)
            early_mix = _batched(index, weight, offset, layout.batch)
        late = tuple(_batched(*self._taps(part, r, mode), r * r, layout.batch) for r in layout.late)
        return ChunkPlan(early_mix, late)

    def _taps(self, part: Tensor, r: int, mode: Upsample) -> tuple[Tensor, Tensor]:
        """Source rows [P, T] of an r x r map and their weights [P, T] for the pixels `part`."""
        ys, xs = part // self.size, part % self.size
        taps = [
            (yi * r + xi, wy * wx)
            for yi, wy in interpolation_taps(ys, r, self.size, mode)
            for xi, wx in interpolation_taps(xs, r, self.size, mode)
        ]
        return torch.stack([t[0] for t in taps], 1), torch.stack([t[1] for t in taps], 1).float()


def _batched(index: Tensor, weight: Tensor, rows: int, batch: int) -> RowMix:
    """The mix of one sample's rows repeated for `batch` samples stacked sample-major in the table."""
    shifts = torch.arange(batch, device=index.device).repeat_interleave(index.shape[0]) * rows
    return RowMix(index.repeat(batch, 1) + shifts[:, None], weight.repeat(batch, 1), rows * batch)


def first_layer(prepared: Prepared, plan: ChunkPlan) -> Tensor:
    """Every member's first Linear (without bias) at the chunk's pixels: [N * P, M*h1]."""
    h = None if prepared.table is None or plan.early is None else mixed(prepared.table, plan.early)
    for raw, weight, mix in zip(prepared.raws, prepared.weights, plan.late, strict=True):
        acc = mixed(raw, mix) @ weight.t().to(raw.dtype)  # a no-op cast but under autocast (bfloat16 maps)
        h = acc if h is None else h + acc
    assert h is not None
    return h


def chunked_cross_entropy(
    heads: Callable[[Tensor], Tensor], prepared: Prepared, plans: list[ChunkPlan], targets: Tensor, chunk: int
) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy of the ensemble's mean logits and the count of pixels already right, a chunk of
    pixels at a time (no gradient: `RegionCrossEntropy` differentiates it)."""
    n = prepared.layout.batch
    total = torch.zeros((), dtype=torch.float32, device=targets.device)  # cross-entropy is float32
    correct = torch.zeros((), dtype=torch.long, device=targets.device)
    for plan, wanted in zip(plans, targets.split(chunk), strict=True):
        h = first_layer(prepared, plan)
        logits = heads(h.view(n, -1, h.shape[-1])).mean(1)  # [N, p, K]
        flat, wanted_n = logits.reshape(-1, logits.shape[-1]), wanted.repeat(n)
        total += F.cross_entropy(flat, wanted_n, reduction="sum")
        correct += (flat.argmax(-1) == wanted_n).sum()
    return total, correct


class RegionCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of the ensemble's mean logits over a pixel set, evaluated in chunks.

    `heads` maps first-layer outputs [N, P, M*h1] to member logits [N, M, P, K] (`Segmenter._heads`).

    Autograd through a chunked loop would allocate a full-size gradient for every table per chunk. Here
    backward recomputes each chunk, differentiates the (frozen) heads with respect to the chunk's
    first-layer outputs only, and gathers those gradients into one buffer per table (the mixes'
    transposes). Memory is the tables, their gradients and one chunk.
    """

    @staticmethod
    def forward(
        ctx: Any,
        heads: Callable[[Tensor], Tensor],
        prepared: Prepared,
        plans: list[ChunkPlan],
        targets: Tensor,
        chunk: int,
        *tensors: Tensor,
    ) -> tuple[Tensor, Tensor]:
        total, correct = chunked_cross_entropy(heads, prepared, plans, targets, chunk)
        ctx.heads, ctx.plans, ctx.chunk = heads, plans, chunk
        ctx.layout, ctx.weights = prepared.layout, prepared.weights
        ctx.save_for_backward(targets, *tensors)
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx: Any, grad_total: Tensor, _: Tensor) -> tuple[Tensor | None, ...]:
        targets, *tensors = ctx.saved_tensors
        heads: Callable[[Tensor], Tensor] = ctx.heads
        prepared = Prepared.of(ctx.layout, ctx.weights, tensors)
        n = prepared.layout.batch
        # float32 accumulators: under bfloat16 autocast the maps are bfloat16, and summing many small
        # contributions in bfloat16 would lose most of them
        grads: list[Tensor | None] = [None] * len(tensors)
        for plan, wanted in zip(ctx.plans, targets.split(ctx.chunk), strict=True):
            h = first_layer(prepared, plan).requires_grad_(True)
            with torch.enable_grad():
                logits = heads(h.view(n, -1, h.shape[-1])).mean(1)
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), wanted.repeat(n), reduction="sum")
                (dh,) = torch.autograd.grad(loss, h)
            dh = dh * grad_total
            parts = [] if plan.early is None else [plan.early.transpose(dh.float())]
            for weight, mix in zip(prepared.weights, plan.late, strict=True):
                parts.append(mix.transpose((dh @ weight.to(dh.dtype)).float()))  # back through the projection
            grads = [p if g is None else g.add_(p) for g, p in zip(grads, parts, strict=True)]  # in place: one buffer
        out = [None if g is None else g.to(t.dtype) for g, t in zip(grads, tensors, strict=True)]
        return (None, None, None, None, None, *out)

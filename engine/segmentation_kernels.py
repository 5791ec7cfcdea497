"""Interpolation kernels of the segmenter's pixel-set path (`Segmenter.forward` and `region_loss`).

`engine.segmenter` applies each member's first Linear before upsampling, so evaluating a set of pixels
comes down to reading a few rows of low-resolution projections with the weights `F.interpolate` would
use. That arithmetic lives here, apart from the model classes: the taps of 1-D interpolation, a gather
whose backward keeps no per-tap temporaries, and the chunked cross-entropy that editing optimises. It
imports no model class, so `engine.segmenter` and `engine.dense_segmentation` can both build on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import InputError

Upsample = Literal["bilinear", "nearest"]
Prepared = list[tuple[int, Tensor, Tensor | None]]  # (resolution, values [N, r*r, X], late weight)
TapPlan = list[tuple[Tensor, Tensor]]  # per resolution: source rows [T, P], weights [T, P]


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


def _interpolate_rows(values: Tensor, index: Tensor, weights: Tensor) -> Tensor:
    out: Tensor = _InterpolateRows.apply(values, index, weights)
    return out


def merge_nearest(prepared: Prepared) -> Prepared:
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


def tap_plan(prepared: Prepared, pixels: Tensor, size: int, mode: Upsample) -> TapPlan:
    """Per resolution: source rows [T, P] and weights [T, P] that interpolation reads for `pixels` (flat
    row-major indices into the size x size canvas)."""
    if pixels.numel() and (int(pixels.min()) < 0 or int(pixels.max()) >= size * size):
        raise InputError(f"pixel indices must lie in [0, {size * size})")
    ys, xs = pixels // size, pixels % size
    plan = []
    for r, values, _ in prepared:
        taps = [
            (yi * r + xi, wy * wx)
            for yi, wy in interpolation_taps(ys, r, size, mode)
            for xi, wx in interpolation_taps(xs, r, size, mode)
        ]
        plan.append((torch.stack([t[0] for t in taps]), torch.stack([t[1] for t in taps]).to(values.dtype)))
    return plan


def first_layer(prepared: Prepared, plan: TapPlan) -> Tensor:
    """Every member's first Linear (without bias) at the planned pixels: [N, P, M*h1]."""
    h: Tensor | None = None
    for (_, values, weight), (index, weights) in zip(prepared, plan, strict=True):
        acc = _interpolate_rows(values, index, weights)  # [N, P, X]
        if weight is not None:
            acc = acc @ weight.t().to(acc.dtype)  # a no-op but under autocast, whose maps may be bfloat16
        h = acc if h is None else h + acc
    assert h is not None
    return h


class RegionCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of the ensemble's mean logits over a pixel set, evaluated in chunks.

    `heads` maps first-layer outputs [N, P, M*h1] to member logits [N, M, P, K] (`Segmenter._heads`);
    `size` is the canvas side that `pixels` index.

    Autograd through a chunked loop would allocate a full-size gradient for every projected map per
    chunk. Here backward recomputes each chunk, differentiates the (frozen) heads with respect to the
    chunk's first-layer outputs only, and scatters those gradients into one buffer per map. Memory is
    the projected maps, their gradients and one chunk.
    """

    @staticmethod
    def forward(
        ctx: Any,
        heads: Callable[[Tensor], Tensor],
        size: int,
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
            logits = heads(first_layer(prepared, tap_plan(prepared, part, size, mode))).mean(1)  # [N, p, K]
            flat, wanted_n = logits.reshape(-1, logits.shape[-1]), wanted.repeat(logits.shape[0])
            total += F.cross_entropy(flat, wanted_n, reduction="sum")
            correct += (flat.argmax(-1) == wanted_n).sum()
        ctx.heads, ctx.size, ctx.mode, ctx.chunk = heads, size, mode, chunk
        ctx.prepared = [(r, None, w) for r, _, w in prepared]
        ctx.save_for_backward(pixels, targets, *values)
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx: Any, grad_total: Tensor, _: Tensor) -> tuple[Tensor | None, ...]:
        pixels, targets, *values = ctx.saved_tensors
        heads: Callable[[Tensor], Tensor] = ctx.heads
        prepared = [(r, v, w) for (r, _, w), v in zip(ctx.prepared, values, strict=True)]
        # float32 accumulators: under bfloat16 autocast the maps are bfloat16, and summing many small
        # contributions in bfloat16 would lose most of them
        grads = [torch.zeros_like(v, dtype=torch.float32) for v in values]
        for part, wanted in zip(pixels.split(ctx.chunk), targets.split(ctx.chunk), strict=True):
            plan = tap_plan(prepared, part, ctx.size, ctx.mode)
            h = first_layer(prepared, plan).requires_grad_(True)
            with torch.enable_grad():
                logits = heads(h).mean(1)
                loss = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), wanted.repeat(logits.shape[0]), reduction="sum"
                )
                (dh,) = torch.autograd.grad(loss, h)
            dh = dh * grad_total
            for (_, _, weight), (index, weights), g in zip(prepared, plan, grads, strict=True):
                d = (dh @ weight.to(dh.dtype) if weight is not None else dh).float()  # back through the projection
                if index.shape[0] == 1:
                    g.index_add_(1, index[0], d)
                    continue
                for t in range(index.shape[0]):
                    g.index_add_(1, index[t], d * weights[t][None, :, None].float())
        return (None, None, None, None, None, None, None, *(g.to(v.dtype) for g, v in zip(grads, values, strict=True)))

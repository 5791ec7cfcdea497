"""The chunked dense path behind `Segmenter.segment`: every pixel of a box, a few output rows at a time.

Rendering labels every pixel, where the pixel-set path's per-pixel gathers are slow and the official
[N, D, H, W] stack is 6.3 GB at 512 px. This module evaluates all members at once instead: their first
layers as one product, each low-resolution projection interpolated separably (a small product down the
rows, then across the columns for all resolutions at once: a weighted gather, or on GPUs a tiled
product), the later layers batched over members with BatchNorm folded in, and the canvas walked in row
chunks that fit in cache, so that memory stays a few chunks whatever the canvas. It imports no model
class (members are read through `Member`), so `engine.segmenter` can import it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.segmentation_kernels import Upsample, interpolation_taps, running_mean, running_var


class Member(Protocol):
    """What the dense path reads of an ensemble member (`engine.segmenter.PixelClassifier`): the
    official layout Linear, ReLU, BN, Linear, ReLU, BN, Linear."""

    @property
    def layers(self) -> nn.Sequential: ...

    @property
    def first(self) -> nn.Linear: ...


@dataclass(frozen=True)
class DenseWeights:
    """The ensemble as `segment` evaluates it: every member at once. Derived from the parameters; the
    segmenter keeps it while they are unchanged (`engine.frozen`), rebuilding it when they change."""

    first: dict[int, Tensor]  # map resolution -> [C_r, M*h1]: all members' first-layer columns for its maps
    bias: Tensor  # [M*h1]: all members' first-layer biases
    layers: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]  # later Linears: [M, out, in], [M, out, 1]

    @staticmethod
    def build(members: Sequence[Member], features: Sequence[Tensor]) -> DenseWeights:
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
            scale = torch.stack([bn.weight for bn in bns]) * torch.rsqrt(
                torch.stack([running_var(bn) for bn in bns]) + eps
            )
            shift = torch.stack([bn.bias for bn in bns]) - torch.stack([running_mean(bn) for bn in bns]) * scale
            weight = torch.stack([lin.weight for lin in lins])  # [M, out, in]
            bias = torch.stack([lin.bias for lin in lins])[:, :, None] + torch.bmm(weight, shift[:, :, None])
            layers.append((weight * scale[:, None], bias))
        return DenseWeights(first, torch.cat([m.first.bias for m in members]), (layers[0], layers[1]))


def _interp_matrix(src: int, dst: int, mode: Upsample, like: Tensor) -> Tensor:
    """The [dst, src] matrix of 1-D `F.interpolate` (align_corners=False) from src to dst samples."""
    out = like.new_zeros(dst, src)
    rows = torch.arange(dst, device=like.device)
    for idx, weight in interpolation_taps(rows, src, dst, mode):
        out.index_put_((rows, idx.to(like.device)), weight.to(like), accumulate=True)
    return out


def _pixels_last(maps: Sequence[Tensor], rows: slice, cols: slice) -> Tensor:
    """A window of maps [N, C_i, r, r] of one resolution as one contiguous [rows, cols, N, sum C_i]."""
    parts = [m[:, :, rows, cols].permute(2, 3, 0, 1) for m in maps]
    return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0].contiguous()


def _project_window(
    maps: Sequence[Tensor], rows: slice, cols: slice, weight: Tensor, out: Tensor | None = None
) -> Tensor:
    """The window's pixels [rows * cols * N, sum C_i] (as `_pixels_last`) times `weight` [sum C_i, X], added to
    `out` when given. For one image and whole rows, each map's window is already a transposed [pixels, C_i]
    matrix that the product reads in place: no copy into pixels-last order (a sixth of a demo segmentation)."""
    n, _, _, r = maps[0].shape
    if n == 1 and cols.indices(r) == (0, r, 1):
        offset = 0
        for m in maps:
            c = m.shape[1]
            x, w = m[0, :, rows].reshape(c, -1).t(), weight[offset : offset + c]
            out = x @ w if out is None else out.addmm_(x, w)
            offset += c
        assert out is not None
        return out
    x = _pixels_last(maps, rows, cols)
    x = x.view(-1, x.shape[-1])
    return x @ weight if out is None else out.addmm_(x, weight)


class DensePlan:
    """Interpolation geometry of `segment` for one canvas, box, mode and set of map resolutions (those
    other than the canvas's); it depends on no weight or feature value, so segmenters cache it."""

    def __init__(
        self,
        sizes: Sequence[int],
        size: int,
        box: tuple[int, int, int, int],
        mode: Upsample,
        like: Tensor,
        tile: int = 0,
    ) -> None:
        """`tile` picks the horizontal pass (`horizontal`): 0 for `embedding_bag`, else the output columns of
        one tile of the tiled product."""
        _, left, _, width = box
        self.sizes, self.width, self.tile = tuple(sizes), width, tile
        self.device, self.dtype = like.device, like.dtype
        self.columns = sum(sizes)  # J: the source columns of all these maps together
        # Per resolution, vertically: the [size, r] matrix and the first and last source row of each output row.
        self.vertical: dict[int, tuple[Tensor, list[int], list[int]]] = {}
        self.column_taps: dict[int, list[tuple[Tensor, Tensor]]] = {}  # per tap: source column, weight [width]
        everywhere, columns = torch.arange(size), torch.arange(left, left + width)
        for r in sizes:
            taps = interpolation_taps(everywhere, r, size, mode)
            self.vertical[r] = (_interp_matrix(r, size, mode, like), taps[0][0].tolist(), taps[-1][0].tolist())
            self.column_taps[r] = [
                (i.to(like.device), w.to(like)) for i, w in interpolation_taps(columns, r, size, mode)
            ]
        self._across: dict[int, tuple[Tensor, Tensor]] = {}
        self._tiles: dict[int, tuple[Tensor, Tensor]] = {}

    def horizontal(self, rows: Tensor, k: int) -> Tensor:
        """The horizontal pass of k output rows: the vertically interpolated rows [k * J, X] (map by map,
        row-major) -> [k * width, X] (row-major pixels), summed over all resolutions."""
        if not self.tile:
            index, weight = self.across(k)
            return F.embedding_bag(index, rows, per_sample_weights=weight, mode="sum")
        index, matrix = self.tiles(k)
        tiles, span = matrix.shape[0], matrix.shape[2]
        windows = rows.index_select(0, index).view(tiles, span, -1)  # [k * tiles, span, X]
        out = torch.bmm(matrix, windows).view(k, -1, rows.shape[1])  # [k, tiles * tile, X]
        if out.shape[1] != self.width:  # the last tile's padding columns
            out = out[:, : self.width]
        return out.reshape(-1, rows.shape[1])

    def across(self, k: int) -> tuple[Tensor, Tensor]:
        """The horizontal pass of k output rows as `F.embedding_bag` sums over the vertically interpolated
        rows [k * J, X] (map by map, row-major): source indices and weights [k * width, T], T taps per
        pixel (two per map for bilinear, one for nearest; a clamped edge tap may repeat a column)."""
        if k not in self._across:
            index, weight = [], []
            y = torch.arange(k, device=self.device)[:, None]
            offset = 0
            for r in self.sizes:
                for i, w in self.column_taps[r]:
                    index.append((offset + y * r + i[None, :]).reshape(-1))
                    weight.append(w.expand(k, -1).reshape(-1))
                offset += k * r
            self._across[k] = (torch.stack(index, dim=1), torch.stack(weight, dim=1))
        return self._across[k]

    def tiles(self, k: int) -> tuple[Tensor, Tensor]:
        """The horizontal pass of k output rows as one batched product, for GPUs: each tile of `tile` output
        columns reads, of every resolution, the short run of source columns under it (`span` in all), so
        the pass is [tile, span] x [span, X] per tile and row. Its memory traffic is a gather of the runs and
        the product, about 4 X floats per pixel, where the weighted gather of `across` reads X floats per
        tap (14 taps at 512 px): a third of the bytes, for arithmetic that a GPU has to spare. On a CPU the
        gather's chunks stay in cache and win (`engine.segmenter._HORIZONTAL_TILE`).
        Returns the gather's row indices [k * tiles * span] and the matrices [k * tiles, tile, span]."""
        if k not in self._tiles:
            tiles = -(-self.width // self.tile)
            columns = torch.arange(tiles * self.tile).clamp(max=self.width - 1).view(tiles, self.tile)
            real = (torch.arange(tiles * self.tile) < self.width).view(tiles, self.tile, 1).float()
            y = torch.arange(k)[:, None, None]
            index, matrix, offset = [], [], 0
            for r in self.sizes:
                taps = [(i.cpu()[columns], w.cpu()[columns]) for i, w in self.column_taps[r]]  # [tiles, tile]
                sources = torch.stack([i for i, _ in taps])
                low, high = sources.amin(dim=(0, 2)), sources.amax(dim=(0, 2))
                span = int((high - low).max()) + 1
                start = low.clamp(max=r - span)  # every tile reads `span` columns, all within the map
                part = torch.zeros(tiles, self.tile, span)
                for i, w in taps:
                    part.scatter_add_(2, (i - start[:, None])[..., None], w[..., None] * real)
                index.append(offset + y * r + start[None, :, None] + torch.arange(span))  # [k, tiles, span]
                matrix.append(part)
                offset += k * r
            every = torch.cat(matrix, 2).repeat(k, 1, 1)
            self._tiles[k] = (torch.cat(index, 2).reshape(-1).to(self.device), every.to(self.device, self.dtype))
        return self._tiles[k]


class _RowWindow:
    """The maps of one resolution, projected by every member's first layer for the source rows that the
    current chunk of output rows reads. Chunks go top to bottom, so the rows needed only move down: each
    source row is projected once, in blocks of at least `ahead` rows, and a block is dropped as soon as
    no later chunk reads it."""

    def __init__(self, maps: list[Tensor], weight: Tensor, bias: Tensor | None, plan: DensePlan, ahead: int) -> None:
        self.maps, self.weight, self.bias = maps, weight, bias  # [N, C_i, r, r], [C, M*h1], [M*h1]
        self.size = maps[0].shape[-1]
        self.matrix, self.low, self.high = plan.vertical[self.size]
        self.ahead = ahead
        self.blocks: list[tuple[int, Tensor]] = []  # (first source row, projection [rows, r, N, M*h1])

    def _project(self, a: int, b: int) -> Tensor:
        out = _project_window(self.maps, slice(a, b), slice(None), self.weight)  # [rows * r * N, M*h1]
        if self.bias is not None:
            out.add_(self.bias)
        return out.view(b - a, self.size, self.maps[0].shape[0], -1)

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


def _dense_heads(members: Sequence[Member], h: Tensor, weights: DenseWeights, training: bool) -> Tensor:
    """First-layer outputs [P, M*h1], bias included -> member logits [M, K, P].

    Pixels last: the products then have P columns rather than K (8 for the demo model).
    """
    x = h.relu_().view(h.shape[0], len(members), -1).permute(1, 2, 0)  # [M, h1, P], a view
    if training:  # BatchNorm on batch statistics: each member's own modules
        return torch.stack([m.layers[2:](x[i].t()).t() for i, m in enumerate(members)])
    (w2, b2), (w3, b3) = weights.layers
    return torch.baddbmm(b3, w3, torch.baddbmm(b2, w2, x).relu_())


def segment_in_chunks(
    members: Sequence[Member],
    weights: DenseWeights,
    features: Sequence[Tensor],
    plan: DensePlan,
    size: int,
    box: tuple[int, int, int, int],
    budget: int,
    *,
    training: bool,
    uncertainty: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Labels [N, height, width] int64 and uncertainty [N, height, width] (None unless `uncertainty`: its
    entropies are about a twentieth of a render) over `box` (top, left, height, width) of the size x size
    canvas; the caller has checked features and box, and turns off autograd.
    `weights` is `DenseWeights.build(members, features)`, which the caller may keep between calls.

    `plan` covers the maps of resolutions other than `size` (`plan.sizes`); `budget` is the number of
    first-layer activations evaluated at once (in training mode one chunk, so that BatchNorm sees the
    whole box).
    """
    top, left, height, width = box
    like = features[0]
    n, mh = like.shape[0], weights.bias.numel()
    maps: dict[int, list[Tensor]] = {}
    for f in features:
        maps.setdefault(f.shape[-1], []).append(f)
    others = plan.sizes
    # The first layer's bias rides on the coarsest projection (interpolation weights sum to one).
    windows = [
        _RowWindow(maps[r], weights.first[r], weights.bias if i == 0 else None, plan, budget // (r * n * mh))
        for i, r in enumerate(others)
    ]
    step = height if training else max(1, min(height, budget // (n * width * mh)))
    rows_buffer = like.new_empty(step * plan.columns * n * mh)  # reused by every chunk
    labels = torch.empty(n, height, width, dtype=torch.long, device=like.device)
    disagreement = like.new_empty(n, height, width) if uncertainty else None
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
            h = plan.horizontal(rows, k).view(-1, mh)
        if size in maps:
            ys, xs = slice(y0, y1), slice(left, left + width)
            if h is None:
                h = _project_window(maps[size], ys, xs, weights.first[size]).add_(weights.bias)
            else:
                h = _project_window(maps[size], ys, xs, weights.first[size], h)
        assert h is not None
        pending.append(_dense_heads(members, h, weights, training))
        if y1 == top + height or sum(p.numel() for p in pending) >= budget:
            logits = torch.cat(pending, dim=2) if len(pending) > 1 else pending[0]  # [M, K, P]
            pending = []
            out = slice(done - top, y1 - top)
            # max(0).indices, not argmax(0): the same first-maximum rule, 10x faster across a leading dim here.
            best = logits.sum(0).max(0).indices
            labels[:, out] = best.view(y1 - done, width, n).permute(2, 0, 1)
            if disagreement is not None:
                log_p = torch.log_softmax(logits, dim=1)
                probs = log_p.exp()
                member_entropy = (probs * log_p).sum((0, 1)).div_(-logits.shape[0])  # mean_i H(p_i)
                mean = probs.mean(0)
                u = (mean * mean.clamp_min(1e-12).log()).sum(0).neg_().sub_(member_entropy)
                disagreement[:, out] = u.view(y1 - done, width, n).permute(2, 0, 1)
            done = y1
    return labels, disagreement

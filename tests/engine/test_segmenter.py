from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch

import engine.segmenter as segmenter_module
from engine.checkpoints import strip_prefix
from engine.dense_segmentation import DensePlan
from engine.errors import InputError
from engine.generator import Generator, GeneratorConfig
from engine.segmentation_kernels import PixelSet, RowMix, mixed
from engine.segmenter import (
    PixelClassifier,
    Segmenter,
    SegmenterConfig,
    js_uncertainty,
    pixels_from_mask,
    upsample_features,
)
from tests.conftest import randomise_batch_norm, reference

# Maps of four different resolutions, some sharing one, as in a real generator.
CFG = GeneratorConfig(size=64, style_dim=32, n_mlp=1, channels=(16, 16, 8, 8, 4))


def _setup(num_classes: int = 6, num_models: int = 3) -> tuple[Generator, Segmenter, list[torch.Tensor]]:
    torch.manual_seed(0)
    g = Generator(CFG).eval()
    s = Segmenter(SegmenterConfig(tuple(c for c, _ in CFG.feature_shapes), num_classes, 64, num_models)).eval()
    randomise_batch_norm(s)
    out = g.synthesis(g.sample_w_plus(2, seed=0), return_features=True)
    assert out.features is not None
    return g, s, out.features


def _roi() -> torch.Tensor:
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[10:21, 3:40] = True
    mask[63, 63] = mask[0, 0] = mask[33, 7] = True  # corners: the clamped edges of bilinear sampling
    return mask


def test_classifier_matches_official_keys() -> None:
    ref = reference("classifier_car.json")
    with torch.device("meta"):
        model = torch.nn.DataParallel(PixelClassifier(6016, (256, 128), 32))
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    assert ours == [(e["key"], e["shape"], e["dtype"]) for e in ref["entries"]]
    # the official hidden sizes follow from the class count
    assert SegmenterConfig((6016,), 32, 512).hidden_sizes == (256, 128)
    assert SegmenterConfig((6016,), 20, 512).hidden_sizes == (128, 32)
    keys = strip_prefix(model.state_dict(), "module.")
    assert list(keys) == list(PixelClassifier(8, (4, 4), 3).state_dict())


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_roi_path_equals_full_official_computation(mode: str) -> None:
    _, s, features = _setup()
    reference_logits = s.logits_reference(features, mode=mode)  # full [N, D, H, W] stack
    assert reference_logits.shape == (2, 3, 64 * 64, 6)
    full = s(features, mode=mode)
    torch.testing.assert_close(full, reference_logits, rtol=1e-4, atol=1e-4)
    pixels = pixels_from_mask(_roi())
    roi = s(features, pixels, mode=mode)
    torch.testing.assert_close(roi, reference_logits[:, :, pixels], rtol=1e-4, atol=1e-4)
    # few pixels: the high-resolution maps are interpolated raw, then projected (the other branch)
    few = pixels[:7]
    torch.testing.assert_close(s(features, few, mode=mode), reference_logits[:, :, few], rtol=1e-4, atol=1e-4)


def test_upsampling_mode_matters() -> None:
    _, s, features = _setup()
    pixels = pixels_from_mask(_roi())
    assert not torch.allclose(s(features, pixels, mode="bilinear"), s(features, pixels, mode="nearest"))


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_dense_segmentation_equals_reference(mode: str) -> None:
    _, s, features = _setup()
    logits = s.logits_reference(features, mode=mode).reshape(2, 3, 64, 64, 6)
    box = (8, 4, 48, 56)
    seg = s.segment(features, box=box, mode=mode)
    crop = logits[:, :, 8:56, 4:60]
    assert seg.labels.shape == (2, 48, 56)
    assert torch.equal(seg.labels, crop.mean(1).argmax(-1))
    expected = js_uncertainty(crop.reshape(2, 3, -1, 6)).reshape(2, 48, 56)
    torch.testing.assert_close(seg.uncertainty, expected, rtol=1e-4, atol=1e-5)


def test_segmenting_by_the_first_members_is_the_smaller_ensemble() -> None:
    _, s, features = _setup()
    logits = s.logits_reference(features, mode="bilinear").reshape(2, 3, 64, 64, 6)
    for k in (1, 2, 3):
        seg = s.segment(features, mode="bilinear", members=k)
        assert torch.equal(seg.labels, logits[:, :k].mean(1).argmax(-1))
        expected = js_uncertainty(logits[:, :k].reshape(2, k, -1, 6)).reshape(2, 64, 64)
        torch.testing.assert_close(seg.uncertainty, expected, rtol=1e-4, atol=1e-5)
    assert not torch.equal(s.segment(features, members=1).labels, s.segment(features).labels)
    for bad in (0, 4):
        with pytest.raises(InputError, match="members"):
            s.segment(features, members=bad)


def _dense_check(s: Segmenter, features: list[torch.Tensor], mode: str, box: tuple[int, int, int, int]) -> None:
    """`segment` over `box` equals the official computation: labels exactly, uncertainty to rounding; without
    the uncertainty map, the same labels and no map."""
    n, size = features[0].shape[0], s.config.out_size
    top, left, height, width = box
    logits = s.logits_reference(features, mode=mode).reshape(n, s.config.num_models, size, size, -1)
    crop = logits[:, :, top : top + height, left : left + width]
    seg = s.segment(features, box=box, mode=mode)
    assert torch.equal(seg.labels, crop.mean(1).argmax(-1))
    expected = js_uncertainty(crop.reshape(n, s.config.num_models, height * width, -1)).reshape(n, height, width)
    torch.testing.assert_close(seg.uncertainty, expected, rtol=1e-4, atol=1e-5)
    labels_only = s.segment(features, box=box, mode=mode, uncertainty=False)
    assert torch.equal(labels_only.labels, seg.labels) and labels_only.uncertainty is None


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("budget", [1, 3 * 2 * 56 * 384 + 5])
@pytest.mark.parametrize("images", [1, 2])
@pytest.mark.parametrize("tile", [0, 5, 64])
def test_dense_segmentation_in_chunks_equals_reference(
    mode: str, budget: int, images: int, tile: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # budget 1: one output row per chunk, each source row projected on its own, a summary per chunk.
    # The other: 3 rows of N * width * M*h1 = 2 * 56 * 384 activations per chunk (the last one shorter),
    # source rows projected 5 at a time at 32 px, so that a chunk often reads two projected blocks.
    # One image reads the maps' rows in place (whole rows: every low-resolution window, and the
    # full-resolution maps in the whole-width box); two go through the pixels-last copy.
    # Tile 0 is the CPU's weighted gather across the columns; 5 and 64 the GPUs' tiled product, with
    # tiles that do not divide the box (a padded last tile) and one wider than the box.
    monkeypatch.setattr(segmenter_module, "_CHUNK_FLOATS", {"cpu": budget})
    monkeypatch.setattr(segmenter_module, "_HORIZONTAL_TILE", {"cpu": tile})
    _, s, features = _setup()
    features = [f[:images] for f in features]
    for box in [(8, 4, 47, 56), (8, 0, 47, 64)]:
        _dense_check(s, features, mode, box)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize(
    "sizes",
    [
        (3, 6, 12, 6, 12),  # no full-resolution map; equal resolutions apart in the channel order
        (24, 24),  # full resolution only: no interpolation at all
        (5, 24, 10),  # sizes that do not divide the canvas (bilinear and nearest taps fall anywhere)
    ],
)
@pytest.mark.parametrize("tile", [0, 4])
def test_dense_segmentation_handles_any_map_layout(
    mode: str, sizes: tuple[int, ...], tile: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segmenter_module, "_HORIZONTAL_TILE", {"cpu": tile})
    gen = torch.Generator().manual_seed(0)
    channels = tuple(3 + i for i in range(len(sizes)))
    torch.manual_seed(0)
    s = Segmenter(SegmenterConfig(channels, 5, 24, 4, hidden=(16, 8))).eval()
    randomise_batch_norm(s)
    features = [torch.randn(3, c, r, r, generator=gen) for c, r in zip(channels, sizes, strict=True)]
    for box in [(0, 0, 24, 24), (5, 2, 13, 19)]:
        _dense_check(s, features, mode, box)
        _dense_check(s, [f[:1] for f in features], mode, box)


def test_dense_segmentation_in_train_mode_uses_batch_statistics() -> None:
    _, s, features = _setup()
    reference_logits = copy.deepcopy(s).train().logits_reference(features).reshape(2, 3, 64, 64, 6)
    seg = copy.deepcopy(s).train().segment(features)
    assert torch.equal(seg.labels, reference_logits.mean(1).argmax(-1))
    expected = js_uncertainty(reference_logits.reshape(2, 3, -1, 6)).reshape(2, 64, 64)
    torch.testing.assert_close(seg.uncertainty, expected, rtol=1e-4, atol=1e-5)


def test_dense_segmentation_follows_weight_changes() -> None:
    _, s, features = _setup()
    s.segment(features)
    with torch.no_grad():  # through .data, which no version counter sees: parameters that train are never cached
        for m in s.models:
            m.layers[0].weight.data.mul_(-1.5)
            m.layers[5].running_var.data.mul_(3.0)
    _dense_check(s, features, "bilinear", (0, 0, 64, 64))


def test_uncertainty_is_zero_when_members_agree() -> None:
    _, s, features = _setup()
    for m in s.models[1:]:
        m.load_state_dict(s.models[0].state_dict())
    seg = s.segment(features)
    assert seg.uncertainty.abs().max() < 1e-5
    assert torch.equal(
        seg.labels,
        s.models[0](upsample_features(features[:], 64, "bilinear").permute(0, 2, 3, 1).reshape(-1, CFG.feature_dim))
        .argmax(-1)
        .reshape(2, 64, 64),
    )


def test_roi_logits_are_differentiable_in_w_plus() -> None:
    g, s, _ = _setup()
    w = g.sample_w_plus(1, seed=3).requires_grad_(True)
    out = g.synthesis(w, return_features=True)
    assert out.features is not None
    logits = s(out.features, pixels_from_mask(_roi()), mode="nearest").mean(1)
    torch.nn.functional.cross_entropy(logits[0], torch.zeros(logits.shape[1], dtype=torch.long)).backward()
    assert w.grad is not None and bool(torch.isfinite(w.grad).all()) and float(w.grad.abs().sum()) > 0


def test_bad_arguments_are_refused() -> None:
    _, s, features = _setup()
    with pytest.raises(InputError, match="channels"):
        s(features[:-1])
    with pytest.raises(InputError, match="pixel indices"):
        s(features, torch.tensor([64 * 64]))
    with pytest.raises(InputError, match="does not fit"):
        s.segment(features, box=(60, 0, 10, 64))
    with pytest.raises(InputError, match="must be \\[H, W\\]"):
        pixels_from_mask(torch.zeros(2, 3, 4, dtype=torch.bool))


def test_uncertainty_is_a_bounded_divergence() -> None:
    logits = torch.randn(2, 4, 50, 6) * 5
    u = js_uncertainty(logits)
    assert float(u.min()) >= -1e-6 and float(u.max()) <= torch.log(torch.tensor(4.0)) + 1e-6
    # members that each put all mass on a different class disagree maximally
    sharp = torch.full((1, 4, 1, 6), -1e4)
    for i in range(4):
        sharp[0, i, 0, i] = 1e4
    torch.testing.assert_close(js_uncertainty(sharp), torch.log(torch.tensor([[4.0]])))


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_roi_gradients_equal_the_official_computation(mode: str) -> None:
    _, s, features = _setup()
    pixels = pixels_from_mask(_roi())
    weights = torch.randn(2, 3, pixels.numel(), 6, generator=torch.Generator().manual_seed(1))

    def grads(fn: Callable[..., torch.Tensor]) -> list[torch.Tensor]:
        leaves = [f.detach().clone().requires_grad_(True) for f in features]
        (fn(leaves, pixels, mode=mode) * weights).sum().backward()
        return [leaf.grad for leaf in leaves if leaf.grad is not None]

    fast, slow = grads(s), grads(s.logits_reference)
    assert len(fast) == len(slow) == len(features)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_chunked_region_loss_equals_the_plain_loss(mode: str) -> None:
    _, s, features = _setup()
    s.requires_grad_(False)  # editing: frozen classifiers take the chunked path with its own backward
    pixels = pixels_from_mask(_roi())
    targets = torch.randint(0, 6, pixels.shape, generator=torch.Generator().manual_seed(2))
    results = []
    for chunk in (10**6, 37):  # one piece, then many pieces
        leaves = [f.detach().clone().requires_grad_(True) for f in features]
        loss, acc = s.region_loss(leaves, pixels, targets, mode=mode, chunk=chunk)
        loss.backward()
        results.append((loss.detach(), acc, [leaf.grad for leaf in leaves]))
    (l1, a1, g1), (l2, a2, g2) = results
    leaves = [f.detach().clone().requires_grad_(True) for f in features]
    plain = torch.nn.functional.cross_entropy(
        s.logits_reference(leaves, pixels, mode=mode).mean(1).reshape(-1, 6), targets.repeat(2)
    )
    plain.backward()
    torch.testing.assert_close(l1, plain.detach(), rtol=1e-5, atol=1e-6)
    for x, y in zip(g1, [leaf.grad for leaf in leaves], strict=True):
        assert x is not None and y is not None
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
    assert torch.equal(a1, a2)
    with torch.no_grad():  # a loop's last iterate, only measured: chunked too, without autograd
        l3, a3 = s.region_loss(features, pixels, targets, mode=mode, chunk=37)
    torch.testing.assert_close(l3, l1, rtol=1e-5, atol=1e-6)
    assert torch.equal(a3, a1)
    for x, y in zip(g1, g2, strict=True):
        assert x is not None and y is not None
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_a_row_mix_and_its_transpose_are_the_sparse_matrix_and_its_transpose() -> None:
    gen = torch.Generator().manual_seed(3)
    rows, pixels, taps = 11, 9, 4
    index = torch.randint(0, rows - 2, (pixels, taps), generator=gen)  # the last two rows: read by no pixel
    index[0, 1] = index[0, 0]  # a pixel may read one row twice (clamped bilinear taps at an edge)
    weight = torch.rand(pixels, taps, generator=gen)
    dense = torch.zeros(pixels, rows).index_put_((torch.arange(pixels)[:, None].expand(-1, taps), index), weight, True)
    mix = RowMix(index, weight, rows)
    table, grad = torch.randn(rows, 5, generator=gen), torch.randn(pixels, 5, generator=gen)
    torch.testing.assert_close(mix.apply(table), dense @ table)
    back = mix.transpose(grad)
    torch.testing.assert_close(back, dense.t() @ grad)
    assert back.shape == (rows, 5) and not back[-2:].any()
    leaf = table.clone().requires_grad_(True)
    (mixed(leaf, mix) * grad).sum().backward()
    assert leaf.grad is not None
    torch.testing.assert_close(leaf.grad, dense.t() @ grad)


def test_a_pixel_set_plans_once_and_checks_its_bounds_once() -> None:
    _, s, features = _setup()
    s.requires_grad_(False)
    region = PixelSet(pixels_from_mask(_roi()), 64)
    targets = torch.zeros(len(region), dtype=torch.long)
    first = s.region_loss(features, region, targets, mode="bilinear")
    plans = dict(region._plans)
    again = s.region_loss(features, region, targets, mode="bilinear")
    assert region._plans == plans and len(plans) == 1  # the same plan objects, not rebuilt
    torch.testing.assert_close(again, first)
    torch.testing.assert_close(s(features, region), s(features, region.pixels))
    for bad in (torch.tensor([-1]), torch.tensor([64 * 64]), torch.zeros(2, 2, dtype=torch.long)):
        with pytest.raises(InputError, match="pixel"):
            PixelSet(bad, 64)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize(("box", "tile"), [((0, 0, 64, 64), 8), ((3, 5, 9, 37), 16), ((0, 7, 4, 3), 8)])
def test_tiled_horizontal_pass_equals_the_weighted_gather(mode: str, box: tuple[int, int, int, int], tile: int) -> None:
    sizes, k = (4, 8, 16, 32), 3
    like = torch.zeros(1)
    gather = DensePlan(sizes, 64, box, mode, like)
    tiled = DensePlan(sizes, 64, box, mode, like, tile)
    index, matrix = tiled.tiles(k)
    tiles = -(-box[3] // tile)
    assert matrix.shape[:2] == (k * tiles, tile) and index.numel() == k * tiles * matrix.shape[2]
    if box[3] >= 32:  # each tile reads a short run of source columns, not all of them
        assert matrix.shape[2] < gather.columns // 2
    rows = torch.randn(k * gather.columns, 10, generator=torch.Generator().manual_seed(1))
    expected = gather.horizontal(rows, k)
    assert expected.shape == (k * box[3], 10)
    torch.testing.assert_close(tiled.horizontal(rows, k), expected, rtol=1e-5, atol=1e-5)

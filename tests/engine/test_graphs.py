"""The gateway's renders through CUDA graphs (engine/graphs.py), on the CPU through an emulation of the
graph contract (tests/engine/emulated_graph.py): what a capture records must replay unchanged."""

from __future__ import annotations

import pytest
import torch

from engine import Bundle, render, segmenter
from engine.errors import InputError
from engine.graphs import GraphedRenderer
from tests.engine.emulated_graph import EmulatedGraphs


@pytest.mark.parametrize("tile", [0, 16], ids=["gather", "tiled"])
def test_renders_replay_per_batch_size_members_and_uncertainty(
    tiny_bundle: Bundle, tile: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The dense segmentation's horizontal pass as on CPUs (a gather) and as on GPUs (tiled products).
    monkeypatch.setitem(segmenter._HORIZONTAL_TILE, "cpu", tile)
    graphs = EmulatedGraphs()
    renderer = GraphedRenderer(tiny_bundle, max_batch=6, members=[None, 2, None], graph=graphs)
    assert renderer.sizes == [1, 2, 4, 6]  # powers of two, and the largest batch
    renderer.capture_all()
    assert len(graphs) == 4 * 2 * 2 and all(g.warmups == 1 and g.replays == 0 for g in graphs)
    w = tiny_bundle.generator.sample_w_plus(6, seed=3)
    for n in (1, 3, 6):  # 3 runs in the graph of 4, padded
        for members in (None, 2):
            for uncertainty in (True, False):
                replays = graphs.replays
                got = renderer(w[:n], members=members, uncertainty=uncertainty)
                assert graphs.replays == replays + 1
                want = render(tiny_bundle, w[:n], members=members, uncertainty=uncertainty)
                torch.testing.assert_close(got.image, want.image, rtol=1e-5, atol=1e-5)
                assert torch.equal(got.labels, want.labels)
                assert (got.uncertainty is None) == (want.uncertainty is None)
                if want.uncertainty is not None:
                    torch.testing.assert_close(got.uncertainty, want.uncertainty, rtol=1e-5, atol=1e-5)
    first = renderer(w[:1])
    kept = first.image.clone()
    renderer(w[1:2])  # the same graph again: its outputs are rewritten, the result handed out is a copy
    assert torch.equal(first.image, kept)


def test_what_no_graph_holds_renders_eagerly(tiny_bundle: Bundle) -> None:
    graphs = EmulatedGraphs()
    renderer = GraphedRenderer(tiny_bundle, max_batch=2, members=[None], graph=graphs)
    renderer.capture_all()
    w = tiny_bundle.generator.sample_w_plus(3, seed=4)
    for got, want in [
        (renderer(w), render(tiny_bundle, w)),  # more latents than the largest graph
        (renderer(w[:1], members=1), render(tiny_bundle, w[:1], members=1)),  # a member count not captured
    ]:
        assert torch.equal(got.image, want.image) and torch.equal(got.labels, want.labels)
    with pytest.raises(InputError, match=r"W\+ must be \[N, 8, 32\]"):  # refused as eagerly, not a copy error
        renderer(torch.zeros(1, 8, 31))
    assert graphs.replays == 0


def test_cuda_graphs_need_a_cuda_device(tiny_bundle: Bundle) -> None:
    with pytest.raises(InputError, match="EDITGAN_CUDA_GRAPHS needs a CUDA device, not cpu"):
        GraphedRenderer(tiny_bundle, max_batch=4, members=[None])

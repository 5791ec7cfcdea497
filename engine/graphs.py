"""CUDA graphs: a model's kernels recorded once and replayed with one launch (opt-in: EDITGAN_CUDA_GRAPHS).

On a GPU a small model is bound by the host, not the device: the demo model's render launched 199 kernels
for 0.7 ms of GPU work in 9.2 ms, an optimisation update at paper scale 4,378 for 83 ms of kernels in 127 ms
(docs/performance.md, the H100 profile). A replay launches a recorded pass at once and holds the GIL once.

What a capture needs of the code it records: the same kernels at every replay (no Python branch on values
that change), no read of the device (a value or a data-dependent shape) and no copy from the host; each
replay rewrites the same output tensors. `tests/engine/test_graphs.py` and `tests/engine/test_editing.py`
hold the renders and the loops to that on the CPU with an emulation of this contract.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor

from engine.bundle import Bundle
from engine.errors import InputError
from engine.rendering import Rendering, render

R = TypeVar("R")


class Graph(Protocol):
    """What the engine needs of a CUDA graph (`CudaGraph`; the tests stand in a CPU emulation)."""

    def warmup(self, run: Callable[[], R]) -> R:
        """`run()`, eagerly, before the capture: lazy set-up (cuDNN, cuBLAS, the model's caches) is done."""
        ...

    def capture(self, record: Callable[[], list[Tensor]]) -> list[Tensor]:
        """Record `record`'s kernels without running them -> the tensors it returned: the graph's outputs,
        which hold values after each replay."""
        ...

    def replay(self) -> None:
        """Run the recorded kernels again, rewriting the same output tensors."""
        ...


class CudaGraph:
    """`torch.cuda.CUDAGraph`, warmed up on a side stream as PyTorch asks before a capture. Graphs that never
    replay at the same time may share a memory `pool` (`torch.cuda.graph_pool_handle()`)."""

    def __init__(self, pool: Any = None) -> None:  # callers check the device first (`check_cuda`)
        self._graph = torch.cuda.CUDAGraph()
        self._pool = pool

    def warmup(self, run: Callable[[], R]) -> R:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = run()
        torch.cuda.current_stream().wait_stream(side)
        return out

    def capture(self, record: Callable[[], list[Tensor]]) -> list[Tensor]:
        # thread_local: another thread's CUDA calls (a metrics read) must not void the capture
        with torch.cuda.graph(self._graph, pool=self._pool, capture_error_mode="thread_local"):
            return record()

    def replay(self) -> None:
        self._graph.replay()


def check_cuda(device: torch.device, what: str) -> None:
    if device.type != "cuda":
        raise InputError(f"{what} needs a CUDA device, not {device.type}")


RenderKey = tuple[int, int | None, bool]  # batch size, ensemble members (None: all), uncertainty map


class GraphedRenderer:
    """`render(bundle, w_plus, members=..., uncertainty=...)` by replaying CUDA graphs: one per batch size
    (powers of two up to `max_batch`, and `max_batch`; a batch runs in the next size up, padded with copies
    of its last latent), per member count of `members` and with or without the uncertainty map. All are
    captured by `capture_all` (a render of each: seconds), share one memory pool, and must never run at the
    same time (the gateway renders on one engine thread). Other calls (more latents, other member counts)
    render eagerly. Results are copies: they outlive the next replay."""

    def __init__(
        self,
        bundle: Bundle,
        max_batch: int,
        members: Sequence[int | None],
        graph: Callable[[], Graph] | None = None,
    ) -> None:
        if graph is None:
            check_cuda(bundle.device, "EDITGAN_CUDA_GRAPHS")
            pool = torch.cuda.graph_pool_handle()
            graph = lambda: CudaGraph(pool)  # noqa: E731
        self.bundle, self._graph = bundle, graph
        self.sizes = sorted({1 << k for k in range(max_batch.bit_length()) if 1 << k <= max_batch} | {max_batch})
        self.keys = [(s, m, u) for s in self.sizes for m in dict.fromkeys(members) for u in (True, False)]
        self._captured: dict[RenderKey, tuple[Graph, Tensor, list[Tensor]]] = {}

    def capture_all(self) -> None:
        for key in self.keys:
            self.capture(key)

    def __call__(self, w_plus: Tensor, *, members: int | None = None, uncertainty: bool = True) -> Rendering:
        n = w_plus.shape[0]
        size = next((s for s in self.sizes if s >= n), None)
        captured = None if size is None else self._captured.get((size, members, uncertainty))
        if captured is None or w_plus.ndim != 3 or w_plus.shape[1:] != captured[1].shape[1:]:
            return render(self.bundle, w_plus, members=members, uncertainty=uncertainty)  # (refuses bad shapes)
        graph, static, outputs = captured
        static[:n].copy_(w_plus)
        static[n:].copy_(static[n - 1 : n].expand(len(static) - n, -1, -1))
        graph.replay()
        image, labels, *rest = (t[:n].clone() for t in outputs)
        return Rendering(image, labels, rest[0] if rest else None)

    def capture(self, key: RenderKey) -> None:
        """Capture the render of `key` (batch size, members, uncertainty) unless it is captured already."""
        if key in self._captured:
            return
        size, members, uncertainty = key
        # Sampled latents: any the model renders will do (the first replay overwrites them).
        static = self.bundle.generator.sample_w_plus(size, seed=0).to(self.bundle.device)

        def record() -> list[Tensor]:
            out = render(self.bundle, static, members=members, uncertainty=uncertainty)
            return [out.image, out.labels] + ([] if out.uncertainty is None else [out.uncertainty])

        graph = self._graph()
        graph.warmup(record)
        self._captured[key] = (graph, static, graph.capture(record))

"""A CUDA graph's contract emulated on the CPU (`engine.graphs.Graph`), for the tests of the code that
CUDA graphs record: the loops' updates and the gateway's renders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

# Operations that make the host wait for the device: a value read back, a data-dependent shape.
DEVICE_READS = ("aten._local_scalar_dense", "aten.nonzero", "aten.is_nonzero", "aten.equal")


class OpLog(TorchDispatchMode):
    """Each operation with what a CUDA graph fixes at its capture: its name, its tensors' shapes and its
    other arguments (a replay reuses them all)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, object]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        fixed = tree_map(lambda a: ("tensor", tuple(a.shape)) if isinstance(a, torch.Tensor) else a, (args, kwargs))
        self.ops.append((str(func), fixed))
        return func(*args, **(kwargs or {}))


class EmulatedGraph:
    """A capture runs `record` once for its operations and outputs, then spoils the outputs (a real capture
    runs nothing, so its outputs hold no values until a replay). A replay runs `record` again, checks that
    it runs the captured operations with the same arguments and none that a graph cannot hold (a read of
    the device, a tensor made from host data), and writes the captured outputs, as a replay rewrites the
    graph's memory."""

    UNSAFE = (*DEVICE_READS, "aten.lift_fresh")

    def __init__(self) -> None:
        self.record: Callable[[], list[torch.Tensor]] | None = None
        self.ops: list[tuple[str, object]] = []
        self.outputs: list[torch.Tensor] = []
        self.warmups = self.replays = 0

    def warmup(self, run: Callable[[], Any]) -> Any:
        assert self.record is None, "a warm-up after the capture"
        self.warmups += 1
        return run()

    def capture(self, record: Callable[[], list[torch.Tensor]]) -> list[torch.Tensor]:
        assert self.record is None, "captured twice"
        self.record = record
        self.ops, self.outputs = self._run()
        for t in self.outputs:
            t.fill_(float("nan") if t.is_floating_point() else -1)
        return self.outputs

    def replay(self) -> None:
        assert self.record is not None, "a replay before the capture"
        ops, fresh = self._run()
        assert ops == self.ops, "the recorded code ran other operations than the captured ones"
        for static, new in zip(self.outputs, fresh, strict=True):
            static.copy_(new)
        self.replays += 1

    def _run(self) -> tuple[list[tuple[str, object]], list[torch.Tensor]]:
        assert self.record is not None
        with OpLog() as log:
            outputs = self.record()
        unsafe = sorted({name for name, _ in log.ops if name.startswith(self.UNSAFE)})
        assert not unsafe, f"operations a CUDA graph cannot hold: {unsafe}"
        return log.ops, outputs


class EmulatedGraphs(list[EmulatedGraph]):
    """A factory of emulated graphs (`GraphedRenderer(graph=...)`) that keeps every graph it made."""

    def __call__(self) -> EmulatedGraph:
        self.append(EmulatedGraph())
        return self[-1]

    @property
    def replays(self) -> int:
        return sum(g.replays for g in self)

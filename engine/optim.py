"""The W+ optimisation loop shared by inversion, editing and refinement, and their loss terms."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.encoder import Encoder
from engine.errors import CancelledError
from engine.graphs import CudaGraph, Graph, check_cuda
from engine.params import EncoderInput
from engine.precision import Precision, forward_precision, loop_precision

ProgressFn = Callable[[int, int, dict[str, float]], None]  # (step, total, losses of that step)
StopFn = Callable[[], bool]  # polled between steps; True ends the run with `CancelledError`
LossFn = Callable[[Tensor], tuple[Tensor, dict[str, Tensor]]]  # W+ -> (loss to minimise, logged 0-d terms)


@dataclass
class OptimResult:
    w_plus: Tensor  # [N, L, S] the best iterate (detached copy)
    best_step: int  # 0 = the starting point
    history: list[dict[str, float]] = field(default_factory=list)  # logged terms of every evaluated step


def optimize_w(
    w0: Tensor,
    loss_fn: LossFn,
    *,
    steps: int,
    lr: Callable[[int], float],
    best_key: str = "total",
    best_from: int = 0,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    precision: Precision = "float32",
    graph: Graph | None = None,
) -> OptimResult:
    """Adam on a copy of `w0` for `steps` updates; returns the iterate with the lowest `best_key` among
    w_best_from ... w_steps (an edit passes 1: returning the unchanged start would silently do nothing).

    Every iterate w_0 ... w_steps is evaluated once. The best one is *cloned* when evaluated: the official
    code keeps a `.detach()` view of the parameter, which Adam then updates in place, so it always
    returned the last step instead. `precision` (engine.precision) applies to the loss and its gradient.

    The logged terms reach the host once per step, together, after the step's update is queued: read one
    by one as they are computed (as the official code does), each would make the host wait for the device
    in mid-step, leaving a GPU idle while the host then queues the backward pass.

    `graph` (a `CudaGraph()`, opt-in: EDITGAN_CUDA_GRAPHS): after `WARMUP_STEPS` eager updates the loss and
    its gradient are captured once and replayed at every later update, one launch instead of thousands
    (`_Gradients`).
    """
    w = w0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr(0))
    # Autocast's cache of cast weights must be off under a capture (PyTorch's rule for CUDA graphs).
    gradients = _Gradients(
        loss_fn,
        w,
        lambda: forward_precision(w.device, precision, cache=graph is None),
        graph,
    )
    best_w, best_value, best_step = w0.detach().clone(), float("inf"), 0
    history: list[dict[str, float]] = []
    with loop_precision(w0.device, precision):  # TF32 flags for forward and backward passes
        for step in range(steps + 1):
            if should_stop is not None and should_stop():
                raise CancelledError(f"stopped after {step} of {steps} steps")
            if step == steps:  # the last iterate is only measured
                with torch.no_grad(), forward_precision(w.device, precision):
                    _, terms = loss_fn(w)
                names, packed = list(terms), _packed(terms)
            else:
                names, packed = gradients(step)  # the terms of w, and w.grad
            iterate = w.detach().clone()  # as evaluated: the update below changes w in place
            if step < steps:
                for group in opt.param_groups:
                    group["lr"] = lr(step)
                opt.step()
            logs = dict(zip(names, packed.tolist(), strict=True))  # the step's one wait for the device
            history.append(logs)
            if step >= min(best_from, steps) and logs[best_key] < best_value:
                best_w, best_value, best_step = iterate, logs[best_key], step
            if progress is not None:
                progress(step, steps, logs)
    return OptimResult(w_plus=best_w, best_step=best_step, history=history)


WARMUP_STEPS = 3  # eager updates before a capture: lazy set-up (cuDNN, cuBLAS, the loss's own caches) is done


def _packed(terms: dict[str, Tensor]) -> Tensor:
    return torch.stack([t.detach().float().reshape(()) for t in terms.values()])


def loop_graph(device: torch.device, enabled: bool) -> CudaGraph | None:
    """A fresh graph for one loop on `device` when `enabled` (the params' `cuda_graphs`), else None."""
    if not enabled:
        return None
    check_cuda(device, "cuda_graphs")
    return CudaGraph()


class _Gradients:
    """One update's loss terms and the gradient of w, eagerly or by replaying a graph.

    With a graph the first `WARMUP_STEPS` updates run eagerly (`Graph.warmup`); the next one captures the
    loss and its backward pass with `w.grad` unset, so that the graph allocates the gradient in its own
    memory: every replay rewrites that gradient tensor and the packed terms, which Adam and the caller read.
    Nothing may reset `w.grad` after the capture (zero_grad would detach it from the graph). The loss must
    run the same kernels at every step, read nothing back from the device and copy nothing from the host:
    `tests/engine/test_editing.py` checks the service's loops for both.
    """

    def __init__(
        self,
        loss_fn: LossFn,
        w: Tensor,
        forward: Callable[[], AbstractContextManager[object]],
        graph: Graph | None,
    ) -> None:
        self.loss_fn, self.w, self.forward, self.graph = loss_fn, w, forward, graph
        self.captured = False
        self.names: list[str] = []
        self.packed = torch.empty(0)

    def __call__(self, step: int) -> tuple[list[str], Tensor]:
        if self.graph is None:
            return self._loss_and_gradient()
        if not self.captured and step < WARMUP_STEPS:
            return self.graph.warmup(self._loss_and_gradient)
        if not self.captured:
            self.graph.capture(self._record)
            self.captured = True
        self.graph.replay()  # after the capture too: a capture runs nothing
        return self.names, self.packed

    def _record(self) -> list[Tensor]:
        self.names, self.packed = self._loss_and_gradient()
        assert self.w.grad is not None
        return [self.w.grad, self.packed]

    def _loss_and_gradient(self) -> tuple[list[str], Tensor]:
        self.w.grad = None
        with torch.enable_grad():
            with self.forward():  # the forward pass only: autocast is not meant for backward passes
                loss, terms = self.loss_fn(self.w)
            packed = _packed(terms)
            loss.backward()
        return list(terms), packed


# ---------------------------------------------------------------------------------------------- loss terms


def masked(image: Tensor, keep: Tensor) -> Tensor:
    """Black out (-1) where keep is 0: the official code multiplies [0, 1] images by its mask."""
    return (image + 1.0) * keep - 1.0


def mse01(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error of [0, 1] images, given [-1, 1] ones (the official loss scale): [N]."""
    return ((x - y) * 0.5).square().flatten(1).mean(1)


def encoder_term(
    encoder: Encoder | None, w: Tensor, image: Tensor, *, range_: EncoderInput, batch_statistics: bool
) -> Tensor:
    """||w - E(G(w))||^2 mean [N], E not differentiated (the official target is detached); 0 without E."""
    if encoder is None:
        return w.new_zeros(w.shape[0])
    previous = encoder.batch_statistics
    encoder.use_batch_statistics(batch_statistics)
    try:
        with torch.no_grad():
            target = encoder((image + 1.0) / 2.0 if range_ == "unit" else image)
    finally:
        encoder.use_batch_statistics(previous)
    return F.mse_loss(w, target, reduction="none").flatten(1).mean(1)


def logged(**terms: Tensor) -> dict[str, Tensor]:
    """Loss terms for logs and progress reports, detached (`optimize_w` reads them as floats)."""
    return {k: v.detach() for k, v in terms.items()}


def psnr(x: Tensor, y: Tensor) -> float:
    """PSNR in dB of [-1, 1] images measured on the [0, 1] scale (mean over the batch)."""
    mse = mse01(x, y).clamp_min(1e-12)
    return float((10 * torch.log10(1.0 / mse)).mean())

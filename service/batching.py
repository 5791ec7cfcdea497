"""Micro-batching of the gateway's synchronous vector edits.

Concurrent `POST /edit/vector` requests for one model that arrive within a few milliseconds share one
batched generator + segmentation pass: one pass over N latents costs far less than N passes (per-call
overheads, small matrix products), on a CPU and more so on a GPU. The passes run on the gateway's engine
thread (a one-thread executor, see `service.app`), so engine calls never overlap, and a request crosses
one thread boundary each way: the event loop (or a request's thread) -> engine thread -> back (a batcher
thread of its own would hand each pass on to the engine thread: two more wake-ups per edit).

The rules, all in `MicroBatcher`:
- Order: a batch takes the oldest waiting requests, at most `max_batch` of them.
- Bounded wait: a batch closes `wait_seconds` after its oldest request arrived, or at once when full.
  The window only opens while requests overlap (the previous batch was shared, or several are waiting
  already): a lone client is served at once and pays nothing for batching.
- Error isolation: when a batched call raises, each of its requests is run again alone, so only a
  request that fails by itself gets an error.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

import torch
from torch import Tensor

from engine import Bundle, Rendering, render

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: Future[R] = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher(Generic[T, R]):
    """Runs `run_batch(items) -> results` (one result per item, in order) over requests that arrive close
    together, as tasks of `executor` (one pass per task, so other work queued there runs between passes).
    `on_batch(size)` is told the size of every batch (metrics)."""

    def __init__(
        self,
        run_batch: Callable[[list[T]], list[R]],
        executor: Executor,
        *,
        max_batch: int,
        wait_seconds: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1 or wait_seconds < 0:
            raise ValueError(f"max_batch must be >= 1 and wait_seconds >= 0, got {max_batch}, {wait_seconds}")
        self.max_batch, self.wait_seconds = max_batch, wait_seconds
        self._run_batch, self._on_batch, self._executor = run_batch, on_batch, executor
        self._waiting: deque[_Pending[T, R]] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._scheduled = False  # a pass is queued on, or running on, the executor
        self._shared = False  # whether the previous batch held several requests

    def submit(self, item: T) -> Future[R]:
        """Queue one request; its future holds the result or the request's own exception."""
        pending: _Pending[T, R] = _Pending(item)
        with self._changed:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._waiting.append(pending)
            self._changed.notify_all()
            if not self._scheduled:
                self._scheduled = True
                self._executor.submit(self._pass)
        return pending.future

    def run(self, item: T) -> R:
        """Submit and wait for the result, blocking the calling thread (a sync route's worker thread; the
        event loop awaits `submit`'s future instead)."""
        return self.submit(item).result()

    def close(self, timeout: float | None = 30.0) -> None:
        """Refuse new requests and wait until the waiting ones are served (the executor must still run)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            self._changed.wait_for(lambda: not self._scheduled, timeout)

    def _next_batch(self) -> list[_Pending[T, R]]:
        """The batch due now: the oldest waiting requests, after the window for company when it is open."""
        with self._changed:
            if self._waiting and (self._shared or len(self._waiting) > 1):
                deadline = self._waiting[0].arrived + self.wait_seconds
                while len(self._waiting) < self.max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._changed.wait(left)
            return [self._waiting.popleft() for _ in range(min(len(self._waiting), self.max_batch))]

    def _pass(self) -> None:
        """One executor task: serve one batch, then queue the next pass while requests wait."""
        try:
            if batch := self._next_batch():
                self._serve(batch)
        finally:
            with self._changed:
                if self._waiting:
                    self._executor.submit(self._pass)
                else:
                    self._scheduled = False
                    self._changed.notify_all()

    def _serve(self, batch: list[_Pending[T, R]]) -> None:
        self._shared = len(batch) > 1
        if self._on_batch is not None:
            self._on_batch(len(batch))
        live = [p for p in batch if p.future.set_running_or_notify_cancel()]
        if len(live) == 1:
            self._run_alone(live[0])
        elif live:
            self._run_together(live)

    def _results(self, items: list[T]) -> list[R]:
        results = self._run_batch(items)
        if len(results) != len(items):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} requests")
        return results

    def _run_together(self, batch: list[_Pending[T, R]]) -> None:
        try:
            results = self._results([p.item for p in batch])
        except BaseException:  # one bad request must not fail the others: each runs again alone
            for p in batch:
                self._run_alone(p)
            return
        for p, result in zip(batch, results, strict=True):
            p.future.set_result(result)

    def _run_alone(self, pending: _Pending[T, R]) -> None:
        try:
            result = self._results([pending.item])[0]
        except BaseException as exc:  # delivered to the request's own thread, which re-raises it
            pending.future.set_exception(exc)
        else:
            pending.future.set_result(result)


def split_rendering(rendering: Rendering) -> list[Rendering]:
    """A batch's rendering [N, ...] as N renderings [1, ...] (views, no copies)."""
    u = rendering.uncertainty
    return [
        Rendering(rendering.image[i : i + 1], rendering.labels[i : i + 1], None if u is None else u[i : i + 1])
        for i in range(rendering.image.shape[0])
    ]


class Renderer(Protocol):
    """`engine.render` of one bundle: W+ [N, L, S] -> its rendering."""

    def __call__(self, w_plus: Tensor, *, members: int | None = None, uncertainty: bool = True) -> Rendering: ...


@dataclass(frozen=True)
class RenderRequest:
    """Render and segment one W+ latent [1, L, S] by `members` of the ensemble (None: all), with the
    uncertainty map or without it, then turn the rendering into the response's arrays on the engine thread
    too (`finish`), in the same pass."""

    w_plus: Tensor
    finish: Callable[[Rendering], Any]
    members: int | None = None
    uncertainty: bool = True


def render_batcher(
    bundle: Bundle,
    engine: Executor,
    *,
    max_batch: int,
    wait_seconds: float,
    on_batch: Callable[[int], None] | None = None,
    renderer: Renderer | None = None,
) -> MicroBatcher[RenderRequest, Any]:
    """A batcher that renders and segments W+ latents of `bundle` on `engine` (the one-thread executor of
    every heavy torch call: one OpenMP team, see `service.app`), concurrent ones in one pass per member
    count (previews and full renders arriving together are two passes); a pass computes the uncertainty
    map when any of its requests wants it. Each result is the request's `finish` of its own rendering.
    `renderer` replaces `engine.render` (EDITGAN_CUDA_GRAPHS: `engine.graphs.GraphedRenderer`)."""
    draw: Renderer = renderer or partial(render, bundle)

    def render_all(requests: list[RenderRequest]) -> list[Any]:
        results: list[Any] = [None] * len(requests)
        done = [False] * len(requests)
        for members in dict.fromkeys(r.members for r in requests):
            index = [i for i, r in enumerate(requests) if r.members == members]
            w_plus = torch.cat([requests[i].w_plus for i in index])
            batch = draw(w_plus, members=members, uncertainty=any(requests[i].uncertainty for i in index))
            # On a GPU: one copy to the host per batch, rather than one wait per request and output.
            u = batch.uncertainty
            batch = Rendering(batch.image.cpu(), batch.labels.cpu(), None if u is None else u.cpu())
            for i, one in zip(index, split_rendering(batch), strict=True):
                results[i], done[i] = requests[i].finish(one), True
        assert all(done)  # every request belongs to exactly one group
        return results

    return MicroBatcher(render_all, engine, max_batch=max_batch, wait_seconds=wait_seconds, on_batch=on_batch)

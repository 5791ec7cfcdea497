"""The micro-batcher's rules (order, bounded wait, error isolation) and its renders equal unbatched ones.

Batch boundaries are made deterministic with a gate: while the batch function is held, the requests that
arrive queue up, and the next batch is exactly what was queued. No assertion depends on how fast anything is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial

import pytest
import torch

from engine import Bundle, Rendering, apply_vectors, render
from engine.graphs import GraphedRenderer
from schemas.settings import Settings
from service.app import _graphed_renderers
from service.batching import MicroBatcher, RenderRequest, render_batcher, split_rendering
from tests.engine.emulated_graph import EmulatedGraphs

TIMEOUT = 30  # seconds: a bound on a hang, never a measurement


class Recorder:
    """A batch function that records every batch and can be held at its start."""

    def __init__(self, fail_on: Callable[[int], bool] = lambda _: False) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Semaphore(0)
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.entered.release()
        assert self.gate.wait(TIMEOUT)
        if any(self.fail_on(i) for i in items):
            raise ValueError(f"bad request among {items}")
        return [i * 10 for i in items]

    def hold(self) -> None:
        self.gate.clear()

    def wait_entered(self) -> None:
        assert self.entered.acquire(timeout=TIMEOUT)


@contextmanager
def started(recorder: Recorder, *, max_batch: int = 16, wait_seconds: float = 0.0) -> Iterator[MicroBatcher[int, int]]:
    engine = ThreadPoolExecutor(max_workers=1)
    batcher = MicroBatcher(recorder, engine, max_batch=max_batch, wait_seconds=wait_seconds)
    try:
        yield batcher
    finally:
        recorder.gate.set()
        batcher.close()
        engine.shutdown()


def queue_behind_a_held_batch(
    batcher: MicroBatcher[int, int], recorder: Recorder, items: list[int]
) -> list[Future[int]]:
    """Run request -1 and hold it; queue `items` meanwhile; release: they form the next batch(es)."""
    recorder.hold()
    first = batcher.submit(-1)
    recorder.wait_entered()
    futures = [batcher.submit(i) for i in items]
    recorder.gate.set()
    assert first.result(TIMEOUT) == -10
    return futures


def test_requests_queued_during_a_pass_share_the_next_one_in_arrival_order() -> None:
    recorder = Recorder()
    with started(recorder, max_batch=3) as batcher:
        futures = queue_behind_a_held_batch(batcher, recorder, [1, 2, 3, 4, 5])
        assert [f.result(TIMEOUT) for f in futures] == [10, 20, 30, 40, 50]
    assert recorder.batches == [[-1], [1, 2, 3], [4, 5]]  # FIFO, at most max_batch per pass


def test_a_lone_request_is_served_without_waiting_for_company() -> None:
    recorder = Recorder()
    with started(recorder, wait_seconds=3600) as batcher:  # the window would never close by itself
        assert batcher.run(7) == 70
        assert batcher.run(8) == 80
    assert recorder.batches == [[7], [8]]


def test_after_a_shared_pass_a_request_waits_for_company_until_the_batch_is_full() -> None:
    recorder = Recorder()
    with started(recorder, max_batch=3, wait_seconds=3600) as batcher:
        full = queue_behind_a_held_batch(batcher, recorder, [1, 2, 3])
        assert [f.result(TIMEOUT) for f in full] == [10, 20, 30]  # full: no wait for the hour-long window
        lone = batcher.submit(4)
        time.sleep(0.2)
        assert not lone.done()  # the previous pass was shared: it waits for company
        others = [batcher.submit(5), batcher.submit(6)]
        assert [f.result(TIMEOUT) for f in (lone, *others)] == [40, 50, 60]
    assert recorder.batches == [[-1], [1, 2, 3], [4, 5, 6]]


def test_the_wait_for_company_is_bounded() -> None:
    recorder = Recorder()
    with started(recorder, max_batch=16, wait_seconds=0.05) as batcher:
        shared = queue_behind_a_held_batch(batcher, recorder, [1, 2])
        assert [f.result(TIMEOUT) for f in shared] == [10, 20]
        assert batcher.run(3) == 30  # no one else comes: it runs alone once the window has passed
    assert recorder.batches == [[-1], [1, 2], [3]]


def test_a_failing_request_fails_alone() -> None:
    recorder = Recorder(fail_on=lambda i: i == 2)
    with started(recorder) as batcher:
        futures = queue_behind_a_held_batch(batcher, recorder, [1, 2, 3])
        assert futures[0].result(TIMEOUT) == 10 and futures[2].result(TIMEOUT) == 30
        with pytest.raises(ValueError, match=r"bad request among \[2\]"):
            futures[1].result(TIMEOUT)
        assert batcher.run(4) == 40  # the batcher serves on
    assert recorder.batches == [[-1], [1, 2, 3], [1], [2], [3], [4]]


def test_a_batch_function_returning_too_few_results_is_an_error_for_its_request() -> None:
    with ThreadPoolExecutor(max_workers=1) as engine:
        batcher: MicroBatcher[int, int] = MicroBatcher(lambda items: [], engine, max_batch=4, wait_seconds=0)
        try:
            with pytest.raises(RuntimeError, match="0 results for 1 requests"):
                batcher.run(1)
        finally:
            batcher.close()


def test_close_finishes_waiting_requests_then_refuses_new_ones() -> None:
    recorder = Recorder()
    with ThreadPoolExecutor(max_workers=1) as engine:
        batcher = MicroBatcher(recorder, engine, max_batch=2, wait_seconds=0)
        futures = queue_behind_a_held_batch(batcher, recorder, [1, 2, 3])
        batcher.close()
        assert all(f.done() for f in futures)  # close returned after the waiting requests were served
        assert [f.result(TIMEOUT) for f in futures] == [10, 20, 30]
        with pytest.raises(RuntimeError, match="closed"):
            batcher.submit(4)


def test_passes_run_on_the_executor_and_let_other_work_in_between() -> None:
    """The engine thread is shared: work queued there while requests wait runs between two passes."""
    recorder = Recorder()
    threads: list[str] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine") as engine:
        batcher = MicroBatcher(
            lambda items: threads.append(threading.current_thread().name) or recorder(items),
            engine,
            max_batch=1,
            wait_seconds=0,
        )
        recorder.hold()
        first = batcher.submit(1)
        recorder.wait_entered()
        second = batcher.submit(2)  # waits behind the held pass
        other = engine.submit(lambda: len(recorder.batches))  # other engine work, queued after it
        recorder.gate.set()
        assert first.result(TIMEOUT) == 10 and second.result(TIMEOUT) == 20
        assert other.result(TIMEOUT) == 1  # ran after the first pass, before the second
        batcher.close()
    assert len(threads) == 2 and all(t.startswith("engine") for t in threads)


def test_batched_renders_equal_unbatched_ones(tiny_bundle: Bundle) -> None:
    latents = tiny_bundle.generator.sample_w_plus(5, seed=3, psi=0.7)
    vector = tiny_bundle.vectors["grow"]
    scales = [0.0, 0.5, -1.0, 1.5, 2.0]
    alone = [apply_vectors(tiny_bundle, latents[i], [(vector, s)]).rendering for i, s in enumerate(scales)]
    edited = [latents[i : i + 1] + s * vector for i, s in enumerate(scales)]
    together = split_rendering(render(tiny_bundle, torch.cat(edited)))
    for a, b in zip(alone, together, strict=True):
        assert a.image.shape == b.image.shape and a.labels.shape == b.labels.shape
        assert torch.allclose(a.image, b.image, rtol=0, atol=1e-5)
        assert torch.allclose(a.uncertainty, b.uncertainty, rtol=0, atol=1e-5)
        assert torch.equal(a.labels, b.labels)


@pytest.mark.parametrize("graphed", [False, True], ids=["eager", "cuda-graphs"])
def test_the_render_batcher_answers_each_caller_with_its_own_rendering(tiny_bundle: Bundle, graphed: bool) -> None:
    """Full renders and previews (2 of the 3 members) arriving together, run on an engine thread: each
    caller gets the rendering of its own latent by its own ensemble; the same through CUDA graphs
    (EDITGAN_CUDA_GRAPHS, their contract emulated on the CPU)."""
    latents = tiny_bundle.generator.sample_w_plus(8, seed=4, psi=0.7)
    members = [None if i % 2 else 2 for i in range(8)]
    sizes: list[int] = []
    engine = ThreadPoolExecutor(max_workers=1)
    graphs = EmulatedGraphs()
    renderer = None
    if graphed:
        renderer = GraphedRenderer(tiny_bundle, 8, [None, 2], graph=graphs)
        engine.submit(renderer.capture_all).result()
    batcher = render_batcher(
        tiny_bundle, engine, max_batch=8, wait_seconds=0.05, on_batch=sizes.append, renderer=renderer
    )
    try:
        start = threading.Barrier(8)
        results: dict[int, Rendering] = {}
        finished_on: dict[int, str] = {}

        def finish(i: int, rendering: Rendering) -> Rendering:
            finished_on[i] = threading.current_thread().name
            return rendering

        def call(i: int) -> None:
            start.wait(TIMEOUT)
            results[i] = batcher.run(RenderRequest(latents[i : i + 1], partial(finish, i), members[i]))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
    finally:
        batcher.close()
        engine.shutdown()
    assert sum(sizes) == 8
    assert set(finished_on) == set(range(8)) and len(set(finished_on.values())) == 1  # all on the engine thread
    assert (graphs.replays > 0) == graphed
    for i in range(8):
        alone = render(tiny_bundle, latents[i], members=members[i])
        assert torch.allclose(results[i].image, alone.image, rtol=0, atol=1e-5)
        assert torch.equal(results[i].labels, alone.labels)


def test_a_pass_computes_the_uncertainty_map_when_one_of_its_requests_wants_it(tiny_bundle: Bundle) -> None:
    """Three requests held behind other engine work form one batch: the full-ensemble pair shares a pass that
    computes the map (one of them wants it), the lone preview that does not want it gets none, and every
    rendering equals its unbatched one."""
    latents = tiny_bundle.generator.sample_w_plus(3, seed=6, psi=0.7)
    asked = [(None, False), (None, True), (2, False)]  # (members, uncertainty)
    engine = ThreadPoolExecutor(max_workers=1)
    held = threading.Event()
    engine.submit(held.wait, TIMEOUT)  # the requests queue behind it
    batcher = render_batcher(tiny_bundle, engine, max_batch=8, wait_seconds=0.0)
    try:
        futures = [
            batcher.submit(RenderRequest(latents[i : i + 1], lambda r: r, members, wanted))
            for i, (members, wanted) in enumerate(asked)
        ]
        held.set()
        results = [f.result(TIMEOUT) for f in futures]
    finally:
        batcher.close()
        engine.shutdown()
    assert [r.uncertainty is not None for r in results] == [True, True, False]
    for i, (members, _) in enumerate(asked):
        alone = render(tiny_bundle, latents[i], members=members)
        assert torch.allclose(results[i].image, alone.image, rtol=0, atol=1e-5)
        assert torch.equal(results[i].labels, alone.labels)
        if results[i].uncertainty is not None:
            assert torch.allclose(results[i].uncertainty, alone.uncertainty, rtol=0, atol=1e-5)


def test_a_gateway_on_the_cpu_renders_eagerly_with_cuda_graphs(
    tiny_bundle: Bundle, caplog: pytest.LogCaptureFixture
) -> None:
    # One EDITGAN_CUDA_GRAPHS may serve a gateway on the CPU and workers on GPUs: the gateway says so once.
    with caplog.at_level(logging.WARNING, logger="workers.models"):
        assert _graphed_renderers({"tiny": tiny_bundle}, Settings(editgan_cuda_graphs=False)) == {}
        assert not caplog.records
        assert _graphed_renderers({"tiny": tiny_bundle}, Settings(editgan_cuda_graphs=True)) == {}
    assert [r.getMessage() for r in caplog.records] == [
        "EDITGAN_CUDA_GRAPHS applies to models on a CUDA device; tiny on cpu: eager"
    ]

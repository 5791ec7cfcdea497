"""engine.timing: the clock of engine work."""

from __future__ import annotations

import time

import torch

from engine.timing import elapsed


def test_elapsed_counts_from_the_reading_it_is_given() -> None:
    start = time.perf_counter()
    time.sleep(0.02)
    seconds = elapsed(start, torch.device("cpu"))
    assert 0.02 <= seconds < 5 and seconds <= time.perf_counter() - start

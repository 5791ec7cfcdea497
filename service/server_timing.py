"""`Server-Timing` (W3C Server Timing): where a real-time edit's time went, in its response's headers.

Browsers' developer tools show the phases beside the request; the bench reads them to split the HTTP
overhead of an edit into the gateway's own phases and what lies outside the route (HTTP parsing, the
framework, the network, wake-ups). Durations are in milliseconds, as the specification says.
"""

from __future__ import annotations

import re
import time

HEADER = "Server-Timing"
TOTAL = "route"  # the route from its first line to its response, the phases included

# `name;dur=1.5;desc="..."`: a metric's name and its duration, other parameters skipped
_METRIC = re.compile(r"^\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*(?:;(.*))?$")
_DURATION = re.compile(r"(?:^|;)\s*dur\s*=\s*\"?([0-9.eE+-]+)\"?")
_PARTS = re.compile(r'(?:[^,"]|"[^"]*")+')  # split at commas outside quoted strings


class Phases:
    """Consecutive phases of one request, timed from the object's creation: `mark(name)` ends the phase
    running since the previous mark (or the start)."""

    def __init__(self) -> None:
        self._start = self._last = time.perf_counter()
        self._phases: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self._phases.append((name, now - self._last))
        self._last = now

    def header(self) -> str:
        """The header's value: each phase, then `route` up to now."""
        metrics = [*self._phases, (TOTAL, time.perf_counter() - self._start)]
        return ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in metrics)


def parse(value: str) -> dict[str, float]:
    """A `Server-Timing` value -> {name: milliseconds} for the metrics that have a duration."""
    out: dict[str, float] = {}
    for part in _PARTS.findall(value):
        if (metric := _METRIC.match(part)) is None:
            continue
        if (duration := _DURATION.search(metric.group(2) or "")) is not None:
            try:
                out[metric.group(1)] = float(duration.group(1))
            except ValueError:
                continue
    return out

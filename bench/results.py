"""`bench/RESULTS.md`: a header explaining the columns, then one dated row per run (appended)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTIONS = ("vector", "jobs", "naive", "precision", "compile", "paper")  # in the order they run
# The row's cells filled by the sections; `compile` came last, so that older rows keep their columns.
FIGURE_COLUMNS = ("vector", "batching", "jobs", "naive", "precision", "paper", "compile")

HEADER = """# Benchmark results

One row per `editgan bench` run, appended by the command; the full figures are the JSON it prints.
Every ratio compares two things measured in the same run on the same machine. Rows from different
machines, or from a loaded machine (see the load in the hardware column), are not comparable, and a
`quick` row is a smoke run: its figures are too short to quote. `-`: section not run.

| column | what it holds |
|---|---|
| date | UTC time of the run |
| commit | git commit of the checkout (`+dirty`: uncommitted changes) |
| run | `quick` or `full`, and the sections run |
| hardware | CPU model; logical/physical cores; torch version and threads; GPU (or none); device; \
1-minute load average at the start |
| model | the bundle measured (sections vector, jobs, naive) |
| vector | `POST /edit/vector` over HTTP, p50 / bare engine forward (`apply_vectors`), p50 (target <= 1.2); \
from 2026-11-26 14:00 also the same ratio paired per request against the engine time inside the gateway, and \
the added ms; HTTP p50 and p99 in ms; throughput at 1, 4 and 16 clients in requests/s. From 2026-11-26 16:30 \
the requests go through a lean standard-library client (httpx added 1.1-1.5 ms of client time per request) and \
what is compared alternates every 10 calls |
| batching | throughput at 16 clients, micro-batching on / off (target >= 2); single-client p50, on / off - 1 \
(target <= +10 %). From 2026-11-27 also the lowest and highest gain of the rounds (each round measures on and \
off back to back), for the gain and for the engine's own batch gain |
| jobs | queue overhead (enqueue -> worker start) p50 in ms; inversion, optimisation edit and refinement \
in ms per step; worker cold start to its first result in s; peak resident memory of gateway and worker |
| naive | `optimize_edit` speed-up over the official loop written plainly (`bench/naive.py`), per step and \
in total; final and first-step loss differences against their tolerances |
| precision | inversion, optimisation edit and refinement in bfloat16 (and TF32 on CUDA) against float32: speed-up \
per update; the largest PSNR difference and the difference in painted pixels reached, with the verdict against \
the tolerances (0.5 dB, 0.05) |
| paper | the 512 px car architecture with random weights: optimisation edit, refinement and inversion in s \
per step, naive speed-up, peak memory, and the label (device, steps) |
| compile | from 2026-11-27: the generator's synthesis through `torch.compile` (EDITGAN_COMPILE) against eager \
mode: speed-up of a render of 1 and of 16 latents and per update of each loop; the largest relative \
difference of the first iterate's loss (tolerance 1e-5) and of the last's; the verdict; compile time |

| date | commit | run | hardware | model | vector | batching | jobs | naive | precision | paper | compile |
|---|---|---|---|---|---|---|---|---|---|---|---|
"""


@dataclass
class SectionResult:
    """A section's full figures (JSON) and its cells of the RESULTS.md row, by column."""

    data: dict[str, Any] = field(default_factory=dict)
    cells: dict[str, str] = field(default_factory=dict)


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ").strip() or "-"


def append_row(path: Path, cells: list[str]) -> None:
    """Append one row; write the header first when the file is new or empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not path.exists() or path.stat().st_size == 0
    with path.open("a", encoding="utf-8") as out:
        if fresh:
            out.write(HEADER)
        out.write("| " + " | ".join(_cell(c) for c in cells) + " |\n")

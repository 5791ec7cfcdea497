"""`editgan bench`: run the chosen sections, print one JSON document, append a row to RESULTS.md."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.context import Context
from bench.hardware import commit, describe
from bench.results import FIGURE_COLUMNS, SECTIONS, SectionResult, append_row
from engine.precision import ieee_float32

Section = Callable[[Context], SectionResult]


def _section(name: str) -> Section:
    run: Section = importlib.import_module(f"bench.{name}").run  # imported on use: paper pulls in lpips
    return run


def parse_sections(text: str) -> tuple[str, ...]:
    """`vector,jobs` -> ("vector", "jobs") in the canonical order; unknown names are refused."""
    asked = {s.strip() for s in text.split(",") if s.strip()}
    if unknown := sorted(asked - set(SECTIONS)):
        raise ValueError(f"unknown bench sections {unknown}; choose from {', '.join(SECTIONS)}")
    if not asked:
        raise ValueError(f"no bench section named; choose from {', '.join(SECTIONS)}")
    return tuple(s for s in SECTIONS if s in asked)


def run_bench(ctx: Context, sections: tuple[str, ...], results: Path | None) -> tuple[dict[str, Any], bool]:
    """Run `sections`; returns (report, every section succeeded). Appends the row to `results` if given."""
    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    if ctx.device.type == "cuda":  # as the service processes: float32 is IEEE, TF32 only where a mode asks
        ieee_float32()
    started = dt.datetime.now(dt.UTC)
    report: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "commit": commit(),
        "run": "quick" if ctx.quick else "full",
        "hardware": describe(ctx.device),
        "model": str(ctx.bundle_dir) if {"vector", "jobs", "naive", "precision", "compile"} & set(sections) else None,
        "sections": {},
    }
    cells: dict[str, str] = {}
    ok = True
    with tempfile.TemporaryDirectory(prefix="editgan-bench-") as scratch:
        ctx = replace(ctx, workdir=Path(scratch))
        for name in sections:
            ctx.log(f"section {name}")
            try:
                result = _section(name)(ctx)
            except Exception as exc:  # the other sections' figures are still worth having
                ok = False
                ctx.log(f"section {name} failed:\n{traceback.format_exc()}")
                result = SectionResult({"error": f"{type(exc).__name__}: {exc}"}, {name: f"error: {exc}"})
            report["sections"][name] = result.data
            cells |= result.cells
    report["seconds"] = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)
    if results is not None:
        append_row(results, _row(report, sections, cells))
        report["results_file"] = str(results)
    return report, ok


def _row(report: dict[str, Any], sections: tuple[str, ...], cells: dict[str, str]) -> list[str]:
    hw = report["hardware"]
    hardware = (
        f"{hw['cpu']}; {hw['cores_logical']}/{hw['cores_physical']} cores; torch {hw['torch']}, "
        f"{hw['threads']} threads; GPU {hw['gpu'] or 'none'}; {hw['device']}; load {hw['load_1min']}"
    )
    model = Path(report["model"]).name if report["model"] else "-"
    run = f"{report['run']}: {','.join(sections)}"
    figures = [cells.get(c, "-") for c in FIGURE_COLUMNS]
    return [report["date"], report["commit"] or "-", run, hardware, model, *figures]


def print_report(report: dict[str, Any]) -> None:
    print(json.dumps(report, indent=1))

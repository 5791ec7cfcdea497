"""`editgan bench` end to end as a process: real gateways, worker and embedded Redis on the tiny model.

Only the shape of the report is checked, never a figure: speed is measured by the bench, not by tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.results import HEADER


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "bench", *args], capture_output=True, text=True, check=False, timeout=600
    )


def test_quick_vector_and_jobs_sections_print_json_and_append_a_row(tiny_models: Path, tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    args = ["--quick", "--only", "vector,jobs", "--model", str(tiny_models), "--threads", "1", "--results"]
    out = _bench(*args, str(results))
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["run"] == "quick" and report["results_file"] == str(results)
    assert {"cpu", "cores_logical", "torch", "threads", "gpu", "device"} <= set(report["hardware"])
    assert report["hardware"]["threads"] == 1
    assert set(report["sections"]) == {"vector", "jobs"}

    vector = report["sections"]["vector"]
    assert {"p50_ms", "p95_ms", "p99_ms"} <= set(vector["http_end_to_end"]) and vector["engine_forward"]["n"] > 0
    assert vector["http_over_engine_p50"] > 0
    # paired in the gateway: a request takes longer end to end than its own engine time
    assert vector["http_over_gateway_engine_p50"] > 1 and vector["http_overhead_ms_p50"] > 0
    assert vector["gateway_engine"]["n"] == vector["http_end_to_end"]["n"]
    # the gateway's phases (Server-Timing) and the rest of each edit's duration add up to the edit
    phases = vector["gateway_phases_p50_ms"]
    assert set(phases) == {"latent", "vectors", "engine", "store", "route", "outside"}
    assert phases["outside"] > 0 and phases["engine"] > 0
    assert phases["route"] + phases["outside"] == pytest.approx(vector["http_end_to_end"]["p50_ms"], rel=0.5)
    assert vector["redis_round_trip_after_idle"]["n"] == vector["redis_round_trip"]["n"] > 0
    assert vector["http_first_edit_of_a_latent"]["n"] == vector["http_end_to_end"]["n"]  # one fresh per edit
    assert [c["clients"] for c in vector["concurrency"]] == [1, 4, 16]
    assert all(c["errors"] == 0 and c["requests"] > 0 for c in vector["concurrency"])
    assert {"throughput_gain_16_clients", "single_client_p50_change"} <= set(vector["batching"])
    # a quick run has one round: its one per-round gain is the gain itself
    batching = vector["batching"]
    assert batching["throughput_gain_per_round"] == [batching["throughput_gain_16_clients"]]
    assert len(batching["engine_gain_per_round"]) == 1 and batching["engine_gain_per_round"][0] > 0
    open_loop = vector["batching"]["open_loop"]
    assert [row["load"] for row in open_loop] == [0.5, 0.9]
    capacity = vector["batching"]["throughput_16_clients_rps"]["off"]
    for row in open_loop:  # offered at a share of the unbatched throughput; both gateways answered every request
        assert row["rate_rps"] == pytest.approx(row["load"] * capacity, rel=0.05)
        assert row["errors"] == {"on": 0, "off": 0}
        assert row["latency"]["on"]["n"] > 0 and row["latency"]["off"]["n"] > 0

    jobs = report["sections"]["jobs"]
    assert set(jobs["engine"]) == set(jobs["service"]) == {"invert", "optimize", "refine"}
    assert jobs["queue_overhead"]["n"] == 6  # 2 jobs of each kind
    assert jobs["worker_cold_start"]["to_first_result_s"] >= jobs["worker_cold_start"]["to_models_loaded_s"] > 0
    assert jobs["peak_memory"]["gateway_gib"] > 0 and jobs["peak_memory"]["worker_gib"] > 0
    # GPU memory only where the models are on a GPU: none here, so none reported rather than a made-up 0
    assert jobs["peak_memory"]["worker_gpu_gib"] is None
    assert all(jobs["service"][kind]["peak_gpu_gib"] is None for kind in jobs["service"])
    assert vector["peak_memory"]["gateway_on_gpu_gib"] is None and vector["peak_memory"]["gateway_on_gib"] > 0

    text = results.read_text()
    assert text.startswith(HEADER)
    rows = text[len(HEADER) :].splitlines()
    assert len(rows) == 1 and rows[0].startswith(f"| {report['date']} |") and "quick: vector,jobs" in rows[0]
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[-4:] == ["-", "-", "-", "-"]  # naive, precision, paper and compile were not run


def _quick_section(name: str, models: Path, tmp_path: Path) -> tuple[dict[str, Any], list[str]]:
    """One section's JSON and the cells of its RESULTS.md row, from a quick run on `models`."""
    results = tmp_path / "RESULTS.md"
    out = _bench("--quick", "--only", name, "--model", str(models), "--threads", "1", "--results", str(results))
    assert out.returncode == 0, out.stderr[-3000:]
    section: dict[str, Any] = json.loads(out.stdout)["sections"][name]
    return section, [c.strip() for c in results.read_text().splitlines()[-1].strip("|").split("|")]


def test_the_precision_section_compares_bfloat16_with_float32(tiny_models: Path, tmp_path: Path) -> None:
    section, row = _quick_section("precision", tiny_models, tmp_path)
    assert list(section["runs"]) == ["float32", "bfloat16"]  # no TF32 on a CPU
    for run in section["runs"].values():
        assert set(run) == {"invert", "optimize", "refine"} and all(run[m]["ms_per_step"] > 0 for m in run)
        assert 0 <= run["optimize"]["reached"] <= 1 and run["invert"]["psnr_db"] > 0
    verdict = section["against_float32"]["bfloat16"]
    assert set(verdict["speedup_per_step"]) == {"invert", "optimize", "refine"}
    differences = [*verdict["psnr_difference_db"].values(), verdict["reached_difference"]]
    assert isinstance(verdict["equal_quality"], bool) and all(isinstance(d, float) for d in differences)
    # tolerances: the fixed ones, or twice float32's own spread when every input moves one float32 step
    spread = section["rounding_spread"]
    for mode, tolerance in verdict["psnr_tolerance_db"].items():
        assert tolerance == pytest.approx(max(0.5, 2 * spread["psnr_db"][mode]), abs=1e-3)
    assert row[-3].startswith("bfloat16: invert ") and row[-2:] == ["-", "-"]


def test_the_compile_section_compares_a_compiled_generator_with_eager_mode(tiny_models: Path, tmp_path: Path) -> None:
    section, row = _quick_section("compile", tiny_models, tmp_path)
    assert section["compile_s"] > 0
    for n in ("1", "16"):
        render = section["render"][n]
        assert render["ms"]["eager"] > 0 and render["ms"]["compiled"] > 0 and render["speedup"] > 0
        assert render["image_max_difference"] < 1e-4 and render["labels_equal"] >= 0.99
    loops = section["loops"]
    assert set(loops["speedup_per_step"]) == {"invert", "optimize", "refine"}
    assert all(d <= loops["start_tolerance"] for d in loops["start_loss_relative_difference"].values())
    assert loops["same_losses"] is True, loops
    assert row[-1].startswith("render of 1: ") and row[-2] == "-"  # compile is the last column, paper before it


def test_unknown_sections_are_refused() -> None:
    out = _bench("--only", "vector,warp")
    assert out.returncode == 2 and "unknown bench sections ['warp']" in out.stderr

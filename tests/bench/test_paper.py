"""The paper section's account of the CUDA-graph loops (bench/paper.py), from constructed runs: the section
itself runs them on a GPU only."""

from __future__ import annotations

from typing import Any

from bench.naive import FINAL_TOLERANCE
from bench.paper import LOOPS, graph_summary


def _runs(per_step: float, total: float) -> dict[str, Any]:
    return {m: {"s_per_step": per_step, "total_s": 29 * per_step, "final_losses": {"total": total}} for m in LOOPS}


def test_graph_summary_reports_speed_ups_and_whether_the_losses_agree() -> None:
    eager = _runs(0.12, 2.0)
    same = graph_summary(eager, _runs(0.08, 2.0 * (1 + FINAL_TOLERANCE / 2)))
    assert [same[m]["speedup_per_step"] for m in LOOPS] == [1.5, 1.5, 1.5]
    assert same["same_losses"] and same["optimize"]["final_loss_difference"] == FINAL_TOLERANCE / 2
    drifted = _runs(0.08, 2.0)
    drifted["refine"]["final_losses"]["total"] = 2.0 * (1 + 2 * FINAL_TOLERANCE)
    assert not graph_summary(eager, drifted)["same_losses"]

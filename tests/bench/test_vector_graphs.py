"""The vector section's account of the EDITGAN_CUDA_GRAPHS gateway (bench/vector.py), from constructed
samples: the section measures it on a GPU only."""

from __future__ import annotations

from bench.vector import GRAPHS, Samples, _graphs_cell, _graphs_summary


def test_the_graphs_gateway_is_compared_with_batching_on() -> None:
    s = Samples(graphs_single={"on": [0.010] * 5, GRAPHS: [0.008] * 5}, graphs_rps={"on": [100.0], GRAPHS: [150.0]})
    summary = _graphs_summary(s, off_rps=50.0)
    assert summary["throughput_gain_16_clients"] == 1.5 and summary["batching_gain_16_clients"] == 3.0
    assert summary["single_client_p50_change"] == -0.2
    assert _graphs_cell(summary) == "; CUDA graphs: 16 clients 1.5x, 1-client p50 -20.0 % (8.0 ms)"


def test_a_failed_graphs_gateway_is_reported_not_measured() -> None:
    summary = _graphs_summary(Samples(graphs_error="RuntimeError('exited with 1')"), off_rps=50.0)
    assert summary == {"error": "RuntimeError('exited with 1')"}
    assert _graphs_cell(summary) == "; CUDA graphs: failed (see the JSON)"

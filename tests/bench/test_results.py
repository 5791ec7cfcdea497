"""RESULTS.md rows and the bench's small measuring helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.results import DEFAULT_RESULTS, FIGURE_COLUMNS, HEADER, append_row
from bench.runner import parse_sections
from bench.timing import StepClock, summary_ms
from bench.vector import _spread


def test_rows_are_appended_under_one_header(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "RESULTS.md"
    append_row(path, ["a", "b | c"])
    append_row(path, ["d", ""])
    text = path.read_text()
    assert text.startswith(HEADER) and text.count("# Benchmark results") == 1
    assert text.endswith("| a | b / c |\n| d | - |\n")  # a pipe would split the cell


def test_the_committed_results_carry_the_current_header() -> None:
    # Rows are appended under the header a file was created with: a new column must reach this one too.
    text = DEFAULT_RESULTS.read_text()
    assert text.startswith(HEADER)
    columns = HEADER.split("\n| date | commit |", 1)[1].splitlines()[0].count("|") + 2
    cells = [row.count("|") - 1 for row in text[len(HEADER) :].splitlines()]  # a cell holds no pipe
    assert cells[-1] == columns and max(cells) == columns  # older rows may lack the newest columns


def test_the_header_documents_every_column() -> None:
    table = HEADER.split("| date | commit |", 1)[1].splitlines()[0]
    columns = ["date", "commit", *[c.strip() for c in table.strip(" |").split("|")]]
    assert columns[5:] == list(FIGURE_COLUMNS)
    for column in columns:
        assert f"\n| {column} |" in HEADER


def test_sections_are_parsed_in_canonical_order() -> None:
    assert parse_sections("paper, vector") == ("vector", "paper")
    with pytest.raises(ValueError, match="unknown bench sections"):
        parse_sections("vector,speed")


def test_percentiles_and_step_clock() -> None:
    figures = summary_ms([0.001 * i for i in range(1, 101)])
    assert figures["n"] == 100 and figures["p50_ms"] == pytest.approx(50.5)
    assert figures["p99_ms"] == pytest.approx(99.01)
    clock = StepClock()
    clock.stamps = [0.0, 1.0, 3.0, 4.0]  # gaps 1, 2, 1
    assert clock.per_step == 1.0


def test_a_cell_shows_the_spread_of_per_round_figures() -> None:
    assert _spread([2.02, None, 1.85, 1.9]) == ", rounds 1.85-2.02"  # a round without a figure is left out
    assert _spread([1.9]) == "" and _spread([1.9, None]) == ""  # one round has no spread

"""Schemathesis over the live gateway's own OpenAPI (bounded; scripts/fuzz.py runs the full form): no 5xx,
every 4xx is `{code, message}`, documented answers match their schema. Seeded, so a run is reproducible."""

from __future__ import annotations

import json

from tests.fuzzing import error_body_problem, fuzz
from tests.live import Live

EXAMPLES = 8  # per operation and mode: about 250 requests over the ~20 operations


def test_generated_requests_to_every_operation_get_no_5xx_and_only_json_errors(live: Live) -> None:
    summary = fuzz(live.base_url, EXAMPLES, seed=9)
    assert summary.operations >= 20, summary.per_operation
    assert summary.requests >= 200, summary.as_json()
    assert summary.failures == [], json.dumps(summary.failures[:5], indent=2)
    assert sum(n for status, n in summary.statuses.items() if 400 <= status < 500) > 0  # negatives reach handlers


def test_the_error_contract_check_itself_catches_what_it_should() -> None:
    good = json.dumps({"code": "invalid_input", "message": "x"})
    assert error_body_problem(422, "application/json", good) is None
    assert error_body_problem(200, "text/html", "<p>") is None
    assert error_body_problem(500, "application/json", good) == "server error 500"
    assert "not JSON" in str(error_body_problem(404, "text/plain", "Not Found"))
    assert "not JSON" in str(error_body_problem(400, "application/json", "{"))
    assert "{code, message}" in str(error_body_problem(422, "application/json", '{"detail": []}'))
    assert "{code, message}" in str(error_body_problem(403, "application/json", '{"code": "nope", "message": "x"}'))

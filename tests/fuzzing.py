"""Schemathesis over the service's own OpenAPI, against a real gateway: shared by tests/service/test_fuzz.py
(bounded) and scripts/fuzz.py (full).

Every operation gets valid (positive) and invalid (negative) requests. A request fails when the answer is a
5xx, when a 4xx body is not JSON `{code, message}`, or when a documented answer breaks its schema or media
type. Failures are collected, not raised, so one run reports all of them.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import requests
import schemathesis
from schemathesis import GenerationMode
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from schemas.errors import ErrorCode

CODES = {code.value for code in ErrorCode}


@dataclass
class Summary:
    requests: int = 0
    operations: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    per_operation: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "operations": self.operations,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "per_operation": self.per_operation,
            "failures": len(self.failures),
            "failure_details": self.failures[:50],
        }


def error_body_problem(status: int, content_type: str, text: str) -> str | None:
    """Why an error answer breaks the `{code, message}` contract, or None."""
    if status >= 500:
        return f"server error {status}"
    if status < 400:
        return None
    if not content_type.startswith("application/json"):
        return f"{status} answered as {content_type!r}, not JSON"
    try:
        body = json.loads(text)
    except ValueError:
        return f"{status} body is not JSON"
    if not isinstance(body, dict) or body.get("code") not in CODES or not isinstance(body.get("message"), str):
        return f"{status} body is not {{code, message}}: {text[:200]}"
    return None


def fuzz(
    base_url: str,
    examples: int,
    *,
    seed: int = 0,
    headers: dict[str, str] | None = None,
    skip: frozenset[str] = frozenset(),
) -> Summary:
    """`examples` generated cases per operation and generation mode (positive, negative), reproducible by `seed`.

    `skip` names operations (`METHOD /path`) left out, e.g. ones whose every valid call queues a job."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=30)
    summary = Summary()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            if isinstance(result, Err):  # an operation schemathesis cannot read is a finding too
                summary.failures.append({"operation": "?", "problem": f"invalid schema: {result.err()}"})
                continue
            operation = result.ok()
            label = f"{operation.method.upper()} {operation.path}"
            if label in skip:
                continue
            summary.operations += 1
            before = summary.requests
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _run(operation, mode, examples, seed, base_url, session, headers or {}, summary, label)
            summary.per_operation[label] = summary.requests - before
    return summary


def _run(
    operation: Any,
    mode: GenerationMode,
    examples: int,
    seed: int,
    base_url: str,
    session: requests.Session,
    headers: dict[str, str],
    summary: Summary,
    label: str,
) -> None:
    try:
        strategy = operation.as_strategy(generation_mode=mode)
    except Exception:  # e.g. no negative form exists for an operation without parameters
        return

    @hypothesis.settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[hypothesis.Phase.generate],  # no shrinking: failures are collected, not raised
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.seed(seed)
    @hypothesis.given(case=strategy)
    def one(case: Any) -> None:
        try:
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
        except requests.RequestException as exc:  # no answer at all: the gateway died or hung
            summary.failures.append({"operation": label, "mode": mode.value, "problem": f"no answer: {exc}"})
            return
        summary.requests += 1
        summary.statuses[response.status_code] += 1
        content_type = response.headers.get("content-type", [""])[0]
        problem = error_body_problem(response.status_code, content_type, response.text)
        if problem is None and response.status_code < 500:
            try:
                case.validate_response(response, checks=[response_schema_conformance, content_type_conformance])
            except Exception as exc:  # schemathesis raises a failure group with every broken check
                problem = f"schema: {str(exc).strip()[:400]}"
        if problem is not None:
            summary.failures.append(
                {
                    "operation": label,
                    "mode": mode.value,
                    "problem": problem,
                    "curl": case.as_curl_command(headers=headers, base_url=base_url)[:600],
                }
            )

    with contextlib.suppress(hypothesis.errors.Unsatisfiable):  # no invalid form of an operation without inputs
        one()

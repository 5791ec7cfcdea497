"""What the client raises: the API's own `{code, message}` errors, failed jobs, and no answer at all."""

from __future__ import annotations

from typing import Any

from schemas.jobs import JobInfo


class EditganError(Exception):
    """Base of every client error; `code` and `message` are what a CLI or a log line shows."""

    code: str = "client_error"
    message: str = ""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ApiError(EditganError):
    """The service answered with an error body: `code` is one of `schemas.errors.ErrorCode` (a string).

    Branch on `code` (stable), never on `message` (for people). `status` is the HTTP status; `retry_after`
    comes with 503s. A body that is not the API's (a proxy's HTML page) gets `code = "http_<status>"`.
    `request_id` is the answer's `X-Request-ID`: quote it when reporting a problem, the service's log lines
    for the request end with it.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: Any = None,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.detail, self.retry_after = status, code, detail, retry_after
        self.request_id = request_id

    def __str__(self) -> str:
        request = f", request {self.request_id}" if self.request_id else ""
        return f"{self.code}: {self.message} (HTTP {self.status}{request})"


class JobFailedError(EditganError):
    """A job ended `failed`, `stopped` or `canceled`; `code` is the job's error code (`cancelled` when stopped)."""

    def __init__(self, job: JobInfo) -> None:
        error = job.error
        code = error.code.value if error is not None else "cancelled"
        message = error.message if error is not None else f"the job was {job.status.value}"
        super().__init__(message)
        self.code, self.job = code, job

    def __str__(self) -> str:
        return f"{self.code}: {self.message} (job {self.job.job_id} {self.job.status.value})"


class InvalidUrlError(EditganError, ValueError):
    """The service URL is not an http(s) URL with a host: nothing was sent."""

    code = "invalid_url"


class TransportError(EditganError):
    """No usable answer: connection refused, DNS, a network timeout, a broken response."""

    code = "unreachable"

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url

    def __str__(self) -> str:
        return f"{self.code}: {self.message} ({self.url})"


class RequestTimeoutError(TransportError, TimeoutError):
    """One HTTP request took longer than the client's `timeout`."""

    code = "timeout"


class WaitTimeoutError(EditganError, TimeoutError):
    """`wait()` gave up before the job ended; the job goes on (`job` is its last known state)."""

    code = "wait_timeout"

    def __init__(self, job: JobInfo, timeout: float) -> None:
        super().__init__(f"job {job.job_id} still {job.status.value} after {timeout:g} s")
        self.job, self.timeout = job, timeout

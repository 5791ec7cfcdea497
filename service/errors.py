"""Every failure becomes one `{code, message}` JSON body with the right status, in one place."""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from engine import BundleError, EngineError, InputError
from schemas.errors import ErrorBody, ErrorCode
from service.request_id import HEADER as REQUEST_ID_HEADER
from service.request_id import current as current_request_id
from service.uploads import PayloadTooLargeError, UnsupportedMediaError
from workers.queue import JobNotCancellableError, JobNotFoundError
from workers.registry import ReadOnlyVectorError, VectorNotFoundError
from workers.store import ForbiddenError, NotFoundError
from workers.vectors import ModelMismatchError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Raised by routes for conditions that are not an engine or store error (unknown model, ...)."""

    def __init__(self, status: int, code: ErrorCode, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(status: int, code: ErrorCode, message: str, **extra: object) -> JSONResponse:
    body = ErrorBody(code=code, message=message, detail=extra.pop("detail", None))
    headers = extra.pop("headers", None)
    response = JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=status)
    if isinstance(headers, dict):
        response.headers.update(headers)
    return response


# Redis answers these when it cannot keep a write: its disk is full or unwritable (MISCONF), it is a read-only
# replica (READONLY) or at maxmemory with noeviction (OOM). Nothing of the request was stored; reads still work.
WRITE_REFUSALS = ("MISCONF", "READONLY", "OOM")
STORAGE_MESSAGE = "storage refuses writes (disk full, read-only or out of memory); nothing was stored; reads work: "


def redis_reason(exc: Exception) -> str:
    """Redis's own words: redis-py prefixes a pipeline's error with the command, whose arguments may be
    megabytes of binary data that have no place in a response."""
    message = str(exc)
    _, marker, reason = message.rpartition("caused error: ")
    return (reason if marker else message)[:300]


def refuses_writes(exc: Exception) -> bool:
    if isinstance(exc, (redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError)):
        return True
    return redis_reason(exc).startswith(WRITE_REFUSALS)


def classify(exc: Exception) -> tuple[int, ErrorCode, str]:
    """(status, code, message) of a known exception; unknown ones are internal errors."""
    match exc:
        case ApiError():
            return exc.status, exc.code, exc.message
        case PayloadTooLargeError():
            return 413, ErrorCode.payload_too_large, str(exc)
        case UnsupportedMediaError():
            return 415, ErrorCode.unsupported_media_type, str(exc)
        case InputError():
            return 422, ErrorCode.invalid_input, str(exc)
        case NotFoundError():
            codes = {"latent": ErrorCode.latent_not_found, "image": ErrorCode.image_not_found}
            code = codes.get(exc.kind) or (ErrorCode.vector_not_found if exc.kind == "edit" else None)
            return 404, code or ErrorCode.not_found, str(exc)
        case ForbiddenError():
            return 403, ErrorCode.forbidden, str(exc)
        case VectorNotFoundError():
            return 404, ErrorCode.vector_not_found, str(exc)
        case JobNotFoundError():
            return 404, ErrorCode.job_not_found, str(exc)
        case ReadOnlyVectorError():
            return 409, ErrorCode.vector_read_only, str(exc)
        case JobNotCancellableError():
            return 409, ErrorCode.job_not_cancellable, str(exc)
        case ModelMismatchError():
            return 422, ErrorCode.model_mismatch, str(exc)
        case redis.ResponseError() if refuses_writes(exc):
            return 503, ErrorCode.storage_unavailable, STORAGE_MESSAGE + redis_reason(exc)
        case redis.RedisError():
            return 503, ErrorCode.unavailable, f"service unavailable: {redis_reason(exc)}"
        case BundleError():
            return 503, ErrorCode.unavailable, f"service unavailable: {exc}"
        case EngineError():
            return 422, ErrorCode.invalid_input, str(exc)
    return 500, ErrorCode.internal_error, "internal error; the server log has the details"


KNOWN: tuple[type[Exception], ...] = (
    ApiError,
    EngineError,
    PayloadTooLargeError,
    NotFoundError,
    ForbiddenError,
    VectorNotFoundError,
    JobNotFoundError,
    ReadOnlyVectorError,
    JobNotCancellableError,
    ModelMismatchError,
    redis.RedisError,
)
HTTP_CODES = {
    400: ErrorCode.malformed_body,  # Starlette's: multipart without a boundary, a form it cannot parse
    404: ErrorCode.not_found,
    405: ErrorCode.method_not_allowed,
    413: ErrorCode.payload_too_large,
}


METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on the request's path (several routes may share a path): each one
    tried against the router, as included routers keep their routes' methods to themselves."""
    routes = request.app.router.routes
    return [m for m in METHODS if any(r.matches({**request.scope, "method": m})[0] == Match.FULL for r in routes)]


def install_error_handlers(app: FastAPI, on_error: object = None) -> None:
    """Translate every exception once; `on_error(code, status)` lets metrics count them."""

    def _report(code: ErrorCode, status: int) -> None:
        if callable(on_error):
            on_error(code.value, status)

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        status, code, message = classify(exc)
        headers = exc.headers if isinstance(exc, ApiError) and exc.headers else None
        if status >= 500 and code == ErrorCode.internal_error:
            log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
            # answered by the server-error middleware, outside the one that adds the request's id
            request_id = current_request_id.get()
            if request_id is not None:
                headers = (headers or {}) | {REQUEST_ID_HEADER: request_id}
        _report(code, status)
        if status == 503:
            headers = (headers or {}) | {"Retry-After": "5"}
        return error_response(status, code, message, headers=headers)

    async def handle_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        for e in exc.errors():
            if e.get("type") == "json_invalid":  # not a request that breaks a rule: no request at all
                at = e.get("loc", ("body", "?"))[-1]
                reason = (e.get("ctx") or {}).get("error", "invalid JSON")
                _report(ErrorCode.malformed_body, 400)
                return error_response(400, ErrorCode.malformed_body, f"the body is not valid JSON: {reason} (at {at})")
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"][1:]) or "request"
        _report(ErrorCode.validation_error, 422)
        return error_response(422, ErrorCode.validation_error, f"{where}: {first['msg']}", detail=errors)

    async def handle_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = HTTP_CODES.get(exc.status_code, ErrorCode.invalid_input)
        _report(code, exc.status_code)
        headers = exc.headers
        if exc.status_code == 405:  # Starlette names the methods of the first route on the path only
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)

    app.add_exception_handler(RequestValidationError, handle_validation)
    app.add_exception_handler(StarletteHTTPException, handle_http)
    # Known classes are answered by the exception middleware; anything else reaches Starlette's
    # server-error middleware, which answers our 500 body and re-raises for the server's log.
    for known in KNOWN:
        app.add_exception_handler(known, handle)
    app.add_exception_handler(Exception, handle)

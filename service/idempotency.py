"""`Idempotency-Key` on job submissions: a retried request gets the job it already created.

The record lives in Redis under the caller and a hash of the key, for EDITGAN_RESULT_TTL: the request's
fingerprint (a hash of what it asks for: fields and the bytes of its files, not the multipart framing,
which differs between two sends of one request) and, once queued, the accepted job. The same key with
another request is refused (422); a second request while the first is still being queued gets 409.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from redis import Redis

from schemas.errors import ErrorCode
from schemas.jobs import JobAccepted
from service.errors import ApiError
from workers.store import PREFIX

PENDING_TTL = 60  # seconds a reservation holds if the gateway dies between reserving and queueing
HEADER_PATTERN = r"^[\x21-\x7e]{1,255}$"  # printable ASCII, no spaces


def fingerprint(**fields: object) -> str:
    """A stable hash of a request's meaning; bytes (uploaded files) enter as their SHA-256."""

    def plain(value: object) -> object:
        return hashlib.sha256(value).hexdigest() if isinstance(value, bytes) else value

    canonical = json.dumps({k: plain(v) for k, v in fields.items()}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Idempotency:
    key: str  # the client's Idempotency-Key header
    fingerprint: str

    def redis_key(self, owner: str | None) -> str:
        digest = hashlib.sha256(self.key.encode()).hexdigest()[:32]
        return f"{PREFIX}:idem:{owner or 'anonymous'}:{digest}"


def reserve(redis: Redis, owner: str | None, idem: Idempotency) -> JobAccepted | None:
    """None: this request goes ahead (the key is now reserved). Else the job the key already created."""
    key = idem.redis_key(owner)
    pending = json.dumps({"fingerprint": idem.fingerprint, "accepted": None})
    for _ in range(2):  # the record may expire between SET NX and GET: then reserve again
        if redis.set(key, pending, nx=True, ex=PENDING_TTL):
            return None
        raw = redis.get(key)
        if raw is None:
            continue
        record = json.loads(raw)
        if record["fingerprint"] != idem.fingerprint:
            raise ApiError(
                422,
                ErrorCode.idempotency_key_reused,
                "this Idempotency-Key was used for a different request; use a new key for a new request",
            )
        if record["accepted"] is None:
            raise ApiError(
                409,
                ErrorCode.idempotency_in_progress,
                "a request with this Idempotency-Key is still being processed",
                {"Retry-After": "1"},
            )
        return JobAccepted.model_validate(record["accepted"])
    raise ApiError(409, ErrorCode.idempotency_in_progress, "Idempotency-Key record is changing; retry")


def record(redis: Redis, owner: str | None, idem: Idempotency, accepted: JobAccepted, ttl: int) -> None:
    body = {"fingerprint": idem.fingerprint, "accepted": accepted.model_dump(mode="json")}
    redis.set(idem.redis_key(owner), json.dumps(body), ex=ttl)


def release(redis: Redis, owner: str | None, idem: Idempotency) -> None:
    """The request failed before queueing: let the key be used again."""
    redis.delete(idem.redis_key(owner))

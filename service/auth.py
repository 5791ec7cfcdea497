"""API keys: who is calling, and may they call this endpoint.

Keys come from EDITGAN_API_KEYS (comma-separated, or a file with one per line), each `secret` or
`name:secret`. A request presents one as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Secrets are
compared as SHA-256 digests with `hmac.compare_digest`, against every configured key, so the time taken says
nothing about which key or how much of it matched. What the service stores is an *owner*: a hash of the
key's id (its name, or a digest of an unnamed secret), never the secret, so `alice:old,alice:new` keeps
alice's jobs and results readable while the secret is rotated.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import ErrorCode
from service.errors import ApiError

MIN_SECRET = 16  # characters: shorter secrets are refused at start-up, they could be guessed
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Paths whose GET answers hold one caller's data: a key is needed even with EDITGAN_PUBLIC_READS.
PRIVATE_READS = ("/jobs/", "/latents/", "/results/")
# Public even with EDITGAN_PUBLIC_READS=false (none holds data): the editor's page, where a key is typed in
# (its /static/ files are a mount outside the routes' authentication), and the health probes, since
# Kubernetes' probes and the image's HEALTHCHECK send no key.
ALWAYS_PUBLIC = ("/", "/healthz", "/readyz")
READ_METHODS = ("GET", "HEAD")


class ApiKeyConfigError(ValueError):
    """EDITGAN_API_KEYS names a missing file, or holds a malformed or too short key."""


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def owner_of(key_id: str) -> str:
    """What stored objects record: a one-way hash of the key's id (32 hex characters)."""
    return hashlib.sha256(b"editgan-owner:" + key_id.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class ApiKey:
    key_id: str  # the name, or "sha256:<prefix>" of an unnamed secret
    digest: bytes  # SHA-256 of the secret: what requests are compared with

    @property
    def owner(self) -> str:
        return owner_of(self.key_id)


@dataclass(frozen=True)
class Caller:
    owner: str | None  # None: keys are off, or an anonymous public read
    rate_id: str  # what the rate limit counts against: the owner, else the client address


def parse_keys(setting: str | None) -> list[ApiKey]:
    """EDITGAN_API_KEYS -> keys; a value starting with `/`, `./` or `~` must be a readable file."""
    if not setting:
        return []
    text = setting
    if setting.startswith(("/", "./", "~")):
        path = Path(setting).expanduser()
        if not path.is_file():
            raise ApiKeyConfigError(f"EDITGAN_API_KEYS names {path}, which is not a file")
        text = path.read_text()
    keys: list[ApiKey] = []
    for entry in (e.strip() for line in text.splitlines() for e in line.split(",")):
        if not entry or entry.startswith("#"):
            continue
        name, sep, secret = entry.partition(":")
        if not sep:
            name, secret = "", entry
        if name and not NAME.fullmatch(name):
            raise ApiKeyConfigError(f"API key name {name!r} must match {NAME.pattern}")
        if len(secret) < MIN_SECRET:
            raise ApiKeyConfigError(f"API key {name or '(unnamed)'} is shorter than {MIN_SECRET} characters")
        key_id = name or "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:16]
        keys.append(ApiKey(key_id=key_id, digest=_digest(secret)))
    return keys


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request carries, from `Authorization: Bearer` or `X-API-Key`."""
    if x_api_key:
        return x_api_key.strip()
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, ErrorCode.unauthorized, "Authorization must be `Bearer <API key>`", _challenge())
    return token.strip()


def _challenge() -> dict[str, str]:
    return {"WWW-Authenticate": 'Bearer realm="editgan"'}


class Authenticator:
    """Decides, per request, whether a key is needed and whose it is."""

    def __init__(self, keys: list[ApiKey], *, public_reads: bool) -> None:
        self.keys, self.public_reads = keys, public_reads

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def match(self, presented: str) -> ApiKey | None:
        """The configured key equal to `presented`; every key is compared, in constant time."""
        digest = _digest(presented)
        found: ApiKey | None = None
        for key in self.keys:  # no early exit: the loop takes as long whichever key matches
            if hmac.compare_digest(key.digest, digest) and found is None:
                found = key
        return found

    def needs_key(self, method: str, path: str) -> bool:
        if not self.enabled:
            return False
        if method not in READ_METHODS:
            return True  # every write and every job submission
        if path in ALWAYS_PUBLIC:
            return False
        return not self.public_reads or path.startswith(PRIVATE_READS)

    def identify(self, method: str, path: str, presented: str | None, client: str) -> Caller:
        """The caller of one request, or ApiError 401 (no key) / 403 (unknown key)."""
        if not self.enabled:
            return Caller(owner=None, rate_id=f"addr:{client}")
        if presented is None:
            if self.needs_key(method, path):
                raise ApiError(
                    401,
                    ErrorCode.unauthorized,
                    "an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
                    _challenge(),
                )
            return Caller(owner=None, rate_id=f"addr:{client}")
        key = self.match(presented)
        if key is None:
            raise ApiError(403, ErrorCode.forbidden, "the API key is not valid")
        return Caller(owner=key.owner, rate_id=f"key:{key.owner}")

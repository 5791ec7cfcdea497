"""Short-lived data in Redis with a TTL: latents, result images, uploads and unsaved edit vectors.

Tensors are stored as `.npy` bytes (float32, never pickled) in a hash beside the model they belong to;
images as PNG bytes. With API keys on, every item records its owner (a hash of the key's id, never the key)
and a store scoped to another owner refuses to read it: ids are unguessable but not secrets. Every key of
the project's Redis layout that is not rq's is defined here or in `workers.registry`.
"""

from __future__ import annotations

import io
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.client import Pipeline

from engine.npyio import read_npy

PREFIX = "editgan"

EDIT_ID = "edv"  # the ids of unsaved edits' vectors, `edv_...` (`resolve` tells them from registry names)
EDIT_PREFIX = f"{EDIT_ID}_"


class NotFoundError(LookupError):
    """An id that never existed or whose TTL ran out."""

    def __init__(self, kind: str, item_id: str) -> None:
        super().__init__(f"{kind} {item_id!r} does not exist or has expired")
        self.kind = kind
        self.item_id = item_id


class ForbiddenError(PermissionError):
    """The item exists but belongs to another API key."""

    def __init__(self, kind: str, item_id: str) -> None:
        super().__init__(f"{kind} {item_id!r} belongs to another API key")
        self.kind = kind
        self.item_id = item_id


def as_bytes(value: bytes | str) -> bytes:
    """redis-py types replies as bytes or str; this project's clients never decode, so they are bytes."""
    return value if isinstance(value, bytes) else value.encode()


def as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(16)}"  # 128 random bits: 22 characters


def image_url(image_id: str) -> str:
    """The gateway's URL of a stored PNG."""
    return f"/results/{image_id}.png"


@dataclass(frozen=True)
class StoredArray:
    model: str
    array: np.ndarray  # float32
    meta: dict[str, str]


class LatentCache:
    """Latents a gateway has written or read, in memory until their TTL, least recently used out first.

    A latent never changes after it is written and is never deleted before its TTL, so a copy is exact for as
    long as Redis keeps the original: a slider's repeated real-time edits of one latent (and edits chained
    on a result) skip the Redis read. Each entry keeps its owner, checked on every hit as on a read.
    Used from the event loop only (the `a...` methods), so it needs no lock.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[float, str | None, StoredArray]] = OrderedDict()

    def get(self, key: str) -> tuple[str | None, StoredArray] | None:
        """(owner, a copy of the latent) or None when absent or past its TTL."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, owner, stored = entry
        if time.monotonic() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return owner, StoredArray(stored.model, stored.array.copy(), dict(stored.meta))  # callers may write

    def put(self, key: str, owner: str | None, stored: StoredArray, ttl_seconds: float) -> None:
        if self.size <= 0 or ttl_seconds <= 0:
            return
        array = np.array(stored.array, dtype=np.float32, copy=True)  # the caller's array may change later
        self._entries[key] = (
            time.monotonic() + ttl_seconds,
            owner,
            StoredArray(stored.model, array, dict(stored.meta)),
        )
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


class Store:
    """Typed access to the TTL'd keys; `ttl` in seconds applies to every write.

    `owner` (None: no API keys) is written with every item and must match on every read: items written
    without an owner are readable by anyone, items with one only by a store scoped to that owner.

    `aredis`, an asyncio client of the same server, serves the `a...` methods: the gateway's real-time route
    runs on the event loop, where a thread-pool hop per blocking call cost more than the Redis work itself.
    Both kinds of method share the key layout, the staging and the parsing below.
    """

    def __init__(
        self,
        redis: Redis,
        ttl: int,
        prefix: str = PREFIX,
        owner: str | None = None,
        aredis: AsyncRedis | None = None,
        latent_cache: LatentCache | None = None,
    ) -> None:
        self.redis = redis
        self.ttl = ttl
        self.prefix = prefix
        self.owner = owner
        self.aredis = aredis
        self.latent_cache = latent_cache  # serves the `a...` methods only

    def scoped(self, owner: str | None) -> Store:
        """The same store, reading and writing as `owner`."""
        return Store(self.redis, self.ttl, self.prefix, owner, self.aredis, self.latent_cache)

    def async_client(self) -> AsyncRedis:
        if self.aredis is None:
            raise RuntimeError("this store has no asyncio Redis client (Store(..., aredis=...))")
        return self.aredis

    def _key(self, kind: str, item_id: str) -> str:
        return f"{self.prefix}:{kind}:{item_id}"

    def _check_owner(self, kind: str, item_id: str, owner: bytes | str | None) -> None:
        if owner is not None and as_str(owner) != self.owner:
            raise ForbiddenError(kind, item_id)

    # ------------------------------------------------------------------ arrays: latents, edit vectors

    def _stage_array(
        self,
        pipe: Pipeline | AsyncPipeline,
        kind: str,
        id_prefix: str,
        model: str,
        array: np.ndarray,
        meta: dict[str, str],
        ttl: int | None = None,
    ) -> str:
        item_id = new_id(id_prefix)
        key = self._key(kind, item_id)
        fields: dict[str, str | bytes] = {"model": model, "npy": _npy(array)}
        fields |= {f"meta:{k}": v for k, v in meta.items()} | ({"owner": self.owner} if self.owner else {})
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.expire(key, ttl or self.ttl)
        return item_id

    def _stage_png(self, pipe: Pipeline | AsyncPipeline, png: bytes, kind: str, ttl: int | None = None) -> str:
        item_id = new_id("img" if kind == "image" else "upl")
        key, expiry = self._key(kind, item_id), ttl or self.ttl
        pipe.set(key, png, ex=expiry)
        if self.owner:  # the owner lands with the image, and expires with it
            pipe.set(f"{key}:owner", self.owner, ex=expiry)
        return item_id

    def _put_array(self, kind: str, id_prefix: str, model: str, array: np.ndarray, meta: dict[str, str]) -> str:
        with self.redis.pipeline() as pipe:  # MULTI/EXEC: the hash and its TTL land together
            item_id = self._stage_array(pipe, kind, id_prefix, model, array, meta)
            pipe.execute()
        return item_id

    def _get_array(self, kind: str, item_id: str) -> StoredArray:
        return self._parse_array(kind, item_id, self.redis.hgetall(self._key(kind, item_id)))

    def _parse_array(self, kind: str, item_id: str, raw: dict[bytes | str, bytes | str]) -> StoredArray:
        if not raw:
            raise NotFoundError(kind, item_id)
        fields = {as_str(k): as_bytes(v) for k, v in raw.items()}
        self._check_owner(kind, item_id, fields.get("owner"))
        meta = {k[5:]: v.decode() for k, v in fields.items() if k.startswith("meta:")}
        return StoredArray(model=fields["model"].decode(), array=read_npy(fields["npy"], what=kind), meta=meta)

    def put_latent(self, model: str, w_plus: np.ndarray) -> str:
        """W+ [L, S] of `model` -> `lat_...`."""
        return self._put_array("latent", "lat", model, w_plus, {})

    def get_latent(self, latent_id: str) -> StoredArray:
        return self._get_array("latent", latent_id)

    async def aget_latent(self, latent_id: str) -> StoredArray:
        """`get_latent` on the asyncio client, from the latent cache when it holds the latent."""
        key = self._key("latent", latent_id)
        cache = self.latent_cache
        if cache is not None and (hit := cache.get(key)) is not None:
            owner, stored = hit
            self._check_owner("latent", latent_id, owner)
            return stored
        async with self.async_client().pipeline(transaction=False) as pipe:
            pipe.hgetall(key)
            pipe.pttl(key)  # how long the copy may live: no longer than the original
            raw, pttl = await pipe.execute()
        stored = self._parse_array("latent", latent_id, raw)
        if cache is not None:
            owner_field = raw.get(b"owner", raw.get("owner"))
            cache.put(key, None if owner_field is None else as_str(owner_field), stored, int(pttl) / 1000)
        return stored

    def put_edit(self, model: str, delta: np.ndarray, classes: list[int], region: str | None) -> str:
        """An optimisation edit's vector, usable by id until its TTL runs out -> `edv_...`."""
        meta = {"classes": ",".join(map(str, classes)), "region": region or ""}
        return self._put_array("edit", EDIT_ID, model, delta, meta)

    def get_edit(self, edit_id: str) -> StoredArray:
        return self._get_array("edit", edit_id)

    # ------------------------------------------------------------------ PNG bytes: results and uploads

    def put_png(self, png: bytes, kind: str = "image") -> str:
        with self.redis.pipeline() as pipe:
            item_id = self._stage_png(pipe, png, kind)
            pipe.execute()
        return item_id

    def put_result(
        self, model: str, w_plus: np.ndarray, pngs: list[bytes], ttl: int | None = None
    ) -> tuple[str, list[str]]:
        """A result's latent W+ [L, S] and its PNGs in one round trip (one MULTI/EXEC: all land or none), kept
        for `ttl` seconds (None: the store's) -> (`lat_...`, image ids)."""
        with self.redis.pipeline() as pipe:
            latent_id, image_ids = self._stage_result(pipe, model, w_plus, pngs, ttl)
            pipe.execute()
        return latent_id, image_ids

    def _stage_result(
        self, pipe: Pipeline | AsyncPipeline, model: str, w_plus: np.ndarray, pngs: list[bytes], ttl: int | None
    ) -> tuple[str, list[str]]:
        latent_id = self._stage_array(pipe, "latent", "lat", model, w_plus, {}, ttl)
        return latent_id, [self._stage_png(pipe, png, "image", ttl) for png in pngs]

    async def aput_result(
        self, model: str, w_plus: np.ndarray, pngs: list[bytes], ttl: int | None = None
    ) -> tuple[str, list[str]]:
        """`put_result` on the asyncio client (the same single MULTI/EXEC)."""
        async with self.async_client().pipeline() as pipe:
            latent_id, image_ids = self._stage_result(pipe, model, w_plus, pngs, ttl)
            await pipe.execute()
        if self.latent_cache is not None:  # the next edit is often of this result (the cache keeps a copy)
            key, stored = self._key("latent", latent_id), StoredArray(model, w_plus, {})
            self.latent_cache.put(key, self.owner, stored, ttl or self.ttl)
        return latent_id, image_ids

    def seconds_left(self, kind: str, item_id: str) -> int:
        """How long a stored item has left before it expires (0 when gone or expiring now; items without an
        expiry count as the result TTL's worth): what a client may cache it for."""
        pttl = int(self.redis.pttl(self._key(kind, item_id)))
        return self.ttl if pttl == -1 else max(pttl, 0) // 1000

    def get_png(self, item_id: str, kind: str = "image") -> bytes:
        key = self._key(kind, item_id)
        data, owner = self.redis.mget([key, f"{key}:owner"])
        if data is None:
            raise NotFoundError(kind, item_id)
        self._check_owner(kind, item_id, owner)
        assert isinstance(data, bytes)
        return data

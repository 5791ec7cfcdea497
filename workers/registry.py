"""The editing-vector registry: durable, versioned, shared by every gateway and worker.

Why Redis (with AOF) rather than files or SQLite: gateways and GPU workers run on different machines and all
already reach one Redis, so the registry needs no shared volume and every process sees a save at once. A
save is one MULTI/EXEC transaction (version, array and metadata land together or not at all) guarded by
WATCH so two concurrent saves of one name get two versions. Durability comes from the server's append-only
file: `editgan up` starts its embedded Redis with `appendonly yes`, compose and the StatefulSet do too.

Layout: `editgan:vec:{model}` is the set of names; `editgan:vec:{model}:{name}` is one hash holding
`latest` and, per version n, `v{n}:npy` (float32 .npy, never pickled) and `v{n}:meta` (JSON).
Vectors shipped inside a bundle are version 0 of their name and read-only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
from redis import Redis

from engine.npyio import read_npy
from workers.store import PREFIX, _npy, as_bytes, as_str

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
META_FIELDS = ("classes", "region", "description", "scale_range", "created_at", "norm", "source_latent")


class VectorNotFoundError(LookupError):
    def __init__(self, model: str, name: str, version: int | None = None, versions: list[int] | None = None) -> None:
        what = f"{name}@{version}" if version is not None else name
        # The name exists, the version does not: say which versions do, not that the vector is missing.
        known = f"; its versions are {versions}" if versions else ""
        super().__init__(f"model {model!r} has no editing vector {what!r}{known}")


class ReadOnlyVectorError(PermissionError):
    pass


@dataclass(frozen=True)
class VectorRecord:
    model: str
    name: str
    version: int
    versions: list[int]
    delta: np.ndarray  # [L, S] float32
    meta: dict[str, Any]  # classes, region, description, scale_range, created_at, norm


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):  # match() would let `$` accept a trailing newline
        raise ValueError(f"vector name {name!r} must match {NAME.pattern}")
    return name


class Registry:
    """Versioned vectors per model in Redis; `save` never overwrites, `delete` removes every version."""

    def __init__(self, redis: Redis, prefix: str = PREFIX) -> None:
        self.redis = redis
        self.prefix = prefix

    def _index(self, model: str) -> str:
        return f"{self.prefix}:vec:{model}"

    def _key(self, model: str, name: str) -> str:
        return f"{self.prefix}:vec:{model}:{name}"

    def save(self, model: str, name: str, delta: np.ndarray, meta: dict[str, Any]) -> int:
        """Store a new version of `name`; returns its number (1, 2, ...)."""
        check_name(name)
        unknown = set(meta) - set(META_FIELDS)
        if unknown:
            raise ValueError(f"unknown vector metadata fields {sorted(unknown)}")
        meta = meta | {"norm": round(float(np.linalg.norm(delta.astype(np.float64))), 6)}  # float32's overflows
        payload, meta_json = _npy(delta), json.dumps(meta)
        key = self._key(model, name)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    version = int(pipe.hget(key, "latest") or 0) + 1
                    pipe.multi()
                    pipe.hset(key, mapping={f"v{version}:npy": payload, f"v{version}:meta": meta_json})
                    pipe.hset(key, "latest", version)
                    pipe.sadd(self._index(model), name)
                    pipe.execute()
                    return version
                except redis.WatchError:
                    continue  # another save of this name won the race: take the next number

    def get(self, model: str, name: str, version: int | None = None) -> VectorRecord:
        """One version (the latest by default)."""
        key = self._key(model, name)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(key, "latest")
            pipe.hkeys(key)
            latest, keys = pipe.execute()
        if latest is None:
            raise VectorNotFoundError(model, name, version)
        versions = sorted(int(k[1:-4]) for k in map(as_str, keys) if k.endswith(":npy"))
        chosen = int(latest) if version is None else version
        if chosen not in versions:
            raise VectorNotFoundError(model, name, version, versions)
        npy, meta = self.redis.hmget(key, [f"v{chosen}:npy", f"v{chosen}:meta"])
        if npy is None or meta is None:  # deleted between the two reads
            raise VectorNotFoundError(model, name, version)
        delta = read_npy(as_bytes(npy), what=f"vector {name}@{chosen}")
        return VectorRecord(model, name, chosen, versions, delta, json.loads(meta))

    def names(self, model: str) -> list[str]:
        return sorted(as_str(n) for n in self.redis.smembers(self._index(model)))

    def list(self, model: str) -> list[VectorRecord]:
        """The latest version of every name (names deleted concurrently are skipped)."""
        records = []
        for name in self.names(model):
            try:
                records.append(self.get(model, name))
            except VectorNotFoundError:
                continue
        return records

    def delete(self, model: str, name: str) -> int:
        """Remove every version; returns how many there were.

        The `latest` counter stays, so a later save of the name gets a new number and `name@1` never
        comes to mean different data.
        """
        key = self._key(model, name)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    fields = [k for k in map(as_str, pipe.hkeys(key)) if k != "latest"]
                    pipe.multi()
                    if fields:
                        pipe.hdel(key, *fields)
                    pipe.srem(self._index(model), name)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        count = sum(1 for k in fields if k.endswith(":npy"))
        if count == 0:
            raise VectorNotFoundError(model, name)
        return count

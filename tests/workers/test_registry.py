"""The versioned vector registry through a real Redis: numbering, bit-exact reads, deletes, races, durability."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import redis

from workers.registry import META_FIELDS, Registry, VectorNotFoundError, check_name
from workers.store import PREFIX

MODEL = "tiny"


def delta(seed: int, shape: tuple[int, int] = (8, 32)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out: np.ndarray = (rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 6, shape)).astype(np.float32)
    out.reshape(-1)[:2] = (-0.0, np.finfo(np.float32).tiny / 4)  # a sign bit and a subnormal that must survive
    return out


def meta(seed: int) -> dict[str, Any]:
    return {
        "classes": [1, seed % 5],
        "region": "first",
        "description": f"vector number {seed} — ünïcode",
        "scale_range": [-1.5 - seed, 2.5 + seed],
        "created_at": f"2024-01-{seed % 28 + 1:02d}T00:00:00+00:00",
    }


@pytest.fixture
def registry(redis_client: redis.Redis) -> Registry:
    return Registry(redis_client)


def test_save_numbers_versions_one_two_three_per_name_and_model(registry: Registry) -> None:
    assert [registry.save(MODEL, "smile", delta(i), meta(i)) for i in range(3)] == [1, 2, 3]
    assert [registry.save(MODEL, "age", delta(i), {}) for i in range(2)] == [1, 2]  # each name counts alone
    assert registry.save("cars", "smile", delta(9), {}) == 1  # and each model
    assert registry.save(MODEL, "smile", delta(3), meta(3)) == 4


def test_get_returns_latest_and_every_version_bit_exact(registry: Registry) -> None:
    saved = {registry.save(MODEL, "smile", delta(i), meta(i)): i for i in range(4)}
    latest = registry.get(MODEL, "smile")
    assert latest.version == max(saved) == 4
    assert latest.delta.tobytes() == delta(saved[4]).tobytes()
    for version, seed in saved.items():
        record = registry.get(MODEL, "smile", version)
        assert (record.model, record.name, record.version) == (MODEL, "smile", version)
        assert record.versions == sorted(saved)
        assert record.delta.dtype == np.float32 and record.delta.shape == delta(seed).shape
        assert record.delta.tobytes() == delta(seed).tobytes()
        assert {k: record.meta[k] for k in meta(seed)} == meta(seed)  # JSON round trip, unicode included
        assert record.meta["norm"] == pytest.approx(float(np.linalg.norm(delta(seed))), rel=1e-6)


def test_save_never_overwrites_an_earlier_version(registry: Registry) -> None:
    registry.save(MODEL, "smile", delta(0), meta(0))
    before = registry.get(MODEL, "smile", 1)
    registry.save(MODEL, "smile", delta(1), meta(1))
    after = registry.get(MODEL, "smile", 1)
    assert after.delta.tobytes() == before.delta.tobytes()
    assert after.meta == before.meta


def test_norm_is_computed_not_trusted(registry: Registry) -> None:
    d = delta(5)
    registry.save(MODEL, "smile", d, {"norm": 123.0})
    assert registry.get(MODEL, "smile").meta["norm"] == pytest.approx(float(np.linalg.norm(d)), rel=1e-6)


def test_a_float64_delta_is_stored_as_float32(registry: Registry) -> None:
    d64 = np.random.default_rng(0).standard_normal((8, 32))
    registry.save(MODEL, "smile", d64, {})
    record = registry.get(MODEL, "smile")
    assert record.delta.dtype == np.float32
    assert record.delta.tobytes() == d64.astype(np.float32).tobytes()


def test_names_and_list_give_the_latest_of_every_name(registry: Registry) -> None:
    versions = {"smile": 3, "age": 1, "big.wheels": 2, "a-b_c": 1}
    last_seed: dict[str, int] = {}
    for n, (name, count) in enumerate(versions.items()):
        for v in range(count):
            last_seed[name] = 10 * n + v
            registry.save(MODEL, name, delta(last_seed[name]), meta(last_seed[name]))
    registry.save("cars", "other", delta(99), {})
    assert registry.names(MODEL) == sorted(versions)
    records = registry.list(MODEL)
    assert [r.name for r in records] == sorted(versions)
    for record in records:
        assert record.version == versions[record.name] == len(record.versions)
        assert record.delta.tobytes() == delta(last_seed[record.name]).tobytes()
    assert registry.names("cars") == ["other"]
    assert registry.names("nothing") == [] and registry.list("nothing") == []


def test_delete_removes_every_version_and_the_name(registry: Registry, redis_client: redis.Redis) -> None:
    for i in range(3):
        registry.save(MODEL, "smile", delta(i), meta(i))
    registry.save(MODEL, "age", delta(7), meta(7))
    registry.save("cars", "smile", delta(8), {})  # the same name in another model must survive
    assert registry.delete(MODEL, "smile") == 3
    assert registry.names(MODEL) == ["age"]
    assert [r.name for r in registry.list(MODEL)] == ["age"]
    for version in (None, 1, 2, 3):
        with pytest.raises(VectorNotFoundError):
            registry.get(MODEL, "smile", version)
    # only the version counter of the deleted name is left: no array or metadata
    leftover = redis_client.hkeys(f"{PREFIX}:vec:{MODEL}:smile")
    assert leftover == [b"latest"]
    assert registry.get(MODEL, "age").delta.tobytes() == delta(7).tobytes()
    assert registry.get("cars", "smile").delta.tobytes() == delta(8).tobytes()
    with pytest.raises(VectorNotFoundError):
        registry.delete(MODEL, "smile")  # a second delete finds nothing


def test_a_name_saved_again_after_delete_never_reuses_a_version_number(registry: Registry) -> None:
    registry.save(MODEL, "smile", delta(0), {})
    registry.save(MODEL, "smile", delta(1), {})
    registry.delete(MODEL, "smile")
    assert registry.save(MODEL, "smile", delta(2), {}) == 3
    assert registry.get(MODEL, "smile").versions == [3]
    with pytest.raises(VectorNotFoundError):
        registry.get(MODEL, "smile", 1)  # old numbers stay gone instead of meaning new data


def test_deleting_an_unknown_name_raises_and_changes_nothing(registry: Registry, redis_client: redis.Redis) -> None:
    registry.save(MODEL, "smile", delta(0), {})
    before = {k: redis_client.dump(k) for k in redis_client.scan_iter()}
    with pytest.raises(VectorNotFoundError):
        registry.delete(MODEL, "nope")
    assert {k: redis_client.dump(k) for k in redis_client.scan_iter()} == before


@pytest.mark.parametrize(
    "name",
    ["", "Smile", "-smile", ".smile", "_smile", "smile face", "smile/face", "smile:1", "smile@1", "sméle",
     "smile\n", "\nsmile", "a" * 65, "*", "smile\x00"],
)  # fmt: skip
def test_invalid_names_are_refused_and_nothing_is_stored(
    registry: Registry, redis_client: redis.Redis, name: str
) -> None:
    with pytest.raises(ValueError, match="vector name"):
        check_name(name)
    with pytest.raises(ValueError):
        registry.save(MODEL, name, delta(0), {})
    assert redis_client.dbsize() == 0


@pytest.mark.parametrize("name", ["a", "0", "smile", "big.wheels-v2_b", "a" * 64])
def test_valid_names_are_accepted(registry: Registry, name: str) -> None:
    assert check_name(name) == name
    assert registry.save(MODEL, name, delta(0), {}) == 1
    assert registry.names(MODEL) == [name]


@pytest.mark.parametrize("extra", [{"colour": "red"}, {"version": 3}, {"latest": 1}, {"npy": "x"}])
def test_unknown_metadata_fields_are_refused_and_nothing_is_stored(
    registry: Registry, redis_client: redis.Redis, extra: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="metadata"):
        registry.save(MODEL, "smile", delta(0), meta(0) | extra)
    assert redis_client.dbsize() == 0


def test_every_documented_metadata_field_is_accepted(registry: Registry) -> None:
    every = {field: f"value of {field}" for field in META_FIELDS}
    registry.save(MODEL, "smile", delta(0), every)
    stored = registry.get(MODEL, "smile").meta
    assert {k: v for k, v in stored.items() if k != "norm"} == {k: v for k, v in every.items() if k != "norm"}


@pytest.mark.parametrize("version", [0, -1, 4, 10**6])
def test_a_version_that_does_not_exist_raises(registry: Registry, version: int) -> None:
    for i in range(3):
        registry.save(MODEL, "smile", delta(i), {})
    with pytest.raises(VectorNotFoundError, match=f"smile@{version}"):
        registry.get(MODEL, "smile", version)


def test_an_unknown_name_or_model_raises(registry: Registry) -> None:
    registry.save(MODEL, "smile", delta(0), {})
    for model, name, version in [(MODEL, "nope", None), (MODEL, "nope", 1), ("cars", "smile", None)]:
        with pytest.raises(VectorNotFoundError):
            registry.get(model, name, version)


def test_concurrent_saves_of_one_name_get_distinct_versions(redis_url: str) -> None:
    threads_n = 8
    barrier = threading.Barrier(threads_n)
    got: dict[int, int] = {}  # seed -> version
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        client = redis.Redis.from_url(redis_url)  # one connection per "process", as gateways and workers have
        try:
            barrier.wait(timeout=10)
            version = Registry(client).save(MODEL, "smile", delta(seed), meta(seed))
            with lock:
                got[seed] = version
        except BaseException as exc:
            with lock:
                errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert sorted(got.values()) == list(range(1, threads_n + 1))

    reader = redis.Redis.from_url(redis_url)
    try:
        registry = Registry(reader)
        assert registry.get(MODEL, "smile").version == threads_n
        for seed, version in got.items():  # each version holds exactly what the thread that got it saved
            record = registry.get(MODEL, "smile", version)
            assert record.versions == list(range(1, threads_n + 1))
            assert record.delta.tobytes() == delta(seed).tobytes()
            assert record.meta["description"] == meta(seed)["description"]
        assert registry.names(MODEL) == ["smile"]
    finally:
        reader.close()


def test_data_survives_a_new_registry_and_a_new_connection(redis_url: str) -> None:
    writer = redis.Redis.from_url(redis_url)
    Registry(writer).save(MODEL, "smile", delta(0), meta(0))
    Registry(writer).save(MODEL, "smile", delta(1), meta(1))
    writer.close()

    reader = redis.Redis.from_url(redis_url)
    try:
        registry = Registry(reader)
        assert registry.names(MODEL) == ["smile"]
        assert registry.get(MODEL, "smile", 1).delta.tobytes() == delta(0).tobytes()
        assert registry.get(MODEL, "smile").delta.tobytes() == delta(1).tobytes()
        assert registry.save(MODEL, "smile", delta(2), {}) == 3  # numbering continues where it was
    finally:
        reader.close()


def test_prefixes_are_isolated(redis_client: redis.Redis) -> None:
    blue, green = Registry(redis_client, prefix="blue"), Registry(redis_client, prefix="green")
    blue.save(MODEL, "smile", delta(0), {})
    assert green.names(MODEL) == []
    with pytest.raises(VectorNotFoundError):
        green.get(MODEL, "smile")
    assert green.save(MODEL, "smile", delta(1), {}) == 1
    assert blue.get(MODEL, "smile").delta.tobytes() == delta(0).tobytes()


def test_registry_keys_never_expire(registry: Registry, redis_client: redis.Redis) -> None:
    registry.save(MODEL, "smile", delta(0), {})
    keys = list(redis_client.scan_iter(match=f"{PREFIX}:*"))
    assert keys
    assert all(redis_client.ttl(k) == -1 for k in keys)  # durable, unlike the store's TTL'd keys

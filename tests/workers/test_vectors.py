"""Resolving vector references (`name`, `name@n`, `edv_...`) against a tiny bundle, a real registry and store."""

from __future__ import annotations

import numpy as np
import pytest
import redis
import torch

from engine import Bundle
from workers.registry import Registry, VectorNotFoundError
from workers.store import Store
from workers.vectors import ModelMismatchError, is_shipped, resolve

MODEL = "tiny"  # tiny_spec()'s name


@pytest.fixture
def bundle(tiny_bundle: Bundle) -> Bundle:
    tiny_bundle.spec.vectors = {"grow": {"region": "first", "description": "shipped", "scale_range": [-3.0, 1.5]}}
    return tiny_bundle


@pytest.fixture
def registry(redis_client: redis.Redis) -> Registry:
    return Registry(redis_client)


@pytest.fixture
def store(redis_client: redis.Redis) -> Store:
    return Store(redis_client, ttl=300)


def delta(bundle: Bundle, seed: int) -> np.ndarray:
    shape = (bundle.spec.n_latent, bundle.spec.generator.style_dim)
    out: np.ndarray = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return out


def test_a_shipped_vector_resolves_to_version_zero(bundle: Bundle, registry: Registry, store: Store) -> None:
    for ref in ("grow", "grow@0"):
        resolved = resolve(ref, bundle, registry, store)
        assert resolved.ref == "grow@0"
        v = resolved.vector
        assert torch.equal(v.delta, bundle.vectors["grow"])
        assert v.model == bundle.spec.name
        assert v.region == "first"
        assert v.classes == sorted(bundle.spec.regions["first"])  # the region's classes
        assert v.scale_range == (-3.0, 1.5)
        assert v.description == "shipped"
        v.check(bundle.spec)


def test_shipped_vector_without_metadata_gets_defaults(tiny_bundle: Bundle, registry: Registry, store: Store) -> None:
    tiny_bundle.spec.vectors = {}
    v = resolve("grow", tiny_bundle, registry, store).vector
    assert v.classes == [] and v.region is None
    lo, hi = v.scale_range
    assert lo < hi
    v.check(tiny_bundle.spec)


def test_explicit_shipped_classes_win_over_the_region(tiny_bundle: Bundle, registry: Registry, store: Store) -> None:
    tiny_bundle.spec.vectors = {"grow": {"region": "first", "classes": [3, 2]}}
    assert resolve("grow", tiny_bundle, registry, store).vector.classes == [2, 3]


def test_a_registry_name_resolves_to_its_latest_version(bundle: Bundle, registry: Registry, store: Store) -> None:
    metas = [
        {"classes": [1], "region": "first", "description": "one", "scale_range": [-1.0, 1.0]},
        {"classes": [1, 2], "region": "pair", "description": "two", "scale_range": [-4.0, 4.0]},
    ]
    versions = [registry.save(MODEL, "smile", delta(bundle, i), m) for i, m in enumerate(metas)]
    resolved = resolve("smile", bundle, registry, store)
    assert resolved.ref == f"smile@{max(versions)}"
    v = resolved.vector
    assert v.delta.dtype == torch.float32 and v.delta.device.type == "cpu"  # as a bundle's own, whatever its device
    assert np.array_equal(v.delta.numpy(), delta(bundle, 1))
    assert (v.classes, v.region, v.description, v.scale_range) == ([1, 2], "pair", "two", (-4.0, 4.0))
    v.check(bundle.spec)


def test_a_registry_version_resolves_to_that_version(bundle: Bundle, registry: Registry, store: Store) -> None:
    for i in range(3):
        registry.save(MODEL, "smile", delta(bundle, i), {"classes": [i + 1]})
    for version in (1, 2, 3):
        resolved = resolve(f"smile@{version}", bundle, registry, store)
        assert resolved.ref == f"smile@{version}"
        assert np.array_equal(resolved.vector.delta.numpy(), delta(bundle, version - 1))
        assert resolved.vector.classes == [version]


def test_an_unsaved_edit_resolves_with_its_classes(bundle: Bundle, registry: Registry, store: Store) -> None:
    d = delta(bundle, 7)
    for classes, region in [([1, 2], "pair"), ([3], None), ([], None)]:
        edit_id = store.put_edit(MODEL, d, classes, region)
        resolved = resolve(edit_id, bundle, registry, store)
        assert resolved.ref == edit_id
        v = resolved.vector
        assert np.array_equal(v.delta.numpy(), d)
        assert v.model == MODEL
        assert v.classes == classes
        assert v.region == region  # "" in the store is no region, not a region named ""
        v.check(bundle.spec)


def test_another_models_edit_is_refused(bundle: Bundle, registry: Registry, store: Store) -> None:
    edit_id = store.put_edit("cars", delta(bundle, 0), [1], "first")
    with pytest.raises(ModelMismatchError, match="cars"):
        resolve(edit_id, bundle, registry, store)


def test_another_models_registry_vector_is_not_visible(bundle: Bundle, registry: Registry, store: Store) -> None:
    registry.save("cars", "smile", delta(bundle, 0), {})
    with pytest.raises(VectorNotFoundError):
        resolve("smile", bundle, registry, store)


@pytest.mark.parametrize(
    "ref",
    ["nope", "nope@1", "nope@0", "smile@2", "grow@1", "edv_" + "A" * 22, "edv_expired"],
)
def test_unknown_references_raise_vector_not_found(
    bundle: Bundle, registry: Registry, store: Store, redis_client: redis.Redis, ref: str
) -> None:
    registry.save(MODEL, "smile", delta(bundle, 0), {})  # version 1 only
    if ref == "edv_expired":
        ref = store.put_edit(MODEL, delta(bundle, 1), [1], "first")
        for key in redis_client.scan_iter(match=f"*{ref}"):
            redis_client.delete(key)  # what a TTL running out does
    with pytest.raises(VectorNotFoundError):
        resolve(ref, bundle, registry, store)


def test_resolving_does_not_write(bundle: Bundle, registry: Registry, store: Store, redis_client: redis.Redis) -> None:
    registry.save(MODEL, "smile", delta(bundle, 0), {})
    edit_id = store.put_edit(MODEL, delta(bundle, 1), [1], "first")
    before = {k: redis_client.dump(k) for k in redis_client.scan_iter()}
    for ref in ("grow", "smile", "smile@1", edit_id):
        resolve(ref, bundle, registry, store)
    assert {k: redis_client.dump(k) for k in redis_client.scan_iter()} == before


def test_is_shipped_says_which_references_resolve_without_redis(bundle: Bundle) -> None:
    """The gateway resolves these on its event loop: each must resolve with Redis unreachable, and every
    other reference must be sent where a blocking read is allowed."""
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)  # nothing listens on port 1
    registry, store = Registry(unreachable), Store(unreachable, ttl=60)
    for ref in ("grow", "grow@0"):
        assert is_shipped(ref, bundle)
        assert resolve(ref, bundle, registry, store).ref == "grow@0"
    for ref in ("grow@2", "smile", "smile@1", "edv_" + "A" * 22):
        assert not is_shipped(ref, bundle)
        with pytest.raises(redis.ConnectionError):
            resolve(ref, bundle, registry, store)

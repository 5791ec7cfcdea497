"""The TTL'd store through a real Redis: bit-exact round trips, a TTL on every key, well-formed unique ids."""

from __future__ import annotations

import asyncio
import io
import pickle
import re
import time

import numpy as np
import pytest
import redis
from PIL import Image
from redis.asyncio import Redis as AsyncRedis

from engine import InputError
from schemas.edits import EDIT_ID, IMAGE_ID, LATENT_ID
from workers.store import PREFIX, ForbiddenError, LatentCache, NotFoundError, Store, image_url

TTL = 300
UPLOAD_ID = IMAGE_ID.replace("img_", "upl_")  # uploads share the image ids' alphabet and length


def awkward_array(seed: int, shape: tuple[int, ...] = (8, 32)) -> np.ndarray:
    """float32 values that a lossy or text encoding would change: -0.0, subnormals, extremes, infinities."""
    rng = np.random.default_rng(seed)
    array = rng.standard_normal(shape).astype(np.float32) * 10.0 ** rng.integers(-30, 30, shape)
    flat = array.reshape(-1)
    specials = [-0.0, np.finfo(np.float32).tiny / 8, np.finfo(np.float32).max, -np.inf, np.inf, np.nan]
    n = min(len(specials), flat.size)
    flat[:n] = np.array(specials[:n], dtype=np.float32)
    return array.astype(np.float32)


def png_bytes(seed: int, size: tuple[int, int] = (13, 7)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def project_keys(client: redis.Redis, prefix: str = PREFIX) -> list[bytes]:
    return sorted(client.scan_iter(match=f"{prefix}:*"))


def key_of(client: redis.Redis, item_id: str) -> bytes:
    """The one key that holds `item_id`, found by scanning rather than by re-deriving the layout."""
    keys = [k for k in project_keys(client) if k.endswith(b":" + item_id.encode())]
    assert len(keys) == 1, keys
    return keys[0]


@pytest.fixture
def store(redis_client: redis.Redis) -> Store:
    return Store(redis_client, ttl=TTL)


# ---------------------------------------------------------------------------------------------- round trips


def test_latent_round_trip_is_bit_exact_and_keeps_its_model(store: Store) -> None:
    arrays = {f"model-{i}": awkward_array(i) for i in range(3)}
    ids = {model: store.put_latent(model, array) for model, array in arrays.items()}
    for model, latent_id in ids.items():
        stored = store.get_latent(latent_id)
        assert stored.model == model
        assert stored.array.dtype == np.float32
        assert stored.array.shape == arrays[model].shape
        assert stored.array.tobytes() == arrays[model].tobytes()  # NaN, -0.0 and subnormals included
        assert stored.meta == {}


def test_latent_is_stored_as_float32_whatever_the_input_dtype(store: Store) -> None:
    w64 = np.random.default_rng(3).standard_normal((8, 32))  # float64
    stored = store.get_latent(store.put_latent("tiny", w64))
    assert stored.array.dtype == np.float32
    assert stored.array.tobytes() == w64.astype(np.float32).tobytes()


def test_non_contiguous_input_round_trips(store: Store) -> None:
    base = awkward_array(4, (32, 8))
    view = base.T  # a Fortran-ordered view: what gets stored must be its values, not its memory layout
    assert not view.flags["C_CONTIGUOUS"]
    stored = store.get_latent(store.put_latent("tiny", view))
    assert stored.array.shape == view.shape
    assert stored.array.tobytes() == np.ascontiguousarray(view).tobytes()


@pytest.mark.parametrize(("classes", "region"), [([1], "first"), ([1, 2], "pair"), ([0, 3, 4], None), ([], None)])
def test_edit_round_trip_keeps_delta_model_classes_and_region(
    store: Store, classes: list[int], region: str | None
) -> None:
    delta = awkward_array(len(classes))
    stored = store.get_edit(store.put_edit("tiny", delta, classes, region))
    assert stored.model == "tiny"
    assert stored.array.tobytes() == delta.tobytes()
    assert [int(c) for c in stored.meta["classes"].split(",") if c] == classes
    assert (stored.meta["region"] or None) == region


def test_model_is_stored_in_the_same_hash_as_the_latent(store: Store, redis_client: redis.Redis) -> None:
    latent_id = store.put_latent("cars", awkward_array(5))
    key = key_of(redis_client, latent_id)
    assert redis_client.type(key) == b"hash"
    fields = redis_client.hgetall(key)
    assert fields[b"model"] == b"cars"
    npy = fields[b"npy"]
    assert isinstance(npy, bytes) and npy.startswith(b"\x93NUMPY")  # a .npy, never a pickle
    assert project_keys(redis_client) == [key]  # one key: the model cannot outlive or miss its latent


@pytest.mark.parametrize("kind", ["image", "upload"])
def test_png_round_trip_is_bit_exact(store: Store, kind: str) -> None:
    blobs = [png_bytes(i) for i in range(3)] + [bytes(range(256)) * 4, b"\x00"]  # stored opaque, not parsed
    ids = [store.put_png(blob, kind=kind) for blob in blobs]
    for item_id, blob in zip(ids, blobs, strict=True):
        assert store.get_png(item_id, kind=kind) == blob


def test_image_and_upload_namespaces_are_separate(store: Store) -> None:
    image_id = store.put_png(png_bytes(0))
    upload_id = store.put_png(png_bytes(1), kind="upload")
    with pytest.raises(NotFoundError):
        store.get_png(image_id, kind="upload")
    with pytest.raises(NotFoundError):
        store.get_png(upload_id, kind="image")


def test_latent_and_edit_namespaces_are_separate(store: Store) -> None:
    latent_id = store.put_latent("tiny", awkward_array(0))
    edit_id = store.put_edit("tiny", awkward_array(1), [1], "first")
    with pytest.raises(NotFoundError):
        store.get_edit(latent_id)
    with pytest.raises(NotFoundError):
        store.get_latent(edit_id)


def test_a_result_lands_in_one_transaction_readable_by_its_owner_only(redis_client: redis.Redis) -> None:
    owned = Store(redis_client, TTL, owner="alice")
    latent, pngs = awkward_array(9), [png_bytes(9), png_bytes(10, (5, 3))]
    before = redis_client.info("stats")["total_commands_processed"]
    latent_id, image_ids = owned.put_result("tiny", latent, pngs)
    commands = redis_client.info("stats")["total_commands_processed"] - before - 1  # less the INFO itself
    assert commands == 2 + 2 + 2 * len(pngs)  # MULTI, EXEC, HSET + EXPIRE, SET + owner SET per image
    assert owned.get_latent(latent_id).array.tobytes() == latent.tobytes()
    assert [owned.get_png(i) for i in image_ids] == pngs and len(set(image_ids)) == len(pngs)
    assert all(0 < redis_client.ttl(key_of(redis_client, i)) <= TTL for i in [latent_id, *image_ids])
    with pytest.raises(ForbiddenError):
        owned.scoped("bob").get_png(image_ids[0])


def test_the_asyncio_methods_share_the_layout_ownership_and_transaction(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """The gateway's real-time route reads and writes on the asyncio client; the sync methods (workers, other
    routes) must see exactly the same items, and the asyncio ones the sync ones'."""
    latent, other, pngs = awkward_array(11), awkward_array(13), [png_bytes(11), png_bytes(12, (4, 9))]

    async def scenario() -> tuple[str, list[str], np.ndarray]:
        aclient = AsyncRedis.from_url(redis_url)
        try:
            owned = Store(redis_client, TTL, owner="alice", aredis=aclient)
            await aclient.ping()  # connects first: a new connection announces itself (CLIENT SETINFO)
            before = redis_client.info("stats")["total_commands_processed"]
            latent_id, image_ids = await owned.aput_result("tiny", latent, pngs)
            commands = redis_client.info("stats")["total_commands_processed"] - before - 1
            assert commands == 2 + 2 + 2 * len(pngs)  # one MULTI/EXEC, as put_result
            sync_id = owned.put_latent("tiny", other)
            read_back = (await owned.aget_latent(sync_id)).array
            with pytest.raises(ForbiddenError):
                await owned.scoped("bob").aget_latent(latent_id)
            with pytest.raises(NotFoundError):
                await owned.aget_latent("lat_" + "A" * 22)
            return latent_id, image_ids, read_back
        finally:
            await aclient.aclose()

    latent_id, image_ids, read_back = asyncio.run(scenario())
    owned = Store(redis_client, TTL, owner="alice")
    assert owned.get_latent(latent_id).array.tobytes() == latent.tobytes()
    assert [owned.get_png(i) for i in image_ids] == pngs
    assert all(0 < redis_client.ttl(key_of(redis_client, i)) <= TTL for i in [latent_id, *image_ids])
    assert read_back.tobytes() == other.tobytes()
    with pytest.raises(RuntimeError, match="asyncio"):
        asyncio.run(Store(redis_client, TTL).aget_latent(latent_id))


def test_the_latent_cache_serves_repeated_reads_owned_copies_until_the_ttl(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """What the gateway's real-time route reads twice comes from memory (the key is gone from Redis here to
    prove it), only to its owner, as a copy, and not after the TTL that Redis would apply."""
    latent, other = awkward_array(14), awkward_array(15)

    async def scenario() -> None:
        aclient = AsyncRedis.from_url(redis_url)
        try:
            cache = LatentCache(size=2)
            alice = Store(redis_client, ttl=2, owner="alice", aredis=aclient, latent_cache=cache)
            read_id = alice.put_latent("tiny", latent)  # written by the sync store: cached on first read
            assert (await alice.aget_latent(read_id)).array.tobytes() == latent.tobytes()
            redis_client.delete(key_of(redis_client, read_id))
            first = await alice.aget_latent(read_id)  # from memory
            assert first.array.tobytes() == latent.tobytes() and first.model == "tiny"
            first.array[:] = 0  # callers get copies: the next read is unchanged
            assert (await alice.aget_latent(read_id)).array.tobytes() == latent.tobytes()
            with pytest.raises(ForbiddenError):
                await alice.scoped("bob").aget_latent(read_id)

            written_id, _ = await alice.aput_result("tiny", other, [])  # a result is cached as it is written
            redis_client.delete(key_of(redis_client, written_id))
            assert (await alice.aget_latent(written_id)).array.tobytes() == other.tobytes()

            third = alice.put_latent("tiny", latent)  # a third latent evicts the least recently used
            await alice.aget_latent(third)
            assert len(cache) == 2
            with pytest.raises(NotFoundError):
                await alice.aget_latent(read_id)

            await asyncio.sleep(2.1)  # past the TTL: Redis dropped `third`, and so does the cache
            with pytest.raises(NotFoundError):
                await alice.aget_latent(third)
        finally:
            await aclient.aclose()

    asyncio.run(scenario())


def test_without_a_cache_every_read_goes_to_redis(redis_client: redis.Redis, redis_url: str) -> None:
    latent = awkward_array(16)

    async def scenario() -> None:
        aclient = AsyncRedis.from_url(redis_url)
        try:
            store = Store(redis_client, TTL, aredis=aclient)
            latent_id, _ = await store.aput_result("tiny", latent, [])
            assert (await store.aget_latent(latent_id)).array.tobytes() == latent.tobytes()
            redis_client.delete(key_of(redis_client, latent_id))
            with pytest.raises(NotFoundError):
                await store.aget_latent(latent_id)
        finally:
            await aclient.aclose()

    asyncio.run(scenario())


def test_another_connection_and_store_object_read_the_same_data(store: Store, redis_url: str) -> None:
    # The gateway writes, a worker on another machine reads: nothing lives in the Store object itself.
    latent = awkward_array(6)
    png = png_bytes(6)
    latent_id, image_id = store.put_latent("tiny", latent), store.put_png(png)
    other_client = redis.Redis.from_url(redis_url)
    try:
        other = Store(other_client, ttl=1)
        assert other.get_latent(latent_id).array.tobytes() == latent.tobytes()
        assert other.get_png(image_id) == png
    finally:
        other_client.close()


def test_prefixes_are_isolated(redis_client: redis.Redis) -> None:
    blue, green = Store(redis_client, TTL, prefix="blue"), Store(redis_client, TTL, prefix="green")
    latent_id = blue.put_latent("tiny", awkward_array(7))
    with pytest.raises(NotFoundError):
        green.get_latent(latent_id)
    assert project_keys(redis_client, "green") == []
    assert len(project_keys(redis_client, "blue")) == 1


def test_a_stored_pickle_is_refused_not_loaded(store: Store, redis_client: redis.Redis) -> None:
    latent_id = store.put_latent("tiny", awkward_array(8))
    redis_client.hset(key_of(redis_client, latent_id), "npy", pickle.dumps(np.zeros((8, 32), np.float32)))
    with pytest.raises(InputError):
        store.get_latent(latent_id)


# ---------------------------------------------------------------------------------------------- TTLs and ids


def test_every_key_written_has_a_ttl_within_the_configured_one(store: Store, redis_client: redis.Redis) -> None:
    store.put_latent("tiny", awkward_array(0))
    store.put_edit("tiny", awkward_array(1), [1, 2], "pair")
    store.put_edit("tiny", awkward_array(2), [], None)
    store.put_png(png_bytes(0))
    store.put_png(png_bytes(1), kind="upload")
    keys = project_keys(redis_client)
    assert len(keys) == 5
    assert redis_client.dbsize() == 5  # nothing written outside the prefix either
    for key in keys:
        ttl = redis_client.ttl(key)
        assert 0 < ttl <= TTL, (key, ttl)


def test_ttl_follows_the_store_setting(redis_client: redis.Redis) -> None:
    for ttl in (7, 3600, 86_400):
        store = Store(redis_client, ttl=ttl)
        for item_id in (store.put_latent("tiny", awkward_array(0)), store.put_png(b"png")):
            remaining = redis_client.ttl(key_of(redis_client, item_id))
            assert ttl - 2 <= remaining <= ttl  # set on write, not inherited from another Store


def test_a_result_can_be_kept_shorter_than_the_store_ttl(redis_client: redis.Redis, redis_url: str) -> None:
    """Previews: the latent, its images, their owner keys and the gateway's cached copy all get the shorter
    TTL, on either kind of client."""

    async def scenario() -> list[str]:
        aclient = AsyncRedis.from_url(redis_url)
        try:
            store = Store(redis_client, 3600, owner="alice", aredis=aclient, latent_cache=LatentCache(4))
            latent_id, image_ids = await store.aput_result("tiny", awkward_array(16), [png_bytes(16)], ttl=1)
            await asyncio.sleep(1.1)  # gone from Redis, and from the cache with it
            with pytest.raises(NotFoundError):
                await store.aget_latent(latent_id)
            return image_ids
        finally:
            await aclient.aclose()

    image_ids = asyncio.run(scenario())
    assert not [k for k in project_keys(redis_client) if any(i.encode() in k for i in image_ids)]  # images too
    store = Store(redis_client, 3600, owner="alice")
    latent_id, image_ids = store.put_result("tiny", awkward_array(17), [png_bytes(17)], ttl=60)  # sync client
    keys = [key_of(redis_client, i) for i in (latent_id, *image_ids)] + [key_of(redis_client, image_ids[0]) + b":owner"]
    assert all(55 <= redis_client.ttl(k) <= 60 for k in keys), [redis_client.ttl(k) for k in keys]
    assert 3590 <= redis_client.ttl(key_of(redis_client, store.put_result("tiny", awkward_array(18), [])[0])) <= 3600


def test_ids_are_unique_and_match_the_api_patterns(store: Store) -> None:
    n = 40
    ids = {
        LATENT_ID: [store.put_latent("tiny", awkward_array(0, (2, 2))) for _ in range(n)],
        EDIT_ID: [store.put_edit("tiny", awkward_array(0, (2, 2)), [1], "first") for _ in range(n)],
        IMAGE_ID: [store.put_png(b"x") for _ in range(n)],
        UPLOAD_ID: [store.put_png(b"x", kind="upload") for _ in range(n)],
    }
    every = [item_id for group in ids.values() for item_id in group]
    assert len(set(every)) == len(every)  # identical payloads still get distinct ids
    for pattern, group in ids.items():
        for item_id in group:
            assert re.fullmatch(pattern, item_id), (pattern, item_id)
    for image_id in ids[IMAGE_ID]:
        assert image_url(image_id) == f"/results/{image_id}.png"


@pytest.mark.parametrize(
    ("getter", "item_id"),
    [
        ("get_latent", "lat_" + "A" * 22),
        ("get_edit", "edv_" + "A" * 22),
        ("get_png", "img_" + "A" * 22),
        ("get_latent", ""),
        ("get_png", "../../etc/passwd"),
    ],
)
def test_unknown_ids_raise_not_found(store: Store, getter: str, item_id: str) -> None:
    store.put_latent("tiny", awkward_array(0))  # a non-empty store: unknown is not the same as empty
    with pytest.raises(NotFoundError) as info:
        getattr(store, getter)(item_id)
    assert info.value.item_id == item_id
    assert item_id in str(info.value)
    assert isinstance(info.value, LookupError)


def test_everything_expires_after_its_ttl(redis_client: redis.Redis) -> None:
    store = Store(redis_client, ttl=1)
    latent_id = store.put_latent("tiny", awkward_array(0))
    edit_id = store.put_edit("tiny", awkward_array(1), [1], "first")
    image_id = store.put_png(png_bytes(0))
    upload_id = store.put_png(png_bytes(1), kind="upload")
    assert store.get_latent(latent_id).model == "tiny"  # readable before the TTL runs out
    deadline = time.monotonic() + 5.0
    while redis_client.dbsize() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert redis_client.dbsize() == 0
    for call in (
        lambda: store.get_latent(latent_id),
        lambda: store.get_edit(edit_id),
        lambda: store.get_png(image_id),
        lambda: store.get_png(upload_id, kind="upload"),
    ):
        with pytest.raises(NotFoundError):
            call()


def test_expiring_one_key_leaves_the_others(store: Store, redis_client: redis.Redis) -> None:
    gone, kept = store.put_latent("tiny", awkward_array(0)), store.put_latent("tiny", awkward_array(1))
    key = key_of(redis_client, gone)
    redis_client.pexpire(key, 1)
    deadline = time.monotonic() + 2.0
    while redis_client.exists(key) and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(NotFoundError) as info:
        store.get_latent(gone)
    assert info.value.kind == "latent"
    assert store.get_latent(kept).array.tobytes() == awkward_array(1).tobytes()


def test_an_owned_item_is_readable_only_through_a_store_scoped_to_its_owner(redis_client: redis.Redis) -> None:
    base = Store(redis_client, ttl=60)
    alice, bob = base.scoped("owner-a"), base.scoped("owner-b")
    latent_id, image_id = alice.put_latent("tiny", awkward_array(0)), alice.put_png(png_bytes(0))
    edit_id = alice.put_edit("tiny", awkward_array(1), [1], None)
    assert alice.get_png(image_id) == png_bytes(0) and alice.get_latent(latent_id).model == "tiny"
    for store in (bob, base):  # another owner, and no owner at all
        for method, item_id in (("get_latent", latent_id), ("get_edit", edit_id), ("get_png", image_id)):
            with pytest.raises(ForbiddenError):
                getattr(store, method)(item_id)
    public = base.put_png(png_bytes(1))  # written with keys off: anyone reads it
    assert bob.get_png(public) == base.get_png(public)
    assert redis_client.ttl(f"{PREFIX}:image:{image_id}:owner") > 0  # the owner expires with the image

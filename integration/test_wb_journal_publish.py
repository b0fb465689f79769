"""A journaled write-behind ``set`` (Redis configured) writes its L2 value, its journal entry
and its invalidation in one Redis round trip (the PUBLISH runs inside the journal's APPEND
script, after SET + XADD). What others see must not change: one message per write, after
the value is in Redis, with the writer's prefix, origin, shape and version, counted in
``invalidations_sent``; other instances drop their L1 copy on it; the writer ignores its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from integration.procs import eventually
from integration.procs.models import Item
from integration.stacks import _cluster_url
from strata import Config, DataStore, MemPolicy, Schema, WriteMode
from strata.codec import peek_version
from strata.tiers.redis_scripts import unbind

WAIT = 10.0
NEVER = 3600.0  # a flush interval no test outlives: every write stays journaled

Seen = list[tuple[dict[str, Any], int | None]]


def _config(settings: dict[str, Any], name: str) -> Config:
    return Config(
        **settings,
        instance_id=f"wbp-{name}",
        write_behind_flush_interval=NEVER,
        write_behind_flush_threshold=10**6,
    )


def _schema() -> Schema:
    return Schema(name="items", model=Item, write_mode=WriteMode.WRITE_BEHIND, l1=MemPolicy())


@pytest.fixture
async def store(settings: dict[str, Any]) -> AsyncIterator[DataStore]:
    ds = DataStore(_config(settings, "A"))
    ds.register(_schema())
    async with ds:
        await ds.migrate()
        yield ds


async def _listening(
    settings: dict[str, Any],
    redis_client: aioredis.Redis,
    store: DataStore,
    writes: Callable[[], Awaitable[None]],
    count: int,
) -> Seen:
    """The invalidations on the channel while ``writes`` runs (until ``count`` arrived), each
    with the version L2 held for ``k`` when it arrived."""
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(settings["invalidation_channel"])
    assert (await pubsub.get_message(timeout=2.0))["type"] == "subscribe"  # type: ignore[index]
    key = f"{settings['key_prefix']}:items:{store.schemas['items'].shape}:k"
    seen: Seen = []

    async def listen() -> None:
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None or message["type"] != "message":
                continue
            body = orjson.loads(message["data"])
            if body.get("op") != "heartbeat":
                raw = await redis_client.get(key)
                envelope = unbind(key, raw) if raw is not None else None
                seen.append((body, None if envelope is None else peek_version(envelope)))

    listener = asyncio.create_task(listen())
    try:
        await writes()

        async def arrived() -> bool:
            return len(seen) >= count

        await eventually(arrived, timeout=WAIT)
    finally:
        listener.cancel()
        await pubsub.aclose()
    return seen


async def test_each_journaled_set_publishes_one_message_once_its_value_is_in_redis(
    store: DataStore, settings: dict[str, Any], redis_client: aioredis.Redis
) -> None:
    sent = store.stats().invalidations_sent

    async def writes() -> None:
        for name in ("first", "second", "third"):
            await store.set(Item, Item(id="k", name=name))

    seen = await _listening(settings, redis_client, store, writes, 3)
    # Redis delivers in publish order: a second message of a set would arrive before the
    # next set's, so exactly three in a row means one each.
    assert len(seen) == 3
    assert store.stats().invalidations_sent == sent + 3
    versions = [body["version"] for body, _ in seen]
    assert 0 < versions[0] < versions[1] < versions[2]
    for body, in_l2 in seen:
        assert body["prefix"] == settings["key_prefix"]
        assert [body["schema"], body["id"], body["op"]] == ["items", "k", "set"]
        assert body["origin"] == "wbp-A"
        assert body["shape"] == store.schemas["items"].shape
        assert in_l2 is not None and in_l2 >= body["version"]  # in Redis when it arrives
    assert (await store.get(Item, "k")).name == "third"


async def test_a_journaled_set_many_publishes_one_batch_message_with_every_version(
    store: DataStore, settings: dict[str, Any], redis_client: aioredis.Redis
) -> None:
    async def writes() -> None:
        await store.set_many(Item, [Item(id="k", name="a"), Item(id="m", name="b")])

    seen = await _listening(settings, redis_client, store, writes, 1)
    ((body, in_l2),) = seen
    assert body["ids"] == ["k", "m"] and body["op"] == "set" and body["origin"] == "wbp-A"
    assert body["prefix"] == settings["key_prefix"]
    assert len(body["versions"]) == 2 and in_l2 == body["versions"][0]


async def test_another_instance_drops_its_l1_copy_and_reads_the_journaled_write(
    store: DataStore, settings: dict[str, Any]
) -> None:
    peer = DataStore(_config(settings, "B"))
    peer.register(_schema())
    async with peer:
        await store.set(Item, Item(id="k", name="old"))
        assert (await peer.get(Item, "k")).name == "old"  # in the peer's L1 now
        received = peer.stats().invalidations_received
        await store.set(Item, Item(id="k", name="new"))

        async def arrived() -> bool:
            return peer.stats().invalidations_received > received

        await eventually(arrived, timeout=WAIT)
        assert (await peer.get(Item, "k")).name == "new"
        assert store.stats().invalidations_received == 0  # its own messages are ignored


async def test_on_a_cluster_another_instance_drops_its_l1_copy_of_a_journaled_write(
    settings: dict[str, Any],
) -> None:
    # A cluster's invalidations travel on sharded channels, one per schema, in other slots
    # than the journal's keys: the journal publishes nothing itself there.
    cluster = {**settings, "redis_url": _cluster_url()}
    a, b = DataStore(_config(cluster, "A")), DataStore(_config(cluster, "B"))
    a.register(_schema())
    b.register(_schema())
    async with a, b:
        await a.migrate()
        await a.set(Item, Item(id="k", name="old"))
        assert (await b.get(Item, "k")).name == "old"  # in b's L1 now
        await a.set(Item, Item(id="k", name="new"))

        async def b_reads_new() -> bool:
            return (await b.get(Item, "k")).name == "new"

        await eventually(b_reads_new, timeout=WAIT)
        assert a.stats().invalidations_received == 0

"""A write-through ``set`` writes L2 and publishes its invalidation in one Redis round trip
(the PUBLISH runs inside the set script). What others see must not change: one message per
write, after the L2 value is there, with the writer's prefix, shape and version, counted in
``invalidations_sent``; and the writer still ignores its own messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from integration.procs import eventually
from integration.procs.models import ITEMS, Item
from strata import Config, DataStore


@pytest.fixture
async def store(settings: dict[str, Any]) -> AsyncIterator[DataStore]:
    ds = DataStore(Config(**settings))
    ds.register(ITEMS)
    async with ds:
        await ds.migrate()
        yield ds


async def test_each_set_publishes_one_message_and_the_value_is_in_redis_when_it_arrives(
    store: DataStore, settings: dict[str, Any], redis_client: aioredis.Redis
) -> None:
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(settings["invalidation_channel"])
    assert (await pubsub.get_message(timeout=2.0))["type"] == "subscribe"  # type: ignore[index]
    key = f"{settings['key_prefix']}:items:{store.schemas['items'].shape}:k"
    seen: list[tuple[dict[str, Any], bytes | None]] = []

    async def listen() -> None:
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None or message["type"] != "message":
                continue
            body = orjson.loads(message["data"])
            if body.get("op") != "heartbeat":
                seen.append((body, await redis_client.get(key)))

    listener = asyncio.create_task(listen())
    try:
        sent = store.stats().invalidations_sent
        await store.set(Item, Item(id="k", name="first"))
        await store.set(Item, Item(id="k", name="second"))

        async def both_arrived() -> bool:
            return len(seen) >= 2

        await eventually(both_arrived, timeout=5.0)
    finally:
        listener.cancel()
        await pubsub.aclose()
    assert store.stats().invalidations_sent == sent + 2
    (first, _), (second, held) = seen
    assert [first["op"], first["id"], first["schema"]] == ["set", "k", "items"]
    assert first["prefix"] == settings["key_prefix"]
    assert first["shape"] == store.schemas["items"].shape
    assert 0 < first["version"] < second["version"]
    assert held is not None and b"second" in held  # in Redis by the time the message is
    assert len(seen) == 2


async def test_a_peer_store_drops_its_l1_copy_on_the_combined_message(
    store: DataStore, settings: dict[str, Any]
) -> None:
    async with DataStore(Config(**settings)) as peer:
        peer.register(ITEMS)
        await store.set(Item, Item(id="k", name="old"))
        assert (await peer.get(Item, "k")).name == "old"
        await store.set(Item, Item(id="k", name="new"))

        async def peer_reads_new() -> bool:
            return (await peer.get(Item, "k")).name == "new"

        await eventually(peer_reads_new, timeout=5.0)
        assert peer.stats().invalidations_received >= 1
        assert store.stats().invalidations_received == 0  # its own are ignored

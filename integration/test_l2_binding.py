"""A cached payload is bound to its key (DESIGN.md section 4): one planted under another id
is not served as that id, and one whose version digits are corrupt is neither trusted for
its version (which froze the key: every later write refused as older) nor served. Either
is a miss, deleted, and the row comes from PostgreSQL.

Payloads are rewritten in the shared Redis under this test's own key prefix.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from integration.procs.models import ITEMS, Item
from strata import Config, DataStore


@contextlib.asynccontextmanager
async def store(settings: dict[str, Any], **overrides: Any) -> AsyncIterator[DataStore]:
    ds = DataStore(Config(**{**settings, **overrides}))
    ds.register(ITEMS)
    async with ds:
        await ds.migrate()
        yield ds


def l2_key(ds: DataStore, id: str) -> str:
    return f"{ds.config.key_prefix}:items:{ds.schemas['items'].shape}:{id}"


async def test_a_payload_planted_under_another_id_is_not_served_as_that_id(
    settings: dict[str, Any], redis_client: aioredis.Redis
) -> None:
    async with store(settings) as writer:
        await writer.set(Item, Item(id="p1", name="one", level=1))
        await writer.set(Item, Item(id="p2", name="two", level=2))
        planted = await redis_client.get(l2_key(writer, "p2"))
        assert planted is not None
        await redis_client.set(l2_key(writer, "p1"), planted)

    async with store(settings) as reader:  # a fresh L1: the read goes to Redis
        got = await reader.get(Item, "p1")
        many = await reader.get_many(Item, ["p1", "p2"])

    assert got == Item(id="p1", name="one", level=1)
    assert many == {"p1": got, "p2": Item(id="p2", name="two", level=2)}
    assert await redis_client.get(l2_key(reader, "p1")) != planted


async def test_a_corrupt_version_neither_freezes_the_key_nor_is_served(
    settings: dict[str, Any], redis_client: aioredis.Redis
) -> None:
    async with store(settings) as writer:
        await writer.set(Item, Item(id="k", name="old"))
        key = l2_key(writer, "k")
        stored = await redis_client.get(key)
        assert stored is not None
        await redis_client.set(key, stored[:2] + b"f" * 16 + stored[18:])  # version 2**64-1

        await writer.set(Item, Item(id="k", name="new"))

        stored = await redis_client.get(key)
        assert stored is None or b"old" not in stored, "the corrupt payload froze the key"

    async with store(settings) as reader:
        assert (await reader.get(Item, "k")).name == "new"
        await reader.set(Item, Item(id="k", name="newer"))
    async with store(settings) as reader:
        assert (await reader.get(Item, "k")).name == "newer"


async def test_a_corrupt_version_found_by_a_read_is_a_miss_and_deleted(
    settings: dict[str, Any], redis_client: aioredis.Redis
) -> None:
    async with store(settings) as writer:
        await writer.set(Item, Item(id="k", name="stored"))
        key = l2_key(writer, "k")
        stored = await redis_client.get(key)
        assert stored is not None
        corrupt = stored[:2] + b"f" * 16 + stored[18:]
        await redis_client.set(key, corrupt)

    async with store(settings) as reader:
        before = reader.stats()
        assert (await reader.get(Item, "k")).name == "stored"
        after = reader.stats()

    assert after.l3_queries == before.l3_queries + 1  # not served from the corrupt copy
    assert await redis_client.get(key) != corrupt

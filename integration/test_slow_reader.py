"""A reader that holds an old row past its L1 tombstone does not keep it once Redis refused it.

The reader is held between its L3 read and its fill (an event in a wrapped L3 call); the
other instance writes meanwhile, and the reader's L1 clock (injected) moves past the
tombstone the invalidation left. Redis refuses the old row as older; L1 must refuse it too.
"""

from __future__ import annotations

import asyncio
from typing import Any

from integration.procs import eventually
from integration.procs.models import Item
from strata import Config, DataStore, Schema
from strata.tiers.memory import MemoryTier

WAIT = 20.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_fill_redis_refuses_as_older_is_not_kept_in_l1(
    settings: dict[str, Any],
) -> None:
    clock = Clock()
    schema = Schema(name="items", model=Item)
    reader = DataStore(Config(**settings), l1=lambda cs: MemoryTier(ttl=None, clock=clock))
    writer = DataStore(Config(**settings))
    reader.register(schema)
    writer.register(schema)
    async with reader, writer:
        await writer.migrate()
        await writer.set(Item, Item(id="k", name="old"))
        await writer.invalidate(Item, "k")  # not in Redis: the reader goes to PostgreSQL

        l3: Any = reader._core.l3
        read_done, release = asyncio.Event(), asyncio.Event()
        real_get_many = l3.get_many

        async def held_get_many(cs: Any, ids: Any) -> Any:
            rows = await real_get_many(cs, ids)
            read_done.set()
            await release.wait()  # the slow reader: holds the old row
            return rows

        l3.get_many = held_get_many
        slow = asyncio.create_task(reader.get(Item, "k"))
        async with asyncio.timeout(WAIT):
            await read_done.wait()
        l3.get_many = real_get_many

        received = reader.stats().invalidations_received
        await writer.set(Item, Item(id="k", name="new"))
        await eventually(lambda: reader.stats().invalidations_received > received, timeout=WAIT)
        clock.now += 3600  # far past the L1 tombstone the invalidation left
        release.set()
        assert (await slow).name == "old"  # what it read before the write: allowed

        assert (await reader.get(Item, "k")).name == "new"
        assert (await reader.get_many(Item, ["k"]))["k"].name == "new"

"""After a Redis outage, no instance serves a value older than the last acknowledged write.

Two DataStores share PostgreSQL and Redis. The writer loses Redis (its own link cut by a
fault proxy) while the reader keeps it: the writer's writes reach PostgreSQL but neither
Redis nor the bus. Once the writer is back and has repaired the keys it could not write,
its repair must tell the reader, which would otherwise keep the copy it read meanwhile.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from integration._servers import FaultProxy
from integration.procs import eventually
from integration.procs.models import ITEMS, Item
from strata import Config, DataStore

WAIT = 20.0  # generous: the circuit breaker probes with a backoff of up to 5 s


@contextlib.asynccontextmanager
async def store(settings: dict[str, Any], **overrides: Any) -> AsyncIterator[DataStore]:
    ds = DataStore(Config(**{**settings, **overrides}))
    ds.register(ITEMS)
    async with ds:
        await ds.migrate()
        yield ds


def healthy(ds: DataStore) -> bool:
    """Redis reachable, the bus subscribed, and nothing left to repair."""
    core: Any = ds._core  # what an operator's health check would look at
    coherence: Any = ds._coherence
    return bool(
        core.l2.available
        and core.bus is not None
        and core.bus.connected
        and coherence.l2_repairs_pending == 0
    )


async def test_writes_made_while_redis_was_cut_off_reach_the_other_instance_on_recovery(
    settings: dict[str, Any], redis_url: str
) -> None:
    ids = [f"k{n}" for n in range(5)]
    async with (
        FaultProxy.for_url(redis_url) as proxy,
        store(settings, redis_url=redis_url) as reader,
        store(settings, redis_url=proxy.url_for(redis_url)) as writer,
    ):
        await writer.set_many(Item, [Item(id=i, name="before") for i in ids])
        assert {v.name for v in (await reader.get_many(Item, ids)).values()} == {"before"}

        await proxy.cut()
        for i in ids:
            await writer.set(Item, Item(id=i, name="during"))
        await reader.get_many(Item, ids)  # may be stale: the fault is still on
        received = reader.stats().invalidations_received
        await proxy.restore()

        async def recovered() -> bool:
            # The circuit breaker notices Redis again on use: a read of an absent id is one.
            for ds in (reader, writer):
                await ds.get_many(Item, ["absent"])
            return healthy(writer) and healthy(reader)

        await eventually(recovered, timeout=WAIT, interval=0.1)
        # The repair's invalidation travels over pub/sub: wait for it to land, not longer.
        await eventually(lambda: reader.stats().invalidations_received > received, timeout=WAIT)
        for ds in (reader, writer):
            assert {i: (await ds.get(Item, i)).name for i in ids} == dict.fromkeys(ids, "during")
            assert {i: v.name for i, v in (await ds.get_many(Item, ids)).items()} == (
                dict.fromkeys(ids, "during")
            )


async def test_an_instance_whose_bus_is_down_does_not_serve_what_it_read_meanwhile(
    settings: dict[str, Any], redis_url: str
) -> None:
    async with (
        FaultProxy.for_url(redis_url) as proxy,
        store(settings, redis_url=proxy.url_for(redis_url)) as reader,
        store(settings, redis_url=redis_url) as writer,
    ):
        await writer.set(Item, Item(id="k", name="before"))
        await proxy.cut()
        await eventually(lambda: not reader._core.bus.connected, timeout=WAIT)
        assert (await reader.get(Item, "k")).name == "before"  # from PostgreSQL

        await writer.set(Item, Item(id="k", name="after"))  # its message cannot arrive

        assert (await reader.get(Item, "k")).name == "after"
        assert (await reader.get_many(Item, ["k"]))["k"].name == "after"

"""Redis that answers a write with an error (OOM, READONLY) instead of dropping the
connection. The write is acknowledged (PostgreSQL has it), so the old value must not stay in
Redis to be served: a refused L2 step deletes the key, or (when even DEL is refused) the
tier stops serving from Redis until it could delete it. After Redis recovers no instance
reads the old value.

Faults are made on a private ``redis-server`` only (``CONFIG SET maxmemory``, ``REPLICAOF``
a port where nothing listens).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from integration._servers import PrivateRedis, free_port
from integration.procs import eventually
from integration.procs.models import ITEMS, Item
from strata import Config, DataStore, Q

WAIT = 20.0  # the circuit breaker probes with a backoff of up to 5 s
K = Q().filter(id="k")  # one cached query (the repair probes write other rows)


@contextlib.asynccontextmanager
async def store(settings: dict[str, Any], **overrides: Any) -> AsyncIterator[DataStore]:
    ds = DataStore(Config(**{**settings, **overrides}))
    ds.register(ITEMS)
    async with ds:
        await ds.migrate()
        yield ds


@pytest.fixture
async def server() -> AsyncIterator[PrivateRedis]:
    async with PrivateRedis() as srv:
        yield srv


@pytest.fixture
async def admin(server: PrivateRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(server.url)
    try:
        yield client
    finally:
        await client.aclose()


def l2_key(ds: DataStore, id: str) -> str:
    return f"{ds.config.key_prefix}:items:{ds.schemas['items'].shape}:{id}"


async def refuse_writes_oom(admin: aioredis.Redis) -> None:
    await admin.config_set("maxmemory-policy", "noeviction")
    await admin.config_set("maxmemory", "1")


async def refuse_writes_readonly(admin: aioredis.Redis) -> None:
    # A replica of a master that does not exist: keeps its data, serves reads, refuses
    # writes with READONLY.
    await admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))


async def heal(admin: aioredis.Redis) -> None:
    await admin.config_set("maxmemory", "0")
    await admin.execute_command("REPLICAOF", "NO", "ONE")


async def holds_old(admin: aioredis.Redis, key: str) -> bool:
    value = await admin.get(key)
    return value is not None and b"old" in value


@pytest.mark.parametrize("refuse", [refuse_writes_oom, refuse_writes_readonly])
async def test_a_refused_write_leaves_no_old_value_to_serve(
    settings: dict[str, Any], server: PrivateRedis, admin: aioredis.Redis, refuse: Any
) -> None:
    async with (
        store(settings, redis_url=server.url) as a,
        store(settings, redis_url=server.url) as b,
    ):
        await a.set(Item, Item(id="k", name="old"))
        assert (await b.get(Item, "k")).name == "old"
        assert await holds_old(admin, l2_key(a, "k"))
        await refuse(admin)

        await a.set(Item, Item(id="k", name="new"))  # acknowledged: PostgreSQL has it

        assert (await a.get(Item, "k")).name == "new"
        await heal(admin)
        # Once Redis takes writes again the old copy is gone (polled: the writer's
        # circuit breaker may be waiting out its backoff before it probes)...
        await eventually(lambda: repaired(a, admin), timeout=WAIT, interval=0.05)
        # ... and no instance serves it: not a fresh one, not one that had it in L1.
        async with store(settings, redis_url=server.url) as c:
            assert (await c.get(Item, "k")).name == "new"

        async def b_reads_new() -> bool:
            return (await b.get(Item, "k")).name == "new"

        await eventually(b_reads_new, timeout=WAIT, interval=0.05)


async def test_a_refused_delete_does_not_leave_the_row_in_redis(
    settings: dict[str, Any], server: PrivateRedis, admin: aioredis.Redis
) -> None:
    async with store(settings, redis_url=server.url) as a:
        await a.set(Item, Item(id="k", name="old"))
        await refuse_writes_readonly(admin)
        await a.delete(Item, "k")
        await heal(admin)
        await eventually(lambda: repaired(a, admin), timeout=WAIT, interval=0.05)
        async with store(settings, redis_url=server.url) as c:
            assert not await c.exists(Item, "k")


async def repaired(ds: DataStore, admin: aioredis.Redis) -> bool:
    """Writes (which make a circuit breaker probe) until Redis no longer holds the old value
    of ``k``: the writer found Redis healthy again and dropped what it could not before."""
    await ds.set(Item, Item(id="probe", name="probe"))
    return not await holds_old(admin, l2_key(ds, "k"))


@pytest.mark.parametrize(
    ("refuse", "peers_at_once"), [(refuse_writes_oom, True), (refuse_writes_readonly, False)]
)
async def test_a_refused_write_leaves_no_stale_search_cached_result(
    settings: dict[str, Any],
    server: PrivateRedis,
    admin: aioredis.Redis,
    refuse: Any,
    peers_at_once: bool,
) -> None:
    """OOM refuses the write but still lets the writer start a new search generation, so
    no instance serves the older cached result; a read-only Redis takes nothing, so the
    writer stops serving from it and the others are right once it is healed."""
    async with (
        store(settings, redis_url=server.url) as a,
        store(settings, redis_url=server.url) as b,
    ):
        await a.set(Item, Item(id="k", name="old"))
        assert [i.name for i in await b.search_cached(Item, K)] == ["old"]
        assert [i.name for i in await b.search_cached(Item, K)] == ["old"]  # now from Redis
        await refuse(admin)

        await a.set(Item, Item(id="k", name="new"))  # acknowledged: PostgreSQL has it

        assert [i.name for i in await a.search_cached(Item, K)] == ["new"]
        if peers_at_once:
            assert [i.name for i in await b.search_cached(Item, K)] == ["new"]
        await heal(admin)
        await eventually(lambda: repaired(a, admin), timeout=WAIT, interval=0.05)
        assert [i.name for i in await b.search_cached(Item, K)] == ["new"]

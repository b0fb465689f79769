"""Life without a healthy L2: Redis killed, cut off or unreachable, and payloads that are not
Strata's. The caller never sees an L2 failure: reads come from PostgreSQL, writes land there,
errors are counted (``Stats.errors``) and logged once, and nothing stale is served after
Redis comes back.

Faults never touch the shared Redis: a private ``redis-server`` (killed and restarted) or a
``FaultProxy`` (cut and restored) stands in for it. Corrupted payloads are written into the
shared Redis under this test's own key prefix.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from integration._servers import FaultProxy, PrivateRedis, free_port
from integration.procs import eventually
from integration.procs.models import ITEMS, Item
from strata import Config, DataStore, errors

WAIT = 20.0  # generous: the circuit breaker probes with a backoff of up to 5 s


@contextlib.asynccontextmanager
async def store(settings: dict[str, Any], **overrides: Any) -> AsyncIterator[DataStore]:
    ds = DataStore(Config(**{**settings, **overrides}))
    ds.register(ITEMS)
    async with ds:
        await ds.migrate()
        yield ds


@pytest.fixture
async def redis_server() -> AsyncIterator[PrivateRedis]:
    async with PrivateRedis() as server:
        yield server


def l2_key(ds: DataStore, id: str) -> str:
    return f"{ds.config.key_prefix}:items:{ds.schemas['items'].shape}:{id}"


async def insert_unseen(settings: dict[str, Any], item: Item) -> None:
    """A row in PostgreSQL that no cache has seen (written by an instance without Redis)."""
    async with store(settings, redis_url=None) as other:
        await other.set(Item, item)


async def wait_until_l2_is_back(ds: DataStore, server_url: str) -> None:
    """Keep writing a probe until it shows up in Redis: the DataStore found Redis again."""
    client = aioredis.Redis.from_url(server_url)
    try:

        async def probe_landed() -> bool:
            await ds.set(Item, Item(id="probe", name="probe"))
            return bool(await client.exists(l2_key(ds, "probe")))

        await eventually(probe_landed, timeout=WAIT, interval=0.1)
    finally:
        await client.aclose()


# -- a private redis-server killed and restarted ------------------------------------------


async def test_reads_are_served_from_postgresql_while_redis_is_down(
    settings: dict[str, Any], redis_server: PrivateRedis
) -> None:
    async with store(settings, redis_url=redis_server.url) as ds:
        await insert_unseen(settings, Item(id="fresh", name="from-db"))
        await redis_server.stop()
        before = ds.stats()

        got = await ds.get(Item, "fresh")
        many = await ds.get_many(Item, ["fresh", "absent"])
        with pytest.raises(errors.NotFoundError):
            await ds.get(Item, "absent")

        assert got.name == "from-db"
        assert {k: v.name for k, v in many.items()} == {"fresh": "from-db"}
        assert ds.stats().errors > before.errors


async def test_writes_during_a_redis_outage_land_in_postgresql(
    settings: dict[str, Any], redis_server: PrivateRedis, pg_conn: asyncpg.Connection
) -> None:
    async with store(settings, redis_url=redis_server.url) as ds:
        await ds.set(Item, Item(id="gone", name="x"))
        await redis_server.stop()
        before = ds.stats()

        await ds.set(Item, Item(id="w", name="during"))
        await ds.set_many(Item, [Item(id="m1", name="batch"), Item(id="m2", name="batch")])
        await ds.delete(Item, "gone")

        rows = await pg_conn.fetch("SELECT id, name FROM items ORDER BY id")
        assert [(r["id"], r["name"]) for r in rows] == [
            ("m1", "batch"),
            ("m2", "batch"),
            ("w", "during"),
        ]
        assert (await ds.get(Item, "w")).name == "during"
        assert ds.stats().errors > before.errors


async def test_l1_is_cleared_when_redis_comes_back(
    settings: dict[str, Any], redis_server: PrivateRedis, pg_conn: asyncpg.Connection
) -> None:
    async with store(settings, redis_url=redis_server.url) as ds:
        await ds.set(Item, Item(id="k", name="before"))
        await redis_server.stop()
        assert (await ds.get(Item, "k")).name == "before"  # served, and held in L1
        # Another instance's write (its invalidation lost with Redis), seen only by L3.
        await pg_conn.execute("UPDATE items SET name = 'changed' WHERE id = 'k'")

        await redis_server.start()
        await wait_until_l2_is_back(ds, redis_server.url)

        assert (await ds.get(Item, "k")).name == "changed"


# -- Redis cut off (its data kept) and restored -------------------------------------------


async def test_value_written_while_redis_was_cut_off_is_not_served_stale_after_recovery(
    settings: dict[str, Any], redis_server: PrivateRedis
) -> None:
    async with FaultProxy.for_url(redis_server.url) as proxy:
        via_proxy = proxy.url_for(redis_server.url)
        async with store(settings, redis_url=via_proxy) as ds:
            await ds.set(Item, Item(id="k", name="before"))  # Redis holds "before"
            await proxy.cut()
            await ds.set(Item, Item(id="k", name="during"))  # only L3 (and L1) get it
            await proxy.restore()

            direct = aioredis.Redis.from_url(redis_server.url)
            try:

                async def redis_not_stale() -> bool:
                    await ds.exists(Item, "absent")  # an L2 call: lets the tier probe Redis
                    payload = await direct.get(l2_key(ds, "k"))
                    return payload is None or b"before" not in payload

                await eventually(redis_not_stale, timeout=WAIT, interval=0.1)
            finally:
                await direct.aclose()

            async with store(settings, redis_url=redis_server.url) as fresh:
                assert (await fresh.get(Item, "k")).name == "during"
            assert (await ds.get(Item, "k")).name == "during"


async def test_an_idle_writer_repairs_what_it_could_not_write_once_redis_is_back(
    settings: dict[str, Any], redis_server: PrivateRedis
) -> None:
    # No call follows the outage in the writer: finding Redis again (and repairing the key
    # it could not overwrite) must not wait for the writer's next use of Redis.
    proxy = FaultProxy.for_url(redis_server.url)
    async with proxy, store(settings, redis_url=proxy.url_for(redis_server.url)) as writer:
        await writer.set(Item, Item(id="k", name="before"))  # Redis holds "before"
        await proxy.cut()
        await writer.set(Item, Item(id="k", name="during"))  # only L3 (and L1) get it
        await proxy.restore()

        direct = aioredis.Redis.from_url(redis_server.url)
        try:

            async def redis_not_stale() -> bool:
                payload = await direct.get(l2_key(writer, "k"))
                return payload is None or b"before" not in payload

            await eventually(redis_not_stale, timeout=WAIT, interval=0.1)
        finally:
            await direct.aclose()
        async with store(settings, redis_url=redis_server.url) as reader:
            assert (await reader.get(Item, "k")).name == "during"


# -- Redis unreachable from the start -----------------------------------------------------


async def test_datastore_starts_and_serves_when_redis_is_unreachable_at_connect(
    settings: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="strata")
    closed_port = f"redis://127.0.0.1:{free_port()}/0"
    await insert_unseen(settings, Item(id="in-db", name="from-db"))

    async with store(settings, redis_url=closed_port) as ds:
        await ds.set(Item, Item(id="k", name="v"))
        assert (await ds.get(Item, "k")).name == "v"
        assert (await ds.get(Item, "in-db")).name == "from-db"
        outage_logged = outage_warnings(caplog)
        for n in range(30):
            await ds.set(Item, Item(id=f"n{n}", name="more"))
            assert await ds.exists(Item, f"n{n}")
            with pytest.raises(errors.NotFoundError):
                await ds.get(Item, f"missing{n}")

        assert ds.stats().errors >= 30
    assert outage_logged, "the outage was not logged"
    assert outage_warnings(caplog) == outage_logged  # not once more per call
    assert all(n == 1 for n in Counter(r.msg for r in outage_logged).values())


def outage_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("strata")
    ]


# -- payloads that are not Strata's -------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"hello", id="foreign-text"),
        pytest.param(b"\x00\xff\xfe\x80 not a payload", id="binary-garbage"),
        pytest.param(b"Sj" + b"%016x" % (2**60) + b'{"id": "k", "na', id="truncated-envelope"),
        pytest.param(b"Sj00000000", id="truncated-header"),
    ],
)
async def test_unreadable_payload_in_redis_is_served_as_the_postgresql_value(
    settings: dict[str, Any], redis_client: aioredis.Redis, payload: bytes
) -> None:
    async with store(settings) as writer:
        await writer.set(Item, Item(id="k", name="from-db", level=7))
        await redis_client.set(l2_key(writer, "k"), payload)

    async with store(settings) as reader:  # a fresh L1: the read goes to Redis
        before = reader.stats()
        got = await reader.get(Item, "k")
        after = reader.stats()

    assert got == Item(id="k", name="from-db", level=7)
    assert after.errors > before.errors
    assert after.l3_queries == before.l3_queries + 1


async def test_unreadable_payload_in_a_batch_read_is_served_as_the_postgresql_value(
    settings: dict[str, Any], redis_client: aioredis.Redis
) -> None:
    async with store(settings) as writer:
        await writer.set_many(Item, [Item(id="good", name="g"), Item(id="bad", name="b")])
        await redis_client.set(l2_key(writer, "bad"), b"hello")

    async with store(settings) as reader:
        before = reader.stats()
        got = await reader.get_many(Item, ["good", "bad"])
        after = reader.stats()

    assert {k: v.name for k, v in got.items()} == {"good": "g", "bad": "b"}
    assert after.errors > before.errors

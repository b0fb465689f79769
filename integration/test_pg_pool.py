"""The L3 tier's connection pool (strata/tiers/pg_pool.py): ``pool_timeout`` bounds the wait
for a connection when every one is busy, a connection freed goes to a caller waiting for it,
a cancelled caller leaks none, and a replica read never queues behind a replica's slow
(re)connect: it reads from the primary meanwhile.

What is asserted is what a caller sees (the typed error, the value, the rows); the
``asyncio.wait_for(..., GUARD)`` around calls only keeps a broken build from hanging the
suite, far beyond every bound under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from integration._servers import FaultProxy
from strata import Config, DataStore, Field, PostgresPolicy, Q, Schema
from strata.errors import TierUnavailableError

GUARD = 60.0
LONG = 30.0  # an l3_timeout no test below may wait for


class Doc(BaseModel):
    id: str = Field(primary_key=True)
    body: str = ""
    level: int = 0


DOCS = Schema(name="docs", model=Doc, l1=None, l2=None)


@pytest.fixture
async def pg_proxy(pg_url: str) -> AsyncIterator[FaultProxy]:
    async with FaultProxy.for_url(pg_url) as proxy:
        yield proxy


def _store(settings: dict[str, Any], schema: Schema = DOCS, **extra: Any) -> DataStore:
    values = {**settings, "redis_url": None, **extra}
    ds = DataStore(Config(**values))
    ds.register(schema)
    return ds


async def test_a_get_on_a_drained_pool_fails_within_pool_timeout(settings: dict[str, Any]) -> None:
    ds = _store(settings, pool_min_size=1, pool_max_size=1, pool_timeout=0.2, l3_timeout=LONG)
    async with ds:
        await ds.migrate()
        await ds.set(Doc, Doc(id="a", body="x"))
        async with ds.tx() as tx:  # holds the only connection
            assert (await tx.get(Doc, "a")).body == "x"
            with pytest.raises(TierUnavailableError, match="pool_timeout"):
                await asyncio.wait_for(ds.get(Doc, "a"), GUARD)
        assert (await ds.get(Doc, "a")).body == "x"  # the connection came back


async def test_a_patch_on_a_drained_pool_fails_within_pool_timeout(
    settings: dict[str, Any],
) -> None:
    ds = _store(settings, pool_min_size=1, pool_max_size=1, pool_timeout=0.2, l3_timeout=LONG)
    async with ds:
        await ds.migrate()
        await ds.set(Doc, Doc(id="a", body="x"))
        async with ds.tx() as tx:
            await tx.get(Doc, "a")
            with pytest.raises(TierUnavailableError, match="pool_timeout"):
                await asyncio.wait_for(ds.patch(Doc, "a", body="y"), GUARD)
        await ds.patch(Doc, "a", body="z")
        assert (await ds.get(Doc, "a")).body == "z"


async def test_a_connection_freed_goes_to_the_caller_waiting_for_it(
    settings: dict[str, Any],
) -> None:
    ds = _store(settings, pool_min_size=1, pool_max_size=1, pool_timeout=LONG, l3_timeout=LONG)
    async with ds:
        await ds.migrate()
        await ds.set(Doc, Doc(id="a", body="x"))
        async with ds.tx() as tx:
            await tx.set(Doc, Doc(id="a", body="in tx"))
            waiting = asyncio.ensure_future(ds.get(Doc, "a"))
            await asyncio.sleep(0)  # the get is waiting for the only connection
            assert not waiting.done()
        got = await asyncio.wait_for(waiting, GUARD)
        assert got.body == "in tx"


async def test_many_callers_share_a_small_pool(settings: dict[str, Any]) -> None:
    ds = _store(settings, pool_min_size=1, pool_max_size=2, pool_timeout=LONG, l3_timeout=LONG)
    async with ds:
        await ds.migrate()
        await ds.set_many(Doc, [Doc(id=f"d{i}", level=i) for i in range(20)])
        got = await asyncio.wait_for(
            asyncio.gather(*(ds.get(Doc, f"d{i % 20}") for i in range(200))), GUARD
        )
        assert [d.level for d in got] == [i % 20 for i in range(200)]


async def test_a_cancelled_caller_leaks_no_connection(
    settings: dict[str, Any], pg_url: str, pg_proxy: FaultProxy
) -> None:
    ds = _store(
        settings,
        database_url=pg_proxy.url_for(pg_url),
        pool_min_size=1,
        pool_max_size=1,
        pool_timeout=LONG,
        l3_timeout=LONG,
    )
    async with ds:
        await ds.migrate()
        await ds.set(Doc, Doc(id="a", body="x"))
        pg_proxy.blackhole()
        stuck = asyncio.ensure_future(ds.get(Doc, "a"))
        await asyncio.sleep(0.05)  # let it send its query into the partition
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        await pg_proxy.restore()
        assert (await asyncio.wait_for(ds.get(Doc, "a"), GUARD)).body == "x"


async def test_a_transaction_rolled_back_returns_a_clean_connection(
    settings: dict[str, Any],
) -> None:
    ds = _store(settings, pool_min_size=1, pool_max_size=1, l3_timeout=LONG)
    async with ds:
        await ds.migrate()
        await ds.set(Doc, Doc(id="a", body="x"))
        with pytest.raises(RuntimeError):
            async with ds.tx() as tx:
                await tx.set(Doc, Doc(id="a", body="rolled back"))
                raise RuntimeError("abort")
        assert (await ds.get(Doc, "a")).body == "x"
        await ds.set(Doc, Doc(id="a", body="after"))
        assert (await ds.get(Doc, "a")).body == "after"


# -- replicas ------------------------------------------------------------------------------


def _replicated(settings: dict[str, Any], replica_url: str, **extra: Any) -> DataStore:
    schema = Schema(name="docs", model=Doc, l3=PostgresPolicy(read_replica=replica_url))
    return _store(settings, schema, **extra)


async def test_replica_reads_do_not_queue_behind_a_slow_replica_connect(
    settings: dict[str, Any], pg_url: str, pg_proxy: FaultProxy
) -> None:
    # The replica is down at connect (cut), so the first search due after the retry delay
    # reconnects; the proxy is a partition by then, so that connect hangs until l3_timeout.
    await pg_proxy.cut()
    ds = _replicated(settings, pg_proxy.url_for(pg_url), l3_timeout=LONG)
    async with ds:
        await ds.migrate()
        await ds.set_many(Doc, [Doc(id=f"d{i}", level=i) for i in range(5)])
        await pg_proxy.restore()
        pg_proxy.blackhole()
        ds._queries._replica_retry_at.clear()  # the retry is due now

        reconnecting = asyncio.ensure_future(ds.search(Doc, Q().filter(level__gte=0)))
        await asyncio.sleep(0.05)  # it is inside the replica's connect
        other = asyncio.ensure_future(ds.search(Doc, Q().filter(level__gte=3)))
        done, _ = await asyncio.wait(
            {reconnecting, other}, timeout=GUARD, return_when=asyncio.FIRST_COMPLETED
        )
        try:
            assert other in done and reconnecting not in done
            assert sorted(d.id for d in other.result()) == ["d3", "d4"]
        finally:
            await pg_proxy.restore()
            reconnecting.cancel()
            await asyncio.gather(reconnecting, return_exceptions=True)

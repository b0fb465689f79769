"""L3 under faults: every call is bounded by ``Config.l3_timeout``, ``close()`` by
``Config.close_timeout``, and a delete's tombstone outlives any reader bounded that way.

PostgreSQL is reached through a FaultProxy; ``blackhole()`` is a partition (connections
stay open, nothing answers). ``asyncio.wait_for(..., GUARD)`` only keeps a broken build
from hanging the suite: the behaviour asserted is the typed error, not a duration.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel

from integration._servers import FaultProxy
from strata import Config, DataStore, Field, Schema, WriteMode
from strata.errors import TierUnavailableError
from strata.tiers.postgres import PostgresTier

GUARD = 60.0  # far beyond l3_timeout: without a bound the call blocks for the partition


class Doc(BaseModel):
    id: str = Field(primary_key=True)
    body: str = ""


DOCS = Schema(name="docs", model=Doc)


@pytest.fixture
async def pg_proxy(pg_url: str) -> AsyncIterator[FaultProxy]:
    async with FaultProxy.for_url(pg_url) as proxy:
        yield proxy


def _config(settings: dict[str, Any], url: str, **extra: Any) -> Config:
    return Config(**{**settings, "database_url": url, "redis_url": None, **extra})


async def test_an_uncached_get_during_a_partition_fails_within_l3_timeout(
    settings: dict[str, Any], pg_url: str, pg_proxy: FaultProxy
) -> None:
    ds = DataStore(_config(settings, pg_proxy.url_for(pg_url), l3_timeout=0.5))
    ds.register(DOCS)
    async with ds:
        await ds.migrate()
        await ds.set(Doc, Doc(id="cached", body="kept"))
        pg_proxy.blackhole()

        with pytest.raises(TierUnavailableError, match="l3_timeout"):
            await asyncio.wait_for(ds.get(Doc, "uncached"), GUARD)
        with pytest.raises(TierUnavailableError, match="l3_timeout"):
            await asyncio.wait_for(ds.set(Doc, Doc(id="new", body="x")), GUARD)
        assert (await ds.get(Doc, "cached")).body == "kept"  # L1 still serves

        await pg_proxy.restore()
        # The pool recovers: connections whose calls were abandoned are not reused broken.
        deadline = asyncio.get_running_loop().time() + GUARD
        while True:
            try:
                await ds.set(Doc, Doc(id="new", body="after"))
                break
            except TierUnavailableError:
                assert asyncio.get_running_loop().time() < deadline, "PostgreSQL never came back"
                await asyncio.sleep(0.05)
        assert (await ds.get(Doc, "new", force_l3=True)).body == "after"


async def test_a_transaction_during_a_partition_fails_within_l3_timeout(
    settings: dict[str, Any], pg_url: str, pg_proxy: FaultProxy
) -> None:
    ds = DataStore(_config(settings, pg_proxy.url_for(pg_url), l3_timeout=0.5))
    ds.register(DOCS)
    async with ds:
        await ds.migrate()
        pg_proxy.blackhole()

        async def transfer() -> None:
            async with ds.tx() as tx:
                await tx.set(Doc, Doc(id="t", body="x"))

        with pytest.raises(TierUnavailableError):
            await asyncio.wait_for(transfer(), GUARD)


async def test_close_during_a_partition_is_bounded_and_logs_what_it_left(
    settings: dict[str, Any],
    pg_url: str,
    pg_proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="strata")
    # A long L3 bound, so a get is still holding its connection when close() runs.
    config = _config(settings, pg_proxy.url_for(pg_url), l3_timeout=GUARD * 2, close_timeout=0.5)
    tier = PostgresTier(config, logger=logging.getLogger("strata"))
    ds = DataStore(config, l3=tier)
    ds.register(DOCS)
    await ds.connect()
    await ds.migrate()
    pg_proxy.blackhole()
    stuck = asyncio.ensure_future(ds.get(Doc, "uncached"))
    deadline = asyncio.get_running_loop().time() + GUARD
    while tier.pool.get_idle_size() == tier.pool.get_size():  # the get holds a connection
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)

    await asyncio.wait_for(ds.close(), GUARD)

    left = [r.getMessage() for r in caplog.records if "close_timeout" in r.getMessage()]
    assert left and "1 connection(s) still in use" in left[0]
    with pytest.raises(TierUnavailableError):
        await asyncio.wait_for(stuck, GUARD)


@pytest.mark.parametrize("l3_timeout", [8.0, 20.0])
async def test_a_delete_tombstone_outlives_the_l3_timeout(
    settings: dict[str, Any], redis_client: Any, l3_timeout: float
) -> None:
    ds = DataStore(Config(**{**settings, "l3_timeout": l3_timeout}))
    ds.register(DOCS)
    async with ds:
        await ds.migrate()
        await ds.set(Doc, Doc(id="d", body="x"))
        await ds.delete(Doc, "d")
        key = f"{ds.config.key_prefix}:docs:{ds.schemas['docs'].shape}:d"
        ttl_ms = await redis_client.pttl(key)
    assert ttl_ms > l3_timeout * 1000


class Note(BaseModel):
    id: str = Field(primary_key=True)
    body: str = ""


NOTES = Schema(name="notes", model=Note, write_mode=WriteMode.WRITE_BEHIND)


def _outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name == "strata"
    ]


async def test_a_postgresql_outage_logs_one_warning_and_periodic_summaries(
    settings: dict[str, Any],
    pg_url: str,
    pg_proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="strata")
    config = _config(
        settings,
        pg_proxy.url_for(pg_url),
        l3_timeout=0.5,
        l3_outage_summary_interval=0.3,
        write_behind_flush_interval=0.02,
        write_behind_retry_base=0.01,
        write_behind_retry_max=0.05,
        write_behind_max_retry=1_000_000,
    )
    ds = DataStore(config)
    ds.register(DOCS)
    ds.register(NOTES)
    async with ds:
        await ds.migrate()
        await pg_proxy.cut()
        caplog.clear()
        failed = 0
        deadline = asyncio.get_running_loop().time() + GUARD / 4
        try:
            # Callers keep failing fast, write-behind keeps retrying, for several summaries.
            while sum("still unavailable" in m for m in _outage_lines(caplog)) < 3 or failed < 100:
                lines = _outage_lines(caplog)
                assert asyncio.get_running_loop().time() < deadline, (len(lines), lines[-3:])
                await ds.set(Note, Note(id=f"n{failed % 50}", body="queued"))
                for _ in range(20):
                    with pytest.raises(TierUnavailableError):
                        await ds.get(Doc, f"missing{failed}")
                    failed += 1
                await asyncio.sleep(0.01)
        finally:
            await pg_proxy.restore()  # close() flushes the queued writes
        await asyncio.wait_for(ds.flush_dirty(), GUARD)
        lines = _outage_lines(caplog)
        first = [m for m in lines if "PostgreSQL" in m and "unavailable" in m]
        assert "still unavailable" not in first[0]
        # One warning when it began, one summary per interval, nothing per failed call.
        summaries = [m for m in lines if "still unavailable" in m]
        assert len(lines) <= len(summaries) + 2, lines[:10]
        back = [r.getMessage() for r in caplog.records if "reachable again" in r.getMessage()]
        assert len(back) == 1
    conn = await asyncpg.connect(pg_url)
    try:
        stored = await conn.fetchval(
            f'SELECT body FROM "{settings["database_schema"]}".notes WHERE id = $1', "n0"
        )
    finally:
        await conn.close()
    assert stored == "queued"  # nothing acknowledged was lost meanwhile

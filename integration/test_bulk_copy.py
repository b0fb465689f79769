"""Bulk writes on PostgreSQL (strata/tiers/pg_bulk.py): new rows go in by one COPY into the
table; a batch with an existing row, or one that would wait on another writer, falls back
to the upsert, which keeps the version check and ``auto_now_add``.

Asserted: the rows and versions PostgreSQL holds afterwards, and what the store reads back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel

from strata import Config, DataStore, Field, Schema
from strata.errors import TierUnavailableError
from strata.schema import VERSION_COLUMN
from strata.testing import eventually
from strata.tiers.postgres import PostgresTier

GUARD = 60.0
N = 500


class Doc(BaseModel):
    id: str = Field(primary_key=True)
    body: str = ""
    level: int = 0
    created_at: datetime = Field(auto_now_add=True)
    secret: str = Field(default="", omit_cache=True)


DOCS = Schema(name="docs", model=Doc, l1=None, l2=None)


@pytest.fixture
async def ds(settings: dict[str, Any]) -> AsyncIterator[DataStore]:
    store = DataStore(Config(**{**settings, "redis_url": None}))
    store.register(DOCS)
    async with store:
        await store.migrate()
        yield store


async def _rows(conn: asyncpg.Connection, schema: str) -> dict[str, asyncpg.Record]:
    records = await conn.fetch(f'SELECT * FROM "{schema}".docs ORDER BY id')
    return {r["id"]: r for r in records}


async def test_new_rows_are_stored_with_their_versions(
    ds: DataStore, pg_conn: asyncpg.Connection, pg_schema: str
) -> None:
    written = await ds.set_many(Doc, [Doc(id=f"d{i:04}", level=i) for i in range(N)])

    rows = await _rows(pg_conn, pg_schema)
    assert sorted(rows) == [f"d{i:04}" for i in range(N)]
    assert all(rows[f"d{i:04}"]["level"] == i for i in range(N))
    assert len({r[VERSION_COLUMN] for r in rows.values()}) == N  # one clock value each
    for value in written:
        assert rows[value.id]["created_at"] == value.created_at
    # the next write of a row stores a newer version than the COPY did
    before = rows["d0007"][VERSION_COLUMN]
    await ds.set(Doc, Doc(id="d0007", level=-1))
    assert (await _rows(pg_conn, pg_schema))["d0007"][VERSION_COLUMN] > before


async def test_a_batch_with_existing_rows_is_upserted_keeping_created_at_and_versions(
    ds: DataStore, pg_conn: asyncpg.Connection, pg_schema: str
) -> None:
    first = await ds.set_many(Doc, [Doc(id=f"d{i:04}", level=i) for i in range(0, N, 2)])
    old = await _rows(pg_conn, pg_schema)

    await ds.set_many(Doc, [Doc(id=f"d{i:04}", level=i + 1000) for i in range(N)])

    rows = await _rows(pg_conn, pg_schema)
    assert sorted(rows) == [f"d{i:04}" for i in range(N)]
    assert all(rows[f"d{i:04}"]["level"] == i + 1000 for i in range(N))
    for v in first:  # existing rows: their created_at is kept, the version raised
        assert rows[v.id]["created_at"] == old[v.id]["created_at"]
        assert rows[v.id][VERSION_COLUMN] > old[v.id][VERSION_COLUMN]
    assert (await ds.get(Doc, "d0002")).level == 1002


async def test_repeated_batches_of_the_same_rows_are_all_applied(
    ds: DataStore, pg_conn: asyncpg.Connection, pg_schema: str
) -> None:
    for n in range(6):  # after a COPY that found rows, the upsert serves directly
        await ds.set_many(Doc, [Doc(id=f"d{i}", level=n) for i in range(50)])
        rows = await _rows(pg_conn, pg_schema)
        assert {r["level"] for r in rows.values()} == {n}
    await ds.set_many(Doc, [Doc(id=f"new{i}") for i in range(50)])
    assert len(await _rows(pg_conn, pg_schema)) == 100


async def test_omitted_columns_of_new_rows_are_stored(
    ds: DataStore, pg_conn: asyncpg.Connection, pg_schema: str
) -> None:
    await ds.set_many(Doc, [Doc(id=f"d{i}", secret=f"s{i}") for i in range(20)])
    rows = await _rows(pg_conn, pg_schema)
    assert [rows[f"d{i}"]["secret"] for i in range(20)] == [f"s{i}" for i in range(20)]


async def test_a_batch_meeting_an_uncommitted_insert_waits_for_it_and_wins(
    ds: DataStore, pg_url: str, pg_conn: asyncpg.Connection, pg_schema: str
) -> None:
    other = await asyncpg.connect(pg_url)
    try:
        tr = other.transaction()
        await tr.start()
        await other.execute(
            f'INSERT INTO "{pg_schema}".docs (id, body, level, created_at, secret, '
            f"{VERSION_COLUMN}) VALUES ('d7', 'other', -1, now(), '', 1)"
        )
        batch = asyncio.ensure_future(
            ds.set_many(Doc, [Doc(id=f"d{i}", body="batch", level=i) for i in range(20)])
        )
        # the batch cannot finish while the other insert is open: it waits (no error)
        pid = other.get_server_pid()

        async def blocked() -> bool:
            n = await pg_conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                pid,
            )
            return bool(n) or batch.done()

        await eventually(blocked, timeout=GUARD)
        assert not batch.done()
        await tr.commit()
        await asyncio.wait_for(batch, GUARD)
    finally:
        await other.close()
    rows = await _rows(pg_conn, pg_schema)
    assert rows["d7"]["body"] == "batch" and rows["d7"][VERSION_COLUMN] > 1
    assert len(rows) == 20


async def test_a_batch_in_a_rolled_back_transaction_leaves_nothing(
    ds: DataStore, pg_conn: asyncpg.Connection, pg_schema: str
) -> None:
    with pytest.raises(RuntimeError):
        async with ds.tx() as tx:
            await tx.set_many(Doc, [Doc(id=f"d{i}") for i in range(50)])
            raise RuntimeError("abort")
    assert await _rows(pg_conn, pg_schema) == {}


async def test_a_versioned_batch_replaces_only_older_rows(
    settings: dict[str, Any], pg_conn: asyncpg.Connection, pg_schema: str
) -> None:
    """The write-behind flush's path (versioned, nothing read back): new rows COPYed with
    their own versions; an existing newer row is left alone."""
    config = Config(**{**settings, "redis_url": None})
    tier = PostgresTier(config, logger=logging.getLogger("strata.test"))
    store = DataStore(config, l3=tier)
    store.register(DOCS)
    async with store:
        await store.migrate()
        cs = store.schemas["docs"]
        await store.set(Doc, Doc(id="d3", body="newer"))
        newer = (await _rows(pg_conn, pg_schema))["d3"][VERSION_COLUMN]

        def row(i: int, version: int) -> dict[str, Any]:
            return {
                "id": f"d{i}",
                "body": "flushed",
                "level": i,
                "created_at": datetime.now().astimezone(),
                "secret": "",
                VERSION_COLUMN: version,
            }

        batch = [row(i, 1000 + i) for i in range(10) if i != 3] + [row(3, newer - 1)]
        assert await tier.upsert_many(cs, batch, versioned=True, returning=False) == {}
        first = await _rows(pg_conn, pg_schema)
        again = [row(i, 2000 + i) for i in range(10) if i != 3] + [row(3, newer - 1)]
        await tier.upsert_many(cs, again, versioned=True, returning=False)
        second = await _rows(pg_conn, pg_schema)

    assert first["d3"]["body"] == "newer" and second["d3"]["body"] == "newer"
    assert [first[f"d{i}"][VERSION_COLUMN] for i in (0, 9)] == [1000, 1009]
    assert [second[f"d{i}"][VERSION_COLUMN] for i in (0, 9)] == [2000, 2009]


async def test_a_batch_on_a_drained_pool_fails_within_pool_timeout(
    settings: dict[str, Any],
) -> None:
    store = DataStore(
        Config(
            **{**settings, "redis_url": None},
            pool_min_size=1,
            pool_max_size=1,
            pool_timeout=0.2,
            l3_timeout=30,
        )
    )
    store.register(DOCS)
    async with store:
        await store.migrate()
        async with store.tx() as tx:
            await tx.set(Doc, Doc(id="held"))
            with pytest.raises(TierUnavailableError, match="pool_timeout"):
                await asyncio.wait_for(
                    store.set_many(Doc, [Doc(id=f"d{i}") for i in range(10)]), GUARD
                )

"""Read replicas: rows a replica served never fill a cache, and a hung replica falls back
to the primary within ``Config.l3_timeout``.

The "replica" is the primary server reached through a FaultProxy: the rows are the same,
so what is asserted is where they went (L1, L2) and that a search still answers when the
replica hangs (``blackhole()``), never a duration.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from integration._servers import FaultProxy
from strata import Config, DataStore, Field, PostgresPolicy, Q, Schema

GUARD = 60.0  # only keeps a broken build from hanging the suite


class Doc(BaseModel):
    id: str = Field(primary_key=True)
    body: str = ""
    level: int = 0


@pytest.fixture
async def replica_proxy(pg_url: str) -> AsyncIterator[FaultProxy]:
    async with FaultProxy.for_url(pg_url) as proxy:
        yield proxy


def _store(settings: dict[str, Any], replica_url: str, **extra: Any) -> DataStore:
    ds = DataStore(Config(**{**settings, **extra}))
    ds.register(Schema(name="docs", model=Doc, l3=PostgresPolicy(read_replica=replica_url)))
    return ds


def _l2_key(ds: DataStore, id: str) -> str:
    return f"{ds.config.key_prefix}:docs:{ds.schemas['docs'].shape}:{id}"


async def test_rows_a_replica_served_fill_neither_l1_nor_l2(
    settings: dict[str, Any], pg_url: str, replica_proxy: FaultProxy, redis_client: Any
) -> None:
    writer = _store(settings, replica_proxy.url_for(pg_url))
    reader = _store(settings, replica_proxy.url_for(pg_url))
    async with writer, reader:
        await writer.migrate()
        await writer.set_many(Doc, [Doc(id=f"d{i}", body="v1", level=i) for i in range(5)])
        await redis_client.delete(*[_l2_key(writer, f"d{i}") for i in range(5)])

        found = await reader.search(Doc, Q().filter(level__gte=0))
        cached = await reader.search_cached(Doc, Q().filter(level__gte=1))

        assert sorted(d.id for d in found) == [f"d{i}" for i in range(5)]
        assert len(cached) == 4
        # Nothing the replica served was cached: not in Redis, not in the reader's L1
        # (its next get goes to the primary).
        assert [await redis_client.exists(_l2_key(reader, f"d{i}")) for i in range(5)] == [0] * 5
        before = reader.stats().l3_queries
        assert (await reader.get(Doc, "d3")).body == "v1"
        assert reader.stats().l3_queries == before + 1


async def test_a_hung_replica_falls_back_to_the_primary_within_l3_timeout(
    settings: dict[str, Any], pg_url: str, replica_proxy: FaultProxy
) -> None:
    ds = _store(settings, replica_proxy.url_for(pg_url), l3_timeout=0.5)
    async with ds:
        await ds.migrate()
        await ds.set_many(Doc, [Doc(id=f"d{i}", level=i) for i in range(5)])
        assert len(await ds.search(Doc, Q().filter(level__gte=2))) == 3
        replica_proxy.blackhole()

        found = await asyncio.wait_for(ds.search(Doc, Q().filter(level__gte=2)), GUARD)
        counted = await asyncio.wait_for(ds.count(Doc, Q().filter(level__gte=1)), GUARD)

        assert sorted(d.id for d in found) == ["d2", "d3", "d4"]
        assert counted == 4
        await replica_proxy.restore()

"""The router's seams under faults: the invalidation publish goes through the L2 tier's
circuit breaker, and a value redis-py cannot send is a typed error."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from integration._servers import FaultProxy
from integration.procs import eventually
from integration.procs.models import ITEMS, Item
from strata import Config, DataStore, errors
from strata.tiers.redis import RedisTier

WAIT = 20.0  # the breaker probes with a backoff of up to 5 s


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[FaultProxy]:
    async with FaultProxy.for_url(redis_url) as p:
        yield p


def l2_key(ds: DataStore, id: str) -> str:
    return f"{ds.config.key_prefix}:items:{ds.schemas['items'].shape}:{id}"


async def test_a_write_while_redis_hangs_returns_and_its_key_is_repaired_after_recovery(
    settings: dict[str, Any],
    redis_url: str,
    proxy: FaultProxy,
    pg_conn: asyncpg.Connection,
    pg_schema: str,
) -> None:
    config = Config(**{**settings, "redis_url": proxy.url_for(redis_url), "redis_timeout": 0.3})
    direct = aioredis.Redis.from_url(redis_url)
    ds = DataStore(config)
    ds.register(ITEMS)
    try:
        async with ds:
            await ds.migrate()
            await ds.set(Item, Item(id="k", name="before"))
            assert await direct.exists(l2_key(ds, "k"))
            errors_before = ds.stats().errors
            proxy.blackhole()

            stored = await ds.set(Item, Item(id="k", name="during"))  # returns: no hang

            assert stored.name == "during"
            assert (await ds.get(Item, "k")).name == "during"
            row = await pg_conn.fetchrow(f'SELECT name FROM "{pg_schema}".items WHERE id = $1', "k")
            assert row is not None and row["name"] == "during"
            assert ds.stats().errors > errors_before  # the L2 step failed and was counted
            await proxy.restore()

            async def repaired() -> bool:
                # Redis must not keep the value from before the write: dropped on recovery.
                await ds.exists(Item, "probe")  # a call through the breaker lets it probe
                return not await direct.exists(l2_key(ds, "k"))

            await eventually(repaired, timeout=WAIT, interval=0.1)
            assert (await ds.get(Item, "k")).name == "during"
    finally:
        await direct.aclose()


async def test_a_value_redis_py_cannot_send_is_an_invalid_value_error(redis_url: str) -> None:
    tier = RedisTier(redis_url)
    await tier.connect()
    try:
        with pytest.raises(errors.InvalidValueError):
            await tier.set_raw("strata-test:data-error", {"not": "bytes"}, None)  # type: ignore[arg-type]
    finally:
        await tier.close()

"""Single flight covers the whole miss path: one L2 lookup and at most one L3 query."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from integration._servers import PrivateRedis
from strata import Config, DataStore, Field, MemPolicy, Schema


class Item(BaseModel):
    id: str = Field(primary_key=True)
    name: str = ""


async def get_calls(redis_client: Any) -> int:
    stats = await redis_client.info("commandstats")
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


@pytest.mark.parametrize("l1", [MemPolicy(), None], ids=["l1+l2+pg", "l2+pg"])
async def test_concurrent_cold_gets_share_one_l2_lookup_and_no_l3_query(
    l1: MemPolicy | None, settings: dict[str, Any]
) -> None:
    # A private Redis: its GET count is this test's alone (a read is one GET).
    async with PrivateRedis() as server:
        redis_client = aioredis.Redis.from_url(server.url)
        config = Config(**{**settings, "redis_url": server.url})
        writer, reader = DataStore(config), DataStore(config)
        for ds in (writer, reader):
            ds.register(Schema(name="items", model=Item, l1=l1))
        async with writer, reader:
            await writer.migrate()
            await writer.set(Item, Item(id="k", name="v"))  # in L2; the reader's L1 is cold
            queries = reader.stats().l3_queries
            lookups = await get_calls(redis_client)
            got = await asyncio.gather(*(reader.get(Item, "k") for _ in range(100)))
            assert {g.name for g in got} == {"v"}
            assert len({id(g) for g in got}) == 100  # every caller has its own copy
            assert reader.stats().l3_queries == queries
            assert await get_calls(redis_client) - lookups == 1
        await redis_client.aclose()


async def test_redis_policy_key_prefix_and_ttl_are_honoured(
    settings: dict[str, Any], redis_prefix: str, redis_client: Any
) -> None:
    from strata import RedisPolicy

    config = Config(**{**settings, "key_prefix": "unused"})
    ds = DataStore(config)
    cs = ds.register(
        Schema(name="items", model=Item, l2=RedisPolicy(ttl=120, key_prefix=f"{redis_prefix}own"))
    )
    async with ds:
        await ds.migrate()
        await ds.set(Item, Item(id="k", name="v"))
        key = f"{redis_prefix}own:items:{cs.shape}:k"
        assert await redis_client.exists(key) == 1
        assert 100 < await redis_client.ttl(key) <= 120
        assert await redis_client.exists(f"unused:items:{cs.shape}:k") == 0

"""Smaller contract gaps of issue 11 over the real stacks: ``RedisPolicy(ttl=None)`` keys
never expire, NaN is refused before any tier is written, and a naive datetime reads back
the same (UTC) from every tier and every instance."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from integration.procs import eventually
from integration.stacks import Env, l2_key
from strata import Config, DataStore, Field, RedisPolicy, Schema, errors


class Event(BaseModel):
    id: str = Field(primary_key=True)
    at: datetime | None = None
    data: dict[str, Any] = {}


async def _pttl_after_set(settings: dict[str, Any], redis_client: aioredis.Redis, **l2: Any) -> int:
    ds = DataStore(Config(**settings))
    ds.register(Schema(name="events", model=Event, l2=RedisPolicy(**l2)))
    async with ds:
        await ds.migrate()
        await ds.set(Event, Event(id="e"))
        return int(await redis_client.pttl(l2_key(ds, "events", "e")))


async def test_a_redis_policy_ttl_none_key_never_expires(
    settings: dict[str, Any], redis_client: aioredis.Redis
) -> None:
    assert await _pttl_after_set(settings, redis_client, ttl=None) == -1


async def test_a_redis_policy_without_ttl_takes_the_config_default(
    settings: dict[str, Any], redis_client: aioredis.Redis
) -> None:
    settings = {**settings, "default_l2_ttl": 600}
    assert 0 < await _pttl_after_set(settings, redis_client) <= 600_000


async def test_a_zero_config_default_l2_ttl_is_refused_before_connect(
    settings: dict[str, Any],
) -> None:
    with pytest.raises(errors.ConfigError, match="greater than 0"):
        ds = DataStore(Config(**{**settings, "default_l2_ttl": 0}))
        ds.register(Schema(name="events", model=Event, l2=RedisPolicy()))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
async def test_nan_in_a_json_field_is_refused_and_no_tier_has_it(env: Env, bad: float) -> None:
    schema = Schema(name="events", model=Event, l2=RedisPolicy())
    writer = await env.make(schema)
    reader = await env.make(schema)
    with pytest.raises(errors.InvalidValueError, match="NaN"):
        await writer.set(Event, Event(id="n", data={"v": {"deep": [bad]}}))
    await writer.flush_dirty()
    for ds in (writer, reader):
        with pytest.raises(errors.NotFoundError):
            await ds.get(Event, "n")
    if env.stack.l3 is not None:
        assert await env.raw_row("events", "n") is None


async def test_a_naive_datetime_reads_back_utc_from_every_tier_and_instance(env: Env) -> None:
    schema = Schema(name="events", model=Event, l2=RedisPolicy())
    writer = await env.make(schema)
    reader = await env.make(schema)
    naive = datetime(2024, 5, 1, 12, 30, 15, 123456)
    expected = naive.replace(tzinfo=UTC)
    stored = await writer.set(Event, Event(id="t", at=naive))
    await writer.flush_dirty()
    seen = [stored.at, (await writer.get(Event, "t")).at, (await reader.get(Event, "t")).at]
    if env.stack.l3 is not None:
        seen.append((await reader.get(Event, "t", force_l3=True)).at)
    assert seen == [expected] * len(seen)
    assert all(at is not None and at.utcoffset() == timedelta(0) for at in seen)


async def test_get_many_of_a_missing_id_asks_l3_once_like_get(l3_env: Env) -> None:
    ds = await l3_env.make(Schema(name="events", model=Event, l2=RedisPolicy()))
    before = ds.stats().l3_queries
    for _ in range(20):
        assert await ds.get_many(Event, ["missing"]) == {}
    assert ds.stats().l3_queries - before == 1


@pytest.mark.needs(bus=True)
async def test_get_many_sees_another_instances_write_of_an_id_it_found_missing(
    l3_env: Env,
) -> None:
    schema = Schema(name="events", model=Event, l2=RedisPolicy())
    reader = await l3_env.make(schema)
    writer = await l3_env.make(schema)
    assert await reader.get_many(Event, ["late"]) == {}  # remembered as missing
    await writer.set(Event, Event(id="late", data={"v": 1}))
    await writer.flush_dirty()
    found = await eventually(lambda: reader.get_many(Event, ["late"]), timeout=10)
    assert found["late"].data == {"v": 1}


@pytest.mark.parametrize("verb", ["get", "get_many", "set", "set_many", "delete"])
async def test_an_empty_primary_key_is_refused_on_every_stack(env: Env, verb: str) -> None:
    ds = await env.make(Schema(name="events", model=Event, l2=RedisPolicy()))
    calls = {
        "get": lambda: ds.get(Event, ""),
        "get_many": lambda: ds.get_many(Event, [""]),
        "set": lambda: ds.set(Event, Event(id="")),
        "set_many": lambda: ds.set_many(Event, [Event(id="")]),
        "delete": lambda: ds.delete(Event, ""),
    }
    with pytest.raises(errors.MissingPrimaryKeyError):
        await calls[verb]()
    await ds.flush_dirty()
    if env.stack.l3 is not None:
        assert await env.raw_row("events", "") is None

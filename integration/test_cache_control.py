"""The read path and cache control against real PostgreSQL and Redis.

Single flight and the negative cache (how often a read reaches PostgreSQL), the
WRITE_THROUGH_L1_ASYNC write mode (when the writer's L1 holds a value), ``invalidate`` /
``invalidate_all`` / ``warm_cache`` (what is in Redis and in every instance's L1 afterwards),
schemas whose source of truth is Redis (``l3=None``), and the TTL a value promoted from L2
takes in L1.

"Changed behind Strata's back" means an UPDATE through the raw PostgreSQL connection: only
a cache that was really dropped can show it.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from integration.procs import eventually
from integration.stacks import Env, l2_key
from strata import (
    DataStore,
    Field,
    MemPolicy,
    Q,
    RedisPolicy,
    Schema,
    errors,
)

WAIT = 10.0  # generous: a timeout means the message never arrived


class Player(BaseModel):
    id: str = Field(primary_key=True)
    name: str = ""
    level: int = 0


class Team(BaseModel):
    id: str = Field(primary_key=True)
    name: str = ""


class Session(BaseModel):
    id: str = Field(primary_key=True)
    user: str = ""
    data: dict[str, int] = {}


PLAYERS = Schema(name="players", model=Player)
TEAMS = Schema(name="teams", model=Team)


async def insert_unseen(env: Env, players: list[Player]) -> None:
    """Rows in L3 that no cache has seen (written by an instance without Redis)."""
    other = await env.make(PLAYERS, migrate=False, redis_url=None)
    await other.set_many(Player, players)
    await other.close()  # flushes write-behind


async def hear_each_other(a: DataStore, b: DataStore) -> None:
    """Wait until each instance hears the other. A subscription confirmed late clears L1
    (messages may have been missed), so tests start filling L1 only after this."""
    for sender, receiver in ((a, b), (b, a)):
        await _heard(sender, receiver)


async def _heard(sender: DataStore, receiver: DataStore) -> None:
    def received() -> bool:
        return receiver.stats().invalidations_received > 0

    for _ in range(int(WAIT / 0.5)):
        await sender.invalidate(Player, "handshake")
        try:
            await eventually(received, timeout=0.5)
            return
        except AssertionError:
            continue  # published before the subscription was confirmed: lost
    raise AssertionError("the instances never heard each other")


async def received_more_than(ds: DataStore, count: int) -> None:
    await eventually(lambda: ds.stats().invalidations_received > count, timeout=WAIT)


async def l2_keys(redis_client: aioredis.Redis, ds: DataStore, schema: str) -> set[str]:
    pattern = l2_key(ds, schema, "*")
    return {k.decode() async for k in redis_client.scan_iter(match=pattern, count=500)}


# -- single flight and the negative cache -------------------------------------------------


async def test_100_concurrent_gets_of_a_cold_key_cause_one_postgresql_query(
    l3_env: Env,
) -> None:
    ids = [f"cold{n}" for n in range(10)]  # ten cold keys, 100 concurrent gets of each
    ds = await l3_env.make(PLAYERS)
    await insert_unseen(l3_env, [Player(id=i, name=i, level=3) for i in ids])
    before = ds.stats().l3_queries

    got = await asyncio.gather(*(ds.get(Player, i) for _ in range(100) for i in ids))

    assert ds.stats().l3_queries == before + len(ids)
    assert got == [Player(id=i, name=i, level=3) for i in ids] * 100


async def test_repeated_gets_of_a_missing_id_reach_postgresql_once_within_negative_ttl(
    l3_env: Env,
) -> None:
    ds = await l3_env.make(PLAYERS, negative_ttl=60)
    before = ds.stats().l3_queries
    for _ in range(20):
        with pytest.raises(errors.NotFoundError):
            await ds.get(Player, "nobody")

    assert ds.stats().l3_queries == before + 1


async def test_set_drops_the_negative_cache_entry(l3_env: Env) -> None:
    # Without L1 the read after the set cannot be answered by the write's own L1 copy.
    no_l1 = dataclasses.replace(l3_env.stack.adapt(PLAYERS), l1=None)
    ds = await l3_env.make(no_l1, adapt=False, negative_ttl=60)
    with pytest.raises(errors.NotFoundError):
        await ds.get(Player, "p")

    await ds.set(Player, Player(id="p", name="now here"))

    assert (await ds.get(Player, "p")).name == "now here"


async def test_set_in_another_instance_drops_the_negative_cache_entry(bus_env: Env) -> None:
    a = await bus_env.make(PLAYERS, negative_ttl=60)
    b = await bus_env.make(PLAYERS, migrate=False, negative_ttl=60)
    await hear_each_other(a, b)
    with pytest.raises(errors.NotFoundError):
        await b.get(Player, "p")
    received = b.stats().invalidations_received

    await a.set(Player, Player(id="p", name="now here"))
    await received_more_than(b, received)

    assert (await b.get(Player, "p")).name == "now here"


# -- WRITE_THROUGH_L1_ASYNC (the write mode of the l1_async_env stacks) ---------------------


async def test_l1_async_write_fills_the_writers_l1_on_the_next_read(l1_async_env: Env) -> None:
    ds = await l1_async_env.make(PLAYERS)
    await ds.set(Player, Player(id="k", name="old"))
    await ds.get(Player, "k")
    assert (await ds.get(Player, "k")).name == "old"  # L1 holds "old"

    await ds.set(Player, Player(id="k", name="new"))
    s0 = ds.stats()
    first = await ds.get(Player, "k")
    s1 = ds.stats()
    second = await ds.get(Player, "k")
    s2 = ds.stats()

    assert first.name == second.name == "new"
    assert (s1.l1_hits - s0.l1_hits, s1.l2_hits - s0.l2_hits) == (0, 1)
    assert (s2.l1_hits - s1.l1_hits, s2.l2_hits - s1.l2_hits) == (1, 0)
    assert s2.l3_queries == s0.l3_queries


async def test_l1_async_write_is_in_postgresql_and_redis_when_set_returns(
    l1_async_env: Env, redis_client: aioredis.Redis
) -> None:
    ds = await l1_async_env.make(PLAYERS)
    await ds.set(Player, Player(id="k", name="durable", level=4))

    rows = await l1_async_env.raw_query("SELECT name, level FROM players")
    assert [tuple(r.values()) for r in rows] == [("durable", 4)]
    cached = await redis_client.get(l2_key(ds, "players", "k"))
    assert cached is not None and b"durable" in cached


async def test_l1_async_never_loses_a_write(l1_async_env: Env) -> None:
    ds = await l1_async_env.make(PLAYERS)
    for n in range(30):
        await ds.set(Player, Player(id="k", level=n))
        assert (await ds.get(Player, "k")).level == n
    await asyncio.gather(
        *(ds.set(Player, Player(id=f"c{n}", level=n)) for n in range(30)),
        *(ds.get_many(Player, [f"c{n}" for n in range(30)]) for _ in range(5)),
    )

    got = await ds.get_many(Player, [f"c{n}" for n in range(30)])
    assert {k: v.level for k, v in got.items()} == {f"c{n}": n for n in range(30)}
    rows = await l1_async_env.raw_query("SELECT id, level FROM players")
    assert {r["id"]: r["level"] for r in rows} == {"k": 29} | {f"c{n}": n for n in range(30)}


# -- invalidate, invalidate_all, warm_cache ------------------------------------------------


@pytest.mark.needs(shared_redis=True)  # reads raw keys in the shared Redis
async def test_invalidate_drops_the_key_from_l1_and_l2_on_every_instance(
    bus_env: Env, redis_client: aioredis.Redis
) -> None:
    a = await bus_env.make(PLAYERS)
    b = await bus_env.make(PLAYERS, migrate=False)
    await hear_each_other(a, b)
    await a.set(Player, Player(id="k", name="cached"))
    await a.set(Player, Player(id="other", name="cached"))
    await a.flush_dirty()  # write-behind: the rows are in L3 before they change there
    for ds in (a, b):
        assert (await ds.get(Player, "k")).name == "cached"
    await bus_env.raw_query("UPDATE players SET name = 'in-db'")
    received = b.stats().invalidations_received

    await a.invalidate(Player, "k")

    assert not await redis_client.exists(l2_key(a, "players", "k"))
    assert await redis_client.exists(l2_key(a, "players", "other"))
    assert (await a.get(Player, "k")).name == "in-db"
    assert (await a.get(Player, "other")).name == "cached"  # only "k" was dropped
    await received_more_than(b, received)
    assert (await b.get(Player, "k")).name == "in-db"


@pytest.mark.needs(shared_redis=True)  # reads raw keys in the shared Redis
async def test_invalidate_all_drops_every_key_of_the_schema_on_every_instance(
    bus_env: Env, redis_client: aioredis.Redis
) -> None:
    ids = ["k1", "k2", "k3"]
    a = await bus_env.make(PLAYERS, TEAMS)
    b = await bus_env.make(PLAYERS, TEAMS, migrate=False)
    await hear_each_other(a, b)
    await a.set_many(Player, [Player(id=i, name="cached") for i in ids])
    await a.set(Team, Team(id="t", name="kept"))
    await a.flush_dirty()
    for ds in (a, b):
        assert len(await ds.get_many(Player, ids)) == 3
    await bus_env.raw_query("UPDATE players SET name = 'in-db'")
    received = b.stats().invalidations_received

    await a.invalidate_all(Player)

    assert await l2_keys(redis_client, a, "players") == set()
    assert await l2_keys(redis_client, a, "teams") == {l2_key(a, "teams", "t")}
    await received_more_than(b, received)
    for ds in (a, b):
        got = await ds.get_many(Player, ids)
        assert {k: v.name for k, v in got.items()} == dict.fromkeys(ids, "in-db")


@pytest.mark.needs(shared_redis=True)  # reads raw keys in the shared Redis
async def test_warm_cache_loads_every_row_into_redis_and_l1(
    l3_env: Env, redis_client: aioredis.Redis
) -> None:
    ids = [f"p{n:04}" for n in range(2500)]  # more than one batch
    ds = await l3_env.make(PLAYERS)
    await insert_unseen(l3_env, [Player(id=i, level=n) for n, i in enumerate(ids)])
    assert await ds.warm_cache(Player) == 2500

    assert len(await l2_keys(redis_client, ds, "players")) == (2500 if l3_env.stack.l2 else 0)
    assert ds.stats().l1_entries == (2500 if l3_env.stack.l1 else 0)
    before = ds.stats()
    assert (await ds.get(Player, "p1234")).level == 1234
    after = ds.stats()
    if l3_env.stack.l1:
        assert after.l1_hits == before.l1_hits + 1
    else:
        assert after.l2_hits == before.l2_hits + 1
    assert after.l3_queries == before.l3_queries


@pytest.mark.needs(shared_redis=True)  # reads raw keys in the shared Redis
async def test_warm_cache_with_a_limit_loads_that_many_rows(
    l3_env: Env, redis_client: aioredis.Redis
) -> None:
    ds = await l3_env.make(PLAYERS)
    await insert_unseen(l3_env, [Player(id=f"p{n:04}") for n in range(2500)])
    assert await ds.warm_cache(Player, limit=1500) == 1500

    assert len(await l2_keys(redis_client, ds, "players")) == (1500 if l3_env.stack.l2 else 0)
    assert ds.stats().l1_entries == (1500 if l3_env.stack.l1 else 0)


# -- l3=None: Redis is the source of truth --------------------------------------------------

SESSIONS = Schema(name="sessions", model=Session, l3=None)


@pytest.mark.needs(shared_redis=True)  # reads raw keys in the shared Redis
async def test_schema_without_l3_keeps_its_values_in_redis(
    l2_env: Env, redis_client: aioredis.Redis
) -> None:
    ds = await l2_env.make(SESSIONS)
    other = await l2_env.make(SESSIONS, migrate=False)
    await ds.set(Session, Session(id="s1", user="ann", data={"n": 1}))
    await ds.set_many(Session, [Session(id="s2", user="bob"), Session(id="s3", user="cy")])

    assert (await ds.get(Session, "s1")).data == {"n": 1}
    assert await redis_client.exists(l2_key(ds, "sessions", "s1"))
    assert (await other.get(Session, "s1")).user == "ann"  # read from Redis
    assert await other.exists(Session, "s2")
    assert not await other.exists(Session, "nope")
    got = await other.get_many(Session, ["s1", "s2", "s3", "nope"])
    assert {k: v.user for k, v in got.items()} == {"s1": "ann", "s2": "bob", "s3": "cy"}

    await ds.delete(Session, "s1")

    for instance in (ds, other):
        with pytest.raises(errors.NotFoundError):
            await instance.get(Session, "s1")
        assert not await instance.exists(Session, "s1")


async def test_schema_without_l3_refuses_search_count_and_warm_cache(env: Env) -> None:
    ds = await env.make(SESSIONS)
    await ds.set(Session, Session(id="s1", user="ann"))
    with pytest.raises(errors.UnsupportedOperationError):
        await ds.search(Session, Q().filter(user="ann"))
    with pytest.raises(errors.UnsupportedOperationError):
        await ds.search_cached(Session, Q().filter(user="ann"))
    with pytest.raises(errors.UnsupportedOperationError):
        await ds.count(Session)
    with pytest.raises(errors.UnsupportedOperationError):
        await ds.warm_cache(Session)


# -- TTL of a value promoted from L2 -------------------------------------------------------


@pytest.mark.needs(l1=True, l2=True, shared_redis=True)
async def test_value_promoted_from_l2_expires_from_l1_with_the_remaining_l2_ttl(
    l3_env: Env, redis_client: aioredis.Redis
) -> None:
    short = Schema(name="players", model=Player, l1=MemPolicy(ttl=60), l2=RedisPolicy(ttl=2))
    writer = await l3_env.make(short)
    reader = await l3_env.make(short, migrate=False)
    await writer.set(Player, Player(id="k", name="cached"))
    await writer.flush_dirty()
    key = l2_key(writer, "players", "k")
    assert 0 < await redis_client.pttl(key) <= 2000  # the L2 copy takes the policy's TTL
    await redis_client.pexpire(key, 200)  # as if most of its 2 s had passed
    assert (await reader.get(Player, "k")).name == "cached"  # promoted with <= 200 ms left
    assert reader.stats().l2_hits == 1
    await l3_env.raw_query("UPDATE players SET name = 'in-db'")

    await eventually(lambda: _gone(redis_client, key))  # the L2 copy has expired

    # L1 follows within moments, far below its own 60 s TTL
    await eventually(lambda: _name_is(reader, "k", "in-db"), timeout=WAIT)


async def _gone(redis_client: aioredis.Redis, key: str) -> bool:
    return not await redis_client.exists(key)


async def _name_is(ds: DataStore, id: str, name: str) -> bool:
    return (await ds.get(Player, id)).name == name

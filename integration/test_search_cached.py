"""``search_cached`` against real Redis and PostgreSQL (issue 4).

A cached result is served from Redis until a write to the schema - from this instance,
from another instance or from another process - makes it unreachable; different queries
(and different typed arguments) are cached apart; ``force_l2()`` answers only from the
cache and ``force_l3()`` never from it. Without an L2 tier ``search_cached`` is ``search``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from integration.procs.search_peer import SCORES, Score
from integration.stacks import ENCRYPTION_KEY, L3_STACKS, Env, config_for
from strata import DataStore, Q, WriteMode
from strata.errors import CacheMissError

REPO = Path(__file__).resolve().parents[1]

WITH_L2 = [s for s in L3_STACKS if s.l2]
# Without L2, write-through only: a write-behind write is not in L3 (so in no search) until
# its flush.
WITHOUT_L2 = [s for s in L3_STACKS if not s.l2 and s.write_mode is not WriteMode.WRITE_BEHIND]
WRITE_THROUGH_L2 = [s for s in WITH_L2 if s.write_mode is not WriteMode.WRITE_BEHIND]
L1_L2_PG = next(s for s in WITH_L2 if s.name == "l1+l2+pg")
WRITE_BEHIND = next(s for s in WITH_L2 if s.write_mode is WriteMode.WRITE_BEHIND)

REGIONS = ("eu", "us", "asia")
ROWS = [
    Score(
        id=f"s{i:03d}",
        player=f"player{i % 17}",
        region=REGIONS[i % 3],
        points=(i * 31) % 500,
        token=f"token-plaintext-{i:03d}",
    )
    for i in range(120)
]
EU = Q().filter(region="eu").order_by("-points", "id").limit(0)


def on(*stacks: Any) -> pytest.MarkDecorator:
    """Run the test on these stacks only (``l3_env`` parametrized indirectly)."""
    return pytest.mark.parametrize("l3_env", list(stacks), ids=lambda s: s.name, indirect=True)


def ranked(rows: dict[str, Score] | list[Score], region: str = "eu") -> list[str]:
    """The ids ``EU`` (or the same query for another region) must return, in order."""
    values = rows.values() if isinstance(rows, dict) else rows
    return [s.id for s in sorted(values, key=lambda s: (-s.points, s.id)) if s.region == region]


def ids(found: list[Any]) -> list[str]:
    return [s["id"] if isinstance(s, dict) else s.id for s in found]


async def seeded(env: Env) -> DataStore:
    ds = await env.make(SCORES)
    await ds.set_many(Score, ROWS)
    await ds.flush_dirty()  # write-behind: searches read L3
    return ds


async def cached(ds: DataStore, q: Q = EU) -> list[Any]:
    """Run ``search_cached`` twice, checking the second answer came from Redis."""
    first = await ds.search_cached(Score, q)
    before = ds.stats().l3_queries
    second = await ds.search_cached(Score, q)
    assert second == first
    assert ds.stats().l3_queries == before
    return first


# --------------------------------------------------------------------------- served from L2


@on(*WITH_L2)
async def test_a_repeated_search_cached_is_served_from_redis(l3_env: Env) -> None:
    ds = await seeded(l3_env)
    before = ds.stats().l3_queries

    first = await ds.search_cached(Score, EU)
    after_first = ds.stats().l3_queries
    second = await ds.search_cached(Score, EU)

    assert ids(first) == ranked(ROWS)
    assert sorted(first, key=lambda s: s.id) == [s for s in ROWS if s.region == "eu"]
    assert after_first == before + 1
    assert second == first
    assert ds.stats().l3_queries == after_first


@on(*WRITE_THROUGH_L2)
async def test_a_cached_result_is_shared_by_every_instance(l3_env: Env) -> None:
    ds = await seeded(l3_env)
    first = await cached(ds)
    other = await l3_env.make(SCORES, migrate=False)

    again = await other.search_cached(Score, EU)

    assert again == first
    assert other.stats().l3_queries == 0


# --------------------------------------------------------------------------- writes drop it

NEW_TOP = Score(id="new-top", player="newcomer", region="eu", points=10_000, token="n")

Write = Callable[[DataStore, dict[str, Score], asyncpg.Connection], Awaitable[None]]


async def write_set(ds: DataStore, rows: dict[str, Score], conn: asyncpg.Connection) -> None:
    rows[NEW_TOP.id] = await ds.set(Score, NEW_TOP)


async def write_set_many(ds: DataStore, rows: dict[str, Score], conn: asyncpg.Connection) -> None:
    first_eu = rows[ranked(rows)[0]]
    values = [NEW_TOP, first_eu.model_copy(update={"points": -1})]
    for s in await ds.set_many(Score, values):
        assert isinstance(s, Score)
        rows[s.id] = s


async def write_delete(ds: DataStore, rows: dict[str, Score], conn: asyncpg.Connection) -> None:
    top = ranked(rows)[0]
    await ds.delete(Score, top)
    del rows[top]


async def write_tx(ds: DataStore, rows: dict[str, Score], conn: asyncpg.Connection) -> None:
    second = ranked(rows)[1]
    async with ds.tx() as tx:
        rows[NEW_TOP.id] = await tx.set(Score, NEW_TOP)
        await tx.delete(Score, second)
    del rows[second]


async def write_invalidate_all(
    ds: DataStore, rows: dict[str, Score], conn: asyncpg.Connection
) -> None:
    # L3 changed behind Strata's back: the cached result is stale until invalidate_all.
    last = ranked(rows)[-1]
    await conn.execute("UPDATE scores SET points = 10000 WHERE id = $1", last)
    rows[last] = rows[last].model_copy(update={"points": 10_000})
    assert ids(await ds.search_cached(Score, EU)) != ranked(rows)
    await ds.invalidate_all(Score)


WRITES = [
    pytest.param(write_set, id="set"),
    pytest.param(write_set_many, id="set_many"),
    pytest.param(write_delete, id="delete"),
    pytest.param(write_tx, id="tx"),
    pytest.param(write_invalidate_all, id="invalidate_all"),
]


@on(L1_L2_PG, WRITE_BEHIND)
@pytest.mark.parametrize("write", WRITES)
async def test_a_write_from_this_instance_makes_the_next_search_cached_read_l3(
    l3_env: Env, pg_conn: asyncpg.Connection, write: Write
) -> None:
    ds = await seeded(l3_env)
    old = await cached(ds)
    rows = {s.id: s for s in ROWS}

    await write(ds, rows, pg_conn)
    await ds.flush_dirty()  # write-behind: the write must be in L3 to be searched
    before = ds.stats().l3_queries
    fresh = await ds.search_cached(Score, EU)

    assert ids(fresh) == ranked(rows) != ids(old)
    assert ds.stats().l3_queries == before + 1
    assert await ds.search_cached(Score, EU) == fresh  # and that is cached in turn
    assert ds.stats().l3_queries == before + 1


@on(*WITH_L2)
async def test_a_write_from_another_instance_makes_search_cached_read_l3(l3_env: Env) -> None:
    ds = await seeded(l3_env)
    await cached(ds)
    other = await l3_env.make(SCORES, migrate=False)

    await other.set(Score, NEW_TOP)
    await other.flush_dirty()
    before = ds.stats().l3_queries
    fresh = await ds.search_cached(Score, EU)

    assert ids(fresh) == [NEW_TOP.id, *ranked(ROWS)]
    assert ds.stats().l3_queries == before + 1


@on(L1_L2_PG)
async def test_a_write_from_another_process_makes_search_cached_read_l3(
    l3_env: Env, redis_url: str, redis_prefix: str
) -> None:
    ds = await seeded(l3_env)
    await cached(ds)
    settings = {
        "database_url": l3_env.pg_url,
        "database_schema": l3_env.pg_schema,
        "redis_url": redis_url,
        "key_prefix": redis_prefix,
        "invalidation_channel": f"{redis_prefix}:peer",
        "encryption_key": ENCRYPTION_KEY,
    }

    peer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "integration.procs.search_peer",
        json.dumps(settings),
        NEW_TOP.model_dump_json(),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(peer.communicate(), 60)
    assert peer.returncode == 0, err.decode()
    before = ds.stats().l3_queries
    fresh = await ds.search_cached(Score, EU)

    assert Score.model_validate_json(out) == NEW_TOP
    assert ids(fresh) == [NEW_TOP.id, *ranked(ROWS)]
    assert fresh[0] == NEW_TOP
    assert ds.stats().l3_queries == before + 1


# --------------------------------------------------------------------------- keys


@on(L1_L2_PG)
async def test_different_queries_are_cached_separately(l3_env: Env) -> None:
    ds = await seeded(l3_env)
    queries = {
        "eu": EU,
        "us": Q().filter(region="us").order_by("-points", "id").limit(0),
        "eu-top3": EU.limit(3),
        "eu-unordered": Q().filter(region="eu"),
    }
    first = {name: await ds.search_cached(Score, q) for name, q in queries.items()}
    before = ds.stats().l3_queries

    again = {name: await ds.search_cached(Score, q) for name, q in queries.items()}

    assert ds.stats().l3_queries == before
    assert again == first
    assert ids(again["eu"]) == ranked(ROWS)
    assert ids(again["us"]) == ranked(ROWS, "us")
    assert ids(again["eu-top3"]) == ranked(ROWS)[:3]
    assert sorted(ids(again["eu-unordered"])) == sorted(ranked(ROWS))


@on(L1_L2_PG)
async def test_list_arguments_that_print_alike_are_cached_separately(l3_env: Env) -> None:
    ds = await l3_env.make(SCORES)
    await ds.set_many(
        Score,
        [
            Score(id="a", player="1 2", region="eu", points=1),
            Score(id="b", player="1", region="eu", points=2),
            Score(id="c", player="2", region="eu", points=3),
        ],
    )

    joined = await ds.search_cached(Score, Q().filter(player__in=["1 2"]).order_by("id"))
    split = await ds.search_cached(Score, Q().filter(player__in=["1", "2"]).order_by("id"))
    again = await ds.search_cached(Score, Q().filter(player__in=["1 2"]).order_by("id"))

    assert ids(joined) == ids(again) == ["a"]
    assert ids(split) == ["b", "c"]


# --------------------------------------------------------------------------- force_l2 / l3


@on(*WITH_L2)
async def test_force_l2_on_a_query_never_cached_raises_cache_miss(l3_env: Env) -> None:
    ds = await seeded(l3_env)
    before = ds.stats().l3_queries

    with pytest.raises(CacheMissError):
        await ds.search_cached(Score, EU.force_l2())
    with pytest.raises(CacheMissError):
        await ds.search(Score, EU.force_l2())

    assert ds.stats().l3_queries == before


@on(*WITH_L2)
async def test_force_l2_on_a_cached_query_returns_it_without_l3(l3_env: Env) -> None:
    ds = await seeded(l3_env)
    first = await ds.search_cached(Score, EU)
    before = ds.stats().l3_queries

    from_cached = await ds.search_cached(Score, EU.force_l2())
    from_search = await ds.search(Score, EU.force_l2())

    assert from_cached == from_search == first
    assert ds.stats().l3_queries == before


@on(*WITH_L2)
async def test_force_l2_after_a_write_raises_cache_miss(l3_env: Env) -> None:
    ds = await seeded(l3_env)
    await cached(ds)

    await ds.set(Score, NEW_TOP)

    with pytest.raises(CacheMissError):
        await ds.search_cached(Score, EU.force_l2())


@on(L1_L2_PG)
async def test_force_l3_bypasses_a_cached_result(l3_env: Env, pg_conn: asyncpg.Connection) -> None:
    ds = await seeded(l3_env)
    await cached(ds)
    last = ranked(ROWS)[-1]
    await pg_conn.execute("UPDATE scores SET points = 10000 WHERE id = $1", last)
    before = ds.stats().l3_queries

    fresh = await ds.search_cached(Score, EU.force_l3())

    assert ids(fresh) == [last, *ranked(ROWS)[:-1]]
    assert ds.stats().l3_queries == before + 1


# --------------------------------------------------------------------------- projections


@on(L1_L2_PG)
async def test_a_projection_is_cached_as_dicts(l3_env: Env) -> None:
    ds = await seeded(l3_env)

    found = await cached(ds, EU.fields("id", "points"))

    assert found == [
        {"id": i, "points": next(s.points for s in ROWS if s.id == i)} for i in ranked(ROWS)
    ]


@on(L1_L2_PG)
async def test_a_projection_with_an_encrypted_field_never_reaches_redis_in_plaintext(
    l3_env: Env, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    ds = await seeded(l3_env)
    q = EU.fields("id", "token")
    before = ds.stats().l3_queries

    first = await ds.search_cached(Score, q)
    second = await ds.search_cached(Score, q)

    assert first == second == [{"id": i, "token": f"token-plaintext-{i[1:]}"} for i in ranked(ROWS)]
    assert ds.stats().l3_queries == before + 2
    async for key in redis_client.scan_iter(match=f"{redis_prefix}*", count=500):
        if await redis_client.type(key) == b"string":
            assert b"token-plaintext" not in (await redis_client.get(key) or b"")


# --------------------------------------------------------------------------- no L2


@on(*WITHOUT_L2)
async def test_without_l2_search_cached_behaves_like_search(l3_env: Env) -> None:
    ds = await seeded(l3_env)
    plain = await ds.search(Score, EU)
    before = ds.stats().l3_queries

    first = await ds.search_cached(Score, EU)
    second = await ds.search_cached(Score, EU)
    await ds.set(Score, NEW_TOP)
    after_write = await ds.search_cached(Score, EU)

    assert first == second == plain
    assert ids(after_write) == [NEW_TOP.id, *ranked(ROWS)]
    assert ds.stats().l3_queries == before + 3 + 1  # three searches, one write
    with pytest.raises(CacheMissError):
        await ds.search_cached(Score, EU.force_l2())


# --------------------------------------------------------------------------- write-behind


async def test_a_write_behind_flush_drops_results_cached_before_it(
    pg_url: str, pg_schema: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    # A result cached between a write-behind write and its flush was read from an L3 that
    # did not have the write yet; once the flush lands, that result is wrong.
    stack = WRITE_BEHIND
    config = config_for(
        stack,
        pg_url=pg_url,
        pg_schema=pg_schema,
        redis_url=redis_url,
        prefix=redis_prefix,
        sqlite=tmp_path / "unused.db",
        channel=f"{redis_prefix}:inv",
    )
    ds = DataStore(dataclasses.replace(config, write_behind_flush_interval=3600))
    ds.register(stack.adapt(SCORES))
    async with ds:
        await ds.migrate()
        await ds.set_many(Score, ROWS)
        await ds.flush_dirty()
        await ds.set(Score, NEW_TOP)
        await ds.search_cached(Score, EU)  # whatever it says before the flush

        await ds.flush_dirty()
        fresh = await ds.search_cached(Score, EU)

        assert ids(await ds.search(Score, EU)) == [NEW_TOP.id, *ranked(ROWS)]
        assert ids(fresh) == [NEW_TOP.id, *ranked(ROWS)]

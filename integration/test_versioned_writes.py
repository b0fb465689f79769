"""Version-checked writes over PostgreSQL + Redis: ``ds.update`` loses no increment where
get/set read-modify-write does, ``ds.patch`` writes only the named columns, and both keep
every instance's caches coherent.

The races are forced, not hoped for: every writer reads, then waits at a barrier until all
have read, then writes; so each of them starts from the same row version.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest
from pydantic import BaseModel

from integration.procs import eventually
from integration.stacks import BUS_L3_STACKS, Env, _stack_fixture
from strata import DataStore, Field, RedisPolicy, Schema, errors

WRITERS = 64
THROUGH_STACKS = [s for s in BUS_L3_STACKS if s.l3 == "postgresql" and not s.write_behind]
through_env = _stack_fixture(THROUGH_STACKS)
"""PostgreSQL + Redis, every write-through mode: two instances hear each other."""


class Counter(BaseModel):
    id: str = Field(primary_key=True)
    n: int = Field(default=0, ge=0)
    label: str = ""
    secret: str = Field(default="", omit_cache=True)
    updated_at: datetime = Field(auto_now=True)


SCHEMA = Schema(name="counters", model=Counter, l2=RedisPolicy())


async def _two(env: Env) -> tuple[DataStore, DataStore]:
    a = await env.make(SCHEMA)
    b = await env.make(SCHEMA)
    await a.set(Counter, Counter(id="c", secret="S"))
    return a, b


Bump = Callable[[DataStore, asyncio.Barrier], Awaitable[Any]]


async def _race(stores: tuple[DataStore, DataStore], bump: Bump) -> None:
    barrier = asyncio.Barrier(WRITERS)
    async with asyncio.timeout(120):  # a guard against a hang, not an assertion
        await asyncio.gather(*(bump(stores[i % 2], barrier) for i in range(WRITERS)))


async def bump_by_update(ds: DataStore, barrier: asyncio.Barrier) -> Counter:
    waited = False

    async def inc(c: Counter) -> Counter:
        nonlocal waited
        if not waited:  # the first attempt of every writer starts from the same version
            waited = True
            await barrier.wait()
        return c.model_copy(update={"n": c.n + 1})

    return await ds.update(Counter, "c", inc, attempts=WRITERS + 10)


async def bump_by_get_set(ds: DataStore, barrier: asyncio.Barrier) -> Counter:
    c = await ds.get(Counter, "c", force_l3=True)
    await barrier.wait()
    return await ds.set(Counter, c.model_copy(update={"n": c.n + 1}))


async def test_concurrent_updates_through_two_instances_lose_nothing(through_env: Env) -> None:
    stores = await _two(through_env)
    await _race(stores, bump_by_update)
    row = await through_env.raw_row("counters", "c")
    assert row is not None
    assert (row["n"], row["secret"]) == (WRITERS, "S")
    for ds in stores:  # and every instance's caches follow: nothing older stays
        assert await eventually(lambda ds=ds: _is(ds, WRITERS), timeout=10)


async def test_the_same_race_with_get_and_set_loses_updates(through_env: Env) -> None:
    """The control: without a version check, writers that read the same row overwrite
    each other's increments."""
    stores = await _two(through_env)
    await _race(stores, bump_by_get_set)
    row = await through_env.raw_row("counters", "c")
    assert row is not None
    assert row["n"] < WRITERS


async def _is(ds: DataStore, n: int) -> bool:
    return (await ds.get(Counter, "c")).n == n


async def test_a_race_lost_on_every_attempt_raises_conflict_and_writes_nothing(
    through_env: Env,
) -> None:
    a, b = await _two(through_env)
    barrier = asyncio.Barrier(2)

    async def once(ds: DataStore) -> Counter:
        async def inc(c: Counter) -> Counter:
            await barrier.wait()
            return c.model_copy(update={"n": c.n + 1})

        return await ds.update(Counter, "c", inc, attempts=1)

    results = await asyncio.gather(once(a), once(b), return_exceptions=True)
    conflicts = [r for r in results if isinstance(r, errors.ConflictError)]
    assert len(conflicts) == 1 and conflicts[0].attempts == 1 and conflicts[0].id == "c"
    row = await through_env.raw_row("counters", "c")
    assert row is not None and row["n"] == 1


async def test_update_returns_and_caches_the_stored_row(through_env: Env) -> None:
    a, b = await _two(through_env)
    await b.get(Counter, "c")  # b caches the old row
    stored = await a.update(Counter, "c", lambda c: c.model_copy(update={"label": "x"}))
    assert (stored.label, stored.secret) == ("x", "S")
    assert (await a.get(Counter, "c")).label == "x"  # read your writes
    assert await eventually(lambda: _label(b, "x"), timeout=10)


async def _label(ds: DataStore, label: str) -> bool:
    return (await ds.get(Counter, "c")).label == label


async def test_patch_writes_only_the_named_columns_server_side(through_env: Env) -> None:
    a, b = await _two(through_env)
    await b.get(Counter, "c")
    before = await through_env.raw_row("counters", "c")
    assert before is not None
    # Someone else changes another column behind Strata's back; the patch must keep it.
    await through_env.raw_query("UPDATE counters SET label = 'theirs' WHERE id = 'c'")
    stored = await a.patch(Counter, "c", n=5)
    row = await through_env.raw_row("counters", "c")
    assert row is not None
    assert (row["n"], row["label"], row["secret"]) == (5, "theirs", "S")
    assert row["_strata_version"] > before["_strata_version"]
    assert row["updated_at"] > before["updated_at"]
    assert (stored.n, stored.label, stored.secret) == (5, "theirs", "S")
    assert (await a.get(Counter, "c")).n == 5
    assert await eventually(lambda: _is(b, 5), timeout=10)


async def test_concurrent_patches_of_different_columns_keep_both(through_env: Env) -> None:
    a, b = await _two(through_env)
    await asyncio.gather(a.patch(Counter, "c", n=7), b.patch(Counter, "c", label="y"))
    row = await through_env.raw_row("counters", "c")
    assert row is not None and (row["n"], row["label"]) == (7, "y")


@pytest.mark.parametrize(
    "fields",
    [{"nope": 1}, {"n": "many"}, {"n": -1}, {"id": "other"}],
    ids=["unknown-field", "wrong-type", "constraint", "primary-key"],
)
async def test_a_bad_patch_raises_a_typed_error_and_writes_nothing(
    through_env: Env, fields: dict[str, Any]
) -> None:
    a, _ = await _two(through_env)
    before = await through_env.raw_row("counters", "c")
    with pytest.raises(errors.InvalidValueError):
        await a.patch(Counter, "c", **fields)
    assert await through_env.raw_row("counters", "c") == before


async def test_patch_and_update_of_a_missing_row_raise_not_found(through_env: Env) -> None:
    a, _ = await _two(through_env)
    with pytest.raises(errors.NotFoundError):
        await a.patch(Counter, "missing", n=1)
    with pytest.raises(errors.NotFoundError):
        await a.update(Counter, "missing", lambda c: c)
    assert await through_env.raw_row("counters", "missing") is None

"""Write-behind against real PostgreSQL and Redis: what reaches the table, and when.

A write-behind ``set`` writes L1 and L2 at once and queues the L3 write; the queue flushes in
batches, coalesces per key, retries failed batches and dead-letters what it cannot write.
Most tests use a long flush interval so that nothing reaches PostgreSQL until the test says
so (``flush_dirty()`` or ``close()``); PostgreSQL failures come from a ``FaultProxy`` in
front of the shared server, or from a row PostgreSQL refuses.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from integration._servers import FaultProxy
from integration.procs import eventually
from integration.stacks import Env
from strata import DataStore, Field, Schema, SchemaHooks, WriteMode, errors

WAIT = 20.0  # generous: a timeout means the write never landed
NEVER = 3600.0  # a flush interval no test outlives


class Account(BaseModel):
    id: str = Field(primary_key=True)
    owner: str = ""
    balance: int = 0


class Member(BaseModel):
    id: str = Field(primary_key=True)
    handle: str = Field(unique=True)


ACCOUNTS = Schema(name="accounts", model=Account, write_mode=WriteMode.WRITE_BEHIND)


async def store(env: Env, *schemas: Schema, **overrides: Any) -> DataStore:
    """A store of the stack that flushes only when a test asks (``flush_dirty``, ``close``)."""
    config = {"write_behind_flush_interval": NEVER, **overrides}
    return await env.make(*(schemas or (ACCOUNTS,)), **config)


async def balances(env: Env) -> dict[str, int]:
    rows = await env.raw_query("SELECT id, balance FROM accounts")
    return {r["id"]: r["balance"] for r in rows}


class HookRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any, BaseException]] = []

    def __call__(self, id: Any, value: Any, exc: BaseException) -> None:
        self.calls.append((id, value, exc))


def field_of(value: Any, name: str) -> Any:
    """A field of the value the hook received (a model, or the row as a mapping)."""
    return value[name] if isinstance(value, dict) else getattr(value, name)


async def test_10000_sets_then_close_all_land_in_l3(wb_env: Env) -> None:
    # close() waits up to close_timeout for the flush; this test is about every row landing,
    # not about the bound (test_wb_coherence tests that), so a loaded machine gets a minute.
    ds = await store(wb_env, write_behind_flush_threshold=100_000, close_timeout=60.0)
    for start in range(0, 10_000, 100):  # batches keep the run short; each row is queued
        await ds.set_many(
            Account,
            [
                Account(id=f"a{n:05}", owner=f"owner{n}", balance=n)
                for n in range(start, start + 100)
            ],
        )
    assert ds.stats().sets == 10_000
    assert ds.stats().dirty_count == 10_000
    assert await wb_env.raw_value("SELECT count(*) FROM accounts") == 0  # all still queued
    await ds.close()

    assert await wb_env.raw_value("SELECT count(*) FROM accounts") == 10_000
    rows = await wb_env.raw_query(
        "SELECT id, owner, balance FROM accounts WHERE id IN ($1, $2, $3) ORDER BY id",
        "a00000",
        "a04242",
        "a09999",
    )
    assert [tuple(r.values()) for r in rows] == [
        ("a00000", "owner0", 0),
        ("a04242", "owner4242", 4242),
        ("a09999", "owner9999", 9999),
    ]


async def test_delete_after_set_leaves_no_row(wb_env: Env) -> None:
    ds = await store(wb_env)
    await ds.set(Account, Account(id="stored", balance=1))
    await ds.flush_dirty()
    await ds.set(Account, Account(id="stored", balance=2))
    await ds.delete(Account, "stored")
    await ds.set(Account, Account(id="never", balance=3))
    await ds.delete(Account, "never")
    await ds.flush_dirty()

    assert await balances(wb_env) == {}
    for id in ("stored", "never"):
        with pytest.raises(errors.NotFoundError):
            await ds.get(Account, id)


@pytest.mark.needs(l2=True)
async def test_other_instance_reads_the_new_value_from_redis_before_postgresql_has_it(
    wb_env: Env,
) -> None:
    writer = await store(wb_env)
    reader = await store(wb_env, migrate=False)
    await writer.set(Account, Account(id="a", owner="ann", balance=10))

    assert (await reader.get(Account, "a")).balance == 10
    assert reader.stats().l2_hits == 1
    assert await balances(wb_env) == {}

    await writer.flush_dirty()
    assert await balances(wb_env) == {"a": 10}


@pytest.mark.needs(pg=True)  # a PostgreSQL server to cut
async def test_failed_flush_keeps_the_writes_and_retries_them_after_postgresql_returns(
    wb_env: Env, pg_url: str
) -> None:
    async with FaultProxy.for_url(pg_url) as proxy:
        config = {
            "database_url": proxy.url_for(pg_url),
            "write_behind_flush_interval": 0.05,
            "write_behind_max_retry": 1000,
            "write_behind_retry_base": 0.05,
            "write_behind_retry_max": 0.2,
        }
        ds = await store(wb_env, **config)
        await proxy.cut()
        await ds.set_many(Account, [Account(id=f"a{n}", balance=n) for n in range(20)])
        await eventually(lambda: ds.stats().errors > 0, timeout=WAIT)  # a flush failed

        assert ds.stats().dirty_count == 20
        assert await ds.dead_letters() == []
        await proxy.restore()
        await ds.flush_dirty(timeout=WAIT)

        assert await balances(wb_env) == {f"a{n}": n for n in range(20)}
        assert ds.stats().dirty_count == 0
        assert await ds.dead_letters() == []
        await ds.close()


async def test_row_postgresql_refuses_is_dead_lettered_after_max_retries_with_the_hook_called(
    wb_env: Env,
) -> None:
    hook = HookRecorder()
    members = Schema(
        name="members",
        model=Member,
        write_mode=WriteMode.WRITE_BEHIND,
        hooks=SchemaHooks(on_write_error=hook),
    )
    retries = {
        "write_behind_max_retry": 2,
        "write_behind_retry_base": 0.01,
        "write_behind_retry_max": 0.05,
    }
    ds = await store(wb_env, members, **retries)
    await ds.set(Member, Member(id="first", handle="taken"))
    await ds.flush_dirty()
    await ds.set(Member, Member(id="second", handle="taken"))  # unique violation
    await ds.set(Member, Member(id="third", handle="free"))  # same batch, acceptable
    await ds.flush_dirty(timeout=WAIT)

    letters = await ds.dead_letters()
    assert [letter.write.id for letter in letters] == ["second"]
    assert isinstance(letters[0].error, errors.IntegrityError)
    assert len(hook.calls) == 1
    id, value, exc = hook.calls[0]
    assert id == "second"
    assert field_of(value, "handle") == "taken"
    assert isinstance(exc, errors.IntegrityError)
    assert ds.stats().dead_letters == 1
    rows = await wb_env.raw_query("SELECT id, handle FROM members ORDER BY id")
    assert [tuple(r.values()) for r in rows] == [("first", "taken"), ("third", "free")]


# These two are of the in-process queue (the store runs without Redis, redis_url=None): with
# Redis the journal waits out any outage instead (integration/test_journal.py).
@pytest.mark.needs(pg=True)  # a PostgreSQL server to cut
async def test_writes_are_dead_lettered_when_postgresql_stays_unreachable(
    wb_env: Env, pg_url: str
) -> None:
    hook = HookRecorder()
    accounts = Schema(
        name="accounts",
        model=Account,
        write_mode=WriteMode.WRITE_BEHIND,
        hooks=SchemaHooks(on_write_error=hook),
    )
    async with FaultProxy.for_url(pg_url) as proxy:
        config = {
            "database_url": proxy.url_for(pg_url),
            "redis_url": None,  # the in-process queue
            "write_behind_flush_interval": 0.05,
            "write_behind_max_retry": 2,
            "write_behind_retry_base": 0.01,
            "write_behind_retry_max": 0.05,
        }
        ds = await store(wb_env, accounts, **config)
        await proxy.cut()
        await ds.set(Account, Account(id="lost", balance=5))
        await ds.flush_dirty(timeout=WAIT)

        assert [letter.write.id for letter in await ds.dead_letters()] == ["lost"]
        assert [(id, type(exc)) for id, _, exc in hook.calls] == [
            ("lost", errors.TierUnavailableError)
        ]
        assert field_of(hook.calls[0][1], "balance") == 5
        assert ds.stats().dead_letters == 1
        assert ds.stats().dirty_count == 0
        await proxy.restore()
        await ds.close()
    assert await balances(wb_env) == {}


@pytest.mark.needs(pg=True)  # a PostgreSQL server to cut
async def test_flush_dirty_returns_only_after_the_dead_letter_hook_has_run(
    wb_env: Env, pg_url: str
) -> None:
    reported: list[Any] = []

    async def report(id: Any, value: Any, exc: BaseException) -> None:
        await asyncio.sleep(0.2)  # e.g. telling another system about the lost write
        reported.append(id)

    accounts = Schema(
        name="accounts",
        model=Account,
        write_mode=WriteMode.WRITE_BEHIND,
        hooks=SchemaHooks(on_write_error=report),
    )
    async with FaultProxy.for_url(pg_url) as proxy:
        config = {
            "database_url": proxy.url_for(pg_url),
            "redis_url": None,  # the in-process queue
            "write_behind_flush_interval": 0.05,
            "write_behind_max_retry": 2,
            "write_behind_retry_base": 0.01,
            "write_behind_retry_max": 0.05,
        }
        ds = await store(wb_env, accounts, **config)
        await proxy.cut()
        await ds.set(Account, Account(id="lost", balance=5))
        await eventually(ds.dead_letters, timeout=WAIT)  # given up on; its hook runs now

        await ds.flush_dirty(timeout=WAIT)

        assert reported == ["lost"]
        await proxy.restore()
        await ds.close()


async def test_100_sets_of_one_key_coalesce_into_one_write_of_the_last_value(wb_env: Env) -> None:
    ds = await store(wb_env)
    for n in range(100):
        await ds.set(Account, Account(id="hot", balance=n))
    assert ds.stats().dirty_count == 1
    before = ds.stats().l3_queries

    await ds.flush_dirty()

    assert ds.stats().l3_queries == before + 1
    assert await balances(wb_env) == {"hot": 99}


async def test_schema_write_behind_works_when_the_config_default_is_write_through(
    wb_env: Env,
) -> None:
    ds = await store(wb_env, default_write_mode=WriteMode.WRITE_THROUGH)
    await ds.set(Account, Account(id="a", balance=1))
    assert await balances(wb_env) == {}  # queued, not written through

    await ds.flush_dirty()
    assert await balances(wb_env) == {"a": 1}


async def test_dirty_count_counts_queued_writes_until_flush_dirty(wb_env: Env) -> None:
    ds = await store(wb_env)
    await ds.set_many(Account, [Account(id=f"a{n}", balance=n) for n in range(3)])
    assert ds.stats().dirty_count == 3

    await ds.flush_dirty()

    assert ds.stats().dirty_count == 0
    assert await balances(wb_env) == {"a0": 0, "a1": 1, "a2": 2}

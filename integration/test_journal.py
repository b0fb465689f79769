"""Crash-safe write-behind (issue 12): the Redis journal, recovery by a peer, idempotent replay."""

from __future__ import annotations

from typing import Any

import asyncpg
from redis.asyncio import Redis

from integration.procs import eventually
from integration.test_write_behind import Account, balances, store

WAIT = 20.0


async def test_writes_a_dead_instance_left_in_the_journal_reach_postgresql_through_a_peer(
    settings: dict[str, Any], pg_conn: asyncpg.Connection
) -> None:
    async with store(settings) as dead:
        await dead.set_many(Account, [Account(id=f"a{n}", balance=n) for n in range(300)])
        assert dead._journal is not None and dead._journal._task is not None
        dead._journal._task.cancel()  # the instance dies with its writes unflushed
    assert await balances(pg_conn) == {}
    async with store(
        settings, write_behind_flush_interval=0.05, write_behind_claim_after=0.2
    ) as peer:

        async def all_landed() -> bool:
            return await _count(pg_conn) == 300

        await eventually(all_landed, timeout=WAIT)
        got = await peer.get(Account, "a7")
    assert got.balance == 7
    assert await balances(pg_conn) == {f"a{n}": n for n in range(300)}


async def _count(pg_conn: asyncpg.Connection) -> int:
    return int(await pg_conn.fetchval("SELECT count(*) FROM accounts"))


async def test_an_entry_delivered_twice_leaves_postgresql_unchanged(
    settings: dict[str, Any], pg_conn: asyncpg.Connection
) -> None:
    async with store(settings, write_behind_flush_interval=0.05) as ds:
        await ds.set(Account, Account(id="k", balance=1))
        assert ds._journal is not None
        stream = ds._journal._streams["accounts"]
        redis = Redis.from_url(settings["redis_url"])
        try:
            [(_, first)] = await redis.xrange(stream)
            await ds.set(Account, Account(id="k", balance=2))
            await ds.flush_dirty(WAIT)
            await redis.xadd(stream, first)  # the old entry again, as a second delivery
            await ds.flush_dirty(WAIT)
        finally:
            await redis.aclose()
        assert await balances(pg_conn) == {"k": 2}
        assert (await ds.get(Account, "k")).balance == 2

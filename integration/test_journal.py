"""Crash-safe write-behind (issue 12): the Redis journal, recovery by a peer or a restart,
idempotent replay, PostgreSQL outages that drop nothing, and dead letters every instance sees.

Long variants: ``STRATA_JOURNAL_KILL_WRITES`` (default 2,000; the issue's figure is 10,000)
and ``STRATA_JOURNAL_OUTAGE_SECONDS`` (default: a short cut; 60 for the issue's).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from integration._servers import FaultProxy, PrivateRedis
from integration.procs import Peer, eventually
from strata import Config, DataStore, Field, Schema, WriteMode, errors

WAIT = 60.0  # generous: a timeout means the writes never landed
NEVER = 3600.0
KILL_WRITES = int(os.environ.get("STRATA_JOURNAL_KILL_WRITES", "2000"))
OUTAGE_SECONDS = float(os.environ.get("STRATA_JOURNAL_OUTAGE_SECONDS", "0"))


class Account(BaseModel):
    id: str = Field(primary_key=True)
    balance: int = 0
    blob: bytes = b""
    secret: str = Field("", encrypted=True)


class Member(BaseModel):
    id: str = Field(primary_key=True)
    handle: str = Field(unique=True)


ACCOUNTS = Schema(name="accounts", model=Account, write_mode=WriteMode.WRITE_BEHIND)
MEMBERS = Schema(name="members", model=Member, write_mode=WriteMode.WRITE_BEHIND)
KEY = b"k" * 32


@asynccontextmanager
async def store(
    settings: dict[str, Any], *schemas: Schema, migrate: bool = True, **overrides: Any
) -> AsyncIterator[DataStore]:
    config = {
        "write_behind_flush_interval": NEVER,
        "encryption_key": KEY,
        **settings,
        **overrides,
    }
    ds = DataStore(Config(**config))
    for schema in schemas or (ACCOUNTS,):
        ds.register(schema)
    async with ds:
        if migrate:
            await ds.migrate()
        yield ds


async def balances(pg: asyncpg.Connection, table: str = "accounts") -> dict[str, int]:
    rows = await pg.fetch(f"SELECT id, balance FROM {table}")
    return {r["id"]: r["balance"] for r in rows}


def journal_key(settings: dict[str, Any], schema: str) -> str:
    return f"{settings['key_prefix']}:{schema}:journal"


# -- 1. the journal ------------------------------------------------------------------------


async def test_a_write_behind_set_is_acknowledged_in_the_journal_with_its_l2_value(
    settings: dict[str, Any], redis_client: Redis, pg_conn: asyncpg.Connection
) -> None:
    async with store(settings) as ds:
        await ds.set(Account, Account(id="a", balance=1, blob=b"\xff\xfe", secret="s3cr3t"))
        [(_, fields)] = await redis_client.xrange(journal_key(settings, "accounts"))
        assert fields[b"s"] == b"accounts" and fields[b"o"] == b"set"
        assert int(fields[b"v"]) > 0
        assert b"s3cr3t" not in fields[b"r"]  # the sealed form, as in L2 and L3
        l2_keys = [k async for k in redis_client.scan_iter(f"{settings['key_prefix']}:accounts:*")]
        value_key = next(k for k in l2_keys if b":journal" not in k and not k.endswith(b":gen"))
        assert await redis_client.ttl(value_key) == -1  # no expiry until L3 has it
        assert await balances(pg_conn) == {}
        await ds.flush_dirty(WAIT)
        assert await balances(pg_conn) == {"a": 1}
        assert await redis_client.xlen(journal_key(settings, "accounts")) == 0
        assert await redis_client.ttl(value_key) > 0  # the normal TTL back
    async with store(settings, migrate=False) as fresh:
        got = await fresh.get(Account, "a", force_l3=True)
    assert (got.blob, got.secret) == (b"\xff\xfe", "s3cr3t")


class Login(BaseModel):
    id: str = Field(primary_key=True)
    password_hash: str = Field("", omit_cache=True)


async def test_omit_cache_fields_never_reach_redis_through_the_journal(
    settings: dict[str, Any],
    redis_client: Redis,
    pg_conn: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A journal entry carries the whole row; a schema with omit_cache fields keeps its
    write-behind queue in the process instead (and says so), so the field stays out of Redis."""
    logins = Schema(name="logins", model=Login, write_mode=WriteMode.WRITE_BEHIND)
    async with store(settings, logins) as ds:
        await ds.set(Login, Login(id="u", password_hash="HASH-123"))
        assert await redis_client.exists(journal_key(settings, "logins")) == 0
        await ds.flush_dirty(WAIT)
        row = await pg_conn.fetchrow("SELECT password_hash FROM logins WHERE id = 'u'")
        assert row is not None and row["password_hash"] == "HASH-123"
        async for key in redis_client.scan_iter(f"{settings['key_prefix']}*"):
            if await redis_client.type(key) == b"string":
                assert b"HASH-123" not in (await redis_client.get(key) or b""), key
    assert "password_hash never go to Redis" in caplog.text


async def test_another_instance_reads_a_journaled_write_from_redis_before_the_flush(
    settings: dict[str, Any], pg_conn: asyncpg.Connection
) -> None:
    """The journal writes the L2 value bound to its key, as the Redis tier does: a reader
    takes it, not the older row in PostgreSQL (an unbound value would be dropped as planted)."""
    async with store(settings) as writer, store(settings, migrate=False) as reader:
        await writer.set(Account, Account(id="a", balance=1))
        await writer.flush_dirty(WAIT)
        await writer.set(Account, Account(id="a", balance=2))
        assert await balances(pg_conn) == {"a": 1}
        assert (await reader.get(Account, "a")).balance == 2
        assert reader.stats().l2_hits == 1


async def test_an_entry_delivered_twice_leaves_postgresql_unchanged(
    settings: dict[str, Any], redis_client: Redis, pg_conn: asyncpg.Connection
) -> None:
    stream = journal_key(settings, "accounts")
    async with store(settings) as ds:
        await ds.set(Account, Account(id="k", balance=1))
        [(_, first)] = await redis_client.xrange(stream)
        await ds.flush_dirty(WAIT)
        await ds.set(Account, Account(id="k", balance=2))
        await ds.flush_dirty(WAIT)
        await redis_client.xadd(stream, first)  # the old entry again, a second delivery
        await _drained_by_a_peer(settings, redis_client, stream)
        assert await balances(pg_conn) == {"k": 2}
        assert (await ds.get(Account, "k")).balance == 2


async def test_a_redis_error_after_the_l3_write_leaves_no_entry_waiting_for_claim_after(
    settings: dict[str, Any], redis_client: Redis, pg_conn: asyncpg.Connection
) -> None:
    """Redis fails once while the flusher acknowledges a batch L3 already has: the entries
    stay pending for this instance, which reads them again at once (they used to wait
    ``write_behind_claim_after`` for XAUTOCLAIM)."""
    async with store(settings, write_behind_claim_after=NEVER) as ds:
        journal = ds._core.journal
        assert journal is not None
        client = journal.tier.client
        real = client.xack
        failed: list[str] = []

        async def xack_failing_once(*args: Any) -> Any:
            if not failed:
                failed.append("xack")
                raise ConnectionError("Redis went away mid-batch")
            return await real(*args)

        client.xack = xack_failing_once  # type: ignore[method-assign]
        await ds.set(Account, Account(id="k", balance=7))
        await ds.flush_dirty(WAIT)
        assert failed == ["xack"]
        assert await balances(pg_conn) == {"k": 7}
        assert await redis_client.xlen(journal_key(settings, "accounts")) == 0


async def test_a_set_delivered_again_after_its_delete_does_not_bring_the_row_back(
    settings: dict[str, Any], redis_client: Redis, pg_conn: asyncpg.Connection
) -> None:
    stream = journal_key(settings, "accounts")
    async with store(settings) as ds:
        await ds.set(Account, Account(id="k", balance=1))
        [(_, first)] = await redis_client.xrange(stream)
        await ds.flush_dirty(WAIT)
        await ds.delete(Account, "k")
        await ds.flush_dirty(WAIT)
        assert await balances(pg_conn) == {}
        await redis_client.xadd(stream, first)  # the set again, after its delete
        await _drained_by_a_peer(settings, redis_client, stream)
        assert await balances(pg_conn) == {}


async def _drained_by_a_peer(settings: dict[str, Any], redis_client: Redis, stream: str) -> None:
    async def empty() -> bool:
        return int(await redis_client.xlen(stream)) == 0

    async with store(settings, migrate=False, write_behind_flush_interval=0.05):
        await eventually(empty, timeout=WAIT)


async def test_100_sets_of_one_key_keep_one_journal_entry(
    settings: dict[str, Any], redis_client: Redis, pg_conn: asyncpg.Connection
) -> None:
    async with store(settings) as ds:
        for n in range(100):
            await ds.set(Account, Account(id="hot", balance=n))
        assert await redis_client.xlen(journal_key(settings, "accounts")) == 1
        await ds.flush_dirty(WAIT)
    assert await balances(pg_conn) == {"hot": 99}


# -- 2. recovery -----------------------------------------------------------------------------


class Crashing(Peer):
    """A peer process that can be killed with SIGKILL (no close, no flush)."""

    async def kill9(self) -> None:
        proc = self._proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()


def peer_settings(settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"write_behind_flush_interval": 0.05, **settings, **extra}


WB_ITEMS = "integration.procs.wb_models"


async def _write_then_crash(
    settings: dict[str, Any], pg: asyncpg.Connection, n: int, **extra: Any
) -> int:
    """A child writes n keys twice (level 1, then level 2), each batch acknowledged, and is
    killed with -9 right after the last acknowledgement. Returns how many of the newest
    values PostgreSQL held at the kill (the rest are only in the journal)."""
    async with Crashing(peer_settings(settings, **extra), WB_ITEMS) as child:
        for level in (1, 2):
            for start in range(0, n, 500):
                values = [
                    {"id": f"i{k:05}", "level": level} for k in range(start, min(n, start + 500))
                ]
                await child.call("set_many", values=values)
        await child.kill9()
    newest = sum(1 for level in (await _items(pg)).values() if level == 2)
    print(
        f"\nkill -9 after {2 * n} acknowledged writes: {newest} of {n} newest values in "
        "PostgreSQL at the kill"
    )
    assert newest < n, "the child flushed everything before the kill: nothing to recover"
    return newest


async def _items(pg: asyncpg.Connection) -> dict[str, int]:
    return {r["id"]: r["level"] for r in await pg.fetch("SELECT id, level FROM wb_items")}


async def _prepare_items(settings: dict[str, Any]) -> None:
    from integration.procs.wb_models import ITEMS

    async with store(settings, ITEMS):
        pass


async def test_writes_a_killed_instance_acknowledged_reach_postgresql_through_a_peer(
    settings: dict[str, Any], pg_conn: asyncpg.Connection
) -> None:
    from integration.procs.wb_models import ITEMS, Item

    await _prepare_items(settings)
    await _write_then_crash(settings, pg_conn, KILL_WRITES)
    async with store(
        settings,
        ITEMS,
        migrate=False,
        write_behind_flush_interval=0.05,
        write_behind_claim_after=0.5,
    ) as peer:

        async def all_newest() -> bool:
            return await _items(pg_conn) == {f"i{k:05}": 2 for k in range(KILL_WRITES)}

        await eventually(all_newest, timeout=WAIT)
        assert (await peer.get(Item, "i00007")).level == 2
        assert await peer.dead_letters() == []


async def test_writes_a_killed_instance_acknowledged_reach_postgresql_when_it_restarts(
    settings: dict[str, Any], pg_conn: asyncpg.Connection
) -> None:
    await _prepare_items(settings)
    same = {"instance_id": "restarting-one", "write_behind_claim_after": NEVER}
    await _write_then_crash(settings, pg_conn, KILL_WRITES, **same)
    async with Peer(peer_settings(settings, **same), WB_ITEMS) as restarted:

        async def all_newest() -> bool:
            return await _items(pg_conn) == {f"i{k:05}": 2 for k in range(KILL_WRITES)}

        await eventually(all_newest, timeout=WAIT)
        assert (await restarted.get("i00007"))["level"] == 2


async def test_redis_with_aof_always_keeps_every_acknowledged_write_across_a_crash_of_both(
    settings: dict[str, Any], pg_conn: asyncpg.Connection
) -> None:
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    async with PrivateRedis(extra_args=aof) as redis:
        private = {**settings, "redis_url": redis.url}
        await _prepare_items(private)
        await _write_then_crash(
            private,
            pg_conn,
            500,
            write_behind_flush_interval=NEVER,
            write_behind_flush_threshold=100_000,
        )
        await redis.stop()  # SIGKILL: no shutdown save
        await redis.start()
        assert await _items(pg_conn) == {}  # nothing was flushed before the crash
        async with Peer(peer_settings(private, write_behind_claim_after=0.5), WB_ITEMS):

            async def all_newest() -> bool:
                return await _items(pg_conn) == {f"i{k:05}": 2 for k in range(500)}

            await eventually(all_newest, timeout=WAIT)


# -- 3. outages ------------------------------------------------------------------------------


async def test_a_postgresql_outage_under_load_loses_nothing_and_a_peer_reads_the_newest(
    settings: dict[str, Any], pg_url: str, pg_conn: asyncpg.Connection
) -> None:
    async with FaultProxy.for_url(pg_url) as proxy:
        cut = {
            **settings,
            "database_url": proxy.url_for(pg_url),
            "write_behind_flush_interval": 0.05,
            "write_behind_retry_base": 0.05,
            "write_behind_retry_max": 0.5,
        }
        async with store(cut) as writer:
            await writer.set(Account, Account(id="a0", balance=-1))
            await writer.flush_dirty(WAIT)  # an older row of a0 in PostgreSQL
            await proxy.cut()
            loop_time = asyncio.get_running_loop().time
            start = loop_time()
            errors_before = writer.stats().errors
            expected: dict[str, int] = {}
            n = 0
            while (
                n < 200
                or writer.stats().errors == errors_before
                or (loop_time() - start < OUTAGE_SECONDS)
            ):
                key = f"a{n % 50}"
                await writer.set(Account, Account(id=key, balance=n))
                expected[key] = n
                if n % 50 == 49 and (n < 200 or n % 1000 == 999):
                    assert await fresh_balances(settings, expected) == expected
                n += 1
            assert await fresh_balances(settings, expected) == expected
            assert writer.stats().dirty_count <= 50  # bounded: one entry per dirty key
            await proxy.restore()
            await writer.flush_dirty(WAIT)
            assert await balances(pg_conn) == expected
            assert await writer.dead_letters() == []
            assert writer.stats().dead_letters == 0


async def fresh_balances(settings: dict[str, Any], ids: Iterable[str]) -> dict[str, int]:
    """What a newly started instance reads (from Redis while PostgreSQL is away)."""
    async with store(settings, migrate=False) as fresh:
        found = await fresh.get_many(Account, list(ids))
    return {i: v.balance for i, v in found.items()}


async def test_a_full_journal_makes_writers_wait_then_fail_with_a_typed_error(
    settings: dict[str, Any], pg_url: str, pg_conn: asyncpg.Connection
) -> None:
    async with FaultProxy.for_url(pg_url) as proxy:
        cut = {
            **settings,
            "database_url": proxy.url_for(pg_url),
            "write_behind_flush_interval": 0.05,
            "write_behind_max_pending": 5,
            "write_behind_wait_timeout": 0.3,
        }
        async with store(cut) as ds:
            await proxy.cut()
            await ds.set_many(Account, [Account(id=f"a{n}", balance=n) for n in range(5)])
            await ds.set(Account, Account(id="a1", balance=11))  # a journaled key: room
            with pytest.raises(errors.WriteBehindError, match="write_behind_max_pending"):
                await ds.set(Account, Account(id="new", balance=99))
            await proxy.restore()
            await ds.flush_dirty(WAIT)
    assert await balances(pg_conn) == {"a0": 0, "a1": 11, "a2": 2, "a3": 3, "a4": 4}


# -- 4. dead letters -------------------------------------------------------------------------


async def test_a_refused_row_is_a_dead_letter_every_instance_sees_and_retry_applies_it(
    settings: dict[str, Any], pg_conn: asyncpg.Connection
) -> None:
    async with store(settings, MEMBERS) as a, store(settings, MEMBERS, migrate=False) as b:
        await a.set(Member, Member(id="first", handle="taken"))
        await a.flush_dirty(WAIT)
        await a.set(Member, Member(id="second", handle="taken"))  # unique violation
        await a.set(Member, Member(id="third", handle="free"))
        await a.flush_dirty(WAIT)

        letters = await b.dead_letters()
        assert [(d.write.id, d.write.row) for d in letters] == [
            ("second", Member(id="second", handle="taken"))
        ]
        assert isinstance(letters[0].error, errors.IntegrityError)
        with pytest.raises(errors.NotFoundError):  # the caches show what PostgreSQL holds
            await b.get(Member, "second")

        await pg_conn.execute("UPDATE members SET handle = 'renamed' WHERE id = 'first'")
        assert await b.retry_dead_letters(Member) == 1
        await b.flush_dirty(WAIT)
        assert await a.dead_letters() == []
        rows = await pg_conn.fetch("SELECT id, handle FROM members ORDER BY id")
        assert [tuple(r.values()) for r in rows] == [
            ("first", "renamed"),
            ("second", "taken"),
            ("third", "free"),
        ]
        assert (await a.get(Member, "second")).handle == "taken"


async def test_drop_dead_letters_forgets_them_on_every_instance(
    settings: dict[str, Any], pg_conn: asyncpg.Connection
) -> None:
    async with store(settings, MEMBERS) as a, store(settings, MEMBERS, migrate=False) as b:
        await a.set(Member, Member(id="first", handle="taken"))
        await a.flush_dirty(WAIT)
        await a.set(Member, Member(id="second", handle="taken"))
        await a.flush_dirty(WAIT)
        assert await b.drop_dead_letters(Member, ["second"]) == 1
        assert await a.dead_letters() == []


async def test_strata_dead_letters_lists_and_retries_what_postgresql_refused(
    settings: dict[str, Any], pg_conn: asyncpg.Connection, pg_schema: str
) -> None:
    from integration.procs.dead_letter_app import HANDLES, Handle
    from integration.test_cli import strata

    clean = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    env = {
        **clean,
        "STRATA_DATABASE_URL": settings["database_url"],
        "STRATA_DATABASE_SCHEMA": pg_schema,
        "STRATA_REDIS_URL": settings["redis_url"],
        "STRATA_KEY_PREFIX": settings["key_prefix"],
    }
    app = "integration.procs.dead_letter_app:ds"
    async with store(settings, HANDLES) as ds:
        await ds.set(Handle, Handle(id="first", handle="taken"))
        await ds.flush_dirty(WAIT)
        await ds.set(Handle, Handle(id="second", handle="taken"))
        await ds.flush_dirty(WAIT)

        listed = await strata("dead-letters", "list", "--app", app, "--json", env=env)
        assert listed.code == 0, listed.err
        assert [(d["schema"], d["id"]) for d in json.loads(listed.out)] == [("handles", "second")]

        await pg_conn.execute("DELETE FROM handles WHERE id = 'first'")  # the cause, fixed
        retried = await strata("dead-letters", "retry", "--app", app, "--id", "second", env=env)
        assert retried.code == 0, retried.err
        assert "retried 1" in retried.out
        assert await ds.dead_letters() == []
        rows = await pg_conn.fetch("SELECT id, handle FROM handles")
        assert [tuple(r.values()) for r in rows] == [("second", "taken")]

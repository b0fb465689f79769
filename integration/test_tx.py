"""Transactions: all or nothing across PostgreSQL, Redis and every instance's L1."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import textwrap
import uuid
from typing import Any

import pytest
from pydantic import BaseModel

from integration.procs import eventually
from integration.stacks import Env, l2_key
from strata import DataStore, Field, Q, Schema, SchemaHooks, errors


class Account(BaseModel):
    id: str = Field(primary_key=True)
    owner: str = ""
    balance: int = 0


class Session(BaseModel):
    id: str = Field(primary_key=True)
    user: str = ""


SQLITE_DIRTY_READ = pytest.mark.xfail(
    strict=True,
    reason="SQLite: a non-tx read from the task that owns an open tx runs inside it "
    "(SqliteTier._run keys on the owning task, not on tx=), so it sees uncommitted rows",
)


class InsufficientFunds(Exception):
    pass


def schemas(**kw: Any) -> list[Schema]:
    return [Schema(name="accounts", model=Account, **kw), Schema(name="sessions", model=Session)]


@pytest.fixture
async def pair(l3_env: Env) -> tuple[DataStore, DataStore]:
    """Two instances of the stack on one L3 (and one Redis, where the stack has it)."""
    a = await l3_env.make(*schemas(), pool_max_size=20)
    b = await l3_env.make(
        *schemas(), migrate=False, pool_max_size=20, instance_id="b-" + uuid.uuid4().hex[:6]
    )
    return a, b


async def balance_in_l3(env: Env, id: str) -> int | None:
    value: int | None = await env.raw_value("SELECT balance FROM accounts WHERE id = $1", id)
    return value


async def received_after_sentinel(sender: DataStore, receiver: DataStore) -> int:
    """Publish a sentinel from ``sender`` and wait until ``receiver`` has it: every message
    ``sender`` published before has arrived too (pub/sub keeps one publisher's order).
    Returns the receiver's invalidation count, the sentinel included."""
    before = receiver.stats().invalidations_received
    await sender.invalidate(Session, "sentinel")
    await eventually(lambda: receiver.stats().invalidations_received > before)
    return receiver.stats().invalidations_received


async def transfer(ds: DataStore, src: str, dst: str, amount: int) -> None:
    async with ds.tx() as tx:
        accounts = await tx.get_many(Account, [src, dst], for_update=True)
        a, b = accounts[src], accounts[dst]
        if a.balance < amount:
            raise InsufficientFunds(src)
        await tx.set(Account, a.model_copy(update={"balance": a.balance - amount}))
        await tx.set(Account, b.model_copy(update={"balance": b.balance + amount}))


async def test_commit_updates_every_tier(pair: tuple[DataStore, DataStore], l3_env: Env) -> None:
    a, b = pair
    await a.set_many(Account, [Account(id="x", balance=10), Account(id="y", balance=0)])
    await a.flush_dirty()  # write-behind: the rows are in L3 before the transaction
    assert (await b.get(Account, "x")).balance == 10  # B's L1 holds the old value
    await transfer(a, "x", "y", 4)
    assert await balance_in_l3(l3_env, "x") == 6
    assert (await a.get(Account, "x")).balance == 6
    if l3_env.stack.bus:  # without Redis, B learns only when its L1 entry expires
        await eventually(lambda: _balance_is(b, "x", 6))
        assert (await b.get(Account, "y")).balance == 4


async def _balance_is(ds: DataStore, id: str, expected: int) -> bool:
    return (await ds.get(Account, id)).balance == expected


async def test_rollback_on_exception_leaves_no_trace(
    pair: tuple[DataStore, DataStore], l3_env: Env, redis_client: Any
) -> None:
    a, b = pair
    await a.set_many(Account, [Account(id="x", balance=10), Account(id="y", balance=0)])
    await a.flush_dirty()
    await b.get(Account, "x")
    key = l2_key(a, "accounts", "x")
    redis_before = await redis_client.get(key)
    if l3_env.stack.bus:
        received_before = await received_after_sentinel(a, b)
    boom = RuntimeError("user code failed")
    with pytest.raises(RuntimeError) as info:
        async with a.tx() as tx:
            await tx.set(Account, Account(id="x", balance=999))
            await tx.set(Session, Session(id="s", user="u"))
            await tx.delete(Account, "y")
            raise boom
    assert info.value is boom  # the caller's exception, unchanged
    assert await balance_in_l3(l3_env, "x") == 10
    assert await balance_in_l3(l3_env, "y") == 0
    assert await l3_env.raw_value("SELECT count(*) FROM sessions") == 0
    assert await redis_client.get(key) == redis_before
    assert (await a.get(Account, "x")).balance == 10
    assert (await b.get(Account, "x")).balance == 10
    assert not await a.exists(Session, "s")
    if l3_env.stack.bus:
        # the second sentinel is the one message since the first: the rollback sent none
        assert await received_after_sentinel(a, b) == received_before + 1


async def test_insufficient_funds_aborts_the_transfer(
    pair: tuple[DataStore, DataStore], l3_env: Env
) -> None:
    a, _ = pair
    await a.set_many(Account, [Account(id="x", balance=3), Account(id="y", balance=0)])
    await a.flush_dirty()
    with pytest.raises(InsufficientFunds):
        await transfer(a, "x", "y", 5)
    assert await balance_in_l3(l3_env, "x") == 3
    assert await balance_in_l3(l3_env, "y") == 0


async def test_reads_inside_see_own_writes(
    pair: tuple[DataStore, DataStore], l3_env: Env, request: pytest.FixtureRequest
) -> None:
    if l3_env.stack.l3 == "sqlite":
        request.applymarker(SQLITE_DIRTY_READ)
    a, _ = pair
    await a.set(Account, Account(id="x", owner="ann", balance=1))
    await a.flush_dirty()
    async with a.tx() as tx:
        await tx.set(Account, Account(id="x", owner="ann", balance=2))
        await tx.set(Account, Account(id="z", owner="ann", balance=7))
        assert (await tx.get(Account, "x")).balance == 2
        found = await tx.search(Account, Q().filter(owner="ann").order_by("id"))
        assert [(r.id, r.balance) for r in found] == [("x", 2), ("z", 7)]
        await tx.delete(Account, "z")
        with pytest.raises(errors.NotFoundError):
            await tx.get(Account, "z")
        # outside the transaction nothing is visible yet
        assert (await a.get(Account, "x", force_l3=True)).balance == 1


@pytest.mark.needs(bus=True)
async def test_commit_is_visible_to_another_process(
    pair: tuple[DataStore, DataStore], l3_env: Env
) -> None:
    a, _ = pair
    config = a.config
    await a.set(Account, Account(id="x", balance=1))
    await a.flush_dirty()
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from strata import Config, DataStore, Schema
        from integration.test_tx import Account
        async def main():
            cfg = Config(database_url={config.database_url!r},
                         database_schema={config.database_schema!r},
                         redis_url={config.redis_url!r}, key_prefix={config.key_prefix!r},
                         invalidation_channel={config.invalidation_channel!r})
            ds = DataStore(cfg)
            ds.register(Schema(name="accounts", model=Account))
            async with ds:
                print((await ds.get(Account, "x")).balance, flush=True)  # warm L1
                sys.stdin.readline()
                for _ in range(250):
                    level = (await ds.get(Account, "x")).balance
                    if level == 2:
                        break
                    await asyncio.sleep(0.02)
                print(level, ds.stats().invalidations_received, flush=True)
        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"1"
        async with a.tx() as tx:
            await tx.set(Account, Account(id="x", balance=2))
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        level, received = (await asyncio.wait_for(proc.stdout.readline(), 30)).split()
        assert level == b"2"
        assert int(received) >= 1  # it learnt through the invalidation, not by expiry
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_for_update_keeps_200_concurrent_transfers_consistent(
    pair: tuple[DataStore, DataStore], l3_env: Env
) -> None:
    # On the cluster stack the cached sum used to read more than PostgreSQL held: sharded
    # invalidations waited on an idle shard (see strata/invalidation/shards.py).
    a, b = pair
    ids = [f"acc{i}" for i in range(10)]
    await a.set_many(Account, [Account(id=i, balance=1000) for i in ids])
    await a.flush_dirty()
    rng = random.Random(7)
    moves = [tuple(rng.sample(ids, 2)) for _ in range(200)]

    async def one(k: int, src: str, dst: str) -> None:
        ds = a if k % 2 else b
        with contextlib.suppress(InsufficientFunds):
            await transfer(ds, src, dst, rng.randint(1, 300))

    await asyncio.gather(*(one(k, s, d) for k, (s, d) in enumerate(moves)))
    assert await l3_env.raw_value("SELECT sum(balance) FROM accounts") == 10_000
    assert await l3_env.raw_value("SELECT min(balance) FROM accounts") >= 0
    if l3_env.stack.bus:  # without Redis, A's L1 keeps its own writes that B overwrote
        cached = await a.get_many(Account, ids)
        assert sum(acc.balance for acc in cached.values()) == 10_000


async def test_timeout_rolls_back_and_raises(
    pair: tuple[DataStore, DataStore], l3_env: Env
) -> None:
    a, _ = pair
    await a.set(Account, Account(id="x", balance=1))
    await a.flush_dirty()
    with pytest.raises(errors.TxTimeoutError):
        async with a.tx(timeout=0.2) as tx:
            await tx.set(Account, Account(id="x", balance=2))
            await asyncio.Event().wait()  # work that outlives the timeout
    assert await balance_in_l3(l3_env, "x") == 1
    assert (await a.get(Account, "x")).balance == 1


@pytest.mark.needs(pg=True)
async def test_serialization_failure_is_typed_and_retryable(
    pair: tuple[DataStore, DataStore], l3_env: Env
) -> None:
    a, b = pair
    await a.set(Account, Account(id="x", balance=0))
    await a.flush_dirty()
    first_read = asyncio.Event()
    second_read = asyncio.Event()

    async def increment(ds: DataStore, mine: asyncio.Event, other: asyncio.Event) -> None:
        async with ds.tx(isolation="serializable") as tx:
            acc = await tx.get(Account, "x")
            mine.set()
            await other.wait()
            await tx.set(Account, acc.model_copy(update={"balance": acc.balance + 1}))

    results = await asyncio.gather(
        increment(a, first_read, second_read),
        increment(b, second_read, first_read),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1
    assert isinstance(failures[0], errors.SerializationError)
    assert isinstance(failures[0], errors.TxFailedError)
    assert await balance_in_l3(l3_env, "x") == 1

    attempts = 0

    async def bump(tx: Any) -> int:
        nonlocal attempts
        attempts += 1
        acc = await tx.get(Account, "x")
        if attempts == 1:  # a concurrent committed change makes this attempt fail
            await b.set(Account, acc.model_copy(update={"balance": acc.balance + 10}))
            await b.flush_dirty()
        await tx.set(Account, acc.model_copy(update={"balance": acc.balance + 1}))
        return attempts

    assert await a.retry_tx(bump, isolation="serializable", attempts=3) == 2
    assert await balance_in_l3(l3_env, "x") == 12


async def test_savepoint_rollback_keeps_the_outer_work(
    pair: tuple[DataStore, DataStore], l3_env: Env
) -> None:
    a, _ = pair
    async with a.tx() as tx:
        await tx.set(Account, Account(id="outer", balance=1))
        with pytest.raises(ValueError, match="inner"):
            async with a.tx() as inner:
                await inner.set(Account, Account(id="inner", balance=2))
                raise ValueError("inner")
        async with a.tx() as kept:
            await kept.set(Account, Account(id="kept", balance=3))
    rows = await l3_env.raw_query("SELECT id, balance FROM accounts ORDER BY id")
    assert [(r["id"], r["balance"]) for r in rows] == [("kept", 3), ("outer", 1)]
    assert (await a.get(Account, "kept")).balance == 3
    assert not await a.exists(Account, "inner")


@pytest.mark.needs(pg=True)  # a constraint checked only at COMMIT
async def test_commit_failure_raises_tx_failed_and_leaves_caches_untouched(
    pair: tuple[DataStore, DataStore], l3_env: Env, redis_client: Any
) -> None:
    a, _ = pair
    await l3_env.raw_query(
        "ALTER TABLE accounts ADD CONSTRAINT owner_once UNIQUE (owner) "
        "DEFERRABLE INITIALLY DEFERRED"
    )
    with pytest.raises(errors.TxFailedError) as info:
        async with a.tx() as tx:
            await tx.set(Account, Account(id="p", owner="same"))
            await tx.set(Account, Account(id="q", owner="same"))  # checked only at COMMIT
    assert info.value.__cause__ is not None
    assert await l3_env.raw_value("SELECT count(*) FROM accounts") == 0
    key = l2_key(a, "accounts", "p")
    assert await redis_client.get(key) is None
    assert not await a.exists(Account, "p")


async def test_before_set_hook_that_raises_aborts_the_whole_transaction(l3_env: Env) -> None:
    def no_negative(value: Account) -> None:
        if value.balance < 0:
            raise ValueError("negative balance")

    ds = await l3_env.make(
        Schema(name="accounts", model=Account, hooks=SchemaHooks(before_set=no_negative))
    )
    with pytest.raises(ValueError, match="negative"):
        async with ds.tx() as tx:
            await tx.set(Account, Account(id="ok", balance=5))
            await tx.set(Account, Account(id="bad", balance=-1))
    assert await l3_env.raw_value("SELECT count(*) FROM accounts") == 0


async def test_write_behind_schema_is_written_synchronously_and_supersedes_the_queue(
    wb_env: Env,
) -> None:
    ds = await wb_env.make(Schema(name="accounts", model=Account), write_behind_flush_interval=60)
    await ds.set(Account, Account(id="x", balance=1))  # queued, not in L3
    assert await balance_in_l3(wb_env, "x") is None
    async with ds.tx() as tx:
        await tx.set(Account, Account(id="x", balance=2))
    assert await balance_in_l3(wb_env, "x") == 2  # in L3 at commit, no flush needed
    assert (await ds.get(Account, "x")).balance == 2
    await ds.flush_dirty()
    assert await balance_in_l3(wb_env, "x") == 2  # the queued balance=1 never lands


async def test_a_tx_used_after_its_block_raises(pair: tuple[DataStore, DataStore]) -> None:
    a, _ = pair
    async with a.tx() as tx:
        await tx.set(Account, Account(id="x"))
    with pytest.raises(errors.TxClosedError):
        await tx.get(Account, "x")
    with pytest.raises(errors.TxClosedError):
        await tx.set(Account, Account(id="y"))


async def test_bad_isolation_is_a_config_error(pair: tuple[DataStore, DataStore]) -> None:
    a, _ = pair
    with pytest.raises(errors.ConfigError, match="isolation"):
        async with a.tx(isolation="chaos"):
            pass

"""Transactions on the embedded SQLite tier: the same API, one writer at a time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import BaseModel

from strata import Config, DataStore, Field, Q, Schema, errors


class Account(BaseModel):
    id: str = Field(primary_key=True)
    balance: int = 0


@pytest.fixture
async def ds(tmp_path: Path):
    store = DataStore(Config(database_url=f"sqlite:///{tmp_path / 'tx.db'}"))
    store.register(Schema(name="accounts", model=Account))
    async with store:
        await store.migrate()
        yield store


async def test_commit_writes_l3_and_cache(ds: DataStore) -> None:
    async with ds.tx() as tx:
        await tx.set(Account, Account(id="a", balance=5))
    assert (await ds.get(Account, "a")).balance == 5
    assert (await ds.get(Account, "a", force_l3=True)).balance == 5


async def test_exception_rolls_back_and_is_reraised_unchanged(ds: DataStore) -> None:
    await ds.set(Account, Account(id="a", balance=1))
    err = KeyError("mine")
    with pytest.raises(KeyError) as info:
        async with ds.tx() as tx:
            await tx.set(Account, Account(id="a", balance=2))
            await tx.delete(Account, "a")
            raise err
    assert info.value is err
    assert (await ds.get(Account, "a", force_l3=True)).balance == 1
    assert (await ds.get(Account, "a")).balance == 1


async def test_reads_inside_see_own_writes(ds: DataStore) -> None:
    async with ds.tx() as tx:
        await tx.set(Account, Account(id="a", balance=3))
        assert (await tx.get(Account, "a", for_update=True)).balance == 3
        assert [a.id for a in await tx.search(Account, Q().filter(balance__gt=1))] == ["a"]


async def test_savepoint_rollback_keeps_outer_work(ds: DataStore) -> None:
    async with ds.tx() as tx:
        await tx.set(Account, Account(id="outer"))
        with pytest.raises(ValueError):
            async with ds.tx() as inner:
                await inner.set(Account, Account(id="inner"))
                raise ValueError
    assert await ds.exists(Account, "outer")
    assert not await ds.exists(Account, "inner")


async def test_other_writers_wait_for_the_transaction(ds: DataStore) -> None:
    async with ds.tx() as tx:
        await tx.set(Account, Account(id="a", balance=1))
        other = asyncio.ensure_future(ds.set(Account, Account(id="a", balance=2)))
        # Two round trips through the SQLite thread: the other set has run up to its L3
        # write by the first, and a write that did not wait would have finished by the
        # second (the thread runs calls in order).
        for _ in range(2):
            await tx.get(Account, "a")
        assert not other.done()  # one writer at a time
    await other
    assert (await ds.get(Account, "a", force_l3=True)).balance == 2


async def test_timeout_rolls_back(ds: DataStore) -> None:
    with pytest.raises(errors.TxTimeoutError):
        async with ds.tx(timeout=0.1) as tx:
            await tx.set(Account, Account(id="a"))
            await asyncio.Event().wait()  # work that outlives the timeout
    assert not await ds.exists(Account, "a")
    async with ds.tx() as tx:  # the connection is usable again
        await tx.set(Account, Account(id="b"))
    assert await ds.exists(Account, "b")


async def test_retry_tx_returns_the_functions_result(ds: DataStore) -> None:
    async def work(tx: object) -> str:
        await tx.set(Account, Account(id="r", balance=9))  # type: ignore[attr-defined]
        return "done"

    assert await ds.retry_tx(work) == "done"
    assert (await ds.get(Account, "r")).balance == 9


async def test_closed_tx_refuses_use(ds: DataStore) -> None:
    async with ds.tx() as tx:
        pass
    with pytest.raises(errors.TxClosedError):
        await tx.get(Account, "a")

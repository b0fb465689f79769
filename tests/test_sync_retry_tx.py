"""strata.sync.DataStore.retry_tx: a blocking function run in a transaction, again after a
retryable conflict (``SerializationError``), like the async ``retry_tx``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from strata import Config, Field, Schema, errors
from strata.sync import DataStore, SyncTx


class Account(BaseModel):
    id: str = Field(primary_key=True)
    balance: int = 0


def store(db: Path, **config: Any) -> DataStore:
    ds = DataStore(Config(database_url=f"sqlite:///{db}", **config))
    ds.register(Schema(name="accounts", model=Account, l1=None))
    return ds


@pytest.fixture
def ds(tmp_path: Path) -> Iterator[DataStore]:
    with store(tmp_path / "r.db") as s:
        s.migrate()
        yield s


def test_retry_tx_returns_what_the_function_returns(ds: DataStore) -> None:
    def work(tx: SyncTx) -> str:
        tx.set(Account, Account(id="a", balance=1))
        return "done"

    assert ds.retry_tx(work) == "done"
    assert ds.get(Account, "a").balance == 1


def test_a_failed_attempt_is_rolled_back_and_the_next_one_commits(ds: DataStore) -> None:
    ds.set(Account, Account(id="a", balance=10))
    calls = 0

    def move(tx: SyncTx) -> int:
        nonlocal calls
        calls += 1
        acc = tx.get(Account, "a")
        tx.set(Account, acc.model_copy(update={"balance": acc.balance - 3}))
        if calls == 1:
            raise errors.SerializationError("conflict (retry)")
        return calls

    assert ds.retry_tx(move, attempts=3, backoff=0) == 2
    assert ds.get(Account, "a", force_l3=True).balance == 7


def test_the_last_conflict_is_raised_when_attempts_run_out(ds: DataStore) -> None:
    calls = 0

    def always(tx: SyncTx) -> None:
        nonlocal calls
        calls += 1
        tx.set(Account, Account(id="a", balance=calls))
        raise errors.SerializationError(f"conflict {calls}")

    with pytest.raises(errors.SerializationError, match="conflict 2"):
        ds.retry_tx(always, attempts=2, backoff=0)
    assert calls == 2
    assert not ds.exists(Account, "a")


def test_other_errors_are_not_retried(ds: DataStore) -> None:
    calls = 0

    def broken(tx: SyncTx) -> None:
        nonlocal calls
        calls += 1
        tx.get(Account, "nobody")

    with pytest.raises(errors.NotFoundError):
        ds.retry_tx(broken, attempts=5, backoff=0)
    assert calls == 1


def test_an_async_function_is_refused_with_a_typed_error(ds: DataStore) -> None:
    async def not_blocking(tx: Any) -> None:
        return None

    with pytest.raises(errors.InvalidValueError, match="blocking function"):
        ds.retry_tx(not_blocking)  # type: ignore[arg-type]


@pytest.mark.parametrize("attempts", [0, -1])
def test_attempts_below_one_are_refused(ds: DataStore, attempts: int) -> None:
    with pytest.raises(errors.InvalidValueError):
        ds.retry_tx(lambda tx: None, attempts=attempts)

"""strata.sync.DataStore: the async API, blocking, for scripts, threads and WSGI views."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import BaseModel

from strata import Config, Field, Q, Schema, WriteMode, errors
from strata.sync import DataStore


class Account(BaseModel):
    id: str = Field(primary_key=True)
    balance: int = 0


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "strata-sync-loop"]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sync.db"


@pytest.fixture
def ds(db: Path) -> Iterator[DataStore]:
    store = DataStore(Config(database_url=f"sqlite:///{db}"))
    store.register(Schema(name="accounts", model=Account))
    with store:
        store.migrate()
        yield store


def test_blocking_calls_round_trip_a_value(ds: DataStore) -> None:
    ds.set(Account, Account(id="a", balance=5))
    got = ds.get(Account, "a")
    assert got == Account(id="a", balance=5)
    assert ds.exists(Account, "a")
    assert ds.count(Account) == 1
    assert [a.id for a in ds.search(Account, Q().filter(balance__gt=1))] == ["a"]


def test_errors_are_the_async_stores_errors(ds: DataStore) -> None:
    with pytest.raises(errors.NotFoundError) as caught:
        ds.get(Account, "nobody")
    assert caught.value.id == "nobody"


def test_use_before_connect_is_a_lifecycle_error(db: Path) -> None:
    store = DataStore(Config(database_url=f"sqlite:///{db}"))
    store.register(Schema(name="accounts", model=Account))
    with pytest.raises(errors.LifecycleError):
        store.get(Account, "a")


def test_many_threads_share_one_store(ds: DataStore) -> None:
    n_threads, per_thread = 16, 25
    start = threading.Barrier(n_threads)

    def worker(t: int) -> list[int]:
        start.wait()
        seen = []
        for i in range(per_thread):
            ds.set(Account, Account(id=f"{t}-{i}", balance=t * 1000 + i))
            seen.append(ds.get(Account, f"{t}-{i}").balance)
        return seen

    with ThreadPoolExecutor(n_threads) as pool:
        results = list(pool.map(worker, range(n_threads)))
    assert results == [[t * 1000 + i for i in range(per_thread)] for t in range(n_threads)]
    assert ds.count(Account) == n_threads * per_thread


def test_a_wsgi_style_view_function_reads_and_writes(ds: DataStore) -> None:
    def deposit_view(account_id: str, amount: int) -> dict[str, int]:  # what a Flask view does
        with ds.tx() as tx:
            try:
                acct = tx.get(Account, account_id, for_update=True)
            except errors.NotFoundError:
                acct = Account(id=account_id)
            tx.set(Account, acct.model_copy(update={"balance": acct.balance + amount}))
        return {"balance": ds.get(Account, account_id).balance}

    with ThreadPoolExecutor(4) as pool:  # a threaded WSGI server
        list(pool.map(lambda _: deposit_view("a", 10), range(20)))
    assert deposit_view("a", 0) == {"balance": 200}


def test_tx_commits_when_the_block_ends(ds: DataStore, db: Path) -> None:
    with ds.tx() as tx:
        tx.set(Account, Account(id="a", balance=1))
        tx.set_many(Account, [Account(id="b"), Account(id="c")])
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT id FROM accounts ORDER BY id").fetchall() == [
            ("a",),
            ("b",),
            ("c",),
        ]


def test_tx_rolls_back_and_raises_the_callers_exception_unchanged(ds: DataStore) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), ds.tx() as tx:
        tx.set(Account, Account(id="a", balance=1))
        raise Boom
    assert not ds.exists(Account, "a")


def test_tx_sees_its_own_writes(ds: DataStore) -> None:
    with ds.tx() as tx:
        tx.set(Account, Account(id="a", balance=3))
        assert tx.get(Account, "a").balance == 3
        assert [a.id for a in tx.search(Account)] == ["a"]


def test_close_leaves_no_thread_behind(db: Path) -> None:
    before = len(loop_threads())
    store = DataStore(Config(database_url=f"sqlite:///{db}"))
    with store:
        assert len(loop_threads()) == before + 1
    assert len(loop_threads()) == before
    store.close()  # idempotent


def test_a_script_that_never_closes_flushes_write_behind_at_exit(tmp_path: Path) -> None:
    db = tmp_path / "exit.db"
    script = textwrap.dedent(
        f"""
        from pydantic import BaseModel
        from strata import Config, Field, Schema, WriteMode
        from strata.sync import DataStore

        class Account(BaseModel):
            id: str = Field(primary_key=True)
            balance: int = 0

        ds = DataStore(Config(database_url={f"sqlite:///{db}"!r}))
        ds.register(Schema(name="accounts", model=Account, write_mode=WriteMode.WRITE_BEHIND))
        ds.connect()
        ds.migrate()
        ds.set(Account, Account(id="a", balance=7))
        print("done")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"
    # Only the register-time warning that an embedded write-behind queue is lost in a crash.
    assert [line for line in done.stderr.splitlines() if "crash loses" not in line] == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT balance FROM accounts").fetchall() == [(7,)]


def test_write_behind_schema_is_flushed_by_flush_dirty(db: Path) -> None:
    store = DataStore(Config(database_url=f"sqlite:///{db}"))
    store.register(Schema(name="accounts", model=Account, write_mode=WriteMode.WRITE_BEHIND))
    with store:
        store.migrate()
        store.set(Account, Account(id="a", balance=2))
        store.flush_dirty()
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT balance FROM accounts").fetchall() == [(2,)]

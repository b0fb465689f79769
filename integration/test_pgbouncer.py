"""PostgreSQL behind a real pgbouncer in transaction mode (a private one, on a free port).

In transaction mode a client's server connection changes between transactions, so a named
prepared statement made in one transaction is missing (or is somebody else's) in the next.
``Config(prepared_statements=False)`` must make the data path and ``migrate()`` work there.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from pydantic import BaseModel

from integration._scaleout import PgBouncer
from strata import Config, DataStore, Field, Q, Schema, errors

REPO = Path(__file__).resolve().parents[1]
TASKS = 50
OPS = 100


class Item(BaseModel):
    id: str = Field(primary_key=True)
    level: int = Field(default=0, index=True)
    name: str = ""


ITEMS = Schema(name="items", model=Item, l1=None)


@pytest.fixture(scope="module")
def bouncer(pg_url: str) -> Iterator[tuple[PgBouncer, str]]:
    parts = urlsplit(pg_url)
    with PgBouncer(parts.hostname or "127.0.0.1", parts.port or 5432) as server:
        yield server, server.url(parts.path.lstrip("/") or "test")


def _store(url: str, pg_schema: str, *, prepared: bool) -> DataStore:
    ds = DataStore(
        Config(
            database_url=url,
            database_schema=pg_schema,
            prepared_statements=prepared,
            pool_max_size=10,
        )
    )
    ds.register(ITEMS)
    return ds


async def _load(ds: DataStore) -> list[BaseException]:
    """TASKS tasks x OPS operations of set / get / search / tx; the exceptions raised."""
    failures: list[BaseException] = []

    async def worker(w: int) -> None:
        for n in range(OPS):
            key = f"w{w}-{(n // 4) % 10}"  # set first, then get, search, tx
            try:
                match n % 4:
                    case 0:
                        await ds.set(Item, Item(id=key, level=n, name=f"n{n}"))
                    case 1:
                        await ds.get(Item, key)
                    case 2:
                        await ds.search(Item, Q().where("level > $1", n - 5).limit(5))
                    case _:
                        async with ds.tx() as tx:
                            row = await tx.get(Item, key, for_update=True)
                            await tx.set(Item, row.model_copy(update={"level": row.level + 1}))
            except Exception as exc:
                failures.append(exc)

    await asyncio.gather(*(worker(w) for w in range(TASKS)))
    return failures


async def _migrated(pg_url: str, pg_schema: str) -> DataStore:
    ds = DataStore(Config(database_url=pg_url, database_schema=pg_schema))
    ds.register(ITEMS)
    async with ds:
        await ds.migrate()
    return ds


async def test_concurrent_load_through_pgbouncer_raises_nothing_without_prepared_statements(
    bouncer: tuple[PgBouncer, str], pg_url: str, pg_schema: str
) -> None:
    await _migrated(pg_url, pg_schema)
    ds = _store(bouncer[1], pg_schema, prepared=False)
    async with ds:
        failures = await _load(ds)
    assert failures == []
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetchval(f'SELECT count(*) FROM "{pg_schema}".items')
    finally:
        await conn.close()
    assert rows == TASKS * 10


async def test_the_same_load_with_prepared_statements_fails_through_pgbouncer(
    bouncer: tuple[PgBouncer, str], pg_url: str, pg_schema: str
) -> None:
    """The control: the load above does exercise what transaction mode breaks."""
    await _migrated(pg_url, pg_schema)
    ds = _store(bouncer[1], pg_schema, prepared=True)
    async with ds:
        failures = await _load(ds)
    assert failures
    assert all(isinstance(f, errors.StrataError) for f in failures)


async def test_migrate_through_pgbouncer_creates_the_tables(
    bouncer: tuple[PgBouncer, str], pg_url: str, pg_schema: str
) -> None:
    ds = _store(bouncer[1], pg_schema, prepared=False)
    async with ds:
        await ds.migrate()
        await ds.migrate()  # idempotent through the bouncer too
        await ds.set(Item, Item(id="a", level=3))
    conn = await asyncpg.connect(pg_url)
    try:
        level = await conn.fetchval(f'SELECT level FROM "{pg_schema}".items WHERE id = $1', "a")
    finally:
        await conn.close()
    assert level == 3


_MIGRATE = """
import asyncio, sys
from integration.test_pgbouncer import ITEMS
from strata import Config, DataStore

async def main() -> None:
    ds = DataStore(Config(database_url=sys.argv[1], database_schema=sys.argv[2],
                          prepared_statements=sys.argv[3] == "on"))
    ds.register(ITEMS)
    async with ds:
        await ds.migrate()

try:
    asyncio.run(main())
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
    sys.exit(1)
"""


def _migrate_in_a_new_process(url: str, pg_schema: str, prepared: str) -> tuple[int, str]:
    """A fresh process numbers its statements from 1, as every app instance does."""
    done = subprocess.run(
        [sys.executable, "-c", _MIGRATE, url, pg_schema, prepared],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def one_server_connection(pg_url: str) -> Iterator[str]:
    """A bouncer with one server connection: every client's statements meet there."""
    parts = urlsplit(pg_url)
    with PgBouncer(parts.hostname or "127.0.0.1", parts.port or 5432, pool_size=1) as server:
        yield server.url(parts.path.lstrip("/") or "test")


async def test_migrate_from_two_processes_through_pgbouncer_works_without_prepared_statements(
    one_server_connection: str, pg_schema: str
) -> None:
    for _ in range(2):
        code, output = _migrate_in_a_new_process(one_server_connection, pg_schema, "off")
        assert (code, output) == (0, "")


async def test_migrate_through_pgbouncer_with_prepared_statements_names_the_real_cause(
    one_server_connection: str, pg_schema: str
) -> None:
    """The second process's statement names collide with the first's on the one server
    connection: the error says so, and says what to set, instead of "cannot reach"."""
    first, _ = _migrate_in_a_new_process(one_server_connection, pg_schema, "on")
    second, output = _migrate_in_a_new_process(one_server_connection, pg_schema, "on")
    assert (first, second) == (0, 1)
    assert "cannot reach" not in output
    assert "prepared statement" in output
    assert "prepared_statements=False" in output

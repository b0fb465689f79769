"""Connections for migration runs, the migration lock, and driver-error translation.

PostgreSQL: a SQLAlchemy async engine on asyncpg (``NullPool``: one connection per run, closed
after); the lock is ``pg_advisory_xact_lock`` on a key derived from ``"strata.migrate"`` and
``Config.database_schema``, released by the transaction's end.

SQLite: a sync engine, used from a worker thread only. The driver's own transaction handling
is switched off so that DDL is transactional and every write transaction starts with
``BEGIN IMMEDIATE``, which serialises concurrent migrations the way the advisory lock does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from strata.config import PGBOUNCER_HINT, Config, hide_password
from strata.errors import MigrationError, StrataError, TierUnavailableError

__all__ = [
    "SQLITE_BUSY_TIMEOUT",
    "lock_key",
    "pg_connection",
    "pg_lock",
    "sqlite_connection",
    "translate",
]

SQLITE_BUSY_TIMEOUT = 60.0  # seconds a run waits for another process's migration


def lock_key(db_schema: str | None) -> int:
    """The advisory lock key (signed 64-bit) of migrations in ``db_schema``."""
    digest = hashlib.sha256(f"strata.migrate:{db_schema or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _where(config: Config) -> str:
    if config.dialect == "sqlite":
        return f"SQLite database {config.sqlite_path!r}"
    parts = urlsplit(config.asyncpg_dsn)
    host = parts.hostname or "localhost"
    port = parts.port or 5432
    return f"PostgreSQL at {host}:{port} ({hide_password(config.resolved_database_url)})"


def unavailable(config: Config, exc: BaseException) -> TierUnavailableError:
    detail = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig else exc
    return TierUnavailableError(f"cannot reach {_where(config)}: {detail}", tier="l3")


# SQLSTATEs of a named prepared statement that is missing or already taken: what a pooler
# in transaction mode (pgbouncer) does to prepared statements.
_PREPARED_STATEMENT_STATES = frozenset({"26000", "42P05"})


def server_error(exc: BaseException) -> str | None:
    """The SQLSTATE when ``exc`` (or what it wraps) is an error *answered* by the server
    (so the server was reached), else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        state = getattr(current, "sqlstate", None)
        if isinstance(state, str) and state:
            return state
        current = current.__cause__ or current.__context__
    return None


def _refused(config: Config, exc: BaseException, doing: str) -> MigrationError:
    """A server's refusal, named as such (not as "cannot reach")."""
    detail = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig else exc
    hint = PGBOUNCER_HINT if server_error(exc) in _PREPARED_STATEMENT_STATES else ""
    return MigrationError(f"{doing} failed on {_where(config)}: {detail}{hint}")


def translate(config: Config, exc: BaseException, doing: str) -> StrataError:
    """A driver error as a StrataError: lost connections are TierUnavailableError."""
    if server_error(exc) in _PREPARED_STATEMENT_STATES:
        return _refused(config, exc, doing)
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc.orig, OSError):
            return unavailable(config, exc)
        return MigrationError(f"{doing} failed on {_where(config)}: {exc.orig}")
    if isinstance(exc, OSError | TimeoutError):
        return unavailable(config, exc)
    return MigrationError(f"{doing} failed on {_where(config)}: {exc}")


# -- PostgreSQL -----------------------------------------------------------------------------


# SQLAlchemy's URL parser would pass libpq query options (``?synchronous_commit=off``,
# ``sslmode=...``) to asyncpg.connect() as keyword arguments it does not take. An empty URL and
# the DSN handed to asyncpg itself parse them as the tiers do (unknown options become
# server settings).
_SA_URL = "postgresql+asyncpg://"


@contextlib.asynccontextmanager
async def pg_connection(config: Config) -> AsyncIterator[AsyncConnection]:
    """An async connection for one run; closed (and its engine disposed) on exit."""
    connect_args: dict[str, Any] = {"dsn": config.asyncpg_dsn, "timeout": config.pool_timeout}
    if not config.prepared_statements:
        # pgbouncer in transaction mode: neither SQLAlchemy's statement cache nor asyncpg's
        # (so every statement is unnamed and lives inside one transaction).
        connect_args.update(prepared_statement_cache_size=0, statement_cache_size=0)
    engine = create_async_engine(_SA_URL, poolclass=NullPool, connect_args=connect_args)
    try:
        conn = engine.connect()
        try:
            await conn.start()
        except (sa.exc.DBAPIError, OSError, TimeoutError) as exc:
            if server_error(exc) is not None:  # reached, and it said no
                raise _refused(config, exc, "connect") from exc
            raise unavailable(config, exc) from exc
        try:
            yield conn
        finally:
            await conn.close()
    finally:
        await engine.dispose()


async def pg_lock(conn: AsyncConnection, config: Config) -> None:
    """Take the migration lock for the rest of the current transaction."""
    await conn.execute(
        sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(config.database_schema)}
    )


# -- SQLite -------------------------------------------------------------------------------


def _sqlite_creator(path: str, *, write: bool) -> Any:
    if path.startswith("file:"):  # a shared in-memory database (see Config.sqlite_path)
        target, uri = path, True
    elif not write and path != ":memory:" and not os.path.exists(path):
        target, uri = ":memory:", False  # nothing there yet: compare against an empty database
    elif not write and path != ":memory:":
        target, uri = pathlib.Path(path).absolute().as_uri() + "?mode=ro", True
    else:
        target, uri = path, False

    def create() -> sqlite3.Connection:
        conn = sqlite3.connect(
            target, uri=uri, timeout=SQLITE_BUSY_TIMEOUT, check_same_thread=False
        )
        # Autocommit at the driver level: SQLAlchemy's "begin" below issues BEGIN itself,
        # so DDL joins the transaction instead of committing the one before it.
        conn.isolation_level = None
        return conn

    return create


@contextlib.contextmanager
def sqlite_connection(config: Config, *, write: bool) -> Iterator[sa.Connection]:
    """A sync connection (call from a worker thread). Each ``begin()`` is ``BEGIN
    IMMEDIATE`` for writes, a plain deferred ``BEGIN`` for reads (the file is then opened
    read-only, or not at all when it does not exist)."""
    engine = sa.create_engine(
        "sqlite://", creator=_sqlite_creator(config.sqlite_path, write=write), poolclass=NullPool
    )
    begin = "BEGIN IMMEDIATE" if write else "BEGIN"

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql(begin)

    try:
        try:
            conn = engine.connect()
        except (sa.exc.DBAPIError, OSError) as exc:
            raise unavailable(config, exc) from exc
        with conn:
            yield conn
    finally:
        engine.dispose()

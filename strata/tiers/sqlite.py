"""L3 embedded: SQLite through the standard library, on one worker thread.

Every call hops once to a single dedicated thread that owns the connection, so the event loop
never blocks and a whole write (upsert, commit) costs one hop. A library such as aiosqlite
would hop once per statement. Row versions are one version space with every other path
(DESIGN section 4): a write carries a value of the hybrid clock (``self.clock``, shared with
the router) and stores ``max(client clock, old version + 1)``; write-behind's versioned
upserts keep their own version and only replace an older row. Reads advance the clock past
every version they see.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from strata.clock import DELETED_KEEP_MICROS, HybridClock
from strata.config import Config
from strata.errors import (
    ConfigError,
    TierUnavailableError,
)
from strata.schema import VERSION_COLUMN, CompiledSchema
from strata.tiers.sqlite_statements import (
    DIALECT,
    TO_DB,
    Statements,
    build_statements,
    from_sqlite,
    to_sqlite,
    translate_errors,
)

__all__ = ["SqliteTier", "from_sqlite", "to_sqlite"]

T = TypeVar("T")
Row = dict[str, Any]


class SqliteTransaction:
    """The open SQLite transaction, or a savepoint inside it."""

    def __init__(self, tier: SqliteTier, savepoint: str | None) -> None:
        self.tier = tier
        self._savepoint = savepoint

    async def savepoint(self) -> SqliteTransaction:
        self.tier._savepoints += 1
        name = f"strata_sp_{self.tier._savepoints}"
        with translate_errors("savepoint"):
            await self.tier._run(self.tier.db.execute, f"SAVEPOINT {name}")
        return SqliteTransaction(self.tier, name)

    async def commit(self) -> None:
        sql = "COMMIT" if self._savepoint is None else f"RELEASE {self._savepoint}"
        try:
            with translate_errors("commit"):
                await self.tier._run(self.tier.db.execute, sql)
        except BaseException:
            if self._savepoint is None:
                await self._rollback_quietly()
            raise
        finally:
            if self._savepoint is None:
                self.tier._end()

    async def rollback(self) -> None:
        try:
            if self._savepoint is None:
                await self._rollback_quietly()
            else:
                sp = self._savepoint
                db = self.tier.db

                def work() -> None:  # not executescript: it would COMMIT first
                    db.execute(f"ROLLBACK TO {sp}")
                    db.execute(f"RELEASE {sp}")

                with translate_errors("rollback"):
                    await self.tier._run(work)
        finally:
            if self._savepoint is None:
                self.tier._end()

    async def _rollback_quietly(self) -> None:
        def work() -> None:
            if self.tier.db.in_transaction:
                self.tier.db.execute("ROLLBACK")

        with translate_errors("rollback"):
            await self.tier._run(work)


_ISOLATION_NAMES = frozenset(
    {"read_committed", "read committed", "repeatable_read", "repeatable read", "serializable"}
)


class SqliteTier:
    dialect = "sqlite"

    def __init__(self, config: Config, *, logger: logging.Logger):
        self._path = config.sqlite_path
        self._timeout = config.l3_timeout_seconds
        self._log = logger
        self._stmts: dict[str, Statements] = {}
        self._kept_stmts: dict[tuple[str, frozenset[str]], Statements] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        # One connection, so one transaction at a time: a Tx holds the lock from BEGIN to
        # COMMIT; calls from the task that owns it run inside that transaction.
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self._savepoints = 0
        # The router's clock (router/core.py takes it).
        self.clock = HybridClock()

    @property
    def path(self) -> str:
        return self._path

    def register(self, schema: CompiledSchema) -> None:
        self._stmts[schema.name] = build_statements(schema)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise TierUnavailableError("SQLite tier is not connected", tier="l3")
        if self._owner is not None and self._owner is asyncio.current_task():
            return await self._bounded(fn, *args)
        async with self._lock:
            return await self._bounded(fn, *args)

    async def _bounded(self, fn: Callable[..., T], *args: Any) -> T:
        """One hop to the worker, bounded by ``Config.l3_timeout``: a statement still
        running then (a lock held by another process, a slow disk) is interrupted."""
        assert self._executor is not None
        work = asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args))
        try:
            async with asyncio.timeout(self._timeout):
                return await work
        except TimeoutError as exc:
            if self._db is not None:
                self._db.interrupt()
            raise TierUnavailableError(
                f"SQLite at {self._path} did not answer within l3_timeout ({self._timeout:g}s)",
                tier="l3",
            ) from exc

    async def begin(self, isolation: str | None = None) -> SqliteTransaction:
        """BEGIN IMMEDIATE: SQLite transactions are serializable and one writer at a time, so
        every isolation level PostgreSQL knows is accepted (and met); any other is refused."""
        if isolation is not None and str(isolation).lower() not in _ISOLATION_NAMES:
            raise ConfigError(
                "isolation must be one of read_committed, repeatable_read, serializable; "
                f"got {isolation!r}"
            )
        await self._lock.acquire()
        self._owner = asyncio.current_task()
        try:
            with translate_errors("begin"):
                await self._run(self.db.execute, "BEGIN IMMEDIATE")
        except BaseException:
            self._owner = None
            self._lock.release()
            raise
        return SqliteTransaction(self, None)

    def _end(self) -> None:
        self._owner = None
        self._lock.release()

    async def connect(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="strata-sqlite")
        with translate_errors("connect"):
            self._db = await self._run(self._open)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self._path,
            isolation_level=None,
            check_same_thread=False,
            timeout=self._timeout,  # waiting for another process's write lock
            uri=self._path.startswith("file:"),
        )
        if not self._path.startswith("file:"):
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA case_sensitive_like=ON")  # LIKE as on PostgreSQL; ilike lowers
        db.execute("PRAGMA foreign_keys=ON")
        return db

    async def close(self) -> None:
        if self._executor is None:
            return
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)
        self._executor = None

    def abandon(self) -> None:
        """Close without the event loop (the loop this tier ran on has ended)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        db, self._db = self._db, None
        if db is not None:
            executor.submit(db.close).result()
        executor.shutdown(wait=True)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise TierUnavailableError("SQLite tier is not connected", tier="l3")
        return self._db

    # -- conversions -------------------------------------------------------------------

    @staticmethod
    def _row_out(st: Statements, cols: Sequence[str], values: Sequence[Any]) -> Row:
        row = dict(zip(cols, values, strict=True))
        for name, conv in st.from_db:
            v = row.get(name)
            if v is not None:
                row[name] = conv(v)
        return row

    @staticmethod
    def _args_in(st: Statements, row: Row, version: int) -> list[Any]:
        args = []
        for name, conv in st.to_db:
            v = row[name]
            args.append(conv(v) if conv is not None and v is not None else v)
        args.append(version)
        return args

    # -- operations --------------------------------------------------------------------

    async def get_many(
        self,
        schema: CompiledSchema,
        ids: Sequence[Any],
        *,
        tx: Any = None,
        for_update: bool = False,  # BEGIN IMMEDIATE already holds the write lock
    ) -> list[Row]:
        st = self._stmts[schema.name]
        pk_to = TO_DB.get(schema.pk.kind)
        keys = [pk_to(i) if pk_to else i for i in ids]

        def work() -> list[Row]:
            names = [*st.columns, VERSION_COLUMN]
            out = []
            for key in keys:
                found = self.db.execute(st.get_one, (key,)).fetchone()
                if found is not None:
                    out.append(self._row_out(st, names, found))
            return out

        with translate_errors(f"{schema.name}: get"):
            rows = await self._run(work)
        self._observe(rows)
        return rows

    async def upsert_many(
        self,
        schema: CompiledSchema,
        rows: Sequence[Row],
        *,
        tx: Any = None,
        versioned: bool = False,
        returning: bool = True,  # SQLite returns the rows anyway, at no extra cost
        kept: frozenset[str] = frozenset(),
    ) -> dict[Any, Row]:
        st = self._stmts[schema.name]
        if kept:  # columns an existing row keeps: a statement of their own, built once
            st = self._kept_stmts.get((schema.name, kept)) or self._kept_stmts.setdefault(
                (schema.name, kept), build_statements(schema, kept)
            )
        sql = st.upsert_if_newer if versioned else st.upsert
        if versioned:
            versions = [row[VERSION_COLUMN] for row in rows]
        else:
            now = self.clock.now
            versions = [row.get(VERSION_COLUMN) or now() for row in rows]

        def work() -> dict[Any, Row]:
            db = self.db
            if tx is None:
                db.execute("BEGIN IMMEDIATE")
            try:
                out: dict[Any, Row] = {}
                for row, version in zip(rows, versions, strict=True):
                    deleted = self._deleted_version(st, schema, row)
                    if versioned and deleted is not None and deleted >= version:
                        continue  # older than the id's newest delete: not inserted again
                    if not versioned and deleted is not None:  # above the newest delete
                        version = max(version, deleted + 1)
                    found = db.execute(sql, self._args_in(st, row, version)).fetchone()
                    if found is not None:
                        ret = self._row_out(st, st.returning, found)
                        out[ret[schema.pk.name]] = ret
                if tx is None:
                    db.execute("COMMIT")
                return out
            except BaseException:
                if tx is None and db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        with translate_errors(f"{schema.name}: set"):
            out = await self._run(work)
        self._observe(out.values())
        return out

    def _deleted_version(self, st: Statements, schema: CompiledSchema, row: Row) -> int | None:
        """The newest delete version of the row's id: on the worker thread, inside the
        write's transaction (one writer at a time: no delete can slip in between)."""
        pk_to = TO_DB.get(schema.pk.kind)
        key = row[schema.pk.name]
        found = self.db.execute(st.deleted_get, (pk_to(key) if pk_to else key,)).fetchone()
        return None if found is None else int(found[0])

    def _deleted(self, st: Statements, keys: Sequence[Any], version: int) -> None:
        """Record ``version`` as the deleted version of ``keys``, sweeping expired entries
        (twice as many as added) first; on the worker thread, inside the transaction."""
        db = self.db
        db.execute(st.deleted_sweep, (version - DELETED_KEEP_MICROS, 2 * len(keys) + 16))
        db.executemany(st.deleted_put, [(key, version) for key in keys])

    def _observe(self, rows: Iterable[Row]) -> None:
        top = max((r.get(VERSION_COLUMN) or 0 for r in rows), default=0)
        if top:
            self.clock.observe(int(top))

    async def delete_many(
        self, schema: CompiledSchema, ids: Sequence[Any], *, tx: Any = None
    ) -> int:
        st = self._stmts[schema.name]
        pk_to = TO_DB.get(schema.pk.kind)
        keys = [pk_to(i) if pk_to else i for i in ids]

        version = self.clock.now()

        def work() -> int:
            db = self.db
            if tx is None:
                db.execute("BEGIN IMMEDIATE")
            try:
                top = version  # max(client clock, newest deleted version + 1)
                for key in keys:
                    for (old,) in db.execute(st.delete, (key,)).fetchall():
                        top = max(top, int(old) + 1)
                self._deleted(st, keys, top)  # every id named: the caches keep a tombstone
                if tx is None:
                    db.execute("COMMIT")
                return top
            except BaseException:
                if tx is None and db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        with translate_errors(f"{schema.name}: delete"):
            assigned = await self._run(work)
        self.clock.observe(assigned)
        return assigned

    async def delete_if_older(
        self, schema: CompiledSchema, items: Sequence[tuple[Any, int]]
    ) -> int:
        """Delete each ``(id, version)`` row only while its stored version is older than
        ``version``, in one transaction: a replayed write-behind delete never removes a row
        written after it. Each version is kept as the id's deleted version, so a later
        insert lands above it. Returns how many rows were deleted."""
        if not items:
            return 0
        st = self._stmts[schema.name]
        pk_to = TO_DB.get(schema.pk.kind)
        newest: dict[Any, int] = {}
        for i, v in items:
            key = pk_to(i) if pk_to else i
            newest[key] = max(v, newest.get(key, v))

        def work() -> int:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                n = 0
                for key, v in newest.items():
                    n += len(db.execute(st.delete_if_older, (key, v)).fetchall())
                    self._deleted(st, [key], v)
                db.execute("COMMIT")
                return n
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        with translate_errors(f"{schema.name}: delete"):
            deleted = await self._run(work)
        self.clock.observe(max(newest.values()))
        return deleted

    async def exists_many(self, schema: CompiledSchema, ids: Sequence[Any]) -> set[Any]:
        st = self._stmts[schema.name]
        pk_to = TO_DB.get(schema.pk.kind)

        def work() -> set[Any]:
            found = set()
            for i in ids:
                key = pk_to(i) if pk_to else i
                if self.db.execute(st.exists, (key,)).fetchone() is not None:
                    found.add(i)
            return found

        with translate_errors(f"{schema.name}: exists"):
            return await self._run(work)

    async def deleted_versions(self, schema: CompiledSchema, ids: Sequence[Any]) -> dict[Any, int]:
        st = self._stmts[schema.name]
        pk_to = TO_DB.get(schema.pk.kind)

        def work() -> dict[Any, int]:
            out = {}
            for i in ids:
                found = self.db.execute(st.deleted_get, (pk_to(i) if pk_to else i,)).fetchone()
                if found is not None:
                    out[i] = int(found[0])
            return out

        with translate_errors(f"{schema.name}: deleted versions"):
            return await self._run(work)

    async def fetch(
        self, sql: str, args: Sequence[Any], *, schema: CompiledSchema | None = None, tx: Any = None
    ) -> list[Row]:
        """Rows of a compiled query; with ``schema``, its columns are made canonical."""

        def work() -> tuple[list[str], list[tuple[Any, ...]]]:
            cur = self.db.execute(sql, list(args))
            return [d[0] for d in cur.description], cur.fetchall()

        with translate_errors("query"):
            names, rows = await self._run(work)
        out = [dict(zip(names, r, strict=True)) for r in rows]
        if schema is not None:
            st = self._stmts[schema.name]
            for row in out:
                for name, conv in st.from_db:
                    v = row.get(name)
                    if v is not None:
                        row[name] = conv(v)
        self._observe(out)
        return out

    async def iterate(self, schema: CompiledSchema, batch: int) -> AsyncIterator[list[Row]]:
        st = self._stmts[schema.name]
        names = [*st.columns, VERSION_COLUMN]
        pk_to = TO_DB.get(schema.pk.kind)
        last: Any = None
        while True:
            args: tuple[Any, ...]
            if last is None:
                sql, args = st.iterate_first, (batch,)
            else:
                sql, args = st.iterate_next, (pk_to(last) if pk_to else last, batch)

            def work(sql: str = sql, args: tuple[Any, ...] = args) -> list[Row]:
                cur = self.db.execute(sql, args)
                return [self._row_out(st, names, r) for r in cur.fetchall()]

            with translate_errors(f"{schema.name}: scan"):
                rows = await self._run(work)
            if not rows:
                return
            self._observe(rows)
            yield rows
            last = rows[-1][schema.pk.name]
            if len(rows) < batch:
                return

    # -- version-checked and partial writes (ds.update / ds.patch) ----------------------

    async def update_columns(
        self,
        schema: CompiledSchema,
        id: Any,
        values: Row,
        *,
        if_version: int | None = None,
        tx: Any = None,
    ) -> Row | None:
        """UPDATE only the given columns of one existing row, with a new version; with
        ``if_version``, only while the row still has that version. Returns the whole row as
        stored (new version included), or None when no row matched."""
        st = self._stmts[schema.name]
        quote = DIALECT.identifier_preparer.quote
        columns = list(values)
        ver = quote(VERSION_COLUMN)
        # One version space: the clock's value, raised past the stored version.
        sets = ", ".join([*(f"{quote(c)} = ?" for c in columns), f"{ver} = max(?, {ver} + 1)"])
        where = f"{quote(schema.pk.name)} = ?"
        if if_version is not None:
            where += f" AND {quote(VERSION_COLUMN)} = ?"
        names = [*st.columns, VERSION_COLUMN]
        sql = (
            f"UPDATE {quote(schema.table.name)} SET {sets} WHERE {where} "
            f"RETURNING {', '.join(quote(n) for n in names)}"
        )
        to_db = dict(st.to_db)
        args = []
        for c, v in values.items():
            conv = to_db[c]
            args.append(conv(v) if conv is not None and v is not None else v)
        pk_to = TO_DB.get(schema.pk.kind)
        key = pk_to(id) if pk_to else id

        version = self.clock.now()

        def work() -> Row | None:
            db = self.db
            if tx is None:
                db.execute("BEGIN IMMEDIATE")
            try:
                tail = [key] if if_version is None else [key, if_version]
                found = db.execute(sql, [*args, version, *tail]).fetchone()
                if tx is None:
                    db.execute("COMMIT" if found is not None else "ROLLBACK")
                if found is None:
                    return None
                row = self._row_out(st, names, found)
                self.clock.observe(int(row[VERSION_COLUMN]))
                return row
            except BaseException:
                if tx is None and db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        with translate_errors(f"{schema.name}: update"):
            return await self._run(work)

"""L3 on PostgreSQL through asyncpg, on connections of its own pool (``pg_pool.py``).

Statements are compiled once per schema at ``register`` by SQLAlchemy Core (the Table is the
one description) and run through asyncpg, prepared once per connection (queries, whose SQL
varies, through asyncpg's statement cache). ``Config(prepared_statements=False)`` (pgbouncer
in transaction mode) turns both off: asyncpg then uses unnamed statements only, which never
outlive a transaction.
``set_many`` goes through COPY into a temporary table and one upsert; ``get_many`` uses
``= ANY($1)``. Every driver exception is translated here into the StrataError tree.

Versions (one version space, DESIGN section 4): every write carries a value of the hybrid
clock (``self.clock``, shared with the router) and the upsert stores
``GREATEST(client clock, old version + 1)``, so commit order wins whichever instance or
write mode wrote last; write-behind's ``versioned`` upserts keep their own version and only
replace an older row. Rows are locked in primary-key order (``set_many`` and ``delete``),
so two batches of the same ids never deadlock. Every version a read sees is observed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from operator import itemgetter
from typing import Any

import asyncpg

from strata.clock import HybridClock
from strata.config import Config, hide_password
from strata.errors import (
    TierUnavailableError,
)
from strata.schema import VERSION_COLUMN, CompiledSchema
from strata.tiers.outage import OutageLog
from strata.tiers.pg_bulk import CopyFirst, copy_new_rows, stored_rows
from strata.tiers.pg_calls import Bounded, PgTransaction, typed_error
from strata.tiers.pg_pool import PgPool
from strata.tiers.pg_statements import (
    ReadStatements,
    Statements,
    build_read_statements,
    build_statements,
    conn_of,
    delete_if_older_sql,
    init_connection,
    isolation_level,
    qualified,
    quote,
    translate_errors,
)

__all__ = ["PostgresTier", "translate_errors"]

Row = dict[str, Any]


class PostgresTier:
    dialect = "postgresql"

    def __init__(self, config: Config, *, url: str | None = None, logger: logging.Logger):
        self._config = config
        self._url = url or config.asyncpg_dsn
        self._log = logger
        self._pool: PgPool | None = None
        self._connect_lock = asyncio.Lock()
        self._stmts: dict[str, Statements] = {}
        self._reads: dict[str, ReadStatements] = {}
        self._kept_stmts: dict[tuple[str, frozenset[str]], Statements] = {}
        self._copy_first = CopyFirst()  # bulk writes of new rows: COPY straight in
        self.timeout = config.l3_timeout_seconds
        # Named statements prepared once per connection; off behind pgbouncer in
        # transaction mode, where no named statement may outlive a transaction.
        self._prepare = config.prepared_statements
        # The router's clock (router/core.py takes it): every write carries its value and
        # every version read here advances it.
        self.clock = HybridClock()
        self.outage = OutageLog(
            logger,
            f"PostgreSQL at {hide_password(self._url)}",
            config.l3_outage_summary_interval_seconds,
        )

    @property
    def url(self) -> str:
        return self._url

    def bounded(self, what: str, conn: asyncpg.Connection | None = None) -> Bounded:
        """One L3 call of several statements (see ``Bounded``). A connection left in the
        middle of a call (timed out, cancelled, broken) is terminated, never reused."""
        return Bounded(self, what, conn)

    async def checkout(self, what: str) -> asyncpg.Connection:
        """A connection when none is idle: opened, or waited for (``PgPool.acquire``, at
        most ``pool_timeout``), the whole bounded by ``l3_timeout``; errors typed."""
        try:
            async with asyncio.timeout(self.timeout):
                with translate_errors(what, self._url):
                    return await self.pool.acquire()
        except TimeoutError as exc:
            raise self._unreachable(self._timed_out(what)) from exc
        except TierUnavailableError as exc:
            if "pool_max_size" not in str(exc):  # a busy pool is no outage
                self.outage.failed(exc)
            raise

    def failed(
        self, what: str, conn: asyncpg.Connection, exc: BaseException, *, pooled: bool
    ) -> BaseException:
        """After a call on ``conn`` raised ``exc``: the connection goes back (the server
        answered), or is terminated (timed out, cancelled, broken: its state is unknown);
        returns the typed error to raise (``exc`` itself when it is not a driver error)."""
        pool = self._pool
        timed_out = False
        if pool is not None:
            pool.watchdog.done(conn)
            timed_out = pool.watchdog.timed_out(conn)
        if isinstance(exc, asyncpg.PostgresError) and not timed_out:
            if pooled:
                self.pool_or_none_release(conn)
            return typed_error(what, self._url, exc)
        if pooled and self._pool is not None:
            self._pool.discard(conn)
        elif not conn.is_closed():
            conn.terminate()
        if timed_out or isinstance(exc, TimeoutError):
            return self._unreachable(self._timed_out(what))
        typed = typed_error(what, self._url, exc)
        if isinstance(typed, TierUnavailableError):
            self.outage.failed(typed)
        return typed

    def pool_or_none_release(self, conn: asyncpg.Connection) -> None:
        if self._pool is not None:
            self._pool.release(conn)
        elif not conn.is_closed():
            conn.terminate()  # its pool was closed or abandoned meanwhile

    async def run(
        self,
        what: str,
        sql: str,
        args: Sequence[Any],
        *,
        one: bool = False,
        conn: asyncpg.Connection | None = None,
        prepared: bool = True,
    ) -> Any:
        """One statement: ``fetchrow`` (``one``) or ``fetch``. The hot path: an idle
        connection taken and given back synchronously, the statement prepared once per
        connection (``prepared``: SQL compiled at register, not a query's), asyncpg's own
        per-call ``l3_timeout``. ``conn``: a transaction's connection."""
        pool = self.pool
        pooled = conn is None
        if conn is None:
            conn = pool.take() or await self.checkout(what)
        watchdog = pool.watchdog
        watchdog.start(conn)
        try:
            if prepared and self._prepare:
                stmt = self._statement(conn, sql)
                if stmt is None:
                    stmt = await self._prepare_on(conn, sql)
                if one:
                    result = await stmt.fetchrow(*args)
                else:
                    result = await stmt.fetch(*args)
            elif one:
                result = await conn.fetchrow(sql, *args)
            else:
                result = await conn.fetch(sql, *args)
        except BaseException as exc:
            typed = self.failed(what, conn, exc, pooled=pooled)
            if typed is exc:
                raise
            raise typed from exc
        watchdog.done(conn)
        if pooled:
            self.pool_or_none_release(conn)
        if self.outage.down:
            self.outage.succeeded()
        return result

    def _statement(self, conn: asyncpg.Connection, sql: str) -> Any:
        pool = self._pool
        if pool is None:
            return None
        prepared = pool.statements.get(conn)
        return None if prepared is None else prepared.get(sql)

    async def _prepare_on(self, conn: asyncpg.Connection, sql: str) -> Any:
        stmt = await conn.prepare(sql, timeout=self.timeout)
        if self._pool is not None and not conn.is_closed():
            self._pool.statements.setdefault(conn, {})[sql] = stmt
        return stmt

    def _unreachable(self, exc: TierUnavailableError) -> TierUnavailableError:
        self.outage.failed(exc)
        return exc

    def _timed_out(self, what: str) -> TierUnavailableError:
        return TierUnavailableError(
            f"{what}: PostgreSQL at {hide_password(self._url)} did not answer within "
            f"l3_timeout ({self._config.l3_timeout_seconds:g}s)",
            tier="l3",
        )

    def register(self, schema: CompiledSchema) -> None:
        self._stmts[schema.name] = build_statements(schema)
        self._reads[schema.name] = build_read_statements(schema)

    async def _new_connection(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(
            self._url,
            timeout=self._config.pool_timeout,
            # asyncpg's own statement cache serves the queries (search); off behind
            # pgbouncer in transaction mode.
            statement_cache_size=100 if self._prepare else 0,
        )
        try:
            await init_connection(conn)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def connect(self) -> None:
        cfg = self._config
        pool = PgPool(
            self._new_connection,
            min_size=cfg.pool_min_size,
            max_size=cfg.pool_max_size,
            pool_timeout=cfg.pool_timeout,
            timeout=self.timeout,
            url=self._url,
        )
        with translate_errors("connect", self._url):
            try:
                await pool.start()
            except BaseException:
                pool.terminate()
                raise
        self._pool = pool

    async def ensure_connected(self) -> None:
        """Connect unless connected (one attempt at a time: never two pools). A lazy
        (re)connect on the way to a call is bounded like the call (``l3_timeout``); a
        caller arriving while another connects does not queue behind it: it gets
        TierUnavailableError at once (a replica read then goes to the primary)."""
        if self._pool is not None:
            return
        if self._connect_lock.locked():
            raise TierUnavailableError(
                f"PostgreSQL at {hide_password(self._url)}: still connecting", tier="l3"
            )
        async with self._connect_lock:
            if self._pool is None:
                try:
                    async with asyncio.timeout(self._config.l3_timeout_seconds):
                        await self.connect()
                except TimeoutError as exc:
                    raise self._timed_out("connect") from exc

    def abandon(self) -> None:
        """Forget the pool of an event loop that has ended (it cannot be closed from
        another loop); ``connect()`` makes a new one."""
        self._pool = None
        self._connect_lock = asyncio.Lock()

    async def close(self) -> None:
        """Close the pool, waiting at most ``Config.close_timeout`` for connections in use;
        those left are terminated (and logged)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close(self._config.close_timeout_seconds, self._log)

    @property
    def pool(self) -> PgPool:
        if self._pool is None:
            raise TierUnavailableError("PostgreSQL tier is not connected", tier="l3")
        return self._pool

    async def get_many(
        self,
        schema: CompiledSchema,
        ids: Sequence[Any],
        *,
        tx: Any = None,
        for_update: bool = False,
    ) -> list[Row]:
        what = f"{schema.name}: get"
        conn = conn_of(tx)
        if len(ids) == 1 and not (tx is not None and for_update):
            sql = self._reads[schema.name].get_one
            record = await self.run(what, sql, (ids[0],), one=True, conn=conn)
            if record is None:
                return []
            row = dict(record)
            version = row[VERSION_COLUMN]
            if version:
                self.clock.observe(int(version))
            return [row]
        st = self._stmts[schema.name]
        sql = st.get_for_update if tx is not None and for_update else st.get_many
        return self._observed(await self.run(what, sql, (list(ids),), conn=conn))

    def _observed(self, records: Sequence[asyncpg.Record]) -> list[Row]:
        """Rows as dicts; the clock advances past every version among them."""
        rows = [dict(r) for r in records]
        top = max((r.get(VERSION_COLUMN) or 0 for r in rows), default=0)
        if top:
            self.clock.observe(int(top))
        return rows

    async def begin(self, isolation: str | None = None) -> PgTransaction:
        """Start a transaction on a connection of its own (back to the pool at the end)."""
        level = isolation_level(isolation)
        pool = self.pool
        conn = pool.take() or await self.checkout("begin")
        try:
            async with asyncio.timeout(self.timeout):
                with translate_errors("begin", self._url):
                    tr = conn.transaction(isolation=level) if level else conn.transaction()
                    await tr.start()
        except BaseException as exc:
            pool.discard(conn)
            if isinstance(exc, TimeoutError):
                raise self._unreachable(self._timed_out("begin")) from exc
            if isinstance(exc, TierUnavailableError):
                self.outage.failed(exc)
            raise
        return PgTransaction(self, conn, tr, release=pool.release)

    async def upsert_many(
        self,
        schema: CompiledSchema,
        rows: Sequence[Row],
        *,
        tx: Any = None,
        versioned: bool = False,
        returning: bool = True,
        kept: frozenset[str] = frozenset(),
    ) -> dict[Any, Row]:
        """``versioned``: rows carry their own ``_strata_version`` (write-behind) and only
        replace a stored row with an older version; otherwise each row stores
        GREATEST(its ``_strata_version`` or the clock's next value, old version + 1).
        ``returning=False`` (versioned only) skips reading back what was stored and returns
        ``{}``. ``kept``: columns an existing row keeps (returned as stored)."""
        st = self._statements(schema, kept)
        cols = st.columns
        quiet = versioned and not returning
        versions = self._versions(rows, versioned)
        what = f"{schema.name}: set"
        if len(rows) == 1:
            row = rows[0]
            args = [row[c] for c in cols]
            args.append(versions[0])
            if quiet:
                sql = st.upsert_if_newer_quiet
            else:
                sql = st.upsert_if_newer if versioned else st.upsert
            records = await self.run(what, sql, args, conn=conn_of(tx))
        else:
            pick = itemgetter(*cols)  # a tuple of the columns (one column: the value)
            if len(cols) > 1:
                tuples = [(*pick(row), v) for row, v in zip(rows, versions, strict=True)]
            else:
                tuples = [(pick(row), v) for row, v in zip(rows, versions, strict=True)]
            copy = tx is None and self._copy_first.worth_trying(schema.name)
            async with self.bounded(what, conn_of(tx)) as conn:
                if copy and await copy_new_rows(conn, schema, cols, tuples):
                    self._copy_first.copied(schema.name)
                    self.clock.observe(max(versions))
                    return {} if quiet else stored_rows(cols, st.returning, schema.pk.name, tuples)
                if copy:
                    self._copy_first.missed(schema.name)
                records = await self._copy_upsert(st, conn, tuples, tx, versioned, quiet)
        pk = schema.pk.name
        return {r[pk]: r for r in self._observed(records)}

    def _versions(self, rows: Sequence[Row], versioned: bool) -> list[int]:
        """The version each row carries into the upsert: its own (write-behind), else a
        fresh clock value (L3 raises it past the stored one)."""
        if versioned:
            return [row[VERSION_COLUMN] for row in rows]
        now = self.clock.now
        return [row.get(VERSION_COLUMN) or now() for row in rows]

    def _statements(self, schema: CompiledSchema, kept: frozenset[str]) -> Statements:
        if not kept:
            return self._stmts[schema.name]
        st = self._kept_stmts.get((schema.name, kept))
        if st is None:
            st = self._kept_stmts[(schema.name, kept)] = build_statements(schema, kept)
        return st

    async def _copy_upsert(
        self,
        st: Statements,
        conn: asyncpg.Connection,
        records: Sequence[tuple[Any, ...]],
        tx: Any,
        versioned: bool,
        quiet: bool,
    ) -> list[asyncpg.Record]:
        cols = [*st.columns, VERSION_COLUMN]

        # Inside the caller's transaction this is a savepoint; the temp table's rows go at
        # commit (ON COMMIT DELETE ROWS), or at the TRUNCATE inside a caller's transaction.
        async with conn.transaction():
            await conn.execute(st.create_temp)
            await conn.copy_records_to_table(st.temp_table, records=records, columns=cols)
            out: list[asyncpg.Record] = []
            if quiet:
                await conn.execute(st.copy_upsert_if_newer_quiet)
            else:
                out = await conn.fetch(st.copy_upsert_if_newer if versioned else st.copy_upsert)
            if tx is not None:
                await conn.execute(f"TRUNCATE {quote(st.temp_table)}")
            return out

    async def delete_many(
        self, schema: CompiledSchema, ids: Sequence[Any], *, tx: Any = None
    ) -> int:
        st = self._stmts[schema.name]
        version = self.clock.now()
        what = f"{schema.name}: delete"
        row = await self.run(what, st.delete_many, (list(ids), version), one=True, conn=conn_of(tx))
        assert row is not None
        self.clock.observe(int(row["v"]))
        return int(row["v"])

    async def exists_many(self, schema: CompiledSchema, ids: Sequence[Any]) -> set[Any]:
        st = self._stmts[schema.name]
        records = await self.run(f"{schema.name}: exists", st.exists_many, (list(ids),))
        return {r[0] for r in records}

    async def deleted_versions(self, schema: CompiledSchema, ids: Sequence[Any]) -> dict[Any, int]:
        st = self._stmts[schema.name]
        by_text = {str(i): i for i in ids}
        records = await self.run(
            f"{schema.name}: deleted versions", st.deleted_versions, (list(by_text),)
        )
        return {by_text[r[0]]: int(r[1]) for r in records if r[0] in by_text}

    async def fetch(
        self, sql: str, args: Sequence[Any], *, schema: CompiledSchema | None = None, tx: Any = None
    ) -> list[Row]:
        """Rows of a compiled query; values are already canonical on PostgreSQL."""
        # A query's SQL varies: asyncpg's statement cache (LRU) keeps it, not the
        # connection's prepared statements.
        records = await self.run("query", sql, args, conn=conn_of(tx), prepared=False)
        return self._observed(records)

    async def iterate(self, schema: CompiledSchema, batch: int) -> AsyncIterator[list[Row]]:
        """Every row in primary-key order, ``batch`` rows at a time (keyset paging)."""
        st = self._stmts[schema.name]
        last: Any = None
        while True:
            records = await self.run(f"{schema.name}: scan", st.iterate, (last, batch))
            if not records:
                return
            yield self._observed(records)
            last = records[-1][schema.pk.name]
            if len(records) < batch:
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
        cache: dict[tuple[str, tuple[str, ...], bool], str]
        cache = self.__dict__.setdefault("_update_sql", {})
        columns = tuple(values)
        key = (schema.name, columns, if_version is not None)
        sql = cache.get(key)
        if sql is None:
            ver = quote(VERSION_COLUMN)
            sets = [f"{quote(c)} = ${n}" for n, c in enumerate(columns, 1)]
            # One version space: the clock's value, raised past the stored version.
            sets.append(f"{ver} = GREATEST(${len(columns) + 1}::bigint, {ver} + 1)")
            where = f"{quote(schema.pk.name)} = ${len(columns) + 2}"
            if if_version is not None:
                where += f" AND {ver} = ${len(columns) + 3}"
            names = [*(c.name for c in schema.columns), VERSION_COLUMN]
            sql = cache[key] = (
                f"UPDATE {qualified(schema)} SET {', '.join(sets)} WHERE {where} "
                f"RETURNING {', '.join(quote(n) for n in names)}"
            )
        args = [*values.values(), self.clock.now(), id]
        args += [] if if_version is None else [if_version]
        with translate_errors(f"{schema.name}: update", self._url):
            conn = self.pool if tx is None else tx.conn
            record = await conn.fetchrow(sql, *args)
        return self._observed([record])[0] if record is not None else None

    # -- added for the write-behind journal (issue 12) ---------------------------------

    async def delete_if_older(
        self, schema: CompiledSchema, items: Sequence[tuple[Any, int]]
    ) -> int:
        """Delete each ``(id, version)`` row only while its stored version is older than
        ``version``, in one statement: a replayed write-behind delete never removes a row
        written after it. Each version is kept as the id's deleted version, so a later
        insert lands above it. Returns how many rows were deleted."""
        if not items:
            return 0
        sql = delete_if_older_sql(schema)
        with translate_errors(f"{schema.name}: delete", self._url):
            n = await self.pool.fetchval(sql, [i for i, _ in items], [v for _, v in items])
        self.clock.observe(max(v for _, v in items))
        return int(n or 0)

"""L3 on PostgreSQL through an asyncpg pool.

Statements are compiled once per schema at ``register`` by SQLAlchemy Core (the Table is the
one description) and run through asyncpg, whose per-connection statement cache keeps them
prepared. ``Config(prepared_statements=False)`` (pgbouncer in transaction mode) turns that
cache off: asyncpg then uses unnamed statements only, which never outlive a transaction.
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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from strata.clock import HybridClock
from strata.config import Config, hide_password
from strata.errors import (
    TierUnavailableError,
)
from strata.schema import VERSION_COLUMN, CompiledSchema
from strata.tiers.outage import OutageLog
from strata.tiers.pg_statements import (
    Statements,
    build_statements,
    conn_of,
    delete_if_older_sql,
    init_connection,
    isolation_level,
    keep_session,
    qualified,
    quote,
    translate_errors,
)

__all__ = ["PostgresTier", "translate_errors"]

Row = dict[str, Any]


class PgTransaction:
    """One L3 transaction (or a savepoint inside one) on one pooled connection."""

    def __init__(
        self,
        tier: PostgresTier,
        conn: asyncpg.Connection,
        tr: Any,
        *,
        release: Callable[[], Awaitable[None]] | None,
    ) -> None:
        self.tier = tier
        self.conn = conn
        self._tr = tr
        self._release = release

    async def savepoint(self) -> PgTransaction:
        tr = self.conn.transaction()
        async with self.tier.bounded("savepoint", self.conn):
            await tr.start()
        return PgTransaction(self.tier, self.conn, tr, release=None)

    async def commit(self) -> None:
        try:
            async with self.tier.bounded("commit", self.conn):
                await self._tr.commit()
        finally:
            await self._done()

    async def rollback(self) -> None:
        try:
            if not self.conn.is_closed():
                async with self.tier.bounded("rollback", self.conn):
                    await self._tr.rollback()
        finally:
            await self._done()

    async def _done(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            await release()


class PostgresTier:
    dialect = "postgresql"

    def __init__(self, config: Config, *, url: str | None = None, logger: logging.Logger):
        self._config = config
        self._url = url or config.asyncpg_dsn
        self._log = logger
        self._pool: asyncpg.Pool | None = None
        self._connect_lock = asyncio.Lock()
        self._stmts: dict[str, Statements] = {}
        self._kept_stmts: dict[tuple[str, frozenset[str]], Statements] = {}
        # The router's clock (router/core.py takes it): every write carries its value and
        # every version read here advances it.
        self.clock = HybridClock()
        self._outage = OutageLog(
            logger,
            f"PostgreSQL at {hide_password(self._url)}",
            config.l3_outage_summary_interval_seconds,
        )

    @property
    def url(self) -> str:
        return self._url

    @asynccontextmanager
    async def bounded(
        self, what: str, conn: asyncpg.Connection | None = None
    ) -> AsyncIterator[asyncpg.Connection]:
        """One L3 call on ``conn`` (a transaction's) or on a pooled connection: driver
        errors translated, and the whole call (pool wait included) bounded by
        ``Config.l3_timeout``, so a partition fails the caller fast. A connection left in
        the middle of a call (timed out, cancelled, broken) is terminated, not handed back
        to the pool: asyncpg would wait on it for the whole partition."""
        pooled = conn is None
        clean = False
        try:
            async with asyncio.timeout(self._config.l3_timeout_seconds):
                with translate_errors(what, self._url):
                    if conn is None:
                        conn = await self.pool.acquire()
                    try:
                        yield conn
                    except asyncpg.PostgresError:
                        clean = True  # the server answered: the connection is sound
                        raise
                    clean = True
            if self._outage.down:
                self._outage.succeeded()
        except TimeoutError as exc:
            raise self._unreachable(self._timed_out(what)) from exc
        except TierUnavailableError as exc:
            self._outage.failed(exc)
            raise
        finally:
            if conn is not None:
                if not clean:
                    conn.terminate()
                if pooled:
                    await self.pool.release(conn)

    def _unreachable(self, exc: TierUnavailableError) -> TierUnavailableError:
        self._outage.failed(exc)
        return exc

    def _timed_out(self, what: str) -> TierUnavailableError:
        return TierUnavailableError(
            f"{what}: PostgreSQL at {hide_password(self._url)} did not answer within "
            f"l3_timeout ({self._config.l3_timeout_seconds:g}s)",
            tier="l3",
        )

    def register(self, schema: CompiledSchema) -> None:
        self._stmts[schema.name] = build_statements(schema)

    async def connect(self) -> None:
        cfg = self._config
        with translate_errors("connect", self._url):
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=cfg.pool_min_size,
                max_size=cfg.pool_max_size,
                timeout=cfg.pool_timeout,
                init=init_connection,
                reset=keep_session,
                # Behind pgbouncer in transaction mode a server connection is not this
                # client's between transactions: no named statements may outlive one.
                statement_cache_size=0 if not cfg.prepared_statements else 100,
            )

    async def ensure_connected(self) -> None:
        """Connect unless connected (one attempt at a time: never two pools). A lazy
        (re)connect on the way to a call is bounded like the call (``l3_timeout``)."""
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
            limit = self._config.close_timeout_seconds
            busy = pool.get_size() - pool.get_idle_size()
            try:
                async with asyncio.timeout(limit):
                    await pool.close()
            except TimeoutError:
                pool.terminate()
                self._log.warning(
                    "PostgreSQL at %s: the pool did not close within close_timeout (%gs); "
                    "%d connection(s) still in use were terminated",
                    hide_password(self._url),
                    limit,
                    busy,
                )

    @property
    def pool(self) -> asyncpg.Pool:
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
        st = self._stmts[schema.name]
        sql = st.get_for_update if tx is not None and for_update else st.get_many
        async with self.bounded(f"{schema.name}: get", conn_of(tx)) as conn:
            records = await conn.fetch(sql, list(ids))
        return self._observed(records)

    def _observed(self, records: Sequence[asyncpg.Record]) -> list[Row]:
        """Rows as dicts; the clock advances past every version among them."""
        rows = [dict(r) for r in records]
        top = max((r.get(VERSION_COLUMN) or 0 for r in rows), default=0)
        if top:
            self.clock.observe(int(top))
        return rows

    async def begin(self, isolation: str | None = None) -> PgTransaction:
        """Start a transaction on a connection of its own (returned to the pool at the end)."""
        level = isolation_level(isolation)
        conn: asyncpg.Connection | None = None
        try:
            async with asyncio.timeout(self._config.l3_timeout_seconds):
                with translate_errors("begin", self._url):
                    conn = await self.pool.acquire()
                    tr = conn.transaction(isolation=level) if level else conn.transaction()
                    await tr.start()
        except BaseException as exc:
            if conn is not None:
                conn.terminate()
                await self.pool.release(conn)
            if isinstance(exc, TimeoutError):
                raise self._unreachable(self._timed_out("begin")) from exc
            if isinstance(exc, TierUnavailableError):
                self._outage.failed(exc)
            raise

        async def release() -> None:
            await self.pool.release(conn)

        return PgTransaction(self, conn, tr, release=release)

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
        async with self.bounded(f"{schema.name}: set", conn_of(tx)) as conn:
            if len(rows) == 1:
                row = rows[0]
                args = [row[c] for c in cols]
                args.append(versions[0])
                if quiet:
                    sql = st.upsert_if_newer_quiet
                else:
                    sql = st.upsert_if_newer if versioned else st.upsert
                records = await conn.fetch(sql, *args)
            else:
                records = await self._copy_upsert(st, conn, rows, versions, tx, versioned, quiet)
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
        rows: Sequence[Row],
        versions: Sequence[int],
        tx: Any,
        versioned: bool,
        quiet: bool,
    ) -> list[asyncpg.Record]:
        cols = list(st.columns)
        records = [(*(row[c] for c in cols), v) for row, v in zip(rows, versions, strict=True)]
        cols.append(VERSION_COLUMN)

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
        async with self.bounded(f"{schema.name}: delete", conn_of(tx)) as conn:
            row = await conn.fetchrow(st.delete_many, list(ids), version)
        assert row is not None
        self.clock.observe(int(row["v"]))
        return int(row["v"])

    async def exists_many(self, schema: CompiledSchema, ids: Sequence[Any]) -> set[Any]:
        st = self._stmts[schema.name]
        async with self.bounded(f"{schema.name}: exists") as conn:
            records = await conn.fetch(st.exists_many, list(ids))
        return {r[0] for r in records}

    async def fetch(
        self, sql: str, args: Sequence[Any], *, schema: CompiledSchema | None = None, tx: Any = None
    ) -> list[Row]:
        """Rows of a compiled query; values are already canonical on PostgreSQL."""
        async with self.bounded("query", conn_of(tx)) as conn:
            records = await conn.fetch(sql, *args)
        return self._observed(records)

    async def iterate(self, schema: CompiledSchema, batch: int) -> AsyncIterator[list[Row]]:
        """Every row in primary-key order, ``batch`` rows at a time (keyset paging)."""
        st = self._stmts[schema.name]
        last: Any = None
        while True:
            async with self.bounded(f"{schema.name}: scan") as conn:
                records = await conn.fetch(st.iterate, last, batch)
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

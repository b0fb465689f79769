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
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.dialects.postgresql import insert as pg_insert

from strata.clock import HybridClock
from strata.config import PGBOUNCER_HINT, Config, hide_password
from strata.errors import (
    ConfigError,
    IntegrityError,
    SerializationError,
    TierError,
    TierUnavailableError,
)
from strata.schema import VERSION_COLUMN, ColumnKind, CompiledSchema, json_default
from strata.tiers.outage import OutageLog

__all__ = ["PostgresTier", "translate_errors"]

_DIALECT = pg_asyncpg.dialect()  # type: ignore[no-untyped-call]
_PK_ARRAY = {ColumnKind.TEXT: "text[]", ColumnKind.INT: "bigint[]", ColumnKind.UUID: "uuid[]"}

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Statements:
    columns: tuple[str, ...]  # data columns, in upsert parameter order
    get_many: str
    get_for_update: str
    upsert: str
    upsert_if_newer: str
    copy_upsert: str
    copy_upsert_if_newer: str
    upsert_if_newer_quiet: str  # no RETURNING: the write-behind flush reads nothing back
    copy_upsert_if_newer_quiet: str
    temp_table: str
    create_temp: str
    delete_many: str
    exists_many: str
    returning: tuple[str, ...]
    iterate: str


def _compile(stmt: Any) -> tuple[str, list[str]]:
    compiled = stmt.compile(dialect=_DIALECT)
    return str(compiled), list(compiled.positiontup or [])


def _quote(name: str) -> str:
    return _DIALECT.identifier_preparer.quote(name)


def _build(cs: CompiledSchema, kept: frozenset[str] = frozenset()) -> _Statements:
    """``kept``: columns an existing row keeps (the caller did not assign them); they are
    returned, so the caches get the stored value."""
    table = cs.table
    pk = table.c[cs.pk.name]
    data_cols = [c.name for c in cs.columns]
    selected = [table.c[n] for n in data_cols] + [table.c[VERSION_COLUMN]]
    returning = [pk] + [table.c[cs.by_field[f].name] for f in cs.auto_now_add]
    returning += [table.c[n] for n in sorted(kept)]
    returning.append(table.c[VERSION_COLUMN])
    keep = {cs.by_field[f].name for f in cs.auto_now_add} | {cs.pk.name} | kept

    ids = sa.bindparam("ids", type_=sa.ARRAY(pk.type))
    get_many, _ = _compile(sa.select(*selected).where(pk == sa.any_(ids)))
    get_for_update, _ = _compile(
        sa.select(*selected).where(pk == sa.any_(ids)).order_by(pk).with_for_update()
    )

    def upsert(if_newer: bool, source: Any = None, *, quiet: bool = False) -> str:
        if source is None:
            values: dict[str, Any] = {n: sa.bindparam(n, type_=table.c[n].type) for n in data_cols}
            values[VERSION_COLUMN] = sa.bindparam(VERSION_COLUMN, type_=sa.BigInteger())
            stmt = pg_insert(table).values(values)
        else:
            stmt = pg_insert(table).from_select([*data_cols, VERSION_COLUMN], source)
        update: dict[str, Any] = {n: stmt.excluded[n] for n in data_cols if n not in keep}
        stored = table.c[VERSION_COLUMN]
        if if_newer:  # write-behind: the row's own version, and only over an older row
            update[VERSION_COLUMN] = stmt.excluded[VERSION_COLUMN]
            where = stored < stmt.excluded[VERSION_COLUMN]
        else:  # one version space: commit order wins over a lagging client clock
            update[VERSION_COLUMN] = sa.func.greatest(
                stmt.excluded[VERSION_COLUMN], stored + sa.literal_column("1")
            )
            where = None
        stmt = stmt.on_conflict_do_update(index_elements=[pk], set_=update, where=where)
        sql, order = _compile(stmt if quiet else stmt.returning(*returning))
        if source is None and order != [*data_cols, VERSION_COLUMN]:
            raise AssertionError(f"unexpected parameter order {order}")  # pragma: no cover
        return sql

    shape = hashlib.blake2b(
        ",".join(f"{c.name}:{c.kind.value}" for c in cs.columns).encode(), digest_size=4
    ).hexdigest()
    temp_name = f"_strata_tmp_{table.name[:40]}_{shape}"
    temp = sa.Table(
        temp_name,
        sa.MetaData(),
        *[sa.Column(n, table.c[n].type) for n in data_cols],
        sa.Column(VERSION_COLUMN, sa.BigInteger()),
        prefixes=["TEMPORARY"],
    )
    # Ordered by key: the upsert locks rows in that order, so concurrent batches of the
    # same ids (in any order) wait for each other instead of deadlocking.
    src = sa.select(*[temp.c[n] for n in data_cols], temp.c[VERSION_COLUMN]).order_by(
        temp.c[cs.pk.name]
    )
    create_temp = (
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {_quote(temp_name)} "
        f"(LIKE {_qualified(cs)} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    pkq, verq, qual = _quote(cs.pk.name), _quote(VERSION_COLUMN), _qualified(cs)
    # Locked in key order (as set_many), then deleted; the tombstone version is
    # GREATEST(client clock, newest deleted version + 1).
    delete_many = (
        f"WITH l AS (SELECT {pkq} FROM {qual} WHERE {pkq} = ANY($1::{_PK_ARRAY[cs.pk.kind]}) "
        f"ORDER BY {pkq} FOR UPDATE), d AS (DELETE FROM {qual} t USING l "
        f"WHERE t.{pkq} = l.{pkq} RETURNING t.{verq} AS v) "
        "SELECT (SELECT count(*) FROM d) AS n, "
        "GREATEST($2::bigint, COALESCE((SELECT max(v) FROM d), 0) + 1) AS v"
    )
    exists_many, _ = _compile(sa.select(pk).where(pk == sa.any_(ids)))
    iterate = (
        f"SELECT {', '.join(_quote(n) for n in [*data_cols, VERSION_COLUMN])} "
        f"FROM {_qualified(cs)} WHERE $1::{_PK_ARRAY[cs.pk.kind][:-2]} IS NULL "
        f"OR {_quote(cs.pk.name)} > $1 ORDER BY {_quote(cs.pk.name)} LIMIT $2"
    )
    return _Statements(
        columns=tuple(data_cols),
        get_many=get_many,
        get_for_update=get_for_update,
        upsert=upsert(False),
        upsert_if_newer=upsert(True),
        copy_upsert=upsert(False, src),
        copy_upsert_if_newer=upsert(True, src),
        upsert_if_newer_quiet=upsert(True, quiet=True),
        copy_upsert_if_newer_quiet=upsert(True, src, quiet=True),
        temp_table=temp_name,
        create_temp=create_temp,
        delete_many=delete_many,
        exists_many=exists_many,
        returning=tuple(c.name for c in returning),
        iterate=iterate,
    )


def _conn(tx: Any) -> asyncpg.Connection | None:
    """The connection of a transaction handle (None: take one from the pool)."""
    return None if tx is None else tx.conn


def _qualified(cs: CompiledSchema) -> str:
    t = cs.table
    return f"{_quote(t.schema)}.{_quote(t.name)}" if t.schema else _quote(t.name)


@contextmanager
def translate_errors(what: str, url: str) -> Iterator[None]:
    """Map asyncpg / socket failures to the StrataError tree, chaining the original."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise IntegrityError(f"{what}: unique constraint violated: {exc}", tier="l3") from exc
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise IntegrityError(f"{what}: {exc}", tier="l3") from exc
    except (asyncpg.SerializationError, asyncpg.DeadlockDetectedError) as exc:
        raise SerializationError(f"{what}: {exc} (retry the transaction)") from exc
    except asyncpg.UndefinedTableError as exc:
        raise TierError(
            f"{what}: {exc}; create the tables first with `await ds.migrate()` or `strata migrate`",
            tier="l3",
        ) from exc
    except asyncpg.UndefinedColumnError as exc:
        raise TierError(
            f"{what}: {exc}; the table is older than the model: run `await ds.migrate()`",
            tier="l3",
        ) from exc
    except (
        TimeoutError,
        OSError,
        asyncpg.CannotConnectNowError,
        asyncpg.ConnectionDoesNotExistError,
        asyncpg.InterfaceError,
        asyncpg.TooManyConnectionsError,
    ) as exc:
        raise TierUnavailableError(
            f"{what}: PostgreSQL at {hide_password(url)} is unavailable: {exc}", tier="l3"
        ) from exc
    except (asyncpg.DuplicatePreparedStatementError, asyncpg.InvalidSQLStatementNameError) as exc:
        raise TierError(f"{what}: {exc}{PGBOUNCER_HINT}", tier="l3") from exc
    except asyncpg.DataError as exc:
        raise TierError(f"{what}: PostgreSQL refused a value: {exc}", tier="l3") from exc
    except asyncpg.PostgresError as exc:
        raise TierError(f"{what}: {exc}", tier="l3") from exc


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        schema="pg_catalog",
        format="binary",
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook. asyncpg's default runs a reset query (UNLISTEN, RESET ALL, ...)
    on every release: a second round trip per call. Strata leaves no session state (its
    settings and locks are transaction-scoped; the temp table is meant to stay), and asyncpg
    still rolls back an open transaction before this hook."""


def _encode_jsonb(value: Any) -> bytes:
    return b"\x01" + orjson.dumps(value, default=json_default)


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])


_ISOLATION = {
    "read_committed": "read_committed",
    "read committed": "read_committed",
    "repeatable_read": "repeatable_read",
    "repeatable read": "repeatable_read",
    "serializable": "serializable",
}


def isolation_level(name: str | None) -> str | None:
    """asyncpg's name for an isolation level given as ``"serializable"``, ``"repeatable
    read"``, ``"read_committed"``..."""
    if name is None:
        return None
    try:
        return _ISOLATION[name.lower()]
    except KeyError:
        raise ConfigError(
            f"isolation must be one of read_committed, repeatable_read, serializable; got {name!r}"
        ) from None


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
        self._stmts: dict[str, _Statements] = {}
        self._kept_stmts: dict[tuple[str, frozenset[str]], _Statements] = {}
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
        self._stmts[schema.name] = _build(schema)

    async def connect(self) -> None:
        cfg = self._config
        with translate_errors("connect", self._url):
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=cfg.pool_min_size,
                max_size=cfg.pool_max_size,
                timeout=cfg.pool_timeout,
                init=_init_connection,
                reset=_keep_session,
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
        async with self.bounded(f"{schema.name}: get", _conn(tx)) as conn:
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
        async with self.bounded(f"{schema.name}: set", _conn(tx)) as conn:
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

    def _statements(self, schema: CompiledSchema, kept: frozenset[str]) -> _Statements:
        if not kept:
            return self._stmts[schema.name]
        st = self._kept_stmts.get((schema.name, kept))
        if st is None:
            st = self._kept_stmts[(schema.name, kept)] = _build(schema, kept)
        return st

    async def _copy_upsert(
        self,
        st: _Statements,
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
                await conn.execute(f"TRUNCATE {_quote(st.temp_table)}")
            return out

    async def delete_many(
        self, schema: CompiledSchema, ids: Sequence[Any], *, tx: Any = None
    ) -> int:
        st = self._stmts[schema.name]
        version = self.clock.now()
        async with self.bounded(f"{schema.name}: delete", _conn(tx)) as conn:
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
        async with self.bounded("query", _conn(tx)) as conn:
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
            table = schema.table
            seq = "_strata_version_seq"
            seq = f"{_quote(table.schema)}.{seq}" if table.schema else seq
            sets = [f"{_quote(c)} = ${n}" for n, c in enumerate(columns, 1)]
            sets.append(f"{_quote(VERSION_COLUMN)} = nextval('{seq}')")
            where = f"{_quote(schema.pk.name)} = ${len(columns) + 1}"
            if if_version is not None:
                where += f" AND {_quote(VERSION_COLUMN)} = ${len(columns) + 2}"
            names = [*(c.name for c in schema.columns), VERSION_COLUMN]
            sql = cache[key] = (
                f"UPDATE {_qualified(schema)} SET {', '.join(sets)} WHERE {where} "
                f"RETURNING {', '.join(_quote(n) for n in names)}"
            )
        args = [*values.values(), id, *([] if if_version is None else [if_version])]
        with translate_errors(f"{schema.name}: update", self._url):
            conn = self.pool if tx is None else tx.conn
            record = await conn.fetchrow(sql, *args)
        return dict(record) if record is not None else None

    # -- added for the write-behind journal (issue 12) ---------------------------------

    async def delete_if_older(
        self, schema: CompiledSchema, items: Sequence[tuple[Any, int]]
    ) -> int:
        """Delete each ``(id, version)`` row only while its stored version is older than
        ``version``, in one statement: a replayed write-behind delete never removes a row
        written after it. Returns how many rows were deleted."""
        if not items:
            return 0
        pk = _quote(schema.pk.name)
        sql = (
            f"WITH d AS (DELETE FROM {_qualified(schema)} AS t USING unnest($1::"
            f"{_PK_ARRAY[schema.pk.kind]}, $2::bigint[]) AS w(id, v) WHERE t.{pk} = w.id "
            f"AND t.{_quote(VERSION_COLUMN)} < w.v RETURNING 1) SELECT count(*) FROM d"
        )
        with translate_errors(f"{schema.name}: delete", self._url):
            n = await self.pool.fetchval(sql, [i for i, _ in items], [v for _, v in items])
        return int(n or 0)

"""PostgreSQL statements for the L3 tier: compiled once per schema by SQLAlchemy Core, plus
the driver-error translation and the connection set-up (strata/tiers/postgres.py runs them)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.dialects.postgresql import insert as pg_insert

from strata.clock import DELETED_KEEP_MICROS, DELETED_TABLE
from strata.config import PGBOUNCER_HINT, hide_password
from strata.errors import (
    ConfigError,
    IntegrityError,
    SerializationError,
    TierError,
    TierUnavailableError,
)
from strata.schema import VERSION_COLUMN, ColumnKind, CompiledSchema, json_default

_DIALECT = pg_asyncpg.dialect()  # type: ignore[no-untyped-call]
PK_ARRAY = {ColumnKind.TEXT: "text[]", ColumnKind.INT: "bigint[]", ColumnKind.UUID: "uuid[]"}

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Statements:
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
    deleted_versions: str  # ($1 text[]) -> (id text, v) of the ids' newest deletes
    returning: tuple[str, ...]
    iterate: str


def _compile(stmt: Any) -> tuple[str, list[str]]:
    compiled = stmt.compile(dialect=_DIALECT)
    return str(compiled), list(compiled.positiontup or [])


def quote(name: str) -> str:
    return _DIALECT.identifier_preparer.quote(name)


def _upsert_compiler(
    cs: CompiledSchema, data_cols: list[str], keep: set[str], returning: list[Any]
) -> Callable[..., str]:
    """``upsert(if_newer, source=None, quiet=False)``: the INSERT ... ON CONFLICT text for
    one schema, from bound values or from a SELECT (the COPY temp table)."""
    table = cs.table
    pk = table.c[cs.pk.name]

    def upsert(if_newer: bool, source: Any = None, *, quiet: bool = False) -> str:
        stmt = _insert(cs, data_cols, source, if_newer)
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

    return upsert


# -- the deleted-versions high-water mark ---------------------------------------------
#
# A row inserted after a delete of its id must get a version above the delete's (the
# tombstone the caches keep), whatever the inserting instance's clock says: L3 has no old
# row to raise it past. Each delete records ``(table, id, version)`` in ``_strata_deleted``
# (one per schema, strata/migrations/ledger.py) and every upsert stores
# GREATEST(clock, old + 1, deleted + 1). Keyed by id, not one row per table: an insert
# reads one primary-key entry and takes no lock; a delete writes the entries of the ids
# it already holds locked, so deletes of different ids never wait for each other. Each
# delete sweeps (SKIP LOCKED) twice as many expired entries as it adds, so the table holds
# about an hour of deletes.


def deleted_qualified(cs: CompiledSchema) -> str:
    """``_strata_deleted`` in the schema's own namespace."""
    t = cs.table
    return f"{quote(t.schema)}.{quote(DELETED_TABLE)}" if t.schema else quote(DELETED_TABLE)


def text_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _deleted_of(cs: CompiledSchema, pk: Any) -> tuple[Any, Any]:
    """The ``_strata_deleted`` alias and the condition picking ``pk``'s entry."""
    d = sa.table(
        DELETED_TABLE, sa.column("tbl"), sa.column("id"), sa.column("v"), schema=cs.table.schema
    ).alias("d")
    tbl: Any = sa.literal_column(text_literal(cs.table.name))
    return d, sa.and_(d.c.tbl == tbl, d.c.id == sa.cast(pk, sa.Text()))


def above_deleted(cs: CompiledSchema, version: Any, pk: Any) -> Any:
    """``GREATEST(version, newest delete version of pk + 1)`` (NULL, ignored, when none)."""
    d, of_pk = _deleted_of(cs, pk)
    found = sa.select(d.c.v + sa.literal_column("1")).where(of_pk).scalar_subquery()
    return sa.func.greatest(version, found)


def _not_deleted(cs: CompiledSchema, version: Any, pk: Any) -> Any:
    """No delete of ``pk`` at or after ``version`` (write-behind's own versions)."""
    d, of_pk = _deleted_of(cs, pk)
    return ~sa.exists().where(of_pk, d.c.v >= version)


def _insert(cs: CompiledSchema, data_cols: list[str], source: Any, if_newer: bool) -> Any:
    """The INSERT of an upsert, from bound values or from ``source`` (the COPY temp table's
    SELECT, ordered by key). Versions are raised past the ids' newest deletes; with
    ``if_newer`` (write-behind's own versions) a row older than one is left out instead."""
    table = cs.table
    cols = [*data_cols, VERSION_COLUMN]
    if source is None:
        values: list[Any] = [sa.bindparam(n, type_=table.c[n].type) for n in data_cols]
        version: Any = sa.bindparam(VERSION_COLUMN, type_=sa.BigInteger())
        pk: Any = values[data_cols.index(cs.pk.name)]
        if not if_newer:
            raised = [*values, above_deleted(cs, version, pk)]
            return pg_insert(table).values(dict(zip(cols, raised, strict=True)))
        row = sa.select(*values, version).where(_not_deleted(cs, version, pk))
        return pg_insert(table).from_select(cols, row)
    src = source.subquery("src")
    pk, version = src.c[cs.pk.name], src.c[VERSION_COLUMN]
    data = [src.c[n] for n in data_cols]
    if if_newer:
        row = sa.select(*data, version).where(_not_deleted(cs, version, pk))
    else:
        row = sa.select(*data, above_deleted(cs, version, pk))
    return pg_insert(table).from_select(cols, row.order_by(pk))


def _delete_sql(cs: CompiledSchema, keep: int = DELETED_KEEP_MICROS) -> str:
    pkq, verq, qual = quote(cs.pk.name), quote(VERSION_COLUMN), qualified(cs)
    dq, tbl, arr = deleted_qualified(cs), text_literal(cs.table.name), PK_ARRAY[cs.pk.kind]
    # Locked in key order (as set_many), then deleted; the tombstone version is
    # GREATEST(client clock, newest deleted version + 1), recorded for every id named
    # (present or not: the caches keep a tombstone for each), and expired entries swept.
    return (
        f"WITH l AS (SELECT {pkq} FROM {qual} WHERE {pkq} = ANY($1::{arr}) "
        f"ORDER BY {pkq} FOR UPDATE), d AS (DELETE FROM {qual} t USING l "
        f"WHERE t.{pkq} = l.{pkq} RETURNING t.{verq} AS v), "
        "x AS (SELECT GREATEST($2::bigint, COALESCE((SELECT max(v) FROM d), 0) + 1) AS v), "
        f"k AS (SELECT DISTINCT CAST(i AS text) AS id FROM unnest($1::{arr}) i), "
        f"h AS (INSERT INTO {dq} AS o (tbl, id, v) SELECT {tbl}, k.id, x.v FROM k, x "
        "ORDER BY k.id ON CONFLICT (tbl, id) DO UPDATE SET v = GREATEST(o.v, EXCLUDED.v)), "
        f"s AS (DELETE FROM {dq} o USING (SELECT e.tbl, e.id FROM {dq} e WHERE e.tbl = {tbl} "
        f"AND e.v < $2::bigint - {keep} AND e.id NOT IN (SELECT id FROM k) ORDER BY e.v "
        f"LIMIT 2 * cardinality($1::{arr}) + 16 FOR UPDATE SKIP LOCKED) e "
        f"WHERE o.tbl = e.tbl AND o.id = e.id AND o.v < $2::bigint - {keep}) "
        "SELECT (SELECT count(*) FROM d) AS n, (SELECT v FROM x) AS v"
    )


def delete_if_older_sql(cs: CompiledSchema) -> str:
    """Delete each ``(id, version)`` row only while its stored version is older; every
    version is recorded in ``_strata_deleted`` (a later lagging insert lands above it)."""
    pk, dq = quote(cs.pk.name), deleted_qualified(cs)
    return (
        f"WITH w AS (SELECT * FROM unnest($1::{PK_ARRAY[cs.pk.kind]}, $2::bigint[]) "
        f"AS w(id, v)), d AS (DELETE FROM {qualified(cs)} AS t USING w WHERE t.{pk} = w.id "
        f"AND t.{quote(VERSION_COLUMN)} < w.v RETURNING 1), "
        f"h AS (INSERT INTO {dq} AS o (tbl, id, v) SELECT {text_literal(cs.table.name)}, "
        "CAST(w.id AS text), max(w.v) FROM w GROUP BY w.id ORDER BY 2 "
        "ON CONFLICT (tbl, id) DO UPDATE SET v = GREATEST(o.v, EXCLUDED.v)) "
        "SELECT count(*) FROM d"
    )


def _iterate_sql(cs: CompiledSchema) -> str:
    data_cols = [c.name for c in cs.columns]
    return (
        f"SELECT {', '.join(quote(n) for n in [*data_cols, VERSION_COLUMN])} "
        f"FROM {qualified(cs)} WHERE $1::{PK_ARRAY[cs.pk.kind][:-2]} IS NULL "
        f"OR {quote(cs.pk.name)} > $1 ORDER BY {quote(cs.pk.name)} LIMIT $2"
    )


def build_statements(cs: CompiledSchema, kept: frozenset[str] = frozenset()) -> Statements:
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

    upsert = _upsert_compiler(cs, data_cols, keep, returning)

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
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {quote(temp_name)} "
        f"(LIKE {qualified(cs)} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    delete_many = _delete_sql(cs)
    exists_many, _ = _compile(sa.select(pk).where(pk == sa.any_(ids)))
    deleted_versions = (
        f"SELECT id, v FROM {deleted_qualified(cs)} "
        f"WHERE tbl = {text_literal(cs.table.name)} AND id = ANY($1::text[])"
    )
    iterate = _iterate_sql(cs)
    return Statements(
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
        deleted_versions=deleted_versions,
        returning=tuple(c.name for c in returning),
        iterate=iterate,
    )


def conn_of(tx: Any) -> asyncpg.Connection | None:
    """The connection of a transaction handle (None: take one from the pool)."""
    return None if tx is None else tx.conn


def qualified(cs: CompiledSchema) -> str:
    t = cs.table
    return f"{quote(t.schema)}.{quote(t.name)}" if t.schema else quote(t.name)


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


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        schema="pg_catalog",
        format="binary",
    )


async def keep_session(conn: asyncpg.Connection) -> None:
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


# -- the read path's statements (one id, prepared once per connection) --------------------


@dataclass(frozen=True, slots=True)
class ReadStatements:
    get_one: str  # ``WHERE pk = $1``: one id, one row, no array to build or unnest


def build_read_statements(cs: CompiledSchema) -> ReadStatements:
    table = cs.table
    pk = table.c[cs.pk.name]
    selected = [table.c[c.name] for c in cs.columns] + [table.c[VERSION_COLUMN]]
    get_one, _ = _compile(sa.select(*selected).where(pk == sa.bindparam("id", type_=pk.type)))
    return ReadStatements(get_one=get_one)

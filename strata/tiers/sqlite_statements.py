"""SQLite statements for the embedded L3 tier: value conversion, statements compiled once
per schema by SQLAlchemy Core, and the driver-error translation (strata/tiers/sqlite.py runs
them on its worker thread)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sa_sqlite
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from strata.clock import DELETED_TABLE
from strata.errors import IntegrityError, SerializationError, TierError, TierUnavailableError
from strata.schema import VERSION_COLUMN, ColumnKind, CompiledSchema, json_default

DIALECT = sa_sqlite.dialect(paramstyle="qmark")
Row = dict[str, Any]


def _dt_out(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _json_out(value: Any) -> str:
    return orjson.dumps(value, default=json_default).decode()


TO_DB: dict[ColumnKind, Callable[[Any], Any]] = {
    ColumnKind.DATETIME: _dt_out,
    ColumnKind.DATE: date.isoformat,
    ColumnKind.TIME: time.isoformat,
    ColumnKind.UUID: str,
    ColumnKind.DECIMAL: str,
    ColumnKind.BOOL: int,
    ColumnKind.JSON: _json_out,
}
FROM_DB: dict[ColumnKind, Callable[[Any], Any]] = {
    ColumnKind.DATETIME: datetime.fromisoformat,
    ColumnKind.DATE: date.fromisoformat,
    ColumnKind.TIME: time.fromisoformat,
    ColumnKind.UUID: uuid.UUID,
    ColumnKind.DECIMAL: Decimal,
    ColumnKind.BOOL: bool,
    ColumnKind.JSON: orjson.loads,
}


def to_sqlite(kind: ColumnKind, value: Any) -> Any:
    """A canonical value as SQLite stores it (also used for query arguments)."""
    if value is None:
        return None
    conv = TO_DB.get(kind)
    return conv(value) if conv else value


def from_sqlite(kind: ColumnKind, value: Any) -> Any:
    if value is None:
        return None
    conv = FROM_DB.get(kind)
    return conv(value) if conv else value


@dataclass(frozen=True, slots=True)
class Statements:
    columns: tuple[str, ...]
    to_db: tuple[tuple[str, Callable[[Any], Any] | None], ...]
    from_db: tuple[tuple[str, Callable[[Any], Any]], ...]
    get_one: str
    upsert: str
    upsert_if_newer: str
    delete: str
    exists: str
    iterate_first: str
    iterate_next: str
    returning: tuple[str, ...]
    # the deleted-versions high-water mark (see strata/tiers/sqlite.py)
    deleted_get: str  # (id) -> newest delete version of id
    deleted_put: str  # (id, version)
    deleted_sweep: str  # (cutoff, limit): expired entries of this table
    delete_if_older: str  # (id, version) -> 1 when deleted


def _compile(stmt: Any) -> str:
    return str(stmt.compile(dialect=DIALECT))


def build_statements(cs: CompiledSchema, kept: frozenset[str] = frozenset()) -> Statements:
    """``kept``: columns an existing row keeps (the caller did not assign them); they are
    returned, so the caches get the stored value."""
    table = cs.table.to_metadata(sa.MetaData(), schema=None)  # type: ignore[arg-type]
    pk = table.c[cs.pk.name]
    data_cols = [c.name for c in cs.columns]
    selected = [table.c[n] for n in data_cols] + [table.c[VERSION_COLUMN]]
    returning = [pk] + [table.c[cs.by_field[f].name] for f in cs.auto_now_add]
    returning += [table.c[n] for n in sorted(kept)]
    returning.append(table.c[VERSION_COLUMN])
    keep = {cs.by_field[f].name for f in cs.auto_now_add} | {cs.pk.name} | kept

    def upsert(if_newer: bool) -> str:
        values: dict[str, Any] = {n: sa.bindparam(n) for n in [*data_cols, VERSION_COLUMN]}
        stmt = sqlite_insert(table).values(values)
        update: dict[str, Any] = {n: stmt.excluded[n] for n in data_cols if n not in keep}
        stored = table.c[VERSION_COLUMN]
        if if_newer:  # write-behind: the row's own version, and only over an older row
            update[VERSION_COLUMN] = stmt.excluded[VERSION_COLUMN]
            where = stored < stmt.excluded[VERSION_COLUMN]
        else:  # one version space: commit order wins over a lagging client clock
            update[VERSION_COLUMN] = sa.func.max(
                stmt.excluded[VERSION_COLUMN], stored + sa.literal_column("1")
            )
            where = None
        stmt = stmt.on_conflict_do_update(index_elements=[pk], set_=update, where=where)
        return _compile(stmt.returning(*returning))

    one: sa.BindParameter[Any] = sa.bindparam("id")
    tbl = "'" + table.name.replace("'", "''") + "'"
    dq, ver = _quote(DELETED_TABLE), _quote(VERSION_COLUMN)
    # LIMIT written by hand: SQLAlchemy's SQLite LIMIT ? also binds an OFFSET parameter.
    page = sa.select(*selected).order_by(pk)
    return Statements(
        columns=tuple(data_cols),
        to_db=tuple((c.name, TO_DB.get(c.kind)) for c in cs.columns),
        from_db=tuple((c.name, FROM_DB[c.kind]) for c in cs.columns if c.kind in FROM_DB),
        get_one=_compile(sa.select(*selected).where(pk == one)),
        upsert=upsert(False),
        upsert_if_newer=upsert(True),
        delete=_compile(sa.delete(table).where(pk == one).returning(table.c[VERSION_COLUMN])),
        exists=_compile(sa.select(pk).where(pk == one)),
        iterate_first=_compile(page) + " LIMIT ?",
        iterate_next=_compile(page.where(pk > sa.bindparam("after"))) + " LIMIT ?",
        returning=tuple(c.name for c in returning),
        deleted_get=f"SELECT v FROM {dq} WHERE tbl = {tbl} AND id = CAST(? AS TEXT)",
        deleted_put=(
            f"INSERT INTO {dq} (tbl, id, v) VALUES ({tbl}, CAST(? AS TEXT), ?) "
            "ON CONFLICT (tbl, id) DO UPDATE SET v = max(v, excluded.v)"
        ),
        deleted_sweep=(
            f"DELETE FROM {dq} WHERE rowid IN (SELECT rowid FROM {dq} "
            f"WHERE tbl = {tbl} AND v < ? ORDER BY v LIMIT ?)"
        ),
        delete_if_older=(
            f"DELETE FROM {_quote(table.name)} WHERE {_quote(cs.pk.name)} = ? AND {ver} < ? "
            "RETURNING 1"
        ),
    )


def _quote(name: str) -> str:
    return str(DIALECT.identifier_preparer.quote(name))


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise IntegrityError(f"{what}: {exc}", tier="l3") from exc
    except sqlite3.OperationalError as exc:
        msg = str(exc)
        if "no such table" in msg:
            raise TierError(
                f"{what}: {msg}; create the tables first with `await ds.migrate()`", tier="l3"
            ) from exc
        if "no such column" in msg or "has no column" in msg:
            raise TierError(
                f"{what}: {msg}; the table is older than the model: run `await ds.migrate()`",
                tier="l3",
            ) from exc
        if "locked" in msg or "busy" in msg:
            raise SerializationError(f"{what}: {msg} (retry)") from exc
        if "unable to open" in msg:
            raise TierUnavailableError(f"{what}: {msg}", tier="l3") from exc
        raise TierError(f"{what}: {msg}", tier="l3") from exc
    except sqlite3.Error as exc:
        raise TierError(f"{what}: {exc}", tier="l3") from exc

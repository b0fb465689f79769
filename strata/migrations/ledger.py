"""Strata's own bookkeeping objects in the database, and the ledger of applied migrations.

Created by every ``migrate`` / ``migrate_from`` run (idempotently, under the migration lock)
in ``Config.database_schema``:

* ``_strata_migrations``: one row per applied run (``kind`` ``'auto'`` or ``'sql'``);
* ``_strata_deleted``: the data tier's high-water mark of deleted rows, ``(tbl, id, v)``:
  the newest delete version per table and id, so a row written after a delete gets a
  greater version whatever the writer's clock (``strata/tiers/pg_statements.py``); in
  ``database_schema`` and in every other schema holding a model's table. Each delete
  sweeps entries older than ``DELETED_KEEP_MICROS``.

Databases migrated by earlier versions also hold ``_strata_version_seq`` (PostgreSQL) or
``_strata_seq`` (SQLite), from which row versions were once drawn. Nothing reads them now
(versions come from ``strata.clock``); they are no longer created, and never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import sqlalchemy as sa

from strata.clock import DELETED_KEEP_MICROS, DELETED_TABLE

__all__ = [
    "DELETED_KEEP_MICROS",
    "DELETED_TABLE",
    "LEDGER_TABLE",
    "SQLITE_SEQ_TABLE",
    "VERSION_SEQUENCE",
    "MigrationRecord",
    "deleted_table_ddl",
    "ensure_bookkeeping",
    "insert_record",
    "ledger_table",
    "read_records",
]

LEDGER_TABLE = "_strata_migrations"
VERSION_SEQUENCE = "_strata_version_seq"  # legacy: created by earlier versions only
SQLITE_SEQ_TABLE = "_strata_seq"  # legacy: created by earlier versions only

Kind = Literal["auto", "sql"]


@dataclass(frozen=True)
class MigrationRecord:
    """One ledger row: an applied auto run or SQL file."""

    id: int
    applied_at: datetime
    kind: str
    name: str
    checksum: str
    statements: str


def ledger_table(db_schema: str | None) -> sa.Table:
    """The ledger as a Core table (a fresh MetaData each call: never shared with models)."""
    return sa.Table(
        LEDGER_TABLE,
        sa.MetaData(),
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("checksum", sa.Text(), nullable=False),
        sa.Column("statements", sa.Text(), nullable=False),
        schema=db_schema,
    )


def _quote(conn: sa.Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def _qualified(conn: sa.Connection, db_schema: str | None, name: str) -> str:
    if db_schema is None:
        return _quote(conn, name)
    return f"{_quote(conn, db_schema)}.{_quote(conn, name)}"


def deleted_table_ddl(qualified: str, index: str) -> list[str]:
    """``CREATE ... IF NOT EXISTS`` for the deleted-versions table at ``qualified`` (quoted,
    schema-qualified or not) and its sweep index ``index`` (quoted, unqualified); the same
    text on PostgreSQL and SQLite. The primary key serves the upserts' lookups."""
    return [
        f"CREATE TABLE IF NOT EXISTS {qualified} (tbl TEXT NOT NULL, id TEXT NOT NULL, "
        "v BIGINT NOT NULL, PRIMARY KEY (tbl, id))",
        f"CREATE INDEX IF NOT EXISTS {index} ON {qualified} (tbl, v)",
    ]


def ensure_bookkeeping(
    conn: sa.Connection, db_schema: str | None, extra_schemas: Sequence[str] = ()
) -> None:
    """Create the namespaces, the ledger and the deleted-versions tables when missing.

    ``extra_schemas``: the namespaces of tables placed outside ``db_schema``
    (``PostgresPolicy(db_schema=...)``); each gets its own ``_strata_deleted``.

    Runs inside the caller's transaction, after the migration lock was taken, so concurrent
    runs cannot race each other's ``IF NOT EXISTS``.
    """
    index = _quote(conn, f"{DELETED_TABLE}_v")
    if conn.dialect.name == "postgresql":
        for name in dict.fromkeys([*([db_schema] if db_schema else []), *extra_schemas]):
            conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {_quote(conn, name)}")
        # The data tier reads and writes the table in each model table's own schema.
        for table_schema in dict.fromkeys([db_schema, *extra_schemas]):
            for sql in deleted_table_ddl(_qualified(conn, table_schema, DELETED_TABLE), index):
                conn.exec_driver_sql(sql)
    else:
        for sql in deleted_table_ddl(_quote(conn, DELETED_TABLE), index):
            conn.exec_driver_sql(sql)
    ledger_table(db_schema).create(conn, checkfirst=True)


def has_ledger(conn: sa.Connection, db_schema: str | None) -> bool:
    return sa.inspect(conn).has_table(LEDGER_TABLE, schema=db_schema)


def read_records(conn: sa.Connection, db_schema: str | None) -> list[MigrationRecord]:
    """Every ledger row in application order; ``[]`` when the ledger does not exist."""
    if not has_ledger(conn, db_schema):
        return []
    table = ledger_table(db_schema)
    rows = conn.execute(sa.select(table).order_by(table.c.id)).all()
    return [
        MigrationRecord(
            id=row.id,
            applied_at=_aware(row.applied_at),
            kind=row.kind,
            name=row.name,
            checksum=row.checksum,
            statements=row.statements,
        )
        for row in rows
    ]


def insert_record(
    conn: sa.Connection,
    db_schema: str | None,
    *,
    kind: Kind,
    name: str,
    checksum: str,
    statements: str,
) -> MigrationRecord:
    table = ledger_table(db_schema)
    applied_at = datetime.now(UTC)
    result = conn.execute(
        table.insert()
        .values(
            applied_at=applied_at,
            kind=kind,
            name=name,
            checksum=checksum,
            statements=statements,
        )
        .returning(table.c.id)
    )
    return MigrationRecord(
        id=int(result.scalar_one()),
        applied_at=applied_at,
        kind=kind,
        name=name,
        checksum=checksum,
        statements=statements,
    )


def _aware(value: datetime) -> datetime:
    # SQLite keeps no offset: the ledger always writes UTC, so a naive value is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value

"""The auto-migration run: lock, compare, filter, render, apply, record — one transaction.

    migrate(config, schemas)
      │ BEGIN; pg_advisory_xact_lock(key)   (SQLite: BEGIN IMMEDIATE)
      │ ensure schema, _strata_deleted, ledger
      ├─ compare ── Alembic produce_migrations(target MetaData)      -> UpgradeOps
      ├─ rewrite ── AdditiveFilter: steps | drift | refused           (reads row counts)
      ├─ render ─── Alembic offline mode, per dialect                 -> SQL statements
      ├─ fatal refusal? ── raise MigrationError(diffs=...)  => ROLLBACK, nothing applied
      ├─ apply ──── execute the rendered statements
      └─ record ─── one ledger row (kind 'auto') when anything was applied
      │ COMMIT

``plan`` and ``migrate(dry_run=True)`` stop after render, in a read-only transaction without
the lock, and create nothing (not even the ledger).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TypeVar

import sqlalchemy as sa

from strata.config import Config
from strata.errors import MigrationError, StrataError
from strata.migrations.compare import Target, build_targets, compare
from strata.migrations.connect import pg_connection, pg_lock, sqlite_connection, translate
from strata.migrations.ledger import (
    MigrationRecord,
    ensure_bookkeeping,
    insert_record,
    read_records,
)
from strata.migrations.plan import Change, MigrationPlan, MigrationReport
from strata.migrations.render import render
from strata.migrations.rewrite import AdditiveFilter
from strata.schema import CompiledSchema

__all__ = ["migrate", "migration_status", "plan", "run_sync"]

T = TypeVar("T")


async def migrate(
    config: Config, schemas: Sequence[CompiledSchema], *, dry_run: bool = False
) -> MigrationReport:
    """Bring the database up to ``schemas``, additively, in one transaction.

    Applies: new tables (with their indexes and unique constraints; hash partitions on
    PostgreSQL when the policy asks), new columns, new indexes, new unique constraints the
    data allows. Reports as drift, never applies: removals, type / nullability / default
    changes, renames. Raises ``MigrationError`` (``.diffs`` = the refusals) and applies
    nothing when a NOT NULL column without default would be added to a table with rows.

    Safe to call from many processes at once: the run holds the migration lock and compares
    only after taking it, so one run applies and the others find nothing to do. A run with
    nothing to do records nothing. ``dry_run=True`` returns what would be applied, with its
    SQL, and changes nothing; it raises like a real run would.
    """
    metadata, targets = build_targets(schemas, config.dialect)
    if dry_run:
        planned = await run_sync(
            config, lambda conn: _plan(conn, metadata, targets), write=False, doing="migrate"
        )
        _raise_blocking(planned)
        return MigrationReport(
            applied=planned.changes,
            drift=planned.drift,
            refused=planned.refused,
            statements=planned.statements,
            dry_run=True,
        )
    return await run_sync(
        config,
        lambda conn: _migrate(conn, config, metadata, targets),
        write=True,
        doing="migrate",
    )


async def plan(config: Config, schemas: Sequence[CompiledSchema]) -> MigrationPlan:
    """What ``migrate`` would do now, the drift it would report and the refusals it would
    make (``MigrationPlan.blocking`` are those that would make it raise). Changes nothing and
    never raises for a refusal."""
    metadata, targets = build_targets(schemas, config.dialect)
    return await run_sync(
        config, lambda conn: _plan(conn, metadata, targets), write=False, doing="plan"
    )


async def migration_status(config: Config) -> list[MigrationRecord]:
    """The ledger, oldest first; ``[]`` when nothing was ever migrated. Changes nothing."""
    db_schema = config.database_schema if config.dialect == "postgresql" else None
    return await run_sync(
        config, lambda conn: read_records(conn, db_schema), write=False, doing="migration_status"
    )


async def run_sync(
    config: Config, fn: Callable[[sa.Connection], T], *, write: bool, doing: str
) -> T:
    """Run ``fn(conn)`` in one transaction: for ``write``, under the migration lock; else
    read-only. PostgreSQL through ``run_sync`` on the async engine, SQLite in a thread."""
    if config.dialect == "postgresql":
        try:
            async with pg_connection(config) as conn, conn.begin():
                if write:
                    await pg_lock(conn, config)
                else:
                    await conn.execute(sa.text("SET TRANSACTION READ ONLY"))
                return await conn.run_sync(fn)
        except StrataError:
            raise
        except (sa.exc.DBAPIError, OSError, TimeoutError) as exc:
            raise translate(config, exc, doing) from exc
    return await asyncio.to_thread(_sqlite_run, config, fn, write, doing)


def _sqlite_run(config: Config, fn: Callable[[sa.Connection], T], write: bool, doing: str) -> T:
    try:
        with sqlite_connection(config, write=write) as conn, conn.begin():
            return fn(conn)
    except StrataError:
        raise
    except (sa.exc.DBAPIError, OSError) as exc:
        raise translate(config, exc, doing) from exc


def _plan(conn: sa.Connection, metadata: sa.MetaData, targets: list[Target]) -> MigrationPlan:
    upgrade_ops = compare(conn, metadata)
    rewritten = AdditiveFilter(conn, targets).rewrite(upgrade_ops)
    rendered = render(conn.dialect, [step.operation for step in rewritten.steps])
    changes: list[Change] = []
    statements: list[str] = []
    for step, sql in zip(rewritten.steps, rendered, strict=True):
        statements.extend(sql)
        changes.extend(
            Change(p.kind, p.table, p.column, p.description, p.operation, tuple(sql))
            for p in step.changes
        )
    return MigrationPlan(
        dialect=conn.dialect.name,
        changes=changes,
        drift=rewritten.drift,
        refused=rewritten.refused,
        statements=statements,
    )


def _raise_blocking(planned: MigrationPlan) -> None:
    blocking = planned.blocking
    if blocking:
        reasons = "\n".join(f"  - {r}" for r in blocking)
        raise MigrationError(f"migration refused, nothing was applied:\n{reasons}", diffs=blocking)


def _migrate(
    conn: sa.Connection, config: Config, metadata: sa.MetaData, targets: list[Target]
) -> MigrationReport:
    postgres = conn.dialect.name == "postgresql"
    db_schema = config.database_schema if postgres else None
    extra = sorted({t.table.schema for t in targets if postgres and t.table.schema})
    ensure_bookkeeping(conn, db_schema, extra)
    planned = _plan(conn, metadata, targets)
    _raise_blocking(planned)
    record = None
    if planned.statements:
        for statement in planned.statements:
            try:
                conn.exec_driver_sql(statement)
            except sa.exc.DBAPIError as exc:
                if exc.connection_invalidated:
                    raise
                raise MigrationError(
                    f"migration failed, nothing was applied. Statement:\n  {statement}\n"
                    f"Error: {exc.orig}",
                    diffs=[c for c in planned.changes if statement in c.statements],
                ) from exc
        record = insert_record(
            conn,
            db_schema,
            kind="auto",
            name=_record_name(planned.changes),
            checksum=planned.checksum,
            statements=planned.sql,
        )
    return MigrationReport(
        applied=planned.changes,
        drift=planned.drift,
        refused=planned.refused,
        statements=planned.statements,
        record=record,
    )


def _record_name(changes: Sequence[Change]) -> str:
    name = "; ".join(c.description for c in changes)
    return name if len(name) <= 500 else name[:497] + "..."

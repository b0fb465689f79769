"""Alembic environment fed by a Strata DataStore: its models are the target metadata.

    alembic -x app=MODULE:ATTR upgrade head              (or STRATA_APP=MODULE:ATTR)
    alembic -x app=MODULE:ATTR revision --autogenerate -m "..."
    strata revision --app MODULE:ATTR -m "..."           (the same, from the strata command)

The application: ``MODULE:ATTR`` names a DataStore with its schemas registered, or a
zero-argument function (sync or async) returning one. ``strata revision`` hands over its
store directly (``config.attributes["strata_datastore"]``).

The database is the store's own: ``Config.database_url`` (``postgresql://`` runs on asyncpg
through an async engine and ``connection.run_sync``; ``sqlite:///`` on a sync engine) and
``Config.database_schema``, which becomes the connection's ``search_path``. Revisions
therefore name no schema: one file applies to any schema (staging, a test schema, ...).
``alembic_version`` lives in that schema too.

Autogenerate is additive only, like ``strata migrate``: Alembic's comparison goes through
Strata's additive filter (``strata.migrations.rewrite.AdditiveFilter``), so a revision
creates tables (with their hash partitions), columns, indexes and unique constraints, and
never drops, retypes or renames anything; those differences are printed as drift and left
out. A revision that creates tables also creates the row-version sequence Strata's data
tier draws from. An autogenerate run with nothing to add writes no file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from logging.config import fileConfig
from typing import Any

import sqlalchemy as sa
from alembic import context
from alembic.operations import ops
from alembic.util import CommandError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from strata import DataStore
from strata.cli import load_datastore
from strata.errors import MigrationError, StrataError
from strata.migrations.compare import Target, build_targets, compare_server_default
from strata.migrations.connect import unavailable
from strata.migrations.ledger import SQLITE_SEQ_TABLE, VERSION_SEQUENCE
from strata.migrations.operations import CreatePartitionsOp, RebuildTableOp
from strata.migrations.render import render
from strata.migrations.rewrite import AdditiveFilter

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def datastore() -> DataStore:
    """The application's DataStore: handed over by ``strata revision``, or ``-x app=...``,
    or ``STRATA_APP``."""
    store = config.attributes.get("strata_datastore")
    if isinstance(store, DataStore):
        return store
    spec = context.get_x_argument(as_dictionary=True).get("app") or os.environ.get("STRATA_APP")
    if not spec:
        raise CommandError(
            "no application given: run alembic with -x app=MODULE:ATTR "
            "(e.g. alembic -x app=examples.app:ds upgrade head) or set STRATA_APP"
        )
    return load_datastore(spec)


def schema_free(store: DataStore) -> tuple[sa.MetaData, list[Target]]:
    """The store's tables (``store.metadata``) as targets, without ``Config.database_schema``
    (it is the search_path), so the revision is valid in any schema. A table placed in
    another schema by ``PostgresPolicy(db_schema=...)`` keeps it."""
    cfg = store.config
    compiled = [cs for cs in store.schemas.values() if cs.has_l3]
    _, targets = build_targets(compiled, cfg.dialect)
    metadata = sa.MetaData()
    out = []
    for target in targets:
        schema = target.table.schema
        keep: Any = None if schema == cfg.database_schema else schema
        out.append(dataclasses.replace(target, table=target.table.to_metadata(metadata, schema=keep)))
    return metadata, out


STORE = datastore()
TARGET_METADATA, TARGETS = schema_free(STORE)
WANTED = {(t.table.schema, t.table.name) for t in TARGETS}


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Only the models' tables: the ledger, alembic_version and other tables are not ours."""
    if type_ == "schema":
        return name in {schema for schema, _ in WANTED}
    if type_ == "table":
        return (parent_names.get("schema_name"), name) in WANTED
    return True


def _quote(dialect: sa.Dialect, schema: str | None, name: str) -> str:
    quote = dialect.identifier_preparer.quote
    return f"{quote(schema)}.{quote(name)}" if schema else quote(name)


def bookkeeping(dialect: sa.Dialect, created: list[ops.CreateTableOp]) -> list[ops.ExecuteSQLOp]:
    """What the data tier needs beside new tables: its row-version sequence (as
    ``strata.migrations.ledger.ensure_bookkeeping`` creates it)."""
    if not created:
        return []
    if dialect.name == "postgresql":
        schemas = dict.fromkeys(op.schema for op in created)
        return [
            ops.ExecuteSQLOp(
                f"CREATE SEQUENCE IF NOT EXISTS {_quote(dialect, s, VERSION_SEQUENCE)}"
            )
            for s in schemas
        ]
    seq = _quote(dialect, None, SQLITE_SEQ_TABLE)
    return [
        ops.ExecuteSQLOp(
            f"CREATE TABLE IF NOT EXISTS {seq} "
            "(id INTEGER PRIMARY KEY CHECK (id = 1), v INTEGER NOT NULL)"
        ),
        ops.ExecuteSQLOp(f"INSERT OR IGNORE INTO {seq} (id, v) VALUES (1, 0)"),
    ]


def as_alembic(dialect: sa.Dialect, operation: ops.MigrateOperation) -> list[ops.MigrateOperation]:
    """A filter step as operations Alembic can render into a revision file."""
    if isinstance(operation, CreatePartitionsOp):
        (statements,) = render(dialect, [operation])
        return [ops.ExecuteSQLOp(sql) for sql in statements]
    if isinstance(operation, RebuildTableOp):  # SQLite: rendered as a batch block
        return [ops.ModifyTableOps(operation.table_name, operation.ops, schema=operation.schema)]
    return [operation]


def additive_only(migration_context: Any, revision: Any, directives: list[Any]) -> None:
    """Alembic's autogenerate result through Strata's additive filter."""
    script = directives[0]
    conn = migration_context.connection
    rewritten = AdditiveFilter(conn, TARGETS).rewrite(script.upgrade_ops)
    config.attributes["strata_rewritten"] = rewritten
    blocking = [r for r in rewritten.refused if r.fatal]
    if blocking:
        reasons = "\n".join(f"  - {r}" for r in blocking)
        raise MigrationError(f"revision refused, no file written:\n{reasons}", diffs=blocking)
    steps: list[ops.MigrateOperation] = []
    for step in rewritten.steps:
        steps.extend(as_alembic(conn.dialect, step.operation))
    created = [op for op in steps if isinstance(op, ops.CreateTableOp)]
    for finding in [*rewritten.drift, *rewritten.refused]:
        print(f"  left out: {finding}", file=sys.stderr)
    if not steps:
        directives[:] = []  # nothing to add: no empty revision file
        return
    script.upgrade_ops.ops = [*bookkeeping(conn.dialect, created), *steps]
    # Drop what the upgrade created, newest first; the shared sequence and the partitions
    # (dropped with their table) are left alone.
    reversible = [op for op in steps if not isinstance(op, ops.ExecuteSQLOp)]
    script.downgrade_ops = ops.UpgradeOps(ops=reversible).reverse()


def configure(**kw: Any) -> None:
    context.configure(
        target_metadata=TARGET_METADATA,
        include_name=include_name,
        include_schemas=any(schema is not None for schema, _ in WANTED),
        compare_type=True,
        compare_server_default=compare_server_default,
        process_revision_directives=additive_only,
        render_as_batch=STORE.config.dialect == "sqlite",
        **kw,
    )


def run_offline() -> None:
    """``alembic upgrade --sql``: the SQL for the store's dialect, on stdout."""
    cfg = STORE.config
    url = "sqlite://" if cfg.dialect == "sqlite" else "postgresql://"
    configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        if cfg.dialect == "postgresql" and cfg.database_schema:
            context.execute(f"SET search_path TO {_quote(sa.dialects.postgresql.dialect(), None, cfg.database_schema)}")
        context.run_migrations()


def run(connection: sa.Connection) -> None:
    configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_postgres() -> None:
    cfg = STORE.config
    url = "postgresql+asyncpg://" + cfg.asyncpg_dsn.split("://", 1)[1]
    connect_args: dict[str, Any] = {"timeout": cfg.pool_timeout}
    if cfg.database_schema:
        connect_args["server_settings"] = {"search_path": cfg.database_schema}
    engine = create_async_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        try:
            connection = await engine.connect()
        except (sa.exc.DBAPIError, OSError, TimeoutError) as exc:
            raise unavailable(cfg, exc) from exc
        async with connection:
            if cfg.database_schema:
                quoted = _quote(connection.dialect, None, cfg.database_schema)
                await connection.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
                await connection.commit()
            await connection.run_sync(run)
    finally:
        await engine.dispose()


def run_sqlite() -> None:
    engine = sa.create_engine(f"sqlite:///{STORE.config.sqlite_path}", poolclass=NullPool)
    try:
        with engine.connect() as connection:
            run(connection)
    finally:
        engine.dispose()


try:
    if context.is_offline_mode():
        run_offline()
    elif STORE.config.dialect == "postgresql":
        asyncio.run(run_postgres())
    else:
        run_sqlite()
except StrataError as exc:
    # Alembic's command line prints a CommandError as one line; `strata` unwraps it.
    raise CommandError(str(exc)) from exc

"""Alembic environment fed by a Strata DataStore: its models are the target metadata.

    alembic -x app=MODULE:ATTR upgrade head              (or STRATA_APP=MODULE:ATTR)
    alembic -x app=MODULE:ATTR revision --autogenerate -m "..."
    strata revision --app MODULE:ATTR -m "..."           (the same, from the strata command)

The application: ``MODULE:ATTR`` names a DataStore with its schemas registered, or a
zero-argument function (sync or async) returning one. ``strata revision`` hands over its
store directly (``config.attributes["strata_datastore"]``).

Target metadata: the store's tables (``ds.metadata``, copied per dialect the way
``strata migrate`` compares them). The database: the store's own ``Config.database_url``
(``postgresql://`` runs on asyncpg through an async engine and ``connection.run_sync``;
``sqlite:///`` on a sync engine). On PostgreSQL the tables, and ``alembic_version``, live in
``Config.database_schema`` (created when missing), and revisions name it.

Autogenerate is additive only, like ``strata migrate``: Alembic's comparison goes through
Strata's additive filter (``strata.migrations.rewrite.AdditiveFilter``), so a revision
creates tables (with their hash partitions), columns, indexes and unique constraints, and
never drops, retypes or renames anything; those differences are printed as drift and left
out. A revision that creates tables also creates the row-version sequence Strata's data
tier draws from. An autogenerate run with nothing to add writes no file. Only the models'
tables are compared: Strata's ledger and other tables in the database are never touched.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
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
from strata.migrations.compare import (
    Target,
    build_targets,
    compare_server_default,
    normalize_schema,
)
from strata.migrations.connect import unavailable
from strata.migrations.ledger import DELETED_TABLE, deleted_table_ddl
from strata.migrations.operations import CreatePartitionsOp, RebuildTableOp
from strata.migrations.render import render
from strata.migrations.rewrite import AdditiveFilter

config = context.config
HANDED_OVER = "strata_datastore" in config.attributes  # run by `strata revision`
if config.config_file_name is not None and not HANDED_OVER:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def datastore() -> DataStore:
    """The application's DataStore: from ``strata revision``, ``-x app=...`` or STRATA_APP."""
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


def targets_of(store: DataStore) -> tuple[sa.MetaData, list[Target]]:
    """The store's L3 tables as the migration engine compares them."""
    dialect = store.config.dialect
    tables = [*(cs for cs in store.schemas.values() if cs.has_l3), store.cache.table]
    metadata, targets = build_targets(tables, dialect)
    if dialect == "sqlite":
        # A SQLite revision names SQLite's types: Alembic cannot render the PostgreSQL half
        # of a type variant (JSONB's astext_type) outside PostgreSQL.
        for table in metadata.tables.values():
            for column in table.columns:
                variants = getattr(column.type, "_variant_mapping", {})
                column.type = variants.get("sqlite", column.type)
    return metadata, targets


def _quote(dialect: sa.Dialect, schema: str | None, name: str) -> str:
    quote = dialect.identifier_preparer.quote
    return f"{quote(schema)}.{quote(name)}" if schema else quote(name)


def bookkeeping(dialect: sa.Dialect, created: list[ops.CreateTableOp]) -> list[ops.ExecuteSQLOp]:
    """What the data tier needs beside new tables: its deleted-versions table, as
    ``strata.migrations.ledger.ensure_bookkeeping`` creates it."""
    if not created:
        return []
    schemas = dict.fromkeys(op.schema for op in created) if dialect.name == "postgresql" else {}
    index = dialect.identifier_preparer.quote(f"{DELETED_TABLE}_v")
    return [
        ops.ExecuteSQLOp(sql)
        for s in schemas or [None]
        for sql in deleted_table_ddl(_quote(dialect, s, DELETED_TABLE), index)
    ]


def as_alembic(dialect: sa.Dialect, operation: ops.MigrateOperation) -> list[ops.MigrateOperation]:
    """A step of the additive filter as operations Alembic can render into a revision."""
    if isinstance(operation, CreatePartitionsOp):
        (statements,) = render(dialect, [operation])
        return [ops.ExecuteSQLOp(sql) for sql in statements]
    if isinstance(operation, RebuildTableOp):  # SQLite: rendered as a batch block
        return [ops.ModifyTableOps(operation.table_name, operation.ops, schema=operation.schema)]
    return [operation]


def additive_only(targets: list[Target]) -> Callable[..., None]:
    """Alembic's ``process_revision_directives``: its autogenerate result through Strata's
    additive filter."""

    def process(migration_context: Any, revision: Any, directives: list[Any]) -> None:
        script = directives[0]
        conn = migration_context.connection
        rewritten = AdditiveFilter(conn, targets).rewrite(script.upgrade_ops)
        config.attributes["strata_rewritten"] = rewritten
        blocking = [r for r in rewritten.refused if r.fatal]
        if blocking:
            reasons = "\n".join(f"  - {r}" for r in blocking)
            raise MigrationError(f"revision refused, no file written:\n{reasons}", diffs=blocking)
        steps: list[ops.MigrateOperation] = []
        for step in rewritten.steps:
            steps.extend(as_alembic(conn.dialect, step.operation))
        if not HANDED_OVER:  # `strata revision` reports these itself
            for finding in [*rewritten.drift, *rewritten.refused]:
                print(f"left out (Strata never applies it): {finding}", file=sys.stderr)
        if not steps:
            directives[:] = []  # nothing to add: no empty revision file
            if not HANDED_OVER:
                print("nothing to add: no revision written", file=sys.stderr)
            return
        created = [op for op in steps if isinstance(op, ops.CreateTableOp)]
        script.upgrade_ops.ops = [*bookkeeping(conn.dialect, created), *steps]
        # The downgrade drops what the upgrade created, newest first; the shared sequence
        # and the partitions (dropped with their table) are left alone.
        reversible = [op for op in steps if not isinstance(op, ops.ExecuteSQLOp)]
        script.downgrade_ops = ops.UpgradeOps(ops=reversible).reverse()

    return process


class Environment:
    """One Alembic run against the application's store."""

    def __init__(self, store: DataStore) -> None:
        self.config = store.config
        self.metadata, self.targets = targets_of(store)
        self.schema = self.config.database_schema if self.config.dialect == "postgresql" else None

    def configure(self, connection: sa.Connection | None = None, **kw: Any) -> None:
        def normal(schema: str | None) -> str | None:
            return normalize_schema(connection, schema) if connection is not None else schema

        wanted = {(normal(t.table.schema), t.table.name) for t in self.targets}
        schemas = {schema for schema, _ in wanted}

        def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
            """Only the models' tables: the ledger and other tables are never compared."""
            if type_ == "schema":
                return name in schemas
            if type_ == "table":
                return (normal(parent_names.get("schema_name")), name) in wanted
            return True

        context.configure(
            connection=connection,
            target_metadata=self.metadata,
            version_table_schema=self.schema,
            include_name=include_name,
            include_schemas=any(schema is not None for schema in schemas),
            compare_type=True,
            compare_server_default=compare_server_default,
            process_revision_directives=additive_only(self.targets),
            render_as_batch=self.config.dialect == "sqlite",
            **kw,
        )

    def run_offline(self) -> None:
        """``alembic upgrade head --sql``: the SQL for the store's dialect, on stdout."""
        url = "postgresql://" if self.config.dialect == "postgresql" else "sqlite://"
        self.configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
        with context.begin_transaction():
            if self.schema:
                dialect = sa.dialects.postgresql.dialect()
                context.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(dialect, None, self.schema)}")
            context.run_migrations()

    def run(self, connection: sa.Connection) -> None:
        if self.schema:
            schema = _quote(connection.dialect, None, self.schema)
            connection.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        self.configure(connection)
        with context.begin_transaction():
            context.run_migrations()

    async def run_postgres(self) -> None:
        cfg = self.config
        url = "postgresql+asyncpg://" + cfg.asyncpg_dsn.split("://", 1)[1]
        engine = create_async_engine(
            url, poolclass=NullPool, connect_args={"timeout": cfg.pool_timeout}
        )
        try:
            connection = engine.connect()
            try:
                await connection.start()
            except (sa.exc.DBAPIError, OSError, TimeoutError) as exc:
                raise unavailable(cfg, exc) from exc
            try:
                await connection.run_sync(self.run)
                await connection.commit()
            finally:
                await connection.close()
        finally:
            await engine.dispose()

    def run_sqlite(self) -> None:
        engine = sa.create_engine(f"sqlite:///{self.config.sqlite_path}", poolclass=NullPool)
        try:
            with engine.connect() as connection:
                self.run(connection)
                connection.commit()
        finally:
            engine.dispose()

    def __call__(self) -> None:
        if context.is_offline_mode():
            self.run_offline()
        elif self.config.dialect == "postgresql":
            asyncio.run(self.run_postgres())
        else:
            self.run_sqlite()


try:
    Environment(datastore())()
except StrataError as exc:
    # Alembic's command line prints a CommandError as one line; `strata` unwraps it.
    raise CommandError(str(exc)) from exc

"""Step 1 of the pipeline: compare the models' tables with the database (Alembic autogenerate).

The compiled schemas' tables are copied into a private ``MetaData`` (the target) and handed
to ``alembic.autogenerate.produce_migrations``, restricted by ``include_name`` to exactly
those tables, so the rest of the database (the ledger, other applications' tables) is never
reported. The result is Alembic's ``UpgradeOps``: operation objects, not yet filtered.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import produce_migrations
from alembic.migration import MigrationContext
from alembic.operations import ops

from strata.errors import MigrationError
from strata.schema import CompiledSchema, PostgresPolicy

__all__ = ["Target", "build_targets", "compare", "normalize_schema"]


@dataclass(frozen=True)
class Target:
    """One model table as the migration engine sees it."""

    name: str  # the Strata schema name
    table: sa.Table  # the copy in the target MetaData
    policy: PostgresPolicy
    pk_column: str
    columns_by_field: dict[str, str]

    @property
    def qualified(self) -> str:
        return f"{self.table.schema}.{self.table.name}" if self.table.schema else self.table.name


def build_targets(
    schemas: Sequence[CompiledSchema], dialect: str
) -> tuple[sa.MetaData, list[Target]]:
    """Copy the L3 tables of ``schemas`` into a fresh MetaData (schemas with ``l3=None`` have
    no table and are skipped). SQLite has no namespaces: the copies drop ``schema``."""
    metadata = sa.MetaData()
    targets: list[Target] = []
    seen: dict[tuple[str | None, str], str] = {}
    for compiled in schemas:
        policy = compiled.source.l3
        if policy is None:
            continue
        db_schema = compiled.table.schema if dialect == "postgresql" else None
        key = (db_schema, compiled.table.name)
        if key in seen:
            raise MigrationError(
                f"schemas {seen[key]!r} and {compiled.name!r} both map to table "
                f"{compiled.qualified_table}; give one of them PostgresPolicy(table=...)",
                diffs=[compiled.qualified_table],
            )
        seen[key] = compiled.name
        if dialect == "postgresql":
            table = compiled.table.to_metadata(metadata)
        else:
            # SQLAlchemy documents schema=None as "the MetaData's schema" (none); stubs omit it
            table = compiled.table.to_metadata(metadata, schema=None)  # type: ignore[arg-type]
        targets.append(
            Target(
                name=compiled.name,
                table=table,
                policy=policy,
                pk_column=compiled.pk.name,
                columns_by_field={c.field: c.name for c in compiled.columns},
            )
        )
    return metadata, targets


def normalize_schema(conn: sa.Connection, schema: str | None) -> str | None:
    """``None`` for the connection's default schema, as Alembic reports it."""
    default = conn.dialect.default_schema_name
    return None if schema is None or schema == default else schema


_STRING_LITERAL = re.compile(r"""^\(?'((?:[^']|'')*)'(?:::[\w .\[\]"]+)?\)?$""", re.DOTALL)


def compare_server_default(
    context: MigrationContext,
    inspected_column: sa.Column[Any],
    metadata_column: sa.Column[Any],
    inspected_default: str | None,
    metadata_default: Any,
    rendered_metadata_default: str | None,
) -> bool | None:
    """Alembic hook: compare plain string defaults ourselves, leave the rest to Alembic.

    Alembic renders a string default unescaped for comparison, so a default holding a quote
    (``Field(default="it's")``) breaks its PostgreSQL check (invalid SQL) and shows as false
    drift on SQLite. The database reports such a default as ``'it''s'`` (PostgreSQL adds a
    cast: ``'it''s'::text``).
    """
    if not isinstance(metadata_default, sa.DefaultClause) or not isinstance(
        metadata_default.arg, str
    ):
        return None
    if inspected_default is None:
        return True
    match = _STRING_LITERAL.match(inspected_default.strip())
    if match is None:
        return True
    return match.group(1).replace("''", "'") != metadata_default.arg


def compare(conn: sa.Connection, metadata: sa.MetaData) -> ops.UpgradeOps:
    """Alembic's comparison of ``metadata`` with the database behind ``conn``."""
    wanted = {(normalize_schema(conn, t.schema), t.name) for t in metadata.tables.values()}
    schemas = {schema for schema, _ in wanted}

    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        if type_ == "schema":
            return name in schemas
        if type_ == "table":
            schema = normalize_schema(conn, parent_names.get("schema_name"))
            return (schema, name) in wanted
        return True

    context = MigrationContext.configure(
        conn,
        opts={
            "target_metadata": metadata,
            "include_schemas": any(s is not None for s in schemas),
            "include_name": include_name,
            "compare_type": True,
            "compare_server_default": compare_server_default,
        },
    )
    script = produce_migrations(context, metadata)
    upgrade_ops = script.upgrade_ops
    assert upgrade_ops is not None  # produce_migrations always fills it
    return upgrade_ops

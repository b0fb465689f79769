"""PostgreSQL hash partitioning from ``PostgresPolicy(partition_by=..., partitions=N)``.

Only a NEW table is ever partitioned (``PARTITION BY HASH (pk)`` and ``N`` partitions
``{table}_p{i}``); an existing table's partitioning is compared with the policy and any
difference is reported as drift. SQLite ignores partitioning.
"""

from __future__ import annotations

import sqlalchemy as sa

from strata.errors import MigrationError
from strata.migrations.compare import Target

__all__ = ["new_table_partition_column", "partition_columns", "partitioning_drift"]


def _regclass(dialect: sa.Dialect, schema: str | None, name: str) -> str:
    quote = dialect.identifier_preparer.quote
    return f"{quote(schema)}.{quote(name)}" if schema else quote(name)


def new_table_partition_column(dialect: sa.Dialect, target: Target) -> str | None:
    """The hash partition column a NEW table gets, or None. Raises ``MigrationError`` for a
    policy PostgreSQL cannot honour."""
    policy = target.policy
    if dialect.name != "postgresql" or not policy.partition_by:
        return None
    table = target.qualified
    if policy.partitions < 0:
        raise MigrationError(
            f"{table}: PostgresPolicy(partitions={policy.partitions}) must not be negative",
            diffs=[table],
        )
    if policy.partitions == 0:
        return None
    column = target.columns_by_field.get(policy.partition_by, policy.partition_by)
    if column != target.pk_column:
        raise MigrationError(
            f"{table}: cannot partition by {policy.partition_by!r}. PostgreSQL requires the "
            "primary key of a partitioned table to include the partition column, and Strata "
            "tables have a single-column primary key, so partition_by must be the primary key "
            f"field ({target.pk_column!r}).",
            diffs=[table],
        )
    uniques = [
        [c.name for c in constraint.columns]
        for constraint in target.table.constraints
        if isinstance(constraint, sa.UniqueConstraint)
    ] + [[c.name for c in index.columns] for index in target.table.indexes if index.unique]
    for columns in uniques:
        if column not in columns:
            raise MigrationError(
                f"{table}: unique ({', '.join(columns)}) cannot exist on a hash-partitioned "
                "table, because PostgreSQL only enforces uniqueness that includes the "
                "partition column. Drop unique=True / Index(unique=True) or the partitioning.",
                diffs=[table],
            )
    last = f"{target.table.name}_p{policy.partitions - 1}"
    if len(last) > 63:
        raise MigrationError(
            f"{table}: partition name {last!r} is longer than PostgreSQL's 63 characters",
            diffs=[table],
        )
    return column


def partitioning_drift(conn: sa.Connection, target: Target) -> str | None:
    """How an EXISTING table's partitioning differs from its policy, or None."""
    policy = target.policy
    if conn.dialect.name != "postgresql" or not policy.partition_by or policy.partitions <= 0:
        return None
    row = conn.execute(
        sa.text(
            "SELECT c.relkind::text,"
            " (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid)"
            " FROM pg_class c WHERE c.oid = to_regclass(:name)"
        ),
        {"name": _regclass(conn.dialect, target.table.schema, target.table.name)},
    ).first()
    if row is None:
        return None
    relkind, children = row
    if relkind != "p":
        return (
            f"the policy asks for {policy.partitions} hash partitions but the existing table "
            "is not partitioned; Strata never repartitions a table: create a partitioned "
            "copy, move the rows and swap the names in a maintenance window"
        )
    if children != policy.partitions:
        return (
            f"the policy asks for {policy.partitions} partitions but the table has "
            f"{children}; changing the partition count means re-creating the table"
        )
    return None


def partition_columns(conn: sa.Connection, schema: str | None, tname: str) -> list[str]:
    """The partition key columns of a table; ``[]`` when it is not partitioned."""
    if conn.dialect.name != "postgresql":
        return []
    rows = conn.execute(
        sa.text(
            "SELECT a.attname FROM pg_partitioned_table p JOIN pg_attribute a"
            " ON a.attrelid = p.partrelid AND a.attnum = ANY (p.partattrs::int2[])"
            " WHERE p.partrelid = to_regclass(:name)"
        ),
        {"name": _regclass(conn.dialect, schema, tname)},
    )
    return [str(r[0]) for r in rows]

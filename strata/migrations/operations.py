"""Operations Strata adds to Alembic's: objects like Alembic's own, so that a plan is one
list of inspectable operations whatever produced them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic.operations import ops

__all__ = ["CreatePartitionsOp", "RebuildTableOp"]


class CreatePartitionsOp(ops.MigrateOperation):
    """PostgreSQL: the ``count`` hash partitions ``{table}_p{i}`` of a new partitioned table."""

    def __init__(self, table_name: str, column: str, count: int, *, schema: str | None) -> None:
        self.table_name = table_name
        self.column = column
        self.count = count
        self.schema = schema

    @property
    def partition_names(self) -> list[str]:
        return [f"{self.table_name}_p{i}" for i in range(self.count)]

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("create_partitions", self.schema, self.table_name, self.column, self.count)


class RebuildTableOp(ops.MigrateOperation):
    """SQLite: additive changes its ALTER TABLE cannot make (a unique constraint, a NOT NULL
    column without default on an empty table), applied by rebuilding the table with
    Alembic's batch mode: create a copy with the changes, copy the rows, swap.

    ``copy_from`` is the table as reflected before the run; ``ops`` are ``AddColumnOp`` and
    named ``CreateUniqueConstraintOp`` only.
    """

    def __init__(
        self,
        table_name: str,
        copy_from: sa.Table,
        operations: Sequence[ops.MigrateOperation],
        *,
        schema: str | None,
    ) -> None:
        self.table_name = table_name
        self.copy_from = copy_from
        self.ops = list(operations)
        self.schema = schema

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return (
            "rebuild_table",
            self.schema,
            self.table_name,
            [o.to_diff_tuple() for o in self.ops],
        )

"""Step 4 of the pipeline: render operations to SQL for the target dialect.

Alembic's offline mode (``as_sql=True``) writes each statement it would execute to an output
buffer; a buffer that keeps every write as one statement gives the exact SQL list. The same
list is shown by a dry run, executed by ``migrate`` and stored in the ledger, so what a
report says ran is what ran.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations, ops

from strata.migrations.operations import CreatePartitionsOp, RebuildTableOp

__all__ = ["render", "suggest"]


class _StatementSink(io.StringIO):
    """An output buffer for Alembic's offline mode: each write is one statement."""

    def __init__(self) -> None:
        super().__init__()
        self.statements: list[str] = []

    def write(self, s: str) -> int:
        text = s.strip()
        if text.endswith(";"):
            text = text[:-1].rstrip()
        if text:
            self.statements.append(text)
        return len(s)


def _offline(dialect: sa.Dialect) -> tuple[Operations, _StatementSink]:
    sink = _StatementSink()
    context = MigrationContext.configure(
        dialect=dialect,
        opts={"as_sql": True, "output_buffer": sink, "literal_binds": True},
    )
    return Operations(context), sink


def render(dialect: sa.Dialect, operations: Sequence[ops.MigrateOperation]) -> list[list[str]]:
    """The SQL statements of each operation, in order."""
    runner, sink = _offline(dialect)
    out: list[list[str]] = []
    for operation in operations:
        start = len(sink.statements)
        if isinstance(operation, CreatePartitionsOp):
            sink.statements.extend(_partitions_sql(dialect, operation))
        elif isinstance(operation, RebuildTableOp):
            _render_rebuild(runner, operation)
        else:
            runner.invoke(operation)
        out.append(sink.statements[start:])
    return out


def suggest(dialect: sa.Dialect, operation: ops.MigrateOperation) -> str | None:
    """The SQL of a drift operation as a hint for the manual step, or None when the dialect
    cannot express it as a plain statement (SQLite has no ALTER COLUMN)."""
    if dialect.name == "sqlite" and isinstance(operation, ops.AlterColumnOp):
        return None
    runner, sink = _offline(dialect)
    try:
        runner.invoke(operation)
    except (NotImplementedError, sa.exc.CompileError):
        return None
    return "".join(f"{s};\n" for s in sink.statements).strip() or None


def _qualified(dialect: sa.Dialect, schema: str | None, name: str) -> str:
    quote = dialect.identifier_preparer.quote
    return f"{quote(schema)}.{quote(name)}" if schema else quote(name)


def _partitions_sql(dialect: sa.Dialect, operation: CreatePartitionsOp) -> list[str]:
    parent = _qualified(dialect, operation.schema, operation.table_name)
    return [
        f"CREATE TABLE {_qualified(dialect, operation.schema, name)} PARTITION OF {parent} "
        f"FOR VALUES WITH (MODULUS {operation.count}, REMAINDER {i})"
        for i, name in enumerate(operation.partition_names)
    ]


def _render_rebuild(runner: Operations, operation: RebuildTableOp) -> None:
    with runner.batch_alter_table(
        operation.table_name,
        schema=operation.schema,
        recreate="always",
        copy_from=operation.copy_from,
    ) as batch:
        for sub in operation.ops:
            if isinstance(sub, ops.AddColumnOp):
                batch.add_column(sub.column)
            elif isinstance(sub, ops.CreateUniqueConstraintOp):
                assert isinstance(sub.constraint_name, str)  # named by the rewriter
                batch.create_unique_constraint(sub.constraint_name, list(sub.columns))
            else:  # pragma: no cover - the rewriter only batches the two kinds above
                raise AssertionError(sub)

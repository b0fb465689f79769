"""Step 3 of the pipeline: the additive-only filter over Alembic's operations.

Each operation from the comparison ends in exactly one of three lists:

* a ``Step`` to apply: create table (+ hash partitions on PostgreSQL), add column, create
  index, add unique constraint;
* ``Drift``: anything that would drop, retype, re-null, re-default or rename, reported with
  the manual step and never applied;
* ``Refusal``: an additive change the existing rows do not allow (duplicates for a new unique
  constraint; a NOT NULL column without default on a table with rows, which is fatal).

The filter reads the database (row counts, duplicate probes, partitioning) through the
connection it is given, inside the run's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from alembic.operations import ops

from strata.migrations.compare import Target, normalize_schema
from strata.migrations.operations import CreatePartitionsOp, RebuildTableOp
from strata.migrations.partitions import (
    new_table_partition_column,
    partition_columns,
    partitioning_drift,
)
from strata.migrations.plan import ChangeKind, Drift, DriftKind, Refusal
from strata.migrations.render import suggest

__all__ = ["AdditiveFilter", "PendingChange", "Rewritten", "Step"]


@dataclass(frozen=True)
class PendingChange:
    kind: ChangeKind
    table: str
    column: str | None
    description: str
    operation: ops.MigrateOperation


@dataclass
class Step:
    """What the renderer renders (one operation) and the changes it carries."""

    operation: ops.MigrateOperation
    changes: list[PendingChange]


@dataclass
class Rewritten:
    steps: list[Step] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)


def _qualified(schema: str | None, name: str) -> str:
    return f"{schema}.{name}" if schema else name


def _column_names(columns: Sequence[Any]) -> list[str]:
    return [c if isinstance(c, str) else str(getattr(c, "name", c)) for c in columns]


def _default_text(value: Any, dialect: sa.Dialect) -> str:
    """A server default as SQL for messages: ``DEFAULT 'x'``, ``DEFAULT 1``, ``no default``."""
    if value is None or value is False:
        return "no default"
    if isinstance(value, sa.DefaultClause):
        arg = value.arg
        if isinstance(arg, str):
            return "DEFAULT '" + arg.replace("'", "''") + "'"
        value = arg
    if isinstance(value, sa.TextClause):
        return f"DEFAULT {value.text}"
    if isinstance(value, sa.ClauseElement):
        return f"DEFAULT {value.compile(dialect=dialect)}"
    return f"DEFAULT {value}"


class AdditiveFilter:
    """The rewriter: Alembic ``UpgradeOps`` in, steps / drift / refusals out."""

    def __init__(self, conn: sa.Connection, targets: Sequence[Target]) -> None:
        self.conn = conn
        self.dialect = conn.dialect
        self.targets = {(normalize_schema(conn, t.table.schema), t.table.name): t for t in targets}
        self.result = Rewritten()
        self._row_counts: dict[tuple[str | None, str], int] = {}

    # -- entry point -----------------------------------------------------------------------

    def rewrite(self, upgrade_ops: ops.UpgradeOps) -> Rewritten:
        new_tables: set[tuple[str | None, str]] = set()
        for op in upgrade_ops.ops:
            if isinstance(op, ops.CreateTableOp):
                new_tables.add((normalize_schema(self.conn, op.schema), op.table_name))
                self._create_table(op)
            elif isinstance(op, ops.ModifyTableOps):
                self._modify_table(op)
            elif isinstance(op, ops.DropTableOp):
                self._drift(
                    op.schema,
                    op.table_name,
                    None,
                    DriftKind.REMOVED_TABLE,
                    "the table exists in the database but no schema describes it; Strata "
                    "never drops tables: drop it yourself once its data is no longer needed",
                    op,
                )
            else:
                self._other(op)
        for key, target in self.targets.items():
            if key not in new_tables and (text := partitioning_drift(self.conn, target)):
                self._drift(
                    target.table.schema, target.table.name, None, DriftKind.PARTITIONING, text
                )
        # Alembic finds removed columns in set order: sort for stable reports
        self.result.drift.sort(key=lambda d: (d.table, d.column or "", d.kind.value))
        return self.result

    # -- new tables --------------------------------------------------------------------------

    def _create_table(self, op: ops.CreateTableOp) -> None:
        table = _qualified(op.schema, op.table_name)
        target = self.targets[(normalize_schema(self.conn, op.schema), op.table_name)]
        # nothing to probe in a new table
        self._row_counts[(normalize_schema(self.conn, op.schema), op.table_name)] = 0
        n_columns = sum(isinstance(c, sa.Column) for c in op.columns)
        step = Step(
            op,
            [
                PendingChange(
                    ChangeKind.CREATE_TABLE,
                    table,
                    None,
                    f"create table {table} ({n_columns} columns)",
                    op,
                )
            ],
        )
        self.result.steps.append(step)
        partition_column = new_table_partition_column(self.dialect, target)
        if partition_column is None:
            return
        quoted = self.dialect.identifier_preparer.quote(partition_column)
        op.kw["postgresql_partition_by"] = f"HASH ({quoted})"
        parts = CreatePartitionsOp(
            op.table_name, partition_column, target.policy.partitions, schema=op.schema
        )
        names = parts.partition_names
        self.result.steps.append(
            Step(
                parts,
                [
                    PendingChange(
                        ChangeKind.CREATE_PARTITIONS,
                        table,
                        partition_column,
                        f"create {parts.count} hash partitions of {table} on "
                        f"{partition_column} ({names[0]} .. {names[-1]})",
                        parts,
                    )
                ],
            )
        )

    # -- existing tables ---------------------------------------------------------------------

    def _modify_table(self, group: ops.ModifyTableOps) -> None:
        schema, tname = group.schema, group.table_name
        table = _qualified(schema, tname)
        created = {op.index_name for op in group.ops if isinstance(op, ops.CreateIndexOp)} | {
            op.constraint_name for op in group.ops if isinstance(op, ops.CreateUniqueConstraintOp)
        }
        dropped = {op.index_name for op in group.ops if isinstance(op, ops.DropIndexOp)} | {
            op.constraint_name for op in group.ops if isinstance(op, ops.DropConstraintOp)
        }
        changed = {name for name in created & dropped if name}
        added = {op.column.name: op.column for op in group.ops if isinstance(op, ops.AddColumnOp)}
        plain: list[Step] = []
        rebuild: list[tuple[ops.MigrateOperation, PendingChange]] = []
        needs_rebuild = False
        for op in group.ops:
            if isinstance(op, ops.AddColumnOp):
                column = op.column
                if not column.nullable and column.server_default is None:
                    if self._rows(schema, tname) > 0:
                        self.result.refused.append(_not_null_refusal(table, column.name))
                        continue
                    needs_rebuild = needs_rebuild or self.dialect.name == "sqlite"
                copy = column._copy()
                copy.index = None
                copy.unique = None
                new_op = ops.AddColumnOp(tname, copy, schema=schema)
                desc = f"add column {table}.{column.name} {self._describe_column(column)}"
                change = PendingChange(ChangeKind.ADD_COLUMN, table, column.name, desc, new_op)
                rebuild.append((new_op, change))
            elif isinstance(op, ops.CreateIndexOp):
                if op.index_name in changed:
                    self._changed(schema, tname, "index", op.index_name, op)
                    continue
                cols = _column_names(op.columns)
                if op.unique and (refusal := self._unique_refusal(schema, tname, cols, added)):
                    self.result.refused.append(refusal)
                    continue
                unique = "unique " if op.unique else ""
                desc = f"create {unique}index {op.index_name} on {table} ({', '.join(cols)})"
                change = PendingChange(ChangeKind.CREATE_INDEX, table, None, desc, op)
                plain.append(Step(op, [change]))
            elif isinstance(op, ops.CreateUniqueConstraintOp):
                if op.constraint_name in changed:
                    self._changed(schema, tname, "unique constraint", op.constraint_name, op)
                    continue
                cols = list(op.columns)
                if refusal := self._unique_refusal(schema, tname, cols, added, constraint=True):
                    self.result.refused.append(refusal)
                    continue
                if self.dialect.name == "sqlite":
                    needs_rebuild = True
                    if not op.constraint_name:
                        op = ops.CreateUniqueConstraintOp(
                            f"uq_{tname}_{'_'.join(cols)}"[:63], tname, cols, schema=schema
                        )
                desc = f"add unique constraint on {table} ({', '.join(cols)})"
                change = PendingChange(
                    ChangeKind.ADD_UNIQUE_CONSTRAINT,
                    table,
                    cols[0] if len(cols) == 1 else None,
                    desc,
                    op,
                )
                rebuild.append((op, change))
            elif isinstance(op, ops.AlterColumnOp):
                self._alter_column(op)
            elif isinstance(op, ops.DropColumnOp):
                self._drop_column(op)
            elif isinstance(op, ops.DropIndexOp):
                if op.index_name not in changed:
                    self._drift(
                        schema,
                        tname,
                        None,
                        DriftKind.REMOVED_INDEX,
                        f"index {op.index_name} exists in the database but not in the schema; "
                        "it is left in place (drop it yourself if it is no longer wanted)",
                        op,
                    )
            elif isinstance(op, ops.DropConstraintOp):
                if op.constraint_name not in changed:
                    self._drift(
                        schema,
                        tname,
                        None,
                        DriftKind.REMOVED_CONSTRAINT,
                        f"{op.constraint_type or ''} constraint {op.constraint_name} exists in "
                        "the database but not in the schema; it is still enforced (writes "
                        "that break it fail) until you drop it yourself",
                        op,
                    )
            else:
                self._other(op)
        if needs_rebuild and rebuild:
            copy_from = _reflect_for_rebuild(self.conn, schema, tname)
            batch = RebuildTableOp(tname, copy_from, [o for o, _ in rebuild], schema=schema)
            self.result.steps.append(Step(batch, [c for _, c in rebuild]))
        else:
            self.result.steps.extend(Step(o, [c]) for o, c in rebuild)
        self.result.steps.extend(plain)

    def _describe_column(self, column: sa.Column[Any]) -> str:
        text = str(column.type.compile(dialect=self.dialect))
        if not column.nullable:
            text += " NOT NULL"
        if column.server_default is not None:
            text += f" {_default_text(column.server_default, self.dialect)}"
        return text

    def _alter_column(self, op: ops.AlterColumnOp) -> None:
        schema, tname, cname = op.schema, op.table_name, op.column_name
        where = f"ALTER TABLE {_qualified(schema, tname)}"
        sqlite = self.dialect.name == "sqlite"
        rebuild_hint = " (SQLite: rebuild the table)" if sqlite else ""

        def single(**modify: Any) -> ops.AlterColumnOp:
            return ops.AlterColumnOp(
                tname,
                cname,
                schema=schema,
                existing_type=op.existing_type,
                existing_server_default=op.existing_server_default,
                existing_nullable=op.existing_nullable,
                **modify,
            )

        if op.modify_type is not None:
            self._drift(
                schema,
                tname,
                cname,
                DriftKind.TYPE_CHANGE,
                f"the column is {op.existing_type} in the database but the model wants "
                f"{op.modify_type}; Strata never changes a column's type (it could lose data): "
                f"convert it yourself ({where} ALTER COLUMN {cname} TYPE ... USING ...)"
                f"{rebuild_hint} or change the field back",
                single(modify_type=op.modify_type),
            )
        if op.modify_nullable is not None:
            if op.modify_nullable:
                text = (
                    "the field is Optional but the column is NOT NULL, so writing None fails; "
                    f"allow NULLs yourself ({where} ALTER COLUMN {cname} DROP NOT NULL)"
                    f"{rebuild_hint} or make the field required"
                )
            else:
                text = (
                    "the field is required but the column allows NULL, so rows holding NULL "
                    f"cannot be loaded; fill the NULLs, then {where} ALTER COLUMN {cname} SET "
                    f"NOT NULL{rebuild_hint}, or make the field Optional"
                )
            self._drift(
                schema,
                tname,
                cname,
                DriftKind.NULLABILITY_CHANGE,
                text,
                single(modify_nullable=op.modify_nullable),
            )
        if op.modify_server_default is not False:
            self._drift(
                schema,
                tname,
                cname,
                DriftKind.SERVER_DEFAULT_CHANGE,
                f"the column has {_default_text(op.existing_server_default, self.dialect)} in "
                "the database but the model gives "
                f"{_default_text(op.modify_server_default, self.dialect)}; change the default "
                f"yourself ({where} ALTER COLUMN {cname} SET/DROP DEFAULT)"
                f"{rebuild_hint} or change the field's default back",
                single(modify_server_default=op.modify_server_default),
            )
        if op.modify_name is not None:
            self._drift(
                schema,
                tname,
                cname,
                DriftKind.RENAME,
                f"rename to {op.modify_name} is not applied; rename the column yourself",
                single(modify_name=op.modify_name),
            )

    def _drop_column(self, op: ops.DropColumnOp) -> None:
        column = op.to_column()
        text = (
            "the column exists in the database but the model has no field for it; Strata "
            "never drops columns, so its data stays. If the field was removed on purpose, "
            "drop the column yourself once the data is not needed; if it was renamed, copy "
            "the data into the new column first"
        )
        if not column.nullable and column.server_default is None:
            text += (
                ". It is NOT NULL without a default, so inserts from Strata fail until you "
                "drop it, give it a default or allow NULL"
            )
        self._drift(op.schema, op.table_name, op.column_name, DriftKind.REMOVED_COLUMN, text, op)

    def _changed(
        self,
        schema: str | None,
        tname: str,
        what: str,
        name: Any,
        op: ops.MigrateOperation,
    ) -> None:
        self._drift(
            schema,
            tname,
            None,
            DriftKind.CHANGED_INDEX,
            f"{what} {name} exists with a different definition than the schema's; Strata "
            "never drops and re-creates it: do it yourself (or give the new one another name)",
            op,
        )

    def _other(self, op: ops.MigrateOperation) -> None:
        schema = getattr(op, "schema", None)
        tname = getattr(op, "table_name", "?")
        self._drift(
            schema,
            tname,
            None,
            DriftKind.OTHER,
            f"difference not applied by Strata: {op.to_diff_tuple()!r}",
            op,
        )

    def _drift(
        self,
        schema: str | None,
        tname: str,
        column: str | None,
        kind: DriftKind,
        explanation: str,
        op: ops.MigrateOperation | None = None,
    ) -> None:
        suggestion = suggest(self.dialect, op) if op is not None else None
        self.result.drift.append(
            Drift(_qualified(schema, tname), column, kind, explanation, suggestion)
        )

    # -- data probes ---------------------------------------------------------------------

    def _unique_refusal(
        self,
        schema: str | None,
        tname: str,
        columns: list[str],
        added: dict[str, sa.Column[Any]],
        *,
        constraint: bool = False,
    ) -> Refusal | None:
        """Why unique(columns) cannot be added now, or None when it can."""
        table = _qualified(schema, tname)
        what = "unique constraint" if constraint else "unique index"
        kind = ChangeKind.ADD_UNIQUE_CONSTRAINT if constraint else ChangeKind.CREATE_INDEX
        column = columns[0] if len(columns) == 1 else None
        partitioned_by = partition_columns(self.conn, schema, tname)
        if partitioned_by and not set(partitioned_by) <= set(columns):
            return Refusal(
                table,
                column,
                kind,
                f"{what} on ({', '.join(columns)}) not added: {table} is partitioned by "
                f"{', '.join(partitioned_by)}, and PostgreSQL only enforces uniqueness on a "
                "partitioned table when it includes the partition columns",
            )
        if self._duplicates(schema, tname, columns, added):
            return Refusal(
                table,
                column,
                kind,
                f"{what} on ({', '.join(columns)}) not added: existing rows hold duplicate "
                "values there. Remove the duplicates and migrate again",
            )
        return None

    def _rows(self, schema: str | None, tname: str) -> int:
        """0, 1 or 2 (meaning two or more): all the checks need to know."""
        key = (normalize_schema(self.conn, schema), tname)
        if key not in self._row_counts:
            sample = sa.select(sa.literal(1)).select_from(sa.table(tname, schema=schema))
            query = sa.select(sa.func.count()).select_from(sample.limit(2).subquery())
            self._row_counts[key] = int(self.conn.execute(query).scalar_one())
        return self._row_counts[key]

    def _duplicates(
        self,
        schema: str | None,
        tname: str,
        columns: Sequence[str],
        added: dict[str, sa.Column[Any]],
    ) -> bool:
        """Would unique(columns) fail on the rows as they will be after this run?"""
        if self._rows(schema, tname) < 2:
            return False
        grouped: list[str] = []
        for name in columns:
            new = added.get(name)
            if new is None:
                grouped.append(name)
            elif new.server_default is None:
                return False  # existing rows get NULL there, and NULLs never collide
            # else: one default for every existing row, a constant that drops out
        if not grouped:
            return True  # two or more rows, all equal on every column of the constraint
        table = sa.table(tname, *(sa.column(c) for c in grouped), schema=schema)
        cols = [table.c[c] for c in grouped]
        query = (
            sa.select(sa.literal(1))
            .select_from(table)
            .where(*(c.is_not(None) for c in cols))
            .group_by(*cols)
            .having(sa.func.count() > 1)
            .limit(1)
        )
        return self.conn.execute(query).first() is not None


def _not_null_refusal(table: str, column: str) -> Refusal:
    return Refusal(
        table,
        column,
        ChangeKind.ADD_COLUMN,
        f"cannot add NOT NULL column {column} without a default: {table} already has rows, "
        "which would have no value for it. Give the field a default (Field(default=...)) or "
        "make it Optional (X | None = None), then migrate again",
        fatal=True,
    )


def _reflect_for_rebuild(conn: sa.Connection, schema: str | None, tname: str) -> sa.Table:
    """The table as it is, for a SQLite rebuild. Reflected defaults are ``text()``, where a
    ``:word`` inside a string literal would be taken for a bind parameter: escape colons."""
    table = sa.Table(tname, sa.MetaData(), schema=schema, autoload_with=conn)
    for column in table.columns:
        default = column.server_default
        if isinstance(default, sa.DefaultClause) and isinstance(default.arg, sa.TextClause):
            default.arg = sa.text(default.arg.text.replace(":", "\\:"))
    return table

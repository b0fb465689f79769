"""What a migration run found and did: changes, drift, refusals, the plan and the report.

These are plain, inspectable values. A ``Change`` keeps the Alembic operation it came from
(``Change.operation``), so callers can look at exactly what would run.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.operations.ops import MigrateOperation

    from strata.migrations.ledger import MigrationRecord

__all__ = [
    "Change",
    "ChangeKind",
    "Drift",
    "DriftKind",
    "MigrationPlan",
    "MigrationReport",
    "Refusal",
]


class ChangeKind(enum.Enum):
    """The additive operations Strata applies by itself."""

    CREATE_TABLE = "create_table"
    CREATE_PARTITIONS = "create_partitions"
    ADD_COLUMN = "add_column"
    CREATE_INDEX = "create_index"
    ADD_UNIQUE_CONSTRAINT = "add_unique_constraint"


class DriftKind(enum.Enum):
    """Differences Strata reports and never applies: each needs a person to decide."""

    REMOVED_TABLE = "removed_table"
    REMOVED_COLUMN = "removed_column"
    REMOVED_INDEX = "removed_index"
    REMOVED_CONSTRAINT = "removed_constraint"
    CHANGED_INDEX = "changed_index"
    TYPE_CHANGE = "type_change"
    NULLABILITY_CHANGE = "nullability_change"
    SERVER_DEFAULT_CHANGE = "server_default_change"
    RENAME = "rename"
    PARTITIONING = "partitioning"
    OTHER = "other"


@dataclass(frozen=True)
class Change:
    """One additive operation. ``statements`` is its SQL for the target dialect.

    On SQLite, changes that need a table rebuild (Alembic batch mode) share one rebuild; each
    of them then carries the whole rebuild's statements, and the plan lists them once.
    """

    kind: ChangeKind
    table: str
    column: str | None
    description: str
    operation: MigrateOperation = field(repr=False, compare=False)
    statements: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.description


@dataclass(frozen=True)
class Drift:
    """A difference between the models and the database that Strata will not apply.

    ``explanation`` says what differs and the manual step; ``suggested_sql`` is a starting
    point for that step when Alembic can render one for the dialect (review it first).
    """

    table: str
    column: str | None
    kind: DriftKind
    explanation: str
    suggested_sql: str | None = None

    def __str__(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        return f"{where}: {self.explanation}"


@dataclass(frozen=True)
class Refusal:
    """An additive change that the data in the database does not allow.

    ``fatal`` refusals (a NOT NULL column without a default on a table with rows) stop the
    whole run: ``migrate`` raises ``MigrationError`` and applies nothing. Other refusals
    (a unique constraint that existing duplicates would break) are skipped and reported.
    """

    table: str
    column: str | None
    kind: ChangeKind
    reason: str
    fatal: bool = False

    def __str__(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class MigrationPlan:
    """What ``migrate`` would do now, and what it would leave alone. Changes nothing."""

    dialect: str
    changes: list[Change]
    drift: list[Drift]
    refused: list[Refusal]
    statements: list[str]

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    @property
    def blocking(self) -> list[Refusal]:
        """The refusals that make ``migrate`` raise instead of applying anything."""
        return [r for r in self.refused if r.fatal]

    @property
    def checksum(self) -> str:
        """sha256 (hex) of the planned SQL: the ledger's checksum for an auto run."""
        return hashlib.sha256("\n".join(self.statements).encode()).hexdigest()

    @property
    def sql(self) -> str:
        """The planned SQL as one script."""
        return "".join(f"{s};\n" for s in self.statements)


@dataclass(frozen=True)
class MigrationReport:
    """The outcome of ``migrate``. With ``dry_run=True`` nothing was applied: ``applied``
    holds what would have been and ``record`` is None."""

    applied: list[Change]
    drift: list[Drift]
    refused: list[Refusal]
    statements: list[str]
    dry_run: bool = False
    record: MigrationRecord | None = None

    @property
    def changed(self) -> bool:
        """True when the run changed the database schema (never for a dry run)."""
        return bool(self.applied) and not self.dry_run

    @property
    def sql(self) -> str:
        return "".join(f"{s};\n" for s in self.statements)

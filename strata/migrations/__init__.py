"""Migrations: additive schema changes from the models, SQL files, and a ledger of both.

    schemas ──► compare ──► ops ──► rewrite ──► render ──► apply ──► ledger
               (Alembic    (Alembic  (additive   (Alembic   (one      (_strata_
               autogen)    op objs)  filter)     offline)   tx, lock)  migrations)
                                        │
                                        ├──► drift    reported, never applied
                                        └──► refused  the data does not allow it

    directory of NNN_name.sql ──► per file: lock, check ledger, run, record (own tx)

Modules: ``compare`` (Alembic comparison), ``operations`` (Strata's extra operation
objects), ``rewrite`` (the additive-only filter), ``render`` (SQL per dialect), ``engine``
(the run: lock, transaction, apply), ``ledger`` (bookkeeping tables), ``sqlfiles``
(``migrate_from``), ``connect`` (connections, lock, error translation), ``plan`` (result
objects).
"""

from __future__ import annotations

from strata.migrations.engine import migrate, migration_status, plan
from strata.migrations.ledger import (
    DELETED_TABLE,
    LEDGER_TABLE,
    SQLITE_SEQ_TABLE,
    VERSION_SEQUENCE,
    MigrationRecord,
)
from strata.migrations.plan import (
    Change,
    ChangeKind,
    Drift,
    DriftKind,
    MigrationPlan,
    MigrationReport,
    Refusal,
)
from strata.migrations.sqlfiles import migrate_from

__all__ = [
    "DELETED_TABLE",
    "LEDGER_TABLE",
    "SQLITE_SEQ_TABLE",
    "VERSION_SEQUENCE",
    "Change",
    "ChangeKind",
    "Drift",
    "DriftKind",
    "MigrationPlan",
    "MigrationRecord",
    "MigrationReport",
    "Refusal",
    "migrate",
    "migrate_from",
    "migration_status",
    "plan",
]

"""Bulk writes of new rows: an optimistic COPY straight into the table.

    set_many / write-behind flush of n rows (no caller transaction)
      │
      ├─ COPY into the table, in a transaction that waits for no lock ──► committed: done,
      │     (every row new: the version is the one it carries, as           the rows are
      │      GREATEST(clock, old + 1) gives for a row with no old)          what was sent
      │
      └─ unique violation (a row exists) or a lock wait (a concurrent writer of the same
         key, a migration) ──► rolled back ──► the upsert (temporary table + INSERT ... ON
         CONFLICT: the version check) — and the next few batches of that schema go
         straight to the upsert (``CopyFirst``), so a schema of updates pays no failed COPY

The COPY never waits: ``lock_timeout`` is set for its transaction only, far below any
``deadlock_timeout``, so a COPY that would wait on another writer's uncommitted row gives up
at once and never takes part in a deadlock (an upsert locks rows in key order; a COPY in no
order the server would agree with).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from strata.schema import VERSION_COLUMN, CompiledSchema
from strata.tiers.pg_statements import PK_ARRAY, deleted_qualified, text_literal

__all__ = ["CopyFirst", "copy_new_rows", "stored_rows"]

_BEGIN = "BEGIN; SET LOCAL lock_timeout = '1ms'"
_MAX_SKIP = 64


class CopyFirst:
    """Per schema: whether the next bulk write tries the COPY first. After a COPY that
    found an existing row, the next 1, 2, 4 ... 64 batches of that schema go straight to
    the upsert; one COPY that succeeds resets it."""

    __slots__ = ("_skip", "_wait")

    def __init__(self) -> None:
        self._skip: dict[str, int] = {}  # batches still to send straight to the upsert
        self._wait: dict[str, int] = {}  # the skip after the next miss

    def worth_trying(self, schema: str) -> bool:
        left = self._skip.get(schema, 0)
        if left:
            self._skip[schema] = left - 1
            return False
        return True

    def missed(self, schema: str) -> None:
        wait = self._wait.get(schema, 1)
        self._skip[schema] = wait
        self._wait[schema] = min(wait * 2, _MAX_SKIP)

    def copied(self, schema: str) -> None:
        self._wait.pop(schema, None)


async def copy_new_rows(
    conn: asyncpg.Connection,
    cs: CompiledSchema,
    columns: Sequence[str],
    records: Sequence[tuple[Any, ...]],
) -> bool:
    """COPY ``records`` (``columns`` then the version) into the table, all or nothing.
    False (and nothing written) when a row already exists or the COPY would have to wait
    for a lock; other errors are raised, the transaction rolled back."""
    await conn.execute(_BEGIN)
    try:
        # An id deleted before (its version kept in _strata_deleted) must be stored above
        # that delete, which only the upsert does: such a batch goes there.
        ids = [r[columns.index(cs.pk.name)] for r in records]
        if await conn.fetchval(_deleted_before_sql(cs), ids):
            await conn.execute("ROLLBACK")
            return False
        await conn.copy_records_to_table(
            cs.table.name,
            records=records,
            columns=[*columns, VERSION_COLUMN],
            schema_name=cs.table.schema,
        )
    except (asyncpg.UniqueViolationError, asyncpg.LockNotAvailableError):
        await conn.execute("ROLLBACK")
        return False
    except asyncpg.PostgresError:
        await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")
    return True


def _deleted_before_sql(cs: CompiledSchema) -> str:
    return (
        f"SELECT EXISTS (SELECT 1 FROM {deleted_qualified(cs)} WHERE tbl = "
        f"{text_literal(cs.table.name)} AND id = ANY(SELECT CAST(i AS text) FROM "
        f"unnest($1::{PK_ARRAY[cs.pk.kind]}) i))"
    )


def stored_rows(
    columns: Sequence[str],
    returning: Sequence[str],
    pk: str,
    records: Sequence[tuple[Any, ...]],
) -> dict[Any, dict[str, Any]]:
    """What the upsert's RETURNING would have given for rows COPYed as new: the values
    sent (``returning`` columns, the version last), by primary key."""
    where = {c: i for i, c in enumerate(columns)}
    where[VERSION_COLUMN] = len(columns)
    at = [where[c] for c in returning]
    key = where[pk]
    names = tuple(returning)
    return {r[key]: dict(zip(names, [r[i] for i in at], strict=True)) for r in records}

"""The protocol every L3 tier implements (batch-first), checked by mypy on both tiers.

Rows cross this seam in *canonical* form: a dict of column name -> value, with datetimes
aware UTC, UUIDs as ``uuid.UUID``, Decimals as ``Decimal``, enums as text, JSON columns as
plain JSON data, encrypted columns as envelope bytes, plus the ``_strata_version`` column.
Each tier converts canonical values to and from what its driver wants; the router knows
nothing of drivers and the tiers know nothing of models, caches or each other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from strata.schema import CompiledSchema

__all__ = ["L3Tier", "Row", "TxHandle"]

Row = dict[str, Any]


class TxHandle(Protocol):
    """An open L3 transaction, or a savepoint inside one."""

    async def savepoint(self) -> Any: ...

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...


class L3Tier(Protocol):
    dialect: str

    def register(self, schema: CompiledSchema) -> None:
        """Compile the schema's statements once (called by ``DataStore.register``)."""

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def begin(self, isolation: str | None = None) -> Any:
        """Start a transaction; the handle (a ``TxHandle``) goes to the ``tx=`` arguments."""

    async def get_many(
        self,
        schema: CompiledSchema,
        ids: Sequence[Any],
        *,
        tx: Any = None,
        for_update: bool = False,
    ) -> list[Row]:
        """Rows for the ids that exist, in no particular order."""

    async def upsert_many(
        self,
        schema: CompiledSchema,
        rows: Sequence[Row],
        *,
        tx: Any = None,
        versioned: bool = False,
        returning: bool = True,
    ) -> dict[Any, Row]:
        """Insert or update. Returns, per primary key, the key, every ``auto_now_add``
        column as stored (an existing row keeps its own) and the new ``_strata_version``.
        ``versioned``: rows carry their version and only replace older rows."""

    async def delete_many(
        self, schema: CompiledSchema, ids: Sequence[Any], *, tx: Any = None
    ) -> int:
        """Delete the rows; returns a fresh version number (for cache tombstones)."""

    async def exists_many(self, schema: CompiledSchema, ids: Sequence[Any]) -> set[Any]: ...

    async def fetch(
        self,
        sql: str,
        args: Sequence[Any],
        *,
        schema: CompiledSchema | None = None,
        tx: Any = None,
    ) -> list[Row]:
        """Run a compiled SELECT; rows keyed by column name (canonical with ``schema``)."""

    def iterate(self, schema: CompiledSchema, batch: int) -> AsyncIterator[list[Row]]:
        """Every row in primary-key order, ``batch`` rows at a time."""

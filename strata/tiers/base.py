"""The small protocol every L3 tier implements (batch-first).

Rows cross this seam in *canonical* form: a dict of column name -> value, with datetimes
aware UTC, UUIDs as ``uuid.UUID``, Decimals as ``Decimal``, enums as text, JSON columns as
plain JSON data, encrypted columns as envelope bytes, plus the ``_strata_version`` column.
Each tier converts canonical values to and from what its driver wants; the router knows
nothing of drivers and the tiers know nothing of models, caches or each other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from strata.schema import CompiledSchema

Row = dict[str, Any]


class WriteResult(Protocol):
    """What an upsert hands back per row: the stored version and server-kept values."""


class L3Tier(Protocol):
    dialect: str

    def register(self, schema: CompiledSchema) -> None:
        """Compile the schema's statements once (called by ``DataStore.register``)."""

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def get_many(
        self, schema: CompiledSchema, ids: Sequence[Any], *, tx: Any = None
    ) -> list[Row]:
        """Rows for the ids that exist, in no particular order."""

    async def upsert_many(
        self,
        schema: CompiledSchema,
        rows: Sequence[Row],
        *,
        tx: Any = None,
        min_version: bool = False,
    ) -> dict[Any, Row]:
        """Insert or update; returns, per primary key, the primary key, every ``auto_now_add``
        column as stored (an existing row keeps its own) and the new ``_strata_version``."""

    async def delete_many(
        self, schema: CompiledSchema, ids: Sequence[Any], *, tx: Any = None
    ) -> int:
        """Delete the rows; returns a fresh version number (for cache tombstones)."""

    async def exists_many(self, schema: CompiledSchema, ids: Sequence[Any]) -> set[Any]: ...

    async def fetch(self, sql: str, args: Sequence[Any], *, tx: Any = None) -> list[Row]:
        """Run a compiled SELECT; rows keyed by column name, canonical values."""

    def transaction(self, *, isolation: str | None = None) -> AbstractAsyncContextManager[Any]: ...

    def iterate(self, schema: CompiledSchema, batch: int) -> AsyncIterator[list[Row]]: ...

"""The tier seams: small, batch-first Protocols the router is typed by.

    L1Tier    in-process, synchronous, versioned (the router derives nothing: a hit must
              cost one dict lookup, so the single-key forms are part of it)
    L2Tier    shared cache of codec envelopes (bytes), "only if newer" writes, pub/sub
    L3Tier    the source of truth: canonical rows, transactions (``TxHandle``)

Rows cross the L3 seam in *canonical* form: a dict of column name -> value, with datetimes
aware UTC, UUIDs as ``uuid.UUID``, Decimals as ``Decimal``, enums as text, JSON columns as
plain JSON data, encrypted columns as envelope bytes, plus the ``_strata_version`` column.
Each tier converts canonical values to and from what its driver wants; the router knows
nothing of drivers and the tiers know nothing of models, caches or each other.

Capabilities are flags (``L2Tier.subscribes``). Two answers every networked tier gives, if
only trivially, are members, so the router calls them without asking whether they exist:
``abandon()`` (L2, L3: forget connections of an event loop that has ended) and
``L2Tier.take_possible_loss()`` (a failover may have lost acknowledged writes). A tier
reports its own failures as ``strata.errors.TierError`` (``TierUnavailableError`` when it
cannot be reached).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, Protocol
from uuid import UUID

from pydantic import BaseModel

from strata.schema import CompiledSchema

__all__ = ["Id", "L1Factory", "L1Tier", "L2Tier", "L3Tier", "Row", "TxHandle"]

Row = dict[str, Any]
Id = str | int | UUID
"""A primary key value: the type of a schema's primary key field."""


class L1Tier(Protocol):
    """One schema's in-process cache of models, each with its row version.

    ``set`` stores unless the key holds a greater version (a version-checked fill);
    ``delete(key, version)`` leaves a tombstone that refuses older fills. ``ttl`` None means
    the tier's own default; ``evictions`` counts capacity / expiry removals.
    """

    evictions: int

    def get(self, key: Any) -> BaseModel | None: ...

    def get_many(self, keys: Iterable[Any]) -> dict[Any, BaseModel]: ...

    def set(self, key: Any, value: BaseModel, version: int = 0, ttl: Any = ...) -> bool: ...

    def delete(self, key: Any, version: int | None = None) -> bool: ...

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> int: ...

    def clear(self) -> None: ...

    def sweep(self, limit: int | None = None) -> int:
        """Drop expired entries, at most ``limit``; returns how many."""

    def __contains__(self, key: Any) -> bool: ...

    def __len__(self) -> int: ...


L1Factory = Callable[[CompiledSchema], L1Tier]
"""``DataStore(config, l1=...)``: called once per registered schema that has an L1 policy."""


class L2Tier(Protocol):
    """A shared cache of codec envelopes (``strata.codec``), keyed by string.

    Reads of an unreachable tier answer misses; writes answer False per item and report the
    error; both must fail fast while the tier knows it is down (``available`` False).
    ``subscribes``: the tier can carry the invalidation bus's subscription (``client``).
    """

    subscribes: bool

    @property
    def available(self) -> bool: ...

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    def abandon(self) -> None:
        """Forget the client of an event loop that has ended (it cannot be closed from
        another loop); ``connect()`` makes a new one. Nothing to do for a loop-free tier."""

    def take_possible_loss(self) -> bool:
        """True, once, after an outage in which a failover may have promoted a replica
        that missed acknowledged writes: what the tier holds may be older than them, and
        the router drops what this instance wrote. False for a tier that cannot fail over."""

    async def get_many(self, keys: Sequence[str]) -> list[tuple[bytes | None, float | None]]:
        """``(payload, remaining ttl seconds | None)`` per key, ``(None, None)`` for a miss."""

    async def set_many(
        self, items: Sequence[tuple[str, bytes, float | None]], *, bump: str | None = None
    ) -> list[bool]:
        """Write each ``(key, envelope, ttl)`` unless the key holds a newer version; INCR
        ``bump`` in the same step."""

    async def delete_many(self, keys: Sequence[str]) -> None: ...

    async def publish(self, channel: str, message: bytes) -> int:
        """Send to subscribers; 0 (and the error reported) when it cannot."""

    async def set_raw(self, key: str, value: bytes, ttl: float | None) -> bool: ...

    async def get_generation(
        self, counter: str, prefix: str, digest: str
    ) -> tuple[int, bytes | None]:
        """``(value of counter, raw value at f"{prefix}{counter value}:{digest}")``."""

    async def incr(self, key: str) -> int:
        """Raises TierError when it cannot: a counter cannot be faked."""

    async def delete_pattern(self, pattern: str) -> int:
        """Delete every key matching a glob pattern; raises TierError when it cannot."""


class TxHandle(Protocol):
    """An open L3 transaction, or a savepoint inside one."""

    async def savepoint(self) -> TxHandle: ...

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...


class L3Tier(Protocol):
    """The source of truth. ``dialect``: "postgresql" or "sqlite" (query compilation)."""

    dialect: str

    def register(self, schema: CompiledSchema) -> None:
        """Compile the schema's statements once (called by ``DataStore.register``)."""

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    def abandon(self) -> None:
        """Forget the connections of an event loop that has ended (they cannot be closed
        from another loop); ``connect()`` makes new ones."""

    async def begin(self, isolation: str | None = None) -> TxHandle:
        """Start a transaction; the handle goes to the ``tx=`` arguments."""

    async def get_many(
        self,
        schema: CompiledSchema,
        ids: Sequence[Any],
        *,
        tx: TxHandle | None = None,
        for_update: bool = False,
    ) -> list[Row]:
        """Rows for the ids that exist, in no particular order."""

    async def upsert_many(
        self,
        schema: CompiledSchema,
        rows: Sequence[Row],
        *,
        tx: TxHandle | None = None,
        versioned: bool = False,
        returning: bool = True,
        kept: frozenset[str] = frozenset(),
    ) -> dict[Any, Row]:
        """Insert or update. Returns, per primary key, the key, every ``auto_now_add``
        column as stored (an existing row keeps its own) and the new ``_strata_version``.
        ``versioned``: rows carry their version and only replace older rows. ``kept``:
        columns an existing row keeps (a new row takes the given value); they are returned
        as stored. The router passes ``kept`` only when it is not empty."""

    async def delete_many(
        self, schema: CompiledSchema, ids: Sequence[Any], *, tx: TxHandle | None = None
    ) -> int:
        """Delete the rows; returns a fresh version number (for cache tombstones)."""

    async def delete_if_older(
        self, schema: CompiledSchema, items: Sequence[tuple[Any, int]]
    ) -> int:
        """Delete each ``(id, version)`` row only while its stored version is older than
        ``version``, atomically (a replayed write-behind delete never removes a row written
        after it); ``version`` becomes the id's deleted version, so a later insert is stored
        above it. Returns how many rows were deleted."""

    async def exists_many(self, schema: CompiledSchema, ids: Sequence[Any]) -> set[Any]: ...

    async def deleted_versions(self, schema: CompiledSchema, ids: Sequence[Any]) -> dict[Any, int]:
        """The version of each id's newest delete L3 still remembers (ids with none are
        left out): tells a row deleted since a version apart from one never written."""

    async def fetch(
        self,
        sql: str,
        args: Sequence[Any],
        *,
        schema: CompiledSchema | None = None,
        tx: TxHandle | None = None,
    ) -> list[Row]:
        """Run a compiled SELECT; rows keyed by column name (canonical with ``schema``)."""

    def iterate(self, schema: CompiledSchema, batch: int) -> AsyncIterator[list[Row]]:
        """Every row in primary-key order, ``batch`` rows at a time."""

    async def update_columns(
        self,
        schema: CompiledSchema,
        id: Any,
        values: Row,
        *,
        if_version: int | None = None,
        tx: TxHandle | None = None,
    ) -> Row | None:
        """UPDATE only the given columns (canonical values) of one existing row, with a new
        version; with ``if_version``, only while the row still has that version (``ds.update``).
        Returns the whole row as stored, or None when no row matched (``ds.patch``)."""

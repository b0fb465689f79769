"""Transactions: ``async with ds.tx() as tx`` is all or nothing across every tier.

    tx.get / get_many / search ─► L3, inside the transaction (sees its own writes)
    tx.set / set_many / delete ─► L3, inside the transaction; cache effects recorded only
    leave the block ──► COMMIT ─ok─► L2 + L1 updated, one invalidation per schema batch,
                                     after_set hooks
                              └fails─► TxFailedError (SerializationError when retryable);
                                       no tier shows any trace
    exception ─► ROLLBACK ─► the caller's exception, unchanged
    timeout   ─► ROLLBACK ─► TxTimeoutError

A ``ds.tx()`` opened inside another one (same task) is a savepoint: its rollback keeps the
outer work, its commit hands its cache effects to the outer transaction. Write-behind
schemas are written synchronously inside a transaction (a transaction asks for durability);
their queued writes for the same keys are superseded at commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, TypeVar, overload

from pydantic import BaseModel

from strata.config import WriteMode
from strata.errors import (
    NotFoundError,
    StrataError,
    TxClosedError,
    TxFailedError,
    TxTimeoutError,
    UnsupportedOperationError,
)
from strata.runtime import SchemaRuntime, call_hook
from strata.schema import VERSION_COLUMN

if TYPE_CHECKING:
    from strata.datastore import DataStore, SchemaRef
    from strata.query import Q, Query

__all__ = ["Tx", "TxContext"]

M = TypeVar("M", bound=BaseModel)
_current: ContextVar[Tx | None] = ContextVar("strata_tx", default=None)


class Tx:
    """One L3 transaction (or savepoint). Obtain it from ``async with ds.tx() as tx``."""

    def __init__(self, ds: DataStore, handle: Any, parent: Tx | None) -> None:
        self._ds = ds
        self._handle = handle
        self._parent = parent
        self._open = True
        # Cache effects, applied only after the outermost commit: the last write per key.
        self._sets: dict[str, dict[Any, tuple[BaseModel, int, dict[str, bytes]]]] = {}
        self._deletes: dict[str, dict[Any, int]] = {}

    def _runtime(self, schema: SchemaRef) -> SchemaRuntime:
        if not self._open:
            raise TxClosedError("this transaction has ended; open a new one with ds.tx()")
        rt = self._ds._rt(schema)
        if not rt.l3_on:
            raise UnsupportedOperationError(
                f"{rt.name} has no L3 tier (l3=None): it cannot take part in a transaction"
            )
        return rt

    # -- reads ---------------------------------------------------------------------------

    @overload
    async def get(self, schema: type[M], id: Any, *, for_update: bool = False) -> M: ...
    @overload
    async def get(self, schema: str, id: Any, *, for_update: bool = False) -> BaseModel: ...
    async def get(self, schema: SchemaRef, id: Any, *, for_update: bool = False) -> BaseModel:
        """Read from L3 inside the transaction; ``for_update`` locks the row until the end."""
        rt = self._runtime(schema)
        ds = self._ds
        id = rt.check_id(id)
        if rt.hooks.before_get is not None:
            await call_hook(rt.hooks.before_get, id)
        found = await self._load(rt, [id], for_update)
        if id not in found:
            ds._c.misses += 1
            raise NotFoundError(rt.name, id)
        return await ds._deliver(rt, found[id])

    async def get_many(
        self, schema: SchemaRef, ids: Iterable[Any], *, for_update: bool = False
    ) -> dict[Any, BaseModel]:
        """``{id: value}`` for the ids found; ``for_update`` locks them in key order (so two
        transactions locking the same rows cannot deadlock)."""
        rt = self._runtime(schema)
        wanted = list(dict.fromkeys(rt.check_id(i) for i in ids))
        found = await self._load(rt, wanted, for_update)
        return {i: await self._ds._deliver(rt, found[i]) for i in wanted if i in found}

    async def _load(
        self, rt: SchemaRuntime, ids: list[Any], for_update: bool
    ) -> dict[Any, BaseModel]:
        ds = self._ds
        ds._c.gets += len(ids)
        ds._c.l3_queries += 1
        rows = await ds._l3.get_many(rt.cs, ids, tx=self._handle, for_update=for_update)
        out = {}
        for row in rows:
            value, _ = rt.from_row(row)
            out[getattr(value, rt.pk_field)] = value
        ds._c.l3_hits += len(out)
        return out

    async def search(self, schema: SchemaRef, q: Q | Query | None = None) -> list[Any]:
        """``ds.search`` inside the transaction (L3 only; fills no cache)."""
        rt = self._runtime(schema)
        ds = self._ds
        cq = ds._compile(rt, q)
        ds._c.l3_queries += 1
        rows = await ds._l3.fetch(cq.sql, cq.args, schema=rt.cs, tx=self._handle)
        if cq.projection:
            return ds._projection(rt, cq, rows)
        return [rt.from_row(r)[0] for r in rows]

    # -- writes --------------------------------------------------------------------------

    @overload
    async def set(self, schema: type[M], value: M | Mapping[str, Any]) -> M: ...
    @overload
    async def set(self, schema: str, value: BaseModel | Mapping[str, Any]) -> BaseModel: ...
    async def set(self, schema: SchemaRef, value: Any) -> BaseModel:
        rt = self._runtime(schema)
        self._ds._c.sets += 1
        return (await self._write(rt, [value]))[0]

    async def set_many(self, schema: SchemaRef, values: Iterable[Any]) -> list[BaseModel]:
        rt = self._runtime(schema)
        values = list(values)
        self._ds._c.sets += len(values)
        return await self._write(rt, values) if values else []

    async def _write(self, rt: SchemaRuntime, values: list[Any]) -> list[BaseModel]:
        ds = self._ds
        prepared = await ds._prepare(rt, values)
        rows = {i: rt.to_row(v, i) for i, v in prepared.items()}
        behind = rt.mode is WriteMode.WRITE_BEHIND
        if behind:  # the schema's versions are write-behind clock values: keep them so
            for row in rows.values():
                row[VERSION_COLUMN] = ds._next_version()
        items = await ds._write_through(rt, prepared, rows, tx=self._handle, versioned=behind)
        sets = self._sets.setdefault(rt.name, {})
        deletes = self._deletes.setdefault(rt.name, {})
        for i, v, version in items:
            sets[i] = (v, version, rt.sealed(rows[i]))
            deletes.pop(i, None)
        return [rt.out(v) for _, v, _ in items]

    async def delete(self, schema: SchemaRef, id: Any) -> None:
        rt = self._runtime(schema)
        ds = self._ds
        id = rt.check_id(id)
        ds._c.deletes += 1
        ds._c.l3_queries += 1
        version = await ds._l3.delete_many(rt.cs, [id], tx=self._handle)
        if rt.mode is WriteMode.WRITE_BEHIND:
            version = ds._next_version()
        self._sets.setdefault(rt.name, {}).pop(id, None)
        self._deletes.setdefault(rt.name, {})[id] = version

    # -- after commit --------------------------------------------------------------------

    def _merge_into(self, parent: Tx) -> None:
        for name, sets in self._sets.items():
            for i, effect in sets.items():
                parent._sets.setdefault(name, {})[i] = effect
                parent._deletes.get(name, {}).pop(i, None)
        for name, deletes in self._deletes.items():
            for i, version in deletes.items():
                parent._deletes.setdefault(name, {})[i] = version
                parent._sets.get(name, {}).pop(i, None)

    async def _apply_effects(self) -> None:
        """The commit happened: make every cache and every instance agree with it."""
        ds = self._ds
        for name in self._sets.keys() | self._deletes.keys():
            rt = ds._schemas[name]
            sets = self._sets.get(name, {})
            deletes = self._deletes.get(name, {})
            touched = [*sets, *deletes]
            if rt.mode is WriteMode.WRITE_BEHIND and ds._wb is not None and touched:
                ds._wb.cancel(name, touched)  # never applied after the commit
                for i in touched:
                    ds._wb_shadow.pop((name, i), None)
            if sets:
                items = [(i, v, version) for i, (v, version, _) in sets.items()]
                sealed = {i: cts for i, (_, _, cts) in sets.items()}
                ds._after_write(rt, list(sets))
                await ds._cache_writes(rt, items, sealed)
                await ds._publish(rt, "set", items)
            if deletes:
                by_version: dict[int, list[Any]] = {}
                for i, version in deletes.items():
                    by_version.setdefault(version, []).append(i)
                for version, ids in by_version.items():
                    await ds._cache_deletes(rt, ids, version)
            if rt.hooks.after_set is not None:
                for v, _, _ in sets.values():
                    await call_hook(rt.hooks.after_set, rt.out(v))


class TxContext:
    """What ``ds.tx()`` returns: enter it with ``async with``."""

    def __init__(
        self, ds: DataStore, *, isolation: str | None = None, timeout: float | None = None
    ) -> None:
        self._ds = ds
        self._isolation = isolation
        self._timeout_s = timeout
        self._timeout: asyncio.Timeout | None = None
        self._tx: Tx | None = None
        self._token: Token[Tx | None] | None = None

    async def __aenter__(self) -> Tx:
        ds = self._ds
        ds._check_open()
        if self._tx is not None:
            raise TxClosedError("a ds.tx() context can be entered only once")
        if self._timeout_s is not None:
            self._timeout = asyncio.timeout(self._timeout_s)
            await self._timeout.__aenter__()
        parent = _current.get()
        try:
            if parent is not None and parent._ds is ds and parent._open:
                tx = Tx(ds, await parent._handle.savepoint(), parent)
            else:
                tx = Tx(ds, await ds._l3.begin(self._isolation), None)
        except BaseException as exc:
            await self._leave_timeout(exc)
            raise
        self._tx = tx
        self._token = _current.set(tx)
        return tx

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> bool:
        tx = self._tx
        assert tx is not None and self._token is not None
        _current.reset(self._token)
        tx._open = False
        try:
            if et is None:
                await self._commit(tx)
            else:
                await self._rollback(tx)
        except BaseException as failure:
            await self._leave_timeout(failure)
            raise
        await self._leave_timeout(exc)
        if et is None:
            if tx._parent is not None:
                tx._merge_into(tx._parent)
            else:
                await tx._apply_effects()
        return False

    async def _commit(self, tx: Tx) -> None:
        try:
            await tx._handle.commit()
        except TxFailedError:
            raise
        except StrataError as exc:
            raise TxFailedError(f"commit failed, nothing was written: {exc}") from exc

    async def _rollback(self, tx: Tx) -> None:
        try:
            await tx._handle.rollback()
        except StrataError as exc:  # the caller's own exception matters more: log this one
            self._ds._count_error(exc)
            self._ds._log.warning("rollback failed (the connection is discarded): %s", exc)

    async def _leave_timeout(self, exc: BaseException | None) -> None:
        if self._timeout is None:
            return
        timeout, self._timeout = self._timeout, None
        try:
            await timeout.__aexit__(type(exc) if exc else None, exc, None)
        except TimeoutError as expired:
            raise TxTimeoutError(
                f"transaction exceeded its timeout of {self._timeout_s} s and was rolled back"
            ) from expired

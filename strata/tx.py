"""Transactions: ``async with ds.tx() as tx`` is all or nothing across every tier.

    tx.get / get_many / search ─► L3, inside the transaction (sees its own writes)
    tx.set / set_many / delete ─► L3, inside the transaction; cache effects recorded only
    leave the block ──► COMMIT ─ok─► every schema's L2 + L1 updated, one invalidation per
                                     schema batch; THEN the after_set hooks (a hook that
                                     raises is logged, counted and handed to on_error:
                                     the commit stands and no cache is left stale)
                              └fails─► TxFailedError (SerializationError when retryable);
                                       no tier shows any trace
    exception ─► ROLLBACK ─► the caller's exception, unchanged
    timeout   ─► ROLLBACK ─► TxTimeoutError

A ``ds.tx()`` opened inside another one (same task) is a savepoint: its rollback keeps the
outer work, its commit hands its cache effects to the outer transaction. A schema's write
path decides the versions its rows carry in a transaction (write-behind keeps its clock),
and queued writes of the keys a commit wrote are superseded.

``Tx`` talks to the router only through ``TxHost`` (implemented in
``strata/router/txhost.py``): every ``tx.*`` call goes through the DataStore's operation
template (``host.run``), so it is observed, counted and error-mapped like ``ds.*``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from pydantic import BaseModel

from strata.errors import (
    InvalidValueError,
    NotFoundError,
    SerializationError,
    StrataError,
    TxClosedError,
    TxFailedError,
    TxTimeoutError,
    UnsupportedOperationError,
)
from strata.tiers.base import Id, TxHandle

if TYPE_CHECKING:
    from strata.query import Projection, Q, Query
    from strata.router.core import Route

__all__ = ["Effects", "Tx", "TxContext", "TxHost", "retry"]

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
SchemaRef = str | type[BaseModel]
_current: ContextVar[Tx | None] = ContextVar("strata_tx", default=None)


class Effects:
    """The cache effects of a transaction, applied only after the outermost commit:
    per schema, the last write per key (``sets``: value, version, ciphertexts)."""

    __slots__ = ("deletes", "sets")

    def __init__(self) -> None:
        self.sets: dict[str, dict[Any, tuple[BaseModel, int, dict[str, bytes]]]] = {}
        self.deletes: dict[str, dict[Any, int]] = {}

    def set(self, schema: str, id: Any, value: BaseModel, version: int, sealed: Any) -> None:
        self.sets.setdefault(schema, {})[id] = (value, version, sealed)
        self.deletes.get(schema, {}).pop(id, None)

    def delete(self, schema: str, id: Any, version: int) -> None:
        self.sets.get(schema, {}).pop(id, None)
        self.deletes.setdefault(schema, {})[id] = version

    def merge_into(self, parent: Effects) -> None:
        for name, sets in self.sets.items():
            for i, (v, ver, sealed) in sets.items():
                parent.set(name, i, v, ver, sealed)
        for name, deletes in self.deletes.items():
            for i, ver in deletes.items():
                parent.delete(name, i, ver)


class TxHost(Protocol):
    """What a transaction needs from the router: nothing more."""

    def run(
        self,
        op: str,
        schema: SchemaRef | None,
        work: Callable[..., Awaitable[tuple[T, str | None]]],
        *args: Any,
    ) -> Awaitable[T]:
        """The DataStore's operation template: ``work(route, *args)``."""

    def check_open(self) -> None: ...

    def finished(self, op: str, started: float, error: BaseException | None) -> None:
        """Observe an operation that is not one call (the ``tx`` block itself)."""

    async def begin(self, isolation: str | None) -> TxHandle: ...

    async def load(
        self, rt: Route, ids: list[Any], handle: TxHandle, for_update: bool
    ) -> dict[Any, BaseModel]: ...

    async def deliver(self, rt: Route, value: BaseModel) -> BaseModel: ...

    async def call_hook(self, hook: Callable[..., Any], *args: Any) -> Any: ...

    async def search(self, rt: Route, q: Q | Query | None, handle: TxHandle) -> list[Any]: ...

    async def write(
        self, rt: Route, values: list[Any], handle: TxHandle, effects: Effects
    ) -> list[BaseModel]: ...

    async def delete(self, rt: Route, id: Any, handle: TxHandle, effects: Effects) -> None: ...

    async def commit_effects(self, effects: Effects) -> None:
        """After COMMIT: every cache effect first, then the after_set hooks."""

    def count_error(self, exc: BaseException) -> None: ...

    def warn(self, message: str, *args: Any) -> None: ...


class Tx:
    """One L3 transaction (or savepoint). Obtain it from ``async with ds.tx() as tx``."""

    def __init__(self, host: TxHost, handle: TxHandle, parent: Tx | None) -> None:
        self._host = host
        self._handle = handle
        self._parent = parent
        self._open = True
        self._effects = Effects()

    def _check(self, rt: Route) -> None:
        if not self._open:
            raise TxClosedError("this transaction has ended; open a new one with ds.tx()")
        if not rt.b.l3_on:
            raise UnsupportedOperationError(
                f"{rt.name} has no L3 tier (l3=None): it cannot take part in a transaction"
            )

    # -- reads ---------------------------------------------------------------------------

    @overload
    async def get(self, schema: type[M], id: Id, *, for_update: bool = False) -> M: ...
    @overload
    async def get(self, schema: str, id: Id, *, for_update: bool = False) -> BaseModel: ...
    async def get(self, schema: SchemaRef, id: Id, *, for_update: bool = False) -> BaseModel:
        """Read from L3 inside the transaction; ``for_update`` locks the row until the end."""
        return await self._host.run("tx.get", schema, self._get, id, for_update)

    async def _get(self, rt: Route, id: Any, for_update: bool) -> tuple[BaseModel, str]:
        self._check(rt)
        host = self._host
        id = rt.b.check_id(id)
        before_get = rt.b.hooks.before_get
        if before_get is not None:
            await host.call_hook(before_get, id)
        found = await host.load(rt, [id], self._handle, for_update)
        if id not in found:
            raise NotFoundError(rt.name, id)
        return await host.deliver(rt, found[id]), "l3"

    @overload
    async def get_many(
        self, schema: type[M], ids: Iterable[Id], *, for_update: bool = False
    ) -> dict[Id, M]: ...
    @overload
    async def get_many(
        self, schema: str, ids: Iterable[Id], *, for_update: bool = False
    ) -> dict[Id, BaseModel]: ...
    async def get_many(
        self, schema: SchemaRef, ids: Iterable[Id], *, for_update: bool = False
    ) -> dict[Id, Any]:
        """``{id: value}`` for the ids found; ``for_update`` locks them in key order (so two
        transactions locking the same rows cannot deadlock)."""
        return await self._host.run("tx.get_many", schema, self._get_many, ids, for_update)

    async def _get_many(
        self, rt: Route, ids: Iterable[Any], for_update: bool
    ) -> tuple[dict[Any, BaseModel], str]:
        self._check(rt)
        host = self._host
        wanted = list(dict.fromkeys(rt.b.check_id(i) for i in ids))
        found = await host.load(rt, wanted, self._handle, for_update)
        return {i: await host.deliver(rt, found[i]) for i in wanted if i in found}, "l3"

    # A Projection is a Q: the first overload that matches wins (so the ignore).
    @overload
    async def search(self, schema: SchemaRef, q: Projection) -> list[dict[str, Any]]: ...  # type: ignore[overload-overlap]
    @overload
    async def search(self, schema: type[M], q: Q | Query | None = None) -> list[M]: ...
    @overload
    async def search(self, schema: str, q: Q | Query | None = None) -> list[BaseModel]: ...
    async def search(self, schema: SchemaRef, q: Q | Query | None = None) -> list[Any]:
        """``ds.search`` inside the transaction (L3 only; fills no cache)."""
        return await self._host.run("tx.search", schema, self._search, q)

    async def _search(self, rt: Route, q: Q | Query | None) -> tuple[list[Any], str]:
        self._check(rt)
        return await self._host.search(rt, q, self._handle), "l3"

    # -- writes --------------------------------------------------------------------------

    @overload
    async def set(self, schema: type[M], value: M | Mapping[str, Any]) -> M: ...
    @overload
    async def set(self, schema: str, value: BaseModel | Mapping[str, Any]) -> BaseModel: ...
    async def set(self, schema: SchemaRef, value: Any) -> BaseModel:
        return await self._host.run("tx.set", schema, self._set_one, value)

    async def _set_one(self, rt: Route, value: Any) -> tuple[BaseModel, None]:
        self._check(rt)
        return (await self._host.write(rt, [value], self._handle, self._effects))[0], None

    @overload
    async def set_many(
        self, schema: type[M], values: Iterable[M | Mapping[str, Any]]
    ) -> list[M]: ...
    @overload
    async def set_many(
        self, schema: str, values: Iterable[BaseModel | Mapping[str, Any]]
    ) -> list[BaseModel]: ...
    async def set_many(self, schema: SchemaRef, values: Iterable[Any]) -> list[Any]:
        return await self._host.run("tx.set_many", schema, self._set_many, values)

    async def _set_many(self, rt: Route, values: Iterable[Any]) -> tuple[list[BaseModel], None]:
        self._check(rt)
        values = list(values)
        if not values:
            return [], None
        return await self._host.write(rt, values, self._handle, self._effects), None

    async def delete(self, schema: SchemaRef, id: Id) -> None:
        await self._host.run("tx.delete", schema, self._delete, id)

    async def _delete(self, rt: Route, id: Any) -> tuple[None, None]:
        self._check(rt)
        await self._host.delete(rt, id, self._handle, self._effects)
        return None, None


class TxContext:
    """What ``ds.tx()`` returns: enter it with ``async with``."""

    def __init__(
        self, host: TxHost, *, isolation: str | None = None, timeout: float | None = None
    ) -> None:
        self._host = host
        self._isolation = isolation
        self._timeout_s = timeout
        self._timeout: asyncio.Timeout | None = None
        self._tx: Tx | None = None
        self._token: Token[Tx | None] | None = None
        self._started = 0.0

    async def __aenter__(self) -> Tx:
        host = self._host
        self._started = time.perf_counter()
        try:
            host.check_open()
            if self._tx is not None:
                raise TxClosedError("a ds.tx() context can be entered only once")
        except StrataError as exc:
            host.finished("tx", self._started, exc)
            raise
        if self._timeout_s is not None:
            self._timeout = asyncio.timeout(self._timeout_s)
            await self._timeout.__aenter__()
        parent = _current.get()
        try:
            if parent is not None and parent._host is host and parent._open:
                tx = Tx(host, await parent._handle.savepoint(), parent)
            else:
                tx = Tx(host, await host.begin(self._isolation), None)
        except BaseException as exc:
            try:
                await self._leave_timeout(exc)
            except BaseException as final:
                host.finished("tx", self._started, final)
                raise
            host.finished("tx", self._started, exc)
            raise
        self._tx = tx
        self._token = _current.set(tx)
        return tx

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        try:
            await self._finish(et, exc)
        except BaseException as failure:
            self._host.finished("tx", self._started, failure)
            raise
        self._host.finished("tx", self._started, exc)

    async def _finish(self, et: type[BaseException] | None, exc: BaseException | None) -> None:
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
                tx._effects.merge_into(tx._parent._effects)
            else:
                await self._host.commit_effects(tx._effects)

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
            self._host.count_error(exc)
            self._host.warn("rollback failed (the connection is discarded): %s", exc)

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


async def retry(
    context: Callable[[], TxContext],
    fn: Callable[[Tx], Awaitable[T]],
    attempts: int,
    backoff: float,
) -> T:
    """``ds.retry_tx``: ``fn(tx)`` in a new ``context()``, again (up to ``attempts`` in all)
    when it fails with a retryable ``SerializationError``; the last one is raised."""
    if attempts < 1:
        raise InvalidValueError("retry_tx needs attempts >= 1")
    for attempt in range(attempts):
        try:
            async with context() as tx:
                return await fn(tx)
        except SerializationError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(backoff * (2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")  # pragma: no cover

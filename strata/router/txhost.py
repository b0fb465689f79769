"""The router's side of a transaction: ``strata.tx.TxHost``, implemented on the router's
parts (L3 inside the transaction; the caches only after COMMIT)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from strata.query import Q, Query
from strata.router.core import Core, Route
from strata.router.queries import Queries
from strata.router.reads import Reads
from strata.router.writes import Writes, upsert
from strata.schema import VERSION_COLUMN
from strata.tiers.base import TxHandle
from strata.tx import Effects

if TYPE_CHECKING:
    from strata.router.template import OperationTemplate, SchemaRef

__all__ = ["RouterTxHost"]

T = TypeVar("T")


class RouterTxHost:
    def __init__(
        self,
        ops: OperationTemplate,
        core: Core,
        reads: Reads,
        writes: Writes,
        queries: Queries,
    ) -> None:
        self._ops = ops
        self._core = core
        self._reads = reads
        self._writes = writes
        self._queries = queries

    def run(
        self,
        op: str,
        schema: SchemaRef | None,
        work: Callable[..., Awaitable[tuple[T, str | None]]],
        *args: Any,
    ) -> Awaitable[T]:
        return self._ops.run(op, schema, work, *args)

    def check_open(self) -> None:
        self._ops.check_open()

    def finished(self, op: str, started: float, error: BaseException | None) -> None:
        self._ops.finished(op, started, error)

    async def begin(self, isolation: str | None) -> TxHandle:
        return await self._core.l3.begin(isolation)

    async def load(
        self, rt: Route, ids: list[Any], handle: TxHandle, for_update: bool
    ) -> dict[Any, BaseModel]:
        c, b = self._core.c, rt.b
        c.gets += len(ids)
        c.l3_queries += 1
        rows = await self._core.l3.get_many(b.cs, ids, tx=handle, for_update=for_update)
        out = {}
        for row in rows:
            value, _ = b.rows.from_row(row)
            out[getattr(value, b.pk_field)] = value
        c.l3_hits += len(out)
        c.misses += len(ids) - len(out)
        return out

    async def deliver(self, rt: Route, value: BaseModel) -> BaseModel:
        return await self._reads.deliver(rt, value)

    async def call_hook(self, hook: Callable[..., Any], *args: Any) -> Any:
        return await self._core.hooks.call(hook, *args)

    async def search(self, rt: Route, q: Q | Query | None, handle: TxHandle) -> list[Any]:
        cq = self._queries.compile(rt, q)
        self._core.c.l3_queries += 1
        rows = await self._core.l3.fetch(cq.sql, cq.args, schema=rt.b.cs, tx=handle)
        if cq.projection:
            return rt.b.rows.projection(cq.columns, rows)
        return [rt.b.rows.from_row(r)[0] for r in rows]

    async def write(
        self, rt: Route, values: list[Any], handle: TxHandle, effects: Effects
    ) -> list[BaseModel]:
        b = rt.b
        self._core.c.sets += len(values)
        prepared = await self._writes.prepare(rt, values)
        rows = {i: b.rows.to_row(v, i) for i, v in prepared.items()}
        versioned = False
        for row in rows.values():  # the write path decides who versions the rows
            version = rt.path.tx_version()
            if version is None:
                break
            row[VERSION_COLUMN] = version
            versioned = True
        items = await upsert(self._core, b, prepared, rows, tx=handle, versioned=versioned)
        for i, v, version in items:
            effects.set(rt.name, i, v, version, b.rows.sealed(rows[i]))
        return [b.out(v) for _, v, _ in items]

    async def delete(self, rt: Route, id: Any, handle: TxHandle, effects: Effects) -> None:
        id = rt.b.check_id(id)
        c = self._core.c
        c.deletes += 1
        c.l3_queries += 1
        version = await self._core.l3.delete_many(rt.b.cs, [id], tx=handle)
        effects.delete(rt.name, id, rt.path.tx_version() or version)

    async def commit_effects(self, effects: Effects) -> None:
        """The commit happened: make every cache and every instance agree with it, for
        every schema, before any after_set hook runs (a failing hook is absorbed)."""
        core, writes = self._core, self._writes
        after: list[tuple[Route, list[BaseModel]]] = []
        for name in effects.sets.keys() | effects.deletes.keys():
            rt = core.routes[name]
            sets = effects.sets.get(name, {})
            deletes = effects.deletes.get(name, {})
            rt.path.superseded([*sets, *deletes])  # queued writes never apply after this
            if sets:
                items = [(i, v, version) for i, (v, version, _) in sets.items()]
                sealed = {i: cts for i, (_, _, cts) in sets.items()}
                core.forget_readers(rt, list(sets))
                await writes.cache_writes(rt, items, sealed)
                await writes.coh.publish(rt, "set", items)
                if rt.b.hooks.after_set is not None:
                    after.append((rt, [v for v, _, _ in sets.values()]))
            by_version: dict[int, list[Any]] = {}
            for i, version in deletes.items():
                by_version.setdefault(version, []).append(i)
            for version, ids in by_version.items():
                await writes.cache_deletes(rt, ids, version)
        for rt, values in after:
            hook = rt.b.hooks.after_set
            assert hook is not None
            for v in values:
                await core.hooks.absorb("after_set", hook, rt.b.out(v))

    def count_error(self, exc: BaseException) -> None:
        self._core.count_error(exc)

    def warn(self, message: str, *args: Any) -> None:
        self._core.log.warning(message, *args)

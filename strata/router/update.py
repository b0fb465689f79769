"""Version-checked writes: ``update`` (read, apply, write only if unchanged, retry) and
``patch`` (write only the named columns, in L3).

    update(id, fn)
      ┌─► L3 row (value, version v) ─► fn(value) ─► prepare (validate, before_set, stamp)
      │     ─► L3: UPDATE ... WHERE id = ? AND version = v  (new version)
      │           ├► a row ─► the write's cache step (L2, L1, publish) ─► stored value
      └───────────┴► none: someone wrote in between ─► again (``attempts`` in all)
                                                    ─► ConflictError
    patch(id, **fields)
      validate each field (type, constraints; NaN, naive datetimes) ─► auto_now stamped
        ─► L3: UPDATE only those columns (new version), whole row returned
        ─► the write's cache step (L2, L1, publish) ─► stored value  (no row: NotFoundError)

Both read and write L3 itself, never a cached copy, so the check is against the source of
truth; the caches then get the row exactly as stored, under its new version, through the
same "only if newer" step as every write. A write-behind or cache-only schema has no L3
write to check against: refused (``UnsupportedOperationError``).
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar, cast

import pydantic
from pydantic import BaseModel, TypeAdapter

from strata.errors import (
    ConflictError,
    InvalidValueError,
    NotFoundError,
    StrataError,
    UnsupportedOperationError,
)
from strata.hooks import HookRaised
from strata.router.coherence import Coherence
from strata.router.core import Core, Route
from strata.router.writes import Writes

__all__ = ["UpdateFn", "VersionedWrites"]

M = TypeVar("M", bound=BaseModel)
UpdateFn = Callable[[M], M | Awaitable[M | None] | None]
"""``ds.update``'s ``fn``: the new value, or None after changing the given one in place;
plain or async."""


class VersionedWrites:
    def __init__(self, core: Core, coherence: Coherence, writes: Writes) -> None:
        self.core = core
        self.coh = coherence
        self.writes = writes
        self._adapters: dict[tuple[str, str], TypeAdapter[Any]] = {}

    def _check(self, rt: Route, verb: str) -> None:
        if not rt.b.l3_on or rt.path.shares_values:  # no L3 row, or one written later
            raise UnsupportedOperationError(
                f"{rt.name}: {verb}() needs a write-through schema with an L3 tier "
                "(its version check runs in L3)"
            )

    async def update(
        self, rt: Route, id: Any, fn: UpdateFn[Any], attempts: int
    ) -> tuple[BaseModel, str | None]:
        self._check(rt, "update")
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise InvalidValueError(f"update needs attempts >= 1, got {attempts!r}")
        core, b = self.core, rt.b
        id = b.check_id(id)
        for attempt in range(attempts):
            core.c.l3_queries += 1
            rows = await core.l3.get_many(b.cs, [id])
            if not rows:
                core.c.misses += 1
                raise NotFoundError(rt.name, id)
            current, version = b.rows.from_row(rows[0])
            new = await self._apply(rt, id, fn, current)
            ((pid, value),) = (await self.writes.prepare(rt, [new])).items()
            if pid != id:  # before_set replaced the value with another row's
                raise InvalidValueError(
                    f"{rt.name}: update() of {id!r} may not change the primary key",
                    schema=rt.name,
                )
            row = b.rows.to_row(value, id)
            # The row's own key and the auto_now_add values it was created with stay, and so
            # do omitted columns the new value did not assign (as for ``set``).
            fixed = {b.pk_column} | {b.cs.by_field[f].name for f in b.cs.auto_now_add}
            fixed |= b.kept(value)
            values = {c: v for c, v in row.items() if c not in fixed}
            core.c.l3_queries += 1
            stored = await core.l3.update_columns(b.cs, id, values, if_version=version)
            if stored is not None:
                core.c.sets += 1
                return await self._written(rt, id, stored), "l3"
            if attempt < attempts - 1:  # lost the race: a little jitter, then again
                await asyncio.sleep(random.random() * 0.001 * min(attempt + 1, 10))
        raise ConflictError(rt.name, id, attempts)

    async def _apply(self, rt: Route, id: Any, fn: UpdateFn[Any], current: BaseModel) -> BaseModel:
        """``fn(value)``: the new value, or None after changing ``value`` in place."""
        try:
            out = fn(current)
            if inspect.isawaitable(out):
                out = await out
        except StrataError:
            raise
        except Exception as exc:  # the caller's own code: its exception reaches them as is
            raise HookRaised(exc) from exc
        new = current if out is None else rt.b.check_value(out)
        if rt.b.check_id(getattr(new, rt.b.pk_field, None)) != id:
            raise InvalidValueError(
                f"{rt.name}: update() of {id!r} may not change the primary key", schema=rt.name
            )
        return new

    async def patch(
        self, rt: Route, id: Any, fields: Mapping[str, Any]
    ) -> tuple[BaseModel, str | None]:
        self._check(rt, "patch")
        core, b = self.core, rt.b
        id = b.check_id(id)
        values = self._patch_values(rt, fields)
        core.c.l3_queries += 1
        stored = await core.l3.update_columns(b.cs, id, b.rows.partial_row(values, id))
        if stored is None:
            core.c.misses += 1
            raise NotFoundError(rt.name, id)
        core.c.sets += 1
        return await self._written(rt, id, stored), "l3"

    def _patch_values(self, rt: Route, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Each field validated as the model would (type and constraints); auto_now set."""
        b = rt.b
        cs = b.cs
        if not fields:
            raise InvalidValueError(f"{rt.name}: patch() needs at least one field")
        out: dict[str, Any] = {}
        for name, raw in fields.items():
            if name not in cs.by_field or name == b.pk_field or name in cs.auto_now_add:
                why = (
                    "the primary key"
                    if name == b.pk_field
                    else "set once, when the row is created"
                    if name in cs.auto_now_add
                    else "not a stored field"
                )
                raise InvalidValueError(
                    f"{rt.name}: patch() cannot write {name!r} ({why})", schema=rt.name
                )
            try:
                out[name] = self._adapter(rt, name).validate_python(raw)
            except pydantic.ValidationError as exc:
                raise InvalidValueError(f"{rt.name}.{name}: {exc}", schema=rt.name) from exc
        now = datetime.now(UTC)
        for f in cs.auto_now:
            out.setdefault(f, now)
        return out

    def _adapter(self, rt: Route, name: str) -> TypeAdapter[Any]:
        adapter = self._adapters.get((rt.name, name))
        if adapter is None:
            info = rt.b.model.model_fields[name]
            adapter = TypeAdapter(cast(Any, Annotated[info.annotation, info]))
            self._adapters[(rt.name, name)] = adapter
        return adapter

    async def _written(self, rt: Route, id: Any, stored_row: dict[str, Any]) -> BaseModel:
        """The row as L3 stored it goes to the caches, as any write's does."""
        core, b, writes = self.core, rt.b, self.writes
        sealed = {id: b.rows.sealed(stored_row)} if b.rows.encrypted else {}
        value, version = b.rows.from_row(stored_row)
        items = [(id, value, version)]
        core.forget_readers(rt, [id])
        await writes.cache_writes(rt, items, sealed)
        await self.coh.publish(rt, "set", items)
        if b.hooks.after_set is not None:
            await core.hooks.call(b.hooks.after_set, b.out(value))
        return b.out(value)

"""The operation template: the one place every public operation (``ds.*`` and ``tx.*``)
goes through.

    lifecycle check ─► resolve the schema (name or model class: one dict lookup)
        ─► work(route, *args) ─► (result, tier that served it)
        ─► Observer.on_operation(op, schema, seconds, None, tier) ─► result
    any error ─► counted in Stats.errors (NotFoundError is a miss, not an error)
              ─► a builtin exception becomes a StrataError; a user hook's own exception
                 reaches the caller unchanged
              ─► Observer.on_operation(op, schema, seconds, error, None) ─► raised

Timing is taken only when an observer is configured: the L1 hit path stays cheap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from strata.errors import (
    InvalidValueError,
    LifecycleError,
    NotFoundError,
    SchemaNotRegisteredError,
    StrataError,
)
from strata.hooks import HookRaised
from strata.observability import Counters, Observer
from strata.router.core import Route

if TYPE_CHECKING:
    SchemaRef = str | type[BaseModel]

__all__ = ["NEW", "OPEN", "CLOSED", "OperationTemplate"]

T = TypeVar("T")
NEW, OPEN, CLOSED = "new", "open", "closed"


class OperationTemplate:
    def __init__(
        self, counters: Counters, observer: Observer | None, logger: logging.Logger
    ) -> None:
        self.c = counters
        self.observer = observer
        self.log = logger
        self.state = NEW
        # The event loop connect() ran on, and what to do when an operation arrives on
        # another one (asyncio.run() called again: the old loop took our connections along).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.rebind: Callable[[], Awaitable[None]] | None = None
        # name and model class -> Route
        self.routes: dict[Any, Route] = {}

    def check_open(self) -> None:
        if self.state is not OPEN:
            if self.state is NEW:
                raise LifecycleError(
                    "DataStore is not connected: use `async with DataStore(...)` "
                    "or `await ds.connect()` first"
                )
            raise LifecycleError("DataStore is closed")

    def route(self, schema: SchemaRef) -> Route:
        try:
            rt = self.routes.get(schema)
        except TypeError:  # unhashable: certainly not a schema
            rt = None
        if rt is None:
            name = schema if isinstance(schema, str) else getattr(schema, "__name__", schema)
            names = sorted({r.name for r in self.routes.values()})
            raise SchemaNotRegisteredError(
                f"schema {name!r} is not registered (registered: {', '.join(names)})"
            )
        return rt

    async def run(
        self,
        op: str,
        schema: SchemaRef | None,
        work: Callable[..., Awaitable[tuple[T, str | None]]],
        *args: Any,
        fast: Callable[..., T | None] | None = None,
    ) -> T:
        """``fast(route, *args)``, when given, may answer synchronously (an L1 hit: no
        coroutine of its own); None means ``work`` does it."""
        observer = self.observer
        start = time.perf_counter() if observer is not None else 0.0
        try:
            if self.state is not OPEN:
                self.check_open()
            if self.loop is not asyncio.get_running_loop() and self.rebind is not None:
                await self.rebind()
            if schema is None:
                rt = None
            else:
                try:
                    rt = self.routes[schema]
                except (KeyError, TypeError):
                    rt = self.route(schema)
                if fast is not None:
                    hit = fast(rt, *args)
                    if hit is not None:
                        if observer is not None:
                            self.observe(op, schema, start, None, "l1")
                        return hit
            result, tier = await work(rt, *args)
        except BaseException as exc:
            error = self.failure(op, exc)
            if observer is not None:
                self.observe(op, schema, start, error, None)
            if error is exc:
                raise
            raise error from (exc.__cause__ if isinstance(exc, HookRaised) else exc)
        if observer is not None:
            self.observe(op, schema, start, None, tier)
        return result

    def failure(self, op: str, exc: BaseException) -> BaseException:
        """What the caller gets for ``exc``; counted in ``Stats.errors``."""
        if not isinstance(exc, Exception):
            return exc  # cancellation, KeyboardInterrupt: not an error of ours
        if isinstance(exc, HookRaised):
            self.c.errors += 1
            return exc.error  # the user's own exception, unchanged
        if isinstance(exc, StrataError):
            if not isinstance(exc, NotFoundError):  # a miss, counted in misses
                self.c.errors += 1
            return exc
        self.c.errors += 1
        if isinstance(exc, TypeError | ValueError | OverflowError):
            return InvalidValueError(f"{op}: {exc}")
        return StrataError(f"{op} failed: {exc!r}")

    def finished(self, op: str, start: float, error: BaseException | None) -> None:
        """For an operation that is not one call (a ``tx`` block): only errors of ours
        count; the caller's own exception leaving the block is theirs."""
        if isinstance(error, StrataError):
            self.failure(op, error)
        if self.observer is not None:
            self.observe(op, None, start, error, None)

    def observe(
        self,
        op: str,
        schema: SchemaRef | None,
        start: float,
        error: BaseException | None,
        tier: str | None,
    ) -> None:
        observer = self.observer
        assert observer is not None
        if schema is None:
            name = ""
        elif isinstance(schema, str):
            name = schema
        else:
            try:
                rt = self.routes.get(schema)
            except TypeError:
                rt = None
            name = rt.name if rt is not None else getattr(schema, "__name__", str(schema))
        try:
            observer.on_operation(op, name, time.perf_counter() - start, error, tier)
        except Exception as exc:
            self.log.warning("strata: observer failed on %s: %r", op, exc)
            self.c.errors += 1

"""The operation template around every public async verb of the DataStore.

    caller ─► wrapper(op) ─► used on another event loop than it connected on?
                │                 └─ the old loop has ended ─► rebind: fresh connections on
                │                    this loop, L1 cleared, write-behind leftovers re-queued
                │                 └─ the old loop still runs (another thread) ─► LifecycleError
                ▼
              the verb ─► the read path calls ``served("l1" | "l2" | "l3")``
                ▼
              Observer.on_operation(op, schema, seconds, error, tier)  (once, even on error)

``asyncio.run()`` twice in one script is the common case for the rebind: a DataStore made at
module level, connected in one run and used in the next.
"""

from __future__ import annotations

import asyncio
import functools
import time
from asyncio import _get_running_loop, get_running_loop
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from strata.errors import LifecycleError

if TYPE_CHECKING:
    from strata.datastore import DataStore

__all__ = ["check_loop", "observed", "served"]

P = ParamSpec("P")
R = TypeVar("R")

# The tier that served the current operation's read; a fresh box per observed operation.
_served: ContextVar[list[str | None] | None] = ContextVar("strata_served", default=None)


def served(tier: str) -> None:
    """Record which tier served the read of the operation running in this context."""
    box = _served.get()
    if box is not None:
        box[0] = tier


async def check_loop(ds: DataStore) -> None:
    """Rebind ``ds`` to the running loop when the loop it connected on has ended."""
    bound = ds._loop
    if bound is None:
        return
    running = asyncio.get_running_loop()
    if bound is running:
        return
    if bound.is_running() and not bound.is_closed():
        raise LifecycleError(
            "this DataStore is connected on an event loop that is running in another "
            "thread; use it from that loop, or use strata.sync.DataStore from threads"
        )
    await ds._rebind()


def _schema_name(ds: DataStore, args: tuple[Any, ...]) -> str:
    if not args:
        return ""
    ref = args[0]
    if isinstance(ref, str):
        return ref
    rt = ds._by_model.get(ref) if isinstance(ref, type) else None
    return rt.name if rt is not None else getattr(ref, "__name__", str(ref))


def observed(
    op: str,
) -> Callable[
    [Callable[..., Coroutine[Any, Any, R]]],
    Callable[..., Coroutine[Any, Any, R]],
]:
    """Wrap a DataStore verb: loop check, then one Observer call per operation."""

    def wrap(fn: Callable[..., Coroutine[Any, Any, R]]) -> Callable[..., Coroutine[Any, Any, R]]:
        async def observed_call(ds: DataStore, args: tuple[Any, ...], kwargs: Any) -> R:
            bound = ds._loop
            if bound is not None and bound is not get_running_loop():
                await check_loop(ds)
            observer = ds._observer
            if observer is None:
                return await fn(ds, *args, **kwargs)
            box: list[str | None] = [None]
            token = _served.set(box)
            error: BaseException | None = None
            start = time.perf_counter()
            try:
                return await fn(ds, *args, **kwargs)
            except BaseException as exc:
                error = exc
                raise
            finally:
                seconds = time.perf_counter() - start
                _served.reset(token)
                try:
                    observer.on_operation(op, _schema_name(ds, args), seconds, error, box[0])
                except Exception as exc:  # a broken observer must not break the operation
                    ds._log.exception("observer failed on %s", op)
                    ds._count_error(exc)

        @functools.wraps(fn)
        def operation(ds: DataStore, /, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, R]:
            # Hot path (no observer, same loop): hand back the verb's own coroutine, so the
            # template costs no extra coroutine frame on an L1 hit.
            bound = ds._loop
            if ds._observer is None and (bound is None or bound is _get_running_loop()):
                return fn(ds, *args, **kwargs)
            return observed_call(ds, args, kwargs)

        return operation

    return wrap

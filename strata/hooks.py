"""The hook runner: one per DataStore, owner of every task a hook starts.

call(hook, *args)   awaited inline (before_set, after_get, ...): a user's exception
                    reaches the caller unchanged (wrapped in ``HookRaised`` on its way
                    through the router, unwrapped by the operation template)
absorb(hook, *args) awaited inline, but an exception is logged, counted in
                    ``Stats.errors`` and handed to ``Config.on_error`` (hooks that run
                    after a write is durable: a failure there must not undo anything)
fire(hook, *args)   from synchronous code (L1 ``on_evict``): an async hook becomes a
                    task of this runner, ended by ``close()``; its errors are absorbed
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from strata.tasks import stop_tasks

__all__ = ["HookRaised", "HookRunner"]


class HookRaised(Exception):
    """A user hook raised ``error``; the operation template re-raises it unchanged."""

    def __init__(self, error: Exception) -> None:
        super().__init__(repr(error))
        self.error = error


class HookRunner:
    def __init__(self, logger: logging.Logger, on_error: Callable[[BaseException], None]) -> None:
        self._log = logger
        self._on_error = on_error
        self._tasks: set[asyncio.Future[Any]] = set()

    async def call(self, hook: Callable[..., Any], *args: Any) -> Any:
        try:
            result = hook(*args)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            raise HookRaised(exc) from exc
        return result

    async def absorb(self, what: str, hook: Callable[..., Any], *args: Any) -> None:
        try:
            result = hook(*args)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            self.failed(what, exc)

    def fire(self, what: str, hook: Callable[..., Any], *args: Any) -> None:
        try:
            result = hook(*args)
        except Exception as exc:
            self.failed(what, exc)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(lambda t: self._done(what, t))

    def failed(self, what: str, exc: BaseException) -> None:
        self._log.warning("strata: %s hook failed: %r", what, exc)
        self._on_error(exc)

    def _done(self, what: str, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failed(what, task.exception())  # type: ignore[arg-type]

    def abandon(self) -> None:
        """Forget hook tasks of an event loop that has ended (they ended with it)."""
        self._tasks.clear()

    async def close(self) -> None:
        await stop_tasks(list(self._tasks))

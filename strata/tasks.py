"""Stopping background tasks so that ``close()`` always returns.

On Python 3.11 ``asyncio.wait_for`` (which redis-py uses to send commands and to connect
when a socket timeout is set) drops a cancellation that lands as the awaited call
completes: the task goes on as if nothing happened and waits for its next tick, however
far away. So a stop cancels again until every task has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["raise_if_cancelled", "stop_tasks"]

RECANCEL_EVERY = 0.5  # seconds between cancellations of a task that swallowed one


def raise_if_cancelled() -> None:
    """End a task whose cancellation a library swallowed, or turned into another error
    (redis-py does, mid-connect): it was asked to stop, and someone waits for it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def stop_tasks(tasks: Iterable[asyncio.Future[Any]], every: float = RECANCEL_EVERY) -> None:
    """Cancel the tasks and wait until all have ended, cancelling again every ``every``
    seconds those still running. Their results and exceptions are left on them. A cancel
    of the caller propagates (the tasks are cancelled once more on the way out)."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    try:
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=every)
    finally:
        for task in pending:
            task.cancel()
    for task in tasks:  # retrieved: no "exception was never retrieved" at exit
        if not task.cancelled():
            task.exception()

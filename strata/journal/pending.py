"""The in-process write-behind queue's parts (``strata.writebehind``): the writes it holds,
its dead letters, its settings check, and what it does with a failed batch.

    failed batch ─► plan_failure: every write superseded since ─► Plan.NOTHING
                                  attempts < max_retry (not a bisect half) ─► Plan.RETRY
                                  one write left, or L3 unreachable ─► Plan.DEAD_LETTER
                                  else ─► Plan.BISECT (each half tried once, at once)
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import math
import random
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from strata.errors import ConfigError, TierUnavailableError, WriteBehindError

__all__ = [
    "UNREACHABLE",
    "Apply",
    "Batch",
    "DeadLetter",
    "DeadLetterHook",
    "Entry",
    "Group",
    "PendingWrite",
    "Plan",
    "State",
    "backoff",
    "call_hook",
    "check_settings",
    "close_within",
    "flusher_ended",
    "log_failure",
    "plan_failure",
]

# Errors that say "L3 cannot be reached" rather than "L3 refused these rows": splitting the
# batch would only multiply calls to a database that is down, so such a batch is not bisected.
UNREACHABLE = (TierUnavailableError, OSError)


@dataclass(slots=True)
class PendingWrite:
    """One L3 write waiting in the queue.

    The queue owns it once ``put``: it stamps ``first_queued`` (when its key first became
    dirty, kept across coalescing) and counts ``attempts`` (failed applies it took part in).
    """

    schema: str
    id: Hashable
    op: Literal["set", "delete"]
    row: Any  # opaque payload for apply; None for deletes
    version: int  # grows per key: a newer write of a key has a higher (or equal) version
    attempts: int = 0
    first_queued: float = 0.0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A write given up on: ``error`` is the exception of its last failed attempt."""

    write: PendingWrite
    error: BaseException
    failed_at: float  # the queue's clock


@dataclass(slots=True, eq=False)
class Entry:
    write: PendingWrite
    seq: int  # the put that first made the key dirty; flush() waits on it
    cancelled: bool = False  # cancel() while in flight: never retried


@dataclass(slots=True, eq=False)
class Group:
    """The surviving writes of a failed batch, to be tried again together."""

    schema: str
    entries: dict[Hashable, Entry]
    bisect: bool  # a half of a split batch: one try, then split again or dead-letter


@dataclass(slots=True, eq=False)
class Batch:
    schema: str
    entries: list[Entry]
    bisect: bool


class State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


Apply = Callable[[str, list[PendingWrite]], Awaitable[None]]
DeadLetterHook = Callable[[DeadLetter], Awaitable[None] | None]


class Plan(enum.Enum):
    NOTHING = "nothing"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"
    BISECT = "bisect"


def plan_failure(
    bisect: bool, survivors: int, attempts: int, max_retry: int, unreachable: bool
) -> Plan:
    """What to do with a failed batch's ``survivors`` (writes not superseded since)."""
    if not survivors:
        return Plan.NOTHING
    if not bisect and attempts < max_retry:
        return Plan.RETRY
    if survivors == 1 or unreachable:
        return Plan.DEAD_LETTER
    return Plan.BISECT


def log_failure(
    log: logging.Logger,
    plan: Plan,
    schema: str,
    size: int,
    survivors: int,
    attempts: int,
    error: BaseException,
    *,
    max_retry: int,
    bisect: bool,
) -> None:
    if plan is Plan.NOTHING:
        log.warning(
            "write-behind: applying %d writes to %r failed; all were superseded since",
            size,
            schema,
            exc_info=error,
        )
    elif plan is Plan.RETRY:
        # An unreachable L3 is logged by the tier once per outage (strata/tiers/outage.py):
        # a retry of it is routine, not a warning per batch.
        log.log(
            logging.DEBUG if isinstance(error, UNREACHABLE) else logging.WARNING,
            "write-behind: applying %d writes to %r failed (attempt %d of %d); retrying %d",
            size,
            schema,
            attempts,
            max_retry,
            survivors,
            exc_info=error,
        )
    elif plan is Plan.DEAD_LETTER:
        log.warning(
            "write-behind: applying %d writes to %r failed after %d attempts; "
            "%d dead-lettered, %d superseded",
            size,
            schema,
            attempts,
            survivors,
            size - survivors,
            exc_info=error,
        )
    else:
        log.log(
            logging.DEBUG if bisect else logging.WARNING,
            "write-behind: applying %d writes to %r failed after %d attempts; "
            "splitting the batch to isolate the failing writes",
            size,
            schema,
            attempts,
            exc_info=error,
        )


async def call_hook(
    hook: DeadLetterHook | None,
    letters: list[DeadLetter],
    log: logging.Logger,
    report: Callable[[BaseException], None],
) -> None:
    """Run the on_dead_letter hook for each letter; a failing hook is logged and reported."""
    if hook is None:
        return
    for letter in letters:
        try:
            result = hook(letter)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            log.warning("write-behind: on_dead_letter hook failed", exc_info=exc)
            report(exc)


def backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds before retrying a batch that has failed ``attempts`` times:
    ``base * 2**(attempts - 1)``, capped at ``cap``, then jittered down by up to half so
    that instances retrying together spread out."""
    delay = min(cap, base * 2.0 ** min(max(attempts - 1, 0), 64))
    return delay / 2 + random.random() * delay / 2


def flusher_ended(
    task: asyncio.Task[None], stopping: bool, pending: int, log: logging.Logger
) -> BaseException | None:
    """Why the queue's flusher task ended (logged), or None when that was the plan."""
    if task.cancelled():
        if stopping:
            return None
        # Cancelled by someone else: most often asyncio.run() ending with the DataStore
        # still open, which is not a crash. The writes left stay in the queue until the
        # DataStore is used on the next loop (they move to its new queue) or closed.
        if pending:
            log.warning(
                "write-behind: the flusher was cancelled (event loop ended?) with %d "
                "writes not yet in L3; they are written when the DataStore is next used",
                pending,
            )
        else:
            log.debug("write-behind: the flusher was cancelled with nothing pending")
        return asyncio.CancelledError("the flusher task was cancelled")
    exc = task.exception()
    if exc is not None:
        log.error("write-behind: the flusher crashed", exc_info=exc)
    return exc


class Closable(Protocol):
    async def close(self, timeout: float | None = None) -> None: ...


async def close_within(queue: Closable, timeout: float, log: logging.Logger) -> int:
    """Close the in-process queue, flushing for at most ``timeout`` seconds (``Config.
    close_timeout``); the writes it could not flush are logged (ERROR) with their number,
    not raised: returns how many. They are lost when the process exits (no journal)."""
    try:
        await queue.close(timeout)
    except WriteBehindError as exc:
        left = len(exc.dead_letters)
        log.error(
            "write-behind: close_timeout (%g s) passed with %d write-behind writes not flushed "
            "to L3 (%s); without the Redis journal they are lost when this process exits "
            "(ds.dead_letters() lists them until then)",
            timeout,
            left,
            exc.__cause__ or exc,
        )
        return left
    return 0


def check_settings(
    apply: object,
    flush_interval: object,
    counts: Mapping[str, object],
    delays: Mapping[str, object],
    callables: Mapping[str, object],
) -> None:
    """ConfigError unless the queue's settings make sense."""
    if not callable(apply):
        raise ConfigError(f"apply must be an async callable, got {apply!r}")
    if not _is_number(flush_interval) or not 0 < flush_interval < math.inf:  # type: ignore[operator]
        raise ConfigError(
            f"flush_interval must be a finite number of seconds > 0, got {flush_interval!r}"
        )
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
    for name, delay in delays.items():
        if not _is_number(delay) or not 0 <= delay < math.inf:  # type: ignore[operator]
            raise ConfigError(f"{name} must be a finite number of seconds >= 0, got {delay!r}")
    for name, fn in callables.items():
        if fn is not None and not callable(fn):
            raise ConfigError(f"{name} must be callable, got {fn!r}")


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)

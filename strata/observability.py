"""Counters, the observer hook and the library logger.

``Stats`` is the one list of counter names: ``Counters`` (what the router bumps) is derived
from its fields, less the few that are measured live when ``stats()`` is called.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Protocol

__all__ = [
    "COUNTER_NAMES",
    "LIVE_NAMES",
    "Counters",
    "Observer",
    "Observers",
    "Stats",
    "default_logger",
]


def default_logger() -> logging.Logger:
    return logging.getLogger("strata")


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of a DataStore's counters (``ds.stats()``).

    Operations (one per id for the batch forms):
        gets, sets, deletes   ids asked for / written / deleted (a repeated id in one
                              set_many counts each time it was handed in)
    Reads, by the tier that answered (per id):
        l1_hits, l2_hits, l3_hits, misses (no tier had it), negative_hits (a miss answered
        by the negative cache, also counted in misses)
    Work:
        l3_queries            statements sent to L3 (reads, writes, searches, flushes)
        invalidations_sent / invalidations_received   bus messages
        dead_letters          write-behind writes given up
    Errors:
        errors                every error, both kinds: those raised to the caller by a
                              public operation (any StrataError but NotFoundError, which
                              is a miss) and those Strata absorbed (logged, handed to
                              ``Config.on_error``, not raised): an L2 outage or refused
                              command, a corrupt cached payload, a failing replica, a
                              failed write-behind batch, a hook failing after a durable
                              write (after a tx commit, on_evict, on_write_error)
    Measured when ``stats()`` is called (not counters):
        l1_entries, l1_evictions, dirty_count (write-behind writes not yet in L3)
    """

    gets: int = 0
    sets: int = 0
    deletes: int = 0
    errors: int = 0
    l1_hits: int = 0
    l2_hits: int = 0
    l3_hits: int = 0
    misses: int = 0
    l3_queries: int = 0
    l1_entries: int = 0
    dirty_count: int = 0
    invalidations_sent: int = 0
    invalidations_received: int = 0
    l1_evictions: int = 0
    negative_hits: int = 0
    dead_letters: int = 0
    # the keyed cache (ds.cache): hits per tier (l3 = the durable table), misses, loader
    # calls, stale values served, background refreshes, single-flight waits for another
    # holder's lease, lock acquisitions that had to wait, calls refused by rate_limit
    cache_l1_hits: int = 0
    cache_l2_hits: int = 0
    cache_l3_hits: int = 0
    cache_misses: int = 0
    cache_loader_calls: int = 0
    cache_stale_served: int = 0
    cache_refreshes: int = 0
    cache_lease_waits: int = 0
    cache_lock_waits: int = 0
    cache_rate_limited: int = 0

    @property
    def hit_ratio(self) -> float:
        hits = self.l1_hits + self.l2_hits + self.l3_hits
        return hits / self.gets if self.gets else 0.0


LIVE_NAMES = ("l1_entries", "l1_evictions", "dirty_count")
"""Stats fields measured at snapshot time rather than counted."""
COUNTER_NAMES = tuple(f.name for f in fields(Stats) if f.name not in LIVE_NAMES)


class Counters:
    """Mutable counters the router bumps (one per ``COUNTER_NAMES``); ``snapshot`` freezes
    them, with the live values, into ``Stats``."""

    __slots__ = COUNTER_NAMES

    gets: int
    sets: int
    deletes: int
    errors: int
    l1_hits: int
    l2_hits: int
    l3_hits: int
    misses: int
    l3_queries: int
    invalidations_sent: int
    invalidations_received: int
    negative_hits: int
    dead_letters: int
    cache_l1_hits: int
    cache_l2_hits: int
    cache_l3_hits: int
    cache_misses: int
    cache_loader_calls: int
    cache_stale_served: int
    cache_refreshes: int
    cache_lease_waits: int
    cache_lock_waits: int
    cache_rate_limited: int

    def __init__(self) -> None:
        for name in COUNTER_NAMES:
            setattr(self, name, 0)

    def snapshot(self, **live: int) -> Stats:
        values = {name: getattr(self, name) for name in COUNTER_NAMES}
        values.update(live)
        return Stats(**values)


class Observer(Protocol):
    """Receives exactly one call per public operation (for metrics or tracing).

    ``op``: the public method ("get", "set_many", "search", "tx", "tx.get", ...,
    "cache.get", "cache.remember", ...);
    ``schema``: the schema's name ("" for an operation on no schema: "tx", "flush_dirty";
    keyed cache: the namespace path, "" for the root cache);
    ``seconds``: how long it took; ``error``: the exception it raised (None on success);
    ``tier``: "l1" | "l2" | "l3" for the tier that served a read, else None. Called on the
    event loop: keep it quick; an exception from it is logged and counted, never raised.
    """

    def on_operation(
        self,
        op: str,
        schema: str,
        seconds: float,
        error: BaseException | None,
        tier: str | None,
    ) -> None: ...


class Observers:
    """Several observers as one: ``Config(observer=Observers(metrics, tracing))``.

    Each is called in order; one that raises is logged and the others still run.
    """

    __slots__ = ("_log", "observers")

    def __init__(self, *observers: Observer, logger: logging.Logger | None = None) -> None:
        self.observers = observers
        self._log = logger or default_logger()

    def on_operation(
        self,
        op: str,
        schema: str,
        seconds: float,
        error: BaseException | None,
        tier: str | None,
    ) -> None:
        for observer in self.observers:
            try:
                observer.on_operation(op, schema, seconds, error, tier)
            except Exception:
                self._log.exception("observer %r failed on %s", observer, op)

"""Counters, the observer hook and the library logger."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Protocol

__all__ = ["Counters", "Observer", "Stats", "default_logger"]


def default_logger() -> logging.Logger:
    return logging.getLogger("strata")


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of a DataStore's counters (``ds.stats()``)."""

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


class Counters:
    """Mutable counters the router bumps; ``snapshot`` freezes them into ``Stats``."""

    __slots__ = (
        "cache_l1_hits",
        "cache_l2_hits",
        "cache_l3_hits",
        "cache_lease_waits",
        "cache_loader_calls",
        "cache_lock_waits",
        "cache_misses",
        "cache_rate_limited",
        "cache_refreshes",
        "cache_stale_served",
        "dead_letters",
        "deletes",
        "dirty_count",
        "errors",
        "gets",
        "invalidations_received",
        "invalidations_sent",
        "l1_entries",
        "l1_evictions",
        "l1_hits",
        "l2_hits",
        "l3_hits",
        "l3_queries",
        "misses",
        "negative_hits",
        "sets",
    )

    def __init__(self) -> None:
        self.gets = 0
        self.sets = 0
        self.deletes = 0
        self.errors = 0
        self.l1_hits = 0
        self.l2_hits = 0
        self.l3_hits = 0
        self.misses = 0
        self.l3_queries = 0
        self.l1_entries = 0
        self.dirty_count = 0
        self.invalidations_sent = 0
        self.invalidations_received = 0
        self.l1_evictions = 0
        self.negative_hits = 0
        self.dead_letters = 0
        self.cache_l1_hits = 0
        self.cache_l2_hits = 0
        self.cache_l3_hits = 0
        self.cache_misses = 0
        self.cache_loader_calls = 0
        self.cache_stale_served = 0
        self.cache_refreshes = 0
        self.cache_lease_waits = 0
        self.cache_lock_waits = 0
        self.cache_rate_limited = 0

    def snapshot(self, **live: int) -> Stats:
        values = {f.name: getattr(self, f.name) for f in fields(Stats)}
        values.update(live)
        return Stats(**values)


class Observer(Protocol):
    """Receives one call per public operation (for metrics or tracing).

    ``op`` is the public method ("get", ..., "cache.get", "cache.remember", ...), ``schema``
    the schema name (keyed cache: the namespace path, "" for the root cache) and ``tier``
    the tier that served a read ("l1" | "l2" | "l3"), None otherwise.
    """

    def on_operation(
        self,
        op: str,
        schema: str,
        seconds: float,
        error: BaseException | None,
        tier: str | None,
    ) -> None: ...

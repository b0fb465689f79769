"""Counters, the observer hook and the library logger."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Protocol

__all__ = ["Counters", "Observer", "Observers", "Stats", "default_logger"]


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

    @property
    def hit_ratio(self) -> float:
        hits = self.l1_hits + self.l2_hits + self.l3_hits
        return hits / self.gets if self.gets else 0.0


class Counters:
    """Mutable counters the router bumps; ``snapshot`` freezes them into ``Stats``."""

    __slots__ = (
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

    def snapshot(self, **live: int) -> Stats:
        values = {f.name: getattr(self, f.name) for f in fields(Stats)}
        values.update(live)
        return Stats(**values)


class Observer(Protocol):
    """Receives one call per public operation (for metrics or tracing).

    ``op`` is the public method name (``"get"``, ``"set_many"``, ``"tx.get"``, ...),
    ``schema`` the schema name (``""`` when the operation has none), ``seconds`` its
    duration, ``error`` what it raised (``None`` on success) and ``tier`` the tier that
    served a read (``"l1"``, ``"l2"`` or ``"l3"``; ``None`` for writes and misses).
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

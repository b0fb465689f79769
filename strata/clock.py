"""The hybrid logical clock every row version comes from.

A version is microseconds since the epoch, kept strictly increasing within the process and
advanced past every version the process observes (L3 rows, L2 payloads, bus messages), so a
version minted after seeing another instance's write is greater than that write's, even
when the two machines' wall clocks disagree. L3 assigns ``GREATEST(client clock, old + 1)``
inside its upsert, so commit order wins whichever instance or write mode wrote last.

A row inserted after a delete has no old version to be raised past, so L3 also keeps the
delete's version per table and id (``DELETED_TABLE``, created by ``migrate``) for
``DELETED_KEEP_MICROS``, and an insert stores ``GREATEST(clock, deleted + 1)``: a lagging
clock never writes below a delete's tombstone.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["DELETED_KEEP_MICROS", "DELETED_TABLE", "HybridClock", "wall_micros"]

DELETED_TABLE = "_strata_deleted"
#: How long a delete's version bounds later writes of its id: far longer than any cache
#: tombstone (``Config.tombstone_ttl``) or clock skew; each delete sweeps older entries.
DELETED_KEEP_MICROS = 3_600_000_000


def wall_micros() -> int:
    return time.time_ns() // 1000


class HybridClock:
    """``now()`` for a new version, ``observe(v)`` for every version seen."""

    __slots__ = ("_last", "_wall")

    def __init__(self, wall: Callable[[], int] = wall_micros) -> None:
        self._wall = wall
        self._last = 0

    def now(self) -> int:
        v = self._wall()
        if v <= self._last:
            v = self._last + 1
        self._last = v
        return v

    def observe(self, version: int) -> None:
        if version > self._last:
            self._last = version

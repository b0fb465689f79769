"""The hybrid logical clock every row version comes from.

A version is microseconds since the epoch, kept strictly increasing within the process and
advanced past every version the process observes (L3 rows, L2 payloads, bus messages), so a
version minted after seeing another instance's write is greater than that write's, even
when the two machines' wall clocks disagree. L3 assigns ``GREATEST(client clock, old + 1)``
inside its upsert, so commit order wins whichever instance or write mode wrote last.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["HybridClock", "wall_micros"]


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

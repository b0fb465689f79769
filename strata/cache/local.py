"""The keyed cache's process-local parts: the memory tier and the fallbacks for what needs
Redis when there is none (locks, leases, counters and rate limits, process-local then).

The memory tier is one LRU bound (``Config.cache_max_entries``) shared by every namespace
of a DataStore, apart from the schemas' L1. An entry remembers the local generations of its
key's prefixes; a wildcard invalidation (ours, or another instance's through the bus) bumps
one generation, which orphans every entry under it without visiting them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from strata.codec import Entry

__all__ = ["LocalKV", "Memory"]

MemKey = tuple[str, str]  # (tag, path)


@dataclass(slots=True)
class _Slot:
    entry: Entry
    expires: float  # clock time; inf = only evicted by the bound
    gens: tuple[int, ...]


class Memory:
    """Bounded LRU of decoded entries, with expiry on an injectable clock."""

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._slots: OrderedDict[MemKey, _Slot] = OrderedDict()
        self._gens: dict[tuple[str, str], int] = {}
        self.epochs: dict[str, int] = {}  # per tag: bumped by every foreign change

    def __len__(self) -> int:
        return len(self._slots)

    def _current(self, tag: str, prefixes: tuple[str, ...]) -> tuple[int, ...]:
        gens = self._gens
        return tuple(gens.get((tag, p), 0) for p in prefixes)

    def get(self, key: MemKey, prefixes: tuple[str, ...]) -> Entry | None:
        slot = self._slots.get(key)
        if slot is None:
            return None
        if slot.expires <= self.clock() or slot.gens != self._current(key[0], prefixes):
            del self._slots[key]
            return None
        self._slots.move_to_end(key)
        return slot.entry

    def set(self, key: MemKey, prefixes: tuple[str, ...], entry: Entry, ttl: float | None) -> None:
        expires = float("inf") if ttl is None else self.clock() + ttl
        self._slots[key] = _Slot(entry, expires, self._current(key[0], prefixes))
        self._slots.move_to_end(key)
        while len(self._slots) > self.max_entries:
            self._slots.popitem(last=False)

    def delete(self, key: MemKey) -> None:
        self._slots.pop(key, None)

    def bump(self, tag: str, prefix: str) -> None:
        self._gens[(tag, prefix)] = self._gens.get((tag, prefix), 0) + 1

    def touch(self, tag: str) -> None:
        self.epochs[tag] = self.epochs.get(tag, 0) + 1

    def clear(self) -> None:
        self._slots.clear()
        for tag in list(self.epochs):
            self.epochs[tag] += 1

    def sweep(self) -> int:
        now = self.clock()
        dead = [k for k, s in self._slots.items() if s.expires <= now]
        for k in dead:
            del self._slots[k]
        return len(dead)


class LocalKV:
    """Tokens and counters with expiry, for locks, leases and rate limits without Redis."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}
        self._windows: dict[str, list[float]] = {}

    def set_nx(self, key: str, token: str, ttl: float) -> bool:
        now = self.clock()
        held = self._tokens.get(key)
        if held is not None and held[1] > now:
            return False
        self._tokens[key] = (token, now + ttl)
        return True

    def release(self, key: str, token: str) -> bool:
        held = self._tokens.get(key)
        if held is not None and held[0] == token:
            del self._tokens[key]
            return True
        return False

    def exists(self, key: str) -> bool:
        held = self._tokens.get(key)
        return held is not None and held[1] > self.clock()

    def fixed_window(self, key: str, limit: int, per: float) -> tuple[int, float]:
        now = self.clock()
        hits = self._windows.get(key)
        if not hits or hits[0] <= now:  # hits = [window end, count]
            hits = self._windows[key] = [now + per, 0.0]
        hits[1] += 1
        return int(hits[1]), hits[0] - now

    def sliding_window(self, key: str, limit: int, per: float) -> tuple[bool, int, float]:
        now = self.clock()
        times = [t for t in self._windows.get(key, []) if t > now - per]
        allowed = len(times) < limit
        if allowed:
            times.append(now)
        self._windows[key] = times
        reset = times[0] + per - now if times else per
        return allowed, len(times), max(0.0, reset)

"""L1: the in-process cache tier. Synchronous, bounded, TTL'd and versioned, for one schema.

It runs on the event loop with no awaits and no locks, so every operation is atomic.

    get(key)                                 set(key, value, version, ttl)
      │                                        │
      ▼                                        ▼
    entry? ── no ──► None                    held version (live entry or tombstone)
      │ yes                                    │ version < held ──► ignored, False
      ▼                                        ▼
    expired? ── yes ──► drop, on_evict,      storable? (ttl > 0, size <= max_bytes)
      │                 None                   │ no ──► drop live entry, leave tombstone, False
      ▼ no                                     ▼ yes
    touch (LRU: to the end,                  make room: expired first, then the policy's
           LFU: count + 1,                   victims (on_evict for each)
           FIFO: nothing)                      │
      │                                        ▼
      ▼                                      store, touch, True
    value

A versioned ``delete(key, version)`` leaves a tombstone: the key's version, kept for
``tombstone_ttl`` seconds, so that a slow reader cannot put back a value older than the delete.
Tombstones are invisible to ``get``, ``len`` and ``max_entries``.

Expiry times of entries and tombstones sit in one min-heap, so ``sweep`` (and the lazy sweep
inside ``len``) costs O(k log n) for k expired items, not a pass over every entry. Records are
not updated in place: a set that extends an entry's life pushes nothing (its old record, when
popped, is pushed again at the new time); one that shortens it pushes a new record; records
whose entry is gone are skipped. The heap is rebuilt whenever it holds more than twice as many
records as there are entries and tombstones.

``on_evict`` callbacks run after the operation has finished changing the cache, so a callback
may call back into the cache.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from heapq import heapify, heappop, heappush
from itertools import count
from typing import Final, Generic, TypeVar

from strata.schema import Eviction  # re-exported: it was defined here before
from strata.tiers.memory_bounds import (  # estimate_size: re-exported
    check_bounds,
    check_callables,
    default_sizeof,
    estimate_size,
)

__all__ = ["DEFAULT", "Eviction", "MemoryTier", "estimate_size"]

logger = logging.getLogger("strata")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Default(enum.Enum):
    DEFAULT = "DEFAULT"


DEFAULT: Final = _Default.DEFAULT
"""Stands for "the store's ttl" in ``set`` / ``set_many``."""

_NO_KEY: Final = object()
_MIN_HEAP_LIMIT: Final = 1024


class _Entry(Generic[V]):
    __slots__ = ("expires", "freq", "size", "value", "version")

    def __init__(self, value: V, version: int, expires: float | None, size: int) -> None:
        self.value = value
        self.version = version
        self.expires = expires  # absolute clock time; None = never
        self.size = size  # 0 unless max_bytes is set
        self.freq = 1  # LFU access count


class MemoryTier(Generic[K, V]):
    """A bounded, TTL'd, versioned in-process cache for one schema.

    Stores exactly the objects it is given (no copies). Not thread-safe: use it from one
    thread (the event loop). ``max_bytes`` counts ``sizeof(value)``; by default a model's
    encoded JSON length, which is smaller than the objects it holds in memory
    (``memory_bounds.default_sizeof``).
    """

    __slots__ = (
        "_buckets",
        "_clock",
        "_data",
        "_heap",
        "_heap_limit",
        "_lfu",
        "_lru",
        "_max_bytes",
        "_max_entries",
        "_min_freq",
        "_nbytes",
        "_on_error",
        "_on_evict",
        "_pending",
        "_seq",
        "_sizeof",
        "_tombstone_ttl",
        "_tombstones",
        "_ttl",
        "eviction",
        "evictions",
    )

    def __init__(
        self,
        *,
        ttl: float | None = None,
        max_entries: int | None = None,
        max_bytes: int | None = None,
        sizeof: Callable[[V], int] | None = None,
        eviction: Eviction = Eviction.LRU,
        on_evict: Callable[[K, V], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        tombstone_ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_bounds(ttl, max_entries, max_bytes, eviction, tombstone_ttl)
        check_callables(sizeof=sizeof, on_evict=on_evict, on_error=on_error, clock=clock)

        self._ttl = None if ttl is None else float(ttl)
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._sizeof: Callable[[V], int] = sizeof if sizeof is not None else default_sizeof
        self.eviction: Final = eviction
        self._lru = eviction is Eviction.LRU
        self._lfu = eviction is Eviction.LFU
        self._on_evict = on_evict
        self._on_error = on_error
        self._tombstone_ttl = float(tombstone_ttl)
        self._clock = clock

        # Insertion order is the FIFO queue and, with move_to_end on use, the LRU list.
        self._data: OrderedDict[K, _Entry[V]] = OrderedDict()
        # key -> (version, expires)
        self._tombstones: dict[K, tuple[int, float]] = {}
        # (expires, tie-breaker, key): the tie-breaker keeps keys from ever being compared.
        self._heap: list[tuple[float, int, K]] = []
        self._heap_limit = _MIN_HEAP_LIMIT
        self._seq = count()
        # LFU: access count -> keys with that count, least recently used first.
        self._buckets: dict[int, OrderedDict[K, None]] = {}
        self._min_freq = 1
        self._nbytes = 0
        self._pending: list[tuple[K, V]] = []
        self.evictions = 0
        """Entries removed for capacity or expiry (not delete / clear / replacement)."""

    # -- reads -----------------------------------------------------------------------------

    def get(self, key: K) -> V | None:
        """The value if live; counts as a use for LRU and LFU."""
        e = self._data.get(key)
        if e is None:
            return None
        exp = e.expires
        if exp is not None and exp <= self._clock():
            self._expire(key, e)
            return None
        if self._lru:
            self._data.move_to_end(key)
        elif self._lfu:
            self._lfu_touch(key, e)
        return e.value

    def get_entry(self, key: K) -> tuple[V, int, float | None] | None:
        """``(value, version, remaining ttl in seconds or None)`` if live; a use, like get."""
        e = self._data.get(key)
        if e is None:
            return None
        exp = e.expires
        remaining = None
        if exp is not None:
            remaining = exp - self._clock()
            if remaining <= 0:
                self._expire(key, e)
                return None
        if self._lru:
            self._data.move_to_end(key)
        elif self._lfu:
            self._lfu_touch(key, e)
        return e.value, e.version, remaining

    def get_many(self, keys: Iterable[K]) -> dict[K, V]:
        """The live values among ``keys``; each hit is a use."""
        data = self._data
        now = self._clock()
        lru = self._lru
        lfu = self._lfu
        found: dict[K, V] = {}
        for key in keys:
            e = data.get(key)
            if e is None:
                continue
            exp = e.expires
            if exp is not None and exp <= now:
                self._drop(key, e)
                self._note_evicted(key, e)
                continue
            if lru:
                data.move_to_end(key)
            elif lfu:
                self._lfu_touch(key, e)
            found[key] = e.value
        if self._pending:
            self._run_callbacks()
        return found

    def __contains__(self, key: K) -> bool:
        """Whether ``key`` is live. Not a use."""
        e = self._data.get(key)
        if e is None:
            return False
        exp = e.expires
        if exp is not None and exp <= self._clock():
            self._expire(key, e)
            return False
        return True

    def __len__(self) -> int:
        """Exact number of live entries: expired ones are swept first (calling on_evict)."""
        self._sweep_if_due()
        return len(self._data)

    def keys(self) -> list[K]:
        """Snapshot of the live keys, in eviction order for LRU and FIFO (next victim first)."""
        self._sweep_if_due()
        return list(self._data)

    @property
    def ttl(self) -> float | None:
        """The store's default ttl in seconds (None = entries never expire)."""
        return self._ttl

    @property
    def nbytes(self) -> int:
        """Sum of live entry sizes when max_bytes is set, else 0."""
        self._sweep_if_due()
        return self._nbytes

    # -- writes ----------------------------------------------------------------------------

    def set(
        self, key: K, value: V, version: int = 0, ttl: float | _Default | None = DEFAULT
    ) -> bool:
        """Store ``value`` unless the key holds a greater version. Returns whether stored.

        ``ttl``: DEFAULT = the store's ttl, None (or inf) = never expires, <= 0 (or NaN) = do
        not store. A write that passes the version check but cannot be stored (ttl <= 0, larger
        than max_bytes) still supersedes what was held: it acts as ``delete(key, version)``.
        """
        if ttl is DEFAULT:
            ttl = self._ttl
        data = self._data
        now = self._clock()
        e = data.get(key)
        if e is not None:
            exp = e.expires
            if exp is not None and exp <= now:
                # An expired entry's version blocks nothing.
                self._drop(key, e)
                self._note_evicted(key, e)
                e = None
            elif version < e.version:
                return False
        elif self._tombstones:
            t = self._tombstones.get(key)
            if t is not None and version < t[0] and t[1] > now:
                return False

        expires: float | None
        if ttl is None or ttl == math.inf:
            expires = None
        elif ttl > 0:  # False for NaN too
            expires = now + ttl
        else:
            return self._supersede(key, e, version, now)
        size = 0
        max_bytes = self._max_bytes
        if max_bytes is not None:
            size = max(0, self._sizeof(value))
            if size > max_bytes:
                return self._supersede(key, e, version, now)

        if e is not None:
            old_expires = e.expires
            e.value = value
            e.version = version
            e.expires = expires
            if self._lru:
                data.move_to_end(key)
            elif self._lfu:
                self._lfu_touch(key, e)
            if expires is not None and (old_expires is None or expires < old_expires):
                self._push(expires, key)
            if max_bytes is not None:
                self._nbytes += size - e.size
                e.size = size
                if self._nbytes > max_bytes:
                    self._make_room(now, 0, key)
        else:
            if self._tombstones:
                self._tombstones.pop(key, None)
            max_entries = self._max_entries
            if (max_entries is not None and len(data) >= max_entries) or (
                max_bytes is not None and self._nbytes + size > max_bytes
            ):
                self._make_room(now, size, _NO_KEY)
            data[key] = _Entry(value, version, expires, size)
            self._nbytes += size
            if self._lfu:
                bucket = self._buckets.get(1)
                if bucket is None:
                    bucket = self._buckets[1] = OrderedDict()
                bucket[key] = None
                self._min_freq = 1
            if expires is not None:
                self._push(expires, key)
        if self._pending:
            self._run_callbacks()
        return True

    def set_many(
        self, items: Iterable[tuple[K, V, int]], ttl: float | _Default | None = DEFAULT
    ) -> int:
        """``set`` each ``(key, value, version)``; returns how many were stored."""
        stored = 0
        for key, value, version in items:
            if self.set(key, value, version, ttl):
                stored += 1
        return stored

    def delete(self, key: K, version: int | None = None) -> bool:
        """Remove ``key``; True when a live entry was removed. With ``version``, leave a
        tombstone so later sets with a smaller version are ignored for ``tombstone_ttl``.

        The tombstone holds the greatest version known for the key: ``version``, or the removed
        entry's or an earlier tombstone's if greater.
        """
        e = self._data.get(key)
        removed = False
        now = self._clock()
        if e is not None:
            self._drop(key, e)
            exp = e.expires
            if exp is not None and exp <= now:
                self._note_evicted(key, e)
            else:
                removed = True
                if version is not None and e.version > version:
                    version = e.version
        if version is not None:
            self._put_tombstone(key, version, now)
        if self._pending:
            self._run_callbacks()
        return removed

    def delete_many(self, keys: Iterable[K], version: int | None = None) -> int:
        """``delete`` each key; returns how many live entries were removed."""
        removed = 0
        for key in keys:
            if self.delete(key, version):
                removed += 1
        return removed

    def clear(self) -> None:
        """Drop every entry and tombstone. on_evict is not called."""
        self._data.clear()
        self._tombstones.clear()
        self._heap.clear()
        self._heap_limit = _MIN_HEAP_LIMIT
        self._buckets.clear()
        self._min_freq = 1
        self._nbytes = 0

    def sweep(self, limit: int | None = None) -> int:
        """Remove expired entries and tombstones; returns how many live entries expired.

        ``limit`` caps how many entries one call expires, so a caller on the event loop can
        sweep a large store in slices: call again while the result equals ``limit``.
        """
        expired = self._expire_due(self._clock(), None, limit)
        if self._pending:
            self._run_callbacks()
        return expired

    # -- internals -------------------------------------------------------------------------

    def _sweep_if_due(self) -> None:
        heap = self._heap
        if heap and heap[0][0] <= self._clock():
            self.sweep()

    def _lfu_touch(self, key: K, e: _Entry[V]) -> None:
        buckets = self._buckets
        freq = e.freq
        up = e.freq = freq + 1
        bucket = buckets[freq]
        upper = buckets.get(up)
        if len(bucket) == 1:
            del buckets[freq]
            if self._min_freq == freq:
                self._min_freq = up
            if upper is None:
                # A hot key usually climbs alone: move its bucket instead of building a new one.
                buckets[up] = bucket
                return
        else:
            del bucket[key]
            if upper is None:
                upper = buckets[up] = OrderedDict()
        upper[key] = None

    def _drop(self, key: K, e: _Entry[V]) -> None:
        """Unlink an entry from every structure. Callers decide whether it was an eviction."""
        del self._data[key]
        self._nbytes -= e.size
        if self._lfu:
            bucket = self._buckets[e.freq]
            del bucket[key]
            if not bucket:
                # _min_freq may now name a missing bucket; _victim repairs it when needed.
                del self._buckets[e.freq]

    def _note_evicted(self, key: K, e: _Entry[V]) -> None:
        self.evictions += 1
        if self._on_evict is not None:
            self._pending.append((key, e.value))

    def _expire(self, key: K, e: _Entry[V]) -> None:
        self._drop(key, e)
        self._note_evicted(key, e)
        self._run_callbacks()

    def _supersede(self, key: K, e: _Entry[V] | None, version: int, now: float) -> bool:
        """A write newer than what is held that cannot be stored: forget the older value."""
        if e is not None:
            self._drop(key, e)
        self._put_tombstone(key, version, now)
        if self._pending:
            self._run_callbacks()
        return False

    def _put_tombstone(self, key: K, version: int, now: float) -> None:
        if self._tombstone_ttl <= 0:
            return
        expires = now + self._tombstone_ttl
        old = self._tombstones.get(key)
        if old is not None and old[1] > now:
            # Its heap record is due no later than the new expiry and will be pushed again.
            self._tombstones[key] = (max(version, old[0]), expires)
            return
        self._tombstones[key] = (version, expires)
        self._push(expires, key)

    def _expire_due(
        self, now: float, wanted: Callable[[], bool] | None = None, limit: int | None = None
    ) -> int:
        """Pop heap records due by ``now``, dropping what has really expired, for as long as
        ``wanted()`` (if given) is true and fewer than ``limit`` entries have expired. Returns
        how many live entries expired."""
        heap = self._heap
        data = self._data
        tombstones = self._tombstones
        expired = 0
        while heap and heap[0][0] <= now:
            if (wanted is not None and not wanted()) or (limit is not None and expired >= limit):
                break
            key = heappop(heap)[2]
            e = data.get(key)
            if e is not None:
                exp = e.expires
                if exp is None:
                    continue
                if exp <= now:
                    self._drop(key, e)
                    self._note_evicted(key, e)
                    expired += 1
                else:  # extended since this record was pushed
                    heappush(heap, (exp, next(self._seq), key))
            elif tombstones:
                t = tombstones.get(key)
                if t is not None:
                    if t[1] <= now:
                        del tombstones[key]
                    else:
                        heappush(heap, (t[1], next(self._seq), key))
        return expired

    def _push(self, expires: float, key: K) -> None:
        heap = self._heap
        heappush(heap, (expires, next(self._seq), key))
        if len(heap) > self._heap_limit:
            self._rebuild_heap()

    def _rebuild_heap(self) -> None:
        seq = self._seq
        heap = [(e.expires, next(seq), k) for k, e in self._data.items() if e.expires is not None]
        heap.extend((t[1], next(seq), k) for k, t in self._tombstones.items())
        heapify(heap)
        self._heap = heap
        self._heap_limit = max(_MIN_HEAP_LIMIT, 2 * len(heap))

    def _make_room(self, now: float, size: int, protect: object) -> None:
        """Evict until one more entry of ``size`` bytes fits (or, when ``protect`` is a key
        already stored, until the stored entries fit), never evicting ``protect``."""
        data = self._data
        max_entries = self._max_entries
        max_bytes = self._max_bytes
        extra = 1 if protect is _NO_KEY else 0

        # Expired entries go before any live one.
        heap = self._heap
        if heap and heap[0][0] <= now:

            def over() -> bool:
                return (max_entries is not None and len(data) + extra > max_entries) or (
                    max_bytes is not None and self._nbytes + size > max_bytes
                )

            self._expire_due(now, over)
        fast = extra and not self._lfu  # the oldest key of the OrderedDict is the victim
        while (max_entries is not None and len(data) + extra > max_entries) or (
            max_bytes is not None and self._nbytes + size > max_bytes
        ):
            victim = next(iter(data)) if fast else self._victim(protect)
            e = data[victim]
            self._drop(victim, e)
            self._note_evicted(victim, e)

    def _victim(self, protect: object) -> K:
        if self._lfu:
            buckets = self._buckets
            bucket = buckets.get(self._min_freq)
            if bucket is None:
                self._min_freq = min(buckets)
                bucket = buckets[self._min_freq]
            for key in bucket:
                if protect is _NO_KEY or key != protect:
                    return key
            # ``protect`` is alone in the lowest bucket: take the next lowest.
            return next(iter(buckets[min(f for f in buckets if f != self._min_freq)]))
        for key in self._data:
            if protect is _NO_KEY or key != protect:
                return key
        raise AssertionError("no eviction candidate")  # pragma: no cover - bounds are >= 1

    def _run_callbacks(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        on_evict = self._on_evict
        if on_evict is None:  # pragma: no cover - nothing is queued without a callback
            return
        for key, value in pending:
            try:
                on_evict(key, value)
            except Exception as exc:
                self._report(exc)

    def _report(self, exc: Exception) -> None:
        if self._on_error is None:
            logger.warning("memory tier: on_evict callback failed", exc_info=exc)
            return
        try:
            self._on_error(exc)
        except Exception:
            logger.exception("memory tier: on_error callback failed while reporting %r", exc)

"""An in-memory stand-in for Redis: the L2 tier and the invalidation bus, in one process.

    MemoryRedis            one "server": values with expiry, counters, pub/sub channels
      ├── MemoryL2(...)    an L2Tier for DataStore(config, l2=...) — one per store
      └── MemoryL2(...)    a second store on the same server sees the first one's values
                           and hears its invalidations, as two instances on one Redis do

Values follow the Redis tier's rules: a write is refused when the key holds a newer codec
envelope, expiry is per key (``ttl`` seconds, None for none), the search-result generation
counter is bumped in the same step as the write. Time comes from ``clock`` (seconds,
monotonic), so a test can move it instead of sleeping.

The bus rides ``MemoryL2.transport()`` (a ``strata.invalidation.Transport``), as it rides
Redis pub/sub for the Redis tier.

Faults, for tests of what a store does when Redis misbehaves (the same answers and typed
errors as ``RedisTier``)::

    with server.outage():            # unreachable: reads miss, writes answer False,
        ...                          # counters raise TierUnavailableError, subscriptions
                                     # drop (every store's bus clears its L1)
    with server.refusing_writes():   # answers every write with an error (OOM): writes
        ...                          # answer False and drop the key, counters raise TierError

(or ``server.down()`` / ``server.refuse_writes()`` and ``server.up()``). When the server is
back, each tier tells its store at once (``on_recover``), and the store repairs what it
wrote meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from strata.codec import peek_version
from strata.errors import TierError, TierUnavailableError

__all__ = ["MemoryL2", "MemoryRedis", "MemoryTransport"]

_UP, _DOWN, _REFUSING = "up", "down", "refusing"


class MemoryRedis:
    """The shared state of the stand-in: what a Redis server holds."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.values: dict[str, tuple[bytes, float | None]] = {}  # key -> (value, expires at)
        self._subscribers: list[_PubSub] = []
        self.state = _UP
        self.outages = 0  # how many times it went down or refused writes (tiers watch it)
        self._tiers: weakref.WeakSet[MemoryL2] = weakref.WeakSet()

    # -- faults --------------------------------------------------------------------------

    def down(self) -> None:
        """Unreachable from now on: every subscription is cut."""
        self._fault(_DOWN)
        for sub in list(self._subscribers):
            sub.cut()
        self._subscribers.clear()

    def refuse_writes(self) -> None:
        """Reachable, but every write is answered with an error (as under OOM)."""
        self._fault(_REFUSING)

    def up(self) -> None:
        """Healthy again: every tier on this server tells its store now (``on_recover``)."""
        self.state = _UP
        for tier in list(self._tiers):
            tier._notice_recovery()

    @contextlib.contextmanager
    def outage(self) -> Iterator[MemoryRedis]:
        self.down()
        try:
            yield self
        finally:
            self.up()

    @contextlib.contextmanager
    def refusing_writes(self) -> Iterator[MemoryRedis]:
        self.refuse_writes()
        try:
            yield self
        finally:
            self.up()

    def _fault(self, state: str) -> None:
        if self.state == _UP:
            self.outages += 1
        self.state = state

    # -- values --------------------------------------------------------------------------

    def get(self, key: str) -> tuple[bytes | None, float | None]:
        """``(value, remaining seconds | None)``; ``(None, None)`` for a missing key."""
        held = self.values.get(key)
        if held is None:
            return None, None
        value, expires = held
        if expires is None:
            return value, None
        left = expires - self.clock()
        if left <= 0:
            del self.values[key]
            return None, None
        return value, left

    def set(self, key: str, value: bytes, ttl: float | None) -> None:
        expires = None if ttl is None or ttl <= 0 else self.clock() + ttl
        self.values[key] = (value, expires)

    def delete(self, key: str) -> bool:
        return self.values.pop(key, None) is not None

    def incr(self, key: str) -> int:
        raw, _ = self.get(key)
        value = int(raw or b"0") + 1
        held = self.values.get(key)
        self.values[key] = (str(value).encode(), held[1] if held else None)
        return value

    def scan(self, pattern: str = "*") -> list[str]:
        """Live keys matching a glob pattern."""
        return [k for k in list(self.values) if self.get(k)[0] is not None and _match(k, pattern)]

    # -- pub/sub -------------------------------------------------------------------------

    def publish(self, channel: str, message: bytes) -> int:
        reached = 0
        for sub in list(self._subscribers):
            if channel in sub.channels:
                sub.deliver(channel, message)
                reached += 1
        return reached

    def _attach(self, sub: _PubSub) -> None:
        self._subscribers.append(sub)

    def _detach(self, sub: _PubSub) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)


def _match(key: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(key, pattern)


_LOST: dict[str, Any] = {"type": "lost"}


class _PubSub:
    """One subscription's connection to a :class:`MemoryRedis`."""

    def __init__(self, server: MemoryRedis) -> None:
        self.server = server
        self.channels: set[str] = set()
        self.lost = False
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def deliver(self, channel: str, data: bytes) -> None:
        self._queue.put_nowait({"type": "message", "channel": channel.encode(), "data": data})

    def cut(self) -> None:
        self.lost = True
        self._queue.put_nowait(_LOST)

    async def subscribe(self, *channels: str) -> None:
        self.server._attach(self)
        for name in channels:
            self.channels.add(name)
            confirm = {"type": "subscribe", "channel": name.encode(), "data": len(self.channels)}
            self._queue.put_nowait(confirm)

    async def get_message(self, timeout: float) -> dict[str, Any] | None:
        if self.lost:
            raise ConnectionError("memory Redis is down")
        try:
            message = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        if message is _LOST:
            raise ConnectionError("memory Redis went down")
        return message

    async def aclose(self) -> None:
        self.channels.clear()
        self.server._detach(self)


class MemoryTransport:
    """The invalidation bus's ``Transport`` on a :class:`MemoryRedis` (one channel)."""

    def __init__(self, server: MemoryRedis, channel: str) -> None:
        self.server = server
        self.channel = channel

    @property
    def where(self) -> str:
        return "memory"

    def channel_for(self, schema: str) -> str:
        return self.channel

    def channels(self) -> list[str]:
        return [self.channel]

    def pubsub(self) -> _PubSub:
        return _PubSub(self.server)

    def _reachable(self) -> None:
        if self.server.state == _DOWN:
            raise ConnectionError("memory Redis is down")

    async def subscribe(self, pubsub: _PubSub, channels: list[str]) -> None:
        self._reachable()
        await pubsub.subscribe(*channels)

    async def unsubscribe(self, pubsub: _PubSub, channels: list[str]) -> None:
        for name in channels:
            pubsub.channels.discard(name)

    async def get_message(self, pubsub: _PubSub, timeout: float) -> dict[str, Any] | None:
        return await pubsub.get_message(timeout)

    async def close(self, pubsub: _PubSub) -> None:
        await pubsub.aclose()

    async def publish(self, channel: str, payload: bytes) -> None:
        self._reachable()
        self.server.publish(channel, payload)


class MemoryL2:
    """An L2Tier on a :class:`MemoryRedis`: ``DataStore(config, l2=MemoryL2(server))``.

    ``on_error`` hears of every failed call and ``on_recover`` of the server's return after
    a fault, as for ``RedisTier`` (a DataStore sets both when they are None)."""

    subscribes = True

    def __init__(
        self,
        server: MemoryRedis | None = None,
        *,
        on_error: Callable[[BaseException], None] | None = None,
        on_recover: Callable[[], None] | None = None,
    ) -> None:
        self.server = server if server is not None else MemoryRedis()
        self.on_error = on_error
        self.on_recover = on_recover
        self.writes = 0  # values written (a test can assert what reached L2)
        self.reads = 0
        self._outages_seen = self.server.outages
        self.server._tiers.add(self)

    # -- lifecycle and faults ------------------------------------------------------------

    @property
    def available(self) -> bool:
        self._notice_recovery()
        return self.server.state != _DOWN

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def abandon(self) -> None:
        pass

    def take_possible_loss(self) -> bool:
        return False

    def transport(self, channel: str, schemas: Callable[[], Iterable[str]]) -> MemoryTransport:
        """What the invalidation bus subscribes and publishes through."""
        return MemoryTransport(self.server, channel)

    def _notice_recovery(self) -> None:
        if self.server.state == _UP and self._outages_seen != self.server.outages:
            self._outages_seen = self.server.outages
            if self.on_recover is not None:
                self.on_recover()

    def _down(self) -> TierError | None:
        """The error of a call while the server is down (reported), else None."""
        self._notice_recovery()
        if self.server.state != _DOWN:
            return None
        return self._report(TierUnavailableError("memory Redis is down", tier="l2"))

    def _refused(self) -> TierError | None:
        """The error of a write while the server refuses writes (reported), else None."""
        if self.server.state != _REFUSING:
            return None
        return self._report(TierError("memory Redis refuses writes (OOM)", tier="l2"))

    def _report(self, exc: TierError) -> TierError:
        if self.on_error is not None:
            self.on_error(exc)
        return exc

    # -- data ----------------------------------------------------------------------------

    async def get_many(self, keys: Sequence[str]) -> list[tuple[bytes | None, float | None]]:
        if self._down() is not None:
            return [(None, None)] * len(keys)
        self.reads += len(keys)
        return [self.server.get(k) for k in keys]

    async def set_many(
        self, items: Sequence[tuple[str, bytes, float | None]], *, bump: str | None = None
    ) -> list[bool]:
        if self._down() is not None:
            return [False] * len(items)
        if self._refused() is not None:
            # As RedisTier does: the old values must not be served after the write, and
            # cached searches must not either.
            for key, _, _ in items:
                self.server.delete(key)
            if bump is not None:
                self.server.incr(bump)
            return [False] * len(items)
        applied: list[bool] = []
        for key, payload, ttl in items:
            held, _ = self.server.get(key)
            held_version = None if held is None else peek_version(held)
            new_version = peek_version(payload) or 0
            if held_version is not None and held_version > new_version:
                applied.append(False)
                continue
            self.server.set(key, payload, ttl)
            self.writes += 1
            applied.append(True)
        if bump is not None:
            self.server.incr(bump)
        return applied

    async def delete_many(self, keys: Sequence[str]) -> None:
        if self._down() is not None:
            return
        for key in keys:
            self.server.delete(key)

    async def publish(self, channel: str, message: bytes) -> int:
        if self._down() is not None:
            return 0
        return self.server.publish(channel, message)

    async def set_raw(self, key: str, value: bytes, ttl: float | None) -> bool:
        if self._down() is not None or self._refused() is not None:
            return False
        self.server.set(key, value, ttl)
        return True

    async def get_raw(self, key: str) -> bytes | None:
        if self._down() is not None:
            return None
        return self.server.get(key)[0]

    async def get_generation(
        self, counter: str, prefix: str, digest: str
    ) -> tuple[int, bytes | None]:
        if self._down() is not None:
            return 0, None
        raw, _ = self.server.get(counter)
        generation = int(raw) if raw is not None and raw.isdigit() else 0
        return generation, self.server.get(f"{prefix}{generation}:{digest}")[0]

    async def incr(self, key: str) -> int:
        error = self._down() or self._refused()
        if error is not None:
            raise error
        return self.server.incr(key)

    async def delete_pattern(self, pattern: str) -> int:
        error = self._down()
        if error is not None:
            raise error
        gone = self.server.scan(pattern)
        for key in gone:
            self.server.delete(key)
        return len(gone)

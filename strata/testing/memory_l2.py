"""An in-memory stand-in for Redis: the L2 tier and the invalidation bus, in one process.

    MemoryRedis            one "server": values with expiry, counters, pub/sub channels
      ├── MemoryL2(...)    an L2Tier for DataStore(config, l2=...) — one per store
      └── MemoryL2(...)    a second store on the same server sees the first one's values
                           and hears its invalidations, as two instances on one Redis do

Values follow the Redis tier's rules: a write is refused when the key holds a newer codec
envelope, expiry is per key (``ttl`` seconds, None for none), the search-result generation
counter is bumped in the same step as the write. Time comes from ``clock`` (seconds,
monotonic), so a test can move it instead of sleeping.

It has no outages: a test of what a store does while Redis is down runs against a real
(private) Redis, as Strata's own fault tests do.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from strata.codec import peek_version

__all__ = ["MemoryL2", "MemoryRedis"]


class MemoryRedis:
    """The shared state of the stand-in: what a Redis server holds."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.values: dict[str, tuple[bytes, float | None]] = {}  # key -> (value, expires at)
        self._subscribers: list[_PubSub] = []

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


class _PubSub:
    """What the invalidation bus needs of ``redis.asyncio``'s PubSub, in memory."""

    def __init__(self, server: MemoryRedis) -> None:
        self.server = server
        self.channels: set[str] = set()
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def deliver(self, channel: str, data: bytes) -> None:
        self._queue.put_nowait({"type": "message", "channel": channel.encode(), "data": data})

    async def subscribe(self, *channels: str) -> None:
        self.server._attach(self)
        for name in channels:
            self.channels.add(name)
            confirm = {"type": "subscribe", "channel": name.encode(), "data": len(self.channels)}
            self._queue.put_nowait(confirm)

    async def unsubscribe(self, *channels: str) -> None:
        for name in channels or tuple(self.channels):
            self.channels.discard(name)

    async def get_message(
        self, ignore_subscribe_messages: bool = False, timeout: float | None = 0.0
    ) -> dict[str, Any] | None:
        try:
            message = await asyncio.wait_for(self._queue.get(), timeout or 0.0)
        except TimeoutError:
            return None
        if ignore_subscribe_messages and message["type"] != "message":
            return None
        return message

    async def aclose(self) -> None:
        self.channels.clear()
        self.server._detach(self)


class _Client:
    """The ``client`` a subscribing L2 tier hands the invalidation bus."""

    def __init__(self, server: MemoryRedis) -> None:
        self.server = server
        # Read by the bus's log lines, which name where the client points.
        self.connection_pool = SimpleNamespace(connection_kwargs={"host": "memory", "port": 0})

    def pubsub(self) -> _PubSub:
        return _PubSub(self.server)

    async def publish(self, channel: str, message: bytes) -> int:
        return self.server.publish(channel, message)


class MemoryL2:
    """An L2Tier on a :class:`MemoryRedis`: ``DataStore(config, l2=MemoryL2(server))``."""

    subscribes = True

    def __init__(self, server: MemoryRedis | None = None) -> None:
        self.server = server if server is not None else MemoryRedis()
        self.client = _Client(self.server)
        self.writes = 0  # values written (a test can assert what reached L2)
        self.reads = 0

    @property
    def available(self) -> bool:
        return True

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def abandon(self) -> None:
        pass

    def take_possible_loss(self) -> bool:
        return False

    async def get_many(self, keys: Sequence[str]) -> list[tuple[bytes | None, float | None]]:
        self.reads += len(keys)
        return [self.server.get(k) for k in keys]

    async def set_many(
        self, items: Sequence[tuple[str, bytes, float | None]], *, bump: str | None = None
    ) -> list[bool]:
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
        for key in keys:
            self.server.delete(key)

    async def publish(self, channel: str, message: bytes) -> int:
        return self.server.publish(channel, message)

    async def set_raw(self, key: str, value: bytes, ttl: float | None) -> bool:
        self.server.set(key, value, ttl)
        return True

    async def get_raw(self, key: str) -> bytes | None:
        return self.server.get(key)[0]

    async def get_generation(
        self, counter: str, prefix: str, digest: str
    ) -> tuple[int, bytes | None]:
        raw, _ = self.server.get(counter)
        generation = int(raw) if raw is not None and raw.isdigit() else 0
        return generation, self.server.get(f"{prefix}{generation}:{digest}")[0]

    async def incr(self, key: str) -> int:
        return self.server.incr(key)

    async def delete_pattern(self, pattern: str) -> int:
        gone = self.server.scan(pattern)
        for key in gone:
            self.server.delete(key)
        return len(gone)

"""Single flight across instances: a memcache-style lease per key in Redis.

    caller ──► local single flight (one future per key in this process)
                 │
                 ▼
               SET {tag}:l:key token NX PX lease_ttl
                 ├─ won ──► probe() once more (a holder may just have finished)
                 │          ──► load() (fills the shared tier) ──► release (Lua: our token)
                 └─ lost ─► poll probe() with backoff (5 ms doubling to 100 ms)
                              ├─ value appeared ──────────────► return it
                              └─ lease gone / expired ─► try to win it again

So N instances missing one key at once cost one load; the others read what it wrote. The
lease expires by itself if its holder dies. Without Redis (embedded, or while Redis is down)
the lease is process-local: one load per key per process.

Used by ``remember`` and by ``DataStore.get`` cold misses on row schemas.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from strata.errors import TierError
from strata.observability import Counters
from strata.tiers.redis import RedisTier

__all__ = ["Lease"]

T = TypeVar("T")

_POLL_MIN = 0.005
_POLL_MAX = 0.1


class Lease:
    def __init__(self, ttl: float, counters: Counters) -> None:
        self.ttl = ttl
        self.counters = counters
        self.tier: RedisTier | None = None
        self._local: dict[str, asyncio.Future[Any]] = {}

    async def run(
        self,
        key: str,
        probe: Callable[[], Awaitable[T | None]],
        load: Callable[[], Awaitable[T]],
    ) -> T:
        """``load()`` at most once per key across instances at a time; the others get what
        ``probe()`` (a read of the shared tier that ``load`` fills) finds, or load after the
        holder's lease is gone. ``key`` is the lease's Redis key."""
        pending = self._local.get(key)
        if pending is not None:
            self.counters.cache_lease_waits += 1
            await asyncio.wait([pending])
            if not pending.cancelled():
                result: T = pending.result()
                return result
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._local[key] = fut
        try:
            value = await self._distributed(key, probe, load)
            fut.set_result(value)
            return value
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: the joiners raise it through their own await
            raise
        finally:
            if self._local.get(key) is fut:
                del self._local[key]

    async def _distributed(
        self,
        key: str,
        probe: Callable[[], Awaitable[T | None]],
        load: Callable[[], Awaitable[T]],
    ) -> T:
        tier = self.tier
        if tier is None or not tier.available:
            return await self._recheck(probe, load)
        client = tier.client
        token = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        while True:
            try:
                won = await tier.call(
                    lambda: client.set(key, token, nx=True, px=max(1, round(self.ttl * 1000)))
                )
            except TierError:  # no Redis: process-local single flight only
                return await self._recheck(probe, load)
            if won:
                try:
                    return await self._recheck(probe, load)
                finally:
                    await self._release(tier, key, token)
            self.counters.cache_lease_waits += 1
            delay = _POLL_MIN
            deadline = loop.time() + self.ttl
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _POLL_MAX)
                found = await probe()
                if found is not None:
                    return found
                try:
                    held = await tier.call(lambda: client.exists(key))
                except TierError:
                    return await load()
                if not held or loop.time() >= deadline:
                    break  # released without a value, or expired: try to win it

    @staticmethod
    async def _recheck(
        probe: Callable[[], Awaitable[T | None]], load: Callable[[], Awaitable[T]]
    ) -> T:
        """A holder that finished just before this caller won may have stored the value
        already: look once more before loading (one read, only on a cold miss)."""
        found = await probe()
        return found if found is not None else await load()

    async def _release(self, tier: RedisTier, key: str, token: str) -> None:
        from strata.cache.remote import RELEASE

        with contextlib.suppress(TierError):  # counted by the tier; the lease expires
            await RELEASE(tier, [key], [token])

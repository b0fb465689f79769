"""Locks and rate limits of the keyed cache: atomic in Redis, process-local without it.

lock:        SET {tag}:k:path token NX PX ttl; retry with backoff until ``wait``
             (LockTimeoutError); release = Lua "DEL only if the token is still ours"
rate_limit:  fixed window  INCR {tag}:r:path + PEXPIRE on the first hit
             sliding       ZSET of hit times on Redis's clock, trimmed to the window
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from strata.errors import LockTimeoutError, TierError

if TYPE_CHECKING:
    from strata.cache.ops import Computed

__all__ = ["Lock", "RateLimit"]

_POLL_MIN = 0.002
_POLL_MAX = 0.1


@dataclass(frozen=True, slots=True)
class RateLimit:
    """What ``rate_limit`` decided: ``allowed``, how many calls are left in the window and
    the seconds until a call is allowed again (the window's end)."""

    allowed: bool
    remaining: int
    reset_after: float
    limit: int


class Lock:
    """``async with ns.lock(key, ttl=10, wait=5):`` (token-owned; see the module doc)."""

    def __init__(self, ns: Computed, key: str, path: str, ttl: float, wait: float | None):
        self._ns = ns
        self.key = key  # the lock's Redis key
        self.path = path
        self.ttl = ttl
        self.wait = wait
        self.token = uuid.uuid4().hex
        self.acquired = False

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if self.wait is None else loop.time() + self.wait
        delay = _POLL_MIN
        waited = False
        while not await self._try():
            if deadline is not None and loop.time() >= deadline:
                raise LockTimeoutError(
                    f"lock {self.path!r} not acquired within {self.wait} s",
                    key=self.path,
                    wait=self.wait,
                )
            if not waited:
                waited = True
                self._ns._host.counters.cache_lock_waits += 1
            pause = delay if deadline is None else min(delay, max(0.0, deadline - loop.time()))
            await asyncio.sleep(pause)
            delay = min(delay * 2, _POLL_MAX)
        self.acquired = True

    async def _try(self) -> bool:
        remote = self._ns._remote()
        if remote is not None:
            # Redis configured but unreachable: TierUnavailableError, never a silent
            # process-local lock that other instances would not respect.
            return await remote.set_nx(self.key, self.token, self.ttl)
        return self._ns._host.local.set_nx(self.key, self.token, self.ttl)

    async def release(self) -> bool:
        """Release if still held by this token (False if it expired and someone else has
        it since: their lock is left alone)."""
        if not self.acquired:
            return False
        self.acquired = False
        released = self._ns._host.local.release(self.key, self.token)
        remote = self._ns._remote()
        if remote is not None and not released:
            try:
                released = await remote.release(self.key, self.token)
            except TierError:
                return False
        return released

    async def __aenter__(self) -> Lock:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()

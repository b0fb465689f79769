"""remember (get-or-compute with single flight, negative caching, stale-while-revalidate
and refresh-ahead), counters, locks and rate limits: a mixin of ``Namespace``.

    remember(key, loader)
      fresh entry ──────────────► value   (within the last refresh_ahead of its life:
                                           one background refresh, under the lease)
      stale entry (stale_ttl) ──► value + one background refresh; a failing loader keeps
                                  the stale value (logged, counted in Stats.errors)
      nothing ──► lease.run: one loader call per key across instances; the others read
                  what it stored (a None result is stored for negative_ttl)
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from strata.cache.lock import Lock, RateLimit
from strata.codec import Entry
from strata.config import seconds
from strata.errors import InvalidValueError, TierError

if TYPE_CHECKING:
    from strata.cache import Cost, KeyedCache
    from strata.cache.keys import Scope
    from strata.cache.remote import Remote

__all__ = ["COUNTER", "SERVED", "Computed"]

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
COUNTER = b"c"  # in-memory kind of a Redis counter read back by get()
#: The tier that served the current operation's read, for the Observer (per task).
SERVED: ContextVar[str | None] = ContextVar("strata_cache_served", default=None)


class Computed:
    if TYPE_CHECKING:
        _host: KeyedCache
        scope: Scope

        def _remote(self) -> Remote | None: ...
        def _key(self, key: object) -> tuple[str, tuple[str, ...]]: ...
        def _fresh(self, entry: Entry) -> bool: ...
        def _out(self, entry: Entry, model: type[M] | None) -> Any: ...
        def _count_hit(self, tier: str | None) -> None: ...
        def _entry(
            self, path: str, value: Any, ttl: float | None, stale: float | None = None
        ) -> tuple[bytes, Entry]: ...
        async def _op(self, op: str, work: Awaitable[T]) -> T: ...
        async def _lookup(
            self, path: str, prefixes: tuple[str, ...], *, fill: bool = True
        ) -> tuple[Entry | None, str | None]: ...
        async def _store(
            self,
            items: Sequence[tuple[str, tuple[str, ...], bytes, Entry]],
            life: float | None,
            cost: Cost,
        ) -> None: ...

    # -- remember ----------------------------------------------------------------------

    async def remember(
        self,
        key: object,
        loader: Callable[[], Awaitable[Any]],
        ttl: Any = None,
        *,
        cost: Cost | None = None,
        negative_ttl: Any = None,
        stale_ttl: Any = None,
        refresh_ahead: float | None = None,
        model: type[M] | None = None,
    ) -> Any:
        """The cached value, else ``await loader()`` stored for ``ttl`` (see the module
        docstring). ``refresh_ahead`` is a fraction of ``ttl`` (0 < f < 1)."""
        from strata.cache import Cost

        if refresh_ahead is not None and not 0 < refresh_ahead < 1:
            raise InvalidValueError(
                f"refresh_ahead must be a fraction in (0, 1), got {refresh_ahead!r}"
            )
        if not callable(loader):
            raise InvalidValueError(f"remember() needs a loader coroutine function, got {loader!r}")
        plan = _Plan(
            ttl=seconds(ttl, "ttl"),
            cost=Cost.MODERATE if cost is None else cost,
            negative_ttl=seconds(negative_ttl, "negative_ttl"),
            stale_ttl=seconds(stale_ttl, "stale_ttl"),
            refresh_ahead=refresh_ahead,
        )
        return await self._op("cache.remember", self._remember(key, loader, plan, model))

    async def _remember(
        self, key: object, loader: Callable[[], Awaitable[Any]], plan: _Plan, model: type[M] | None
    ) -> Any:
        host = self._host
        path, prefixes = self._key(key)
        entry, tier = await self._lookup(path, prefixes)
        if entry is not None:
            if self._fresh(entry):
                self._count_hit(tier)
                ahead = plan.refresh_ahead
                if (
                    ahead is not None
                    and entry.ttl
                    and entry.fresh_until
                    and entry.fresh_until - host.clock() < ahead * entry.ttl
                ):
                    self._refresh(path, prefixes, loader, plan)
                return self._out(entry, model)
            if plan.stale_ttl is not None and entry.fresh_until + plan.stale_ttl > host.clock():
                host.counters.cache_stale_served += 1
                SERVED.set(tier)
                self._refresh(path, prefixes, loader, plan)
                return self._out(entry, model)
        host.counters.cache_misses += 1

        async def probe() -> Entry | None:
            found, _ = await self._lookup(path, prefixes)
            return found if found is not None and self._fresh(found) else None

        async def load() -> Entry:
            return await self._load(path, prefixes, loader, plan)

        lease_key = f"{self.scope.tag}:l:{path}"
        entry = await host.lease.run(lease_key, probe, load)
        return self._out(entry, model)

    async def _load(
        self,
        path: str,
        prefixes: tuple[str, ...],
        loader: Callable[[], Awaitable[Any]],
        plan: _Plan,
    ) -> Entry:
        host = self._host
        host.counters.cache_loader_calls += 1
        value = await loader()
        if value is None:
            if plan.negative_ttl is None:
                return Entry(b"n", b"", 0.0, 0.0)  # not cached: the next call loads again
            payload, entry = self._entry(path, None, plan.negative_ttl)
            await self._store([(path, prefixes, payload, entry)], plan.negative_ttl, plan.cost)
            return entry
        payload, entry = self._entry(path, value, plan.ttl)
        life = plan.ttl
        if life is not None and plan.stale_ttl is not None:
            life += plan.stale_ttl  # stored past its fresh life, to be served stale
        await self._store([(path, prefixes, payload, entry)], life, plan.cost)
        return entry

    def _refresh(
        self,
        path: str,
        prefixes: tuple[str, ...],
        loader: Callable[[], Awaitable[Any]],
        plan: _Plan,
    ) -> None:
        host = self._host
        mark = (self.scope.tag, path)
        if mark in host._refreshing:
            return
        host._refreshing.add(mark)
        host.spawn(self._refresh_once(mark, path, prefixes, loader, plan))

    async def _refresh_once(
        self,
        mark: tuple[str, str],
        path: str,
        prefixes: tuple[str, ...],
        loader: Callable[[], Awaitable[Any]],
        plan: _Plan,
    ) -> None:
        """One background refresh, under the lease: if another instance holds it, that
        instance is refreshing already."""
        host = self._host
        lease_key = f"{self.scope.tag}:l:{path}"
        token = uuid.uuid4().hex
        remote = self._remote()
        try:
            if remote is not None:
                try:
                    if not await remote.set_nx(lease_key, token, host.lease.ttl):
                        return
                except TierError:
                    remote = None
            try:
                await self._load(path, prefixes, loader, plan)
                host.counters.cache_refreshes += 1
            except Exception as exc:  # the stale value stays; the caller already has it
                host.error(exc, f"keyed cache {self.scope.name}:{path}: refresh failed")
            finally:
                if remote is not None:
                    with contextlib.suppress(TierError):  # counted; the lease expires
                        await remote.release(lease_key, token)
        finally:
            host._refreshing.discard(mark)

    # -- counters ----------------------------------------------------------------------

    async def incr(self, key: object, by: int = 1, ttl: Any = None) -> int:
        """Add ``by`` atomically (across instances with Redis) and return the new value;
        ``ttl`` is set when the counter is created."""
        if isinstance(by, bool) or not isinstance(by, int):
            raise InvalidValueError(f"incr needs an int, got {by!r}")
        result: int = await self._op("cache.incr", self._incr(key, by, seconds(ttl, "ttl")))
        return result

    async def decr(self, key: object, by: int = 1, ttl: Any = None) -> int:
        if isinstance(by, bool) or not isinstance(by, int):
            raise InvalidValueError(f"decr needs an int, got {by!r}")
        result: int = await self._op("cache.decr", self._incr(key, -by, seconds(ttl, "ttl")))
        return result

    async def _incr(self, key: object, by: int, ttl: float | None) -> int:
        host = self._host
        path, prefixes = self._key(key)
        remote = self._remote()
        if remote is not None:
            return await remote.incr((path, prefixes), by, ttl)
        mkey = (self.scope.tag, path)
        current = host.memory.get(mkey, prefixes)
        base = 0
        life = ttl
        if current is not None and self._fresh(current):
            value = current.value()
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidValueError(f"{path!r} does not hold a counter")
            base = value
            if current.fresh_until:
                life = max(0.001, current.fresh_until - host.clock())
        _, entry = self._entry(path, base + by, life)
        host.memory.set(mkey, prefixes, entry, life)
        return base + by

    # -- locks and rate limits ---------------------------------------------------------

    def lock(self, key: object, ttl: Any = 10.0, wait: Any = None) -> Lock:
        """``async with ns.lock(key, ttl=10, wait=5):`` a token-owned lock held at most
        ``ttl`` seconds; LockTimeoutError after ``wait`` seconds (None: wait as long as it
        takes). Across instances with Redis; process-local without it."""
        self._host.check_open()
        path, _ = self._key(key)
        life = seconds(ttl, "ttl")
        if not life:
            raise InvalidValueError("a lock needs a positive ttl")
        return Lock(self, f"{self.scope.tag}:k:{path}", path, life, seconds(wait, "wait"))

    async def rate_limit(
        self, key: object, limit: int, per: Any, *, sliding: bool = False
    ) -> RateLimit:
        """Count one call against ``limit`` calls per ``per`` seconds (a fixed window, or
        with ``sliding`` a window ending now); atomic across instances with Redis."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidValueError(f"rate_limit needs a positive int limit, got {limit!r}")
        window = seconds(per, "per")
        if not window:
            raise InvalidValueError("rate_limit needs a positive window (per)")
        result: RateLimit = await self._op(
            "cache.rate_limit", self._rate_limit(key, limit, window, sliding)
        )
        return result

    async def _rate_limit(self, key: object, limit: int, per: float, sliding: bool) -> RateLimit:
        host = self._host
        path, _ = self._key(key)
        rkey = f"{self.scope.tag}:r:{'s' if sliding else 'f'}:{path}"
        remote = self._remote()
        try:
            if remote is None:
                raise TierError("no Redis", tier="l2")
            if sliding:
                allowed, n, reset = await remote.sliding_window(rkey, limit, per, uuid.uuid4().hex)
            else:
                n, reset = await remote.fixed_window(rkey, limit, per)
                allowed = n <= limit
        except TierError:
            if sliding:
                allowed, n, reset = host.local.sliding_window(rkey, limit, per)
            else:
                n, reset = host.local.fixed_window(rkey, limit, per)
                allowed = n <= limit
        if not allowed:
            host.counters.cache_rate_limited += 1
        return RateLimit(
            allowed=allowed, remaining=max(0, limit - n), reset_after=reset, limit=limit
        )


class _Plan:
    __slots__ = ("cost", "negative_ttl", "refresh_ahead", "stale_ttl", "ttl")

    def __init__(
        self,
        *,
        ttl: float | None,
        cost: Cost,
        negative_ttl: float | None,
        stale_ttl: float | None,
        refresh_ahead: float | None,
    ) -> None:
        self.ttl = ttl
        self.cost = cost
        self.negative_ttl = negative_ttl
        self.stale_ttl = stale_ttl
        self.refresh_ahead = refresh_ahead

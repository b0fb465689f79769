"""The L3 tier's own connection pool: a checkout is a list pop, a return a list push.

    take()    ──► idle stack (LIFO, so hot connections stay hot) ──► a connection, at once
      │ none idle
      ▼
    acquire() ──► fewer than max_size open? ──► connect one (asyncpg.connect + init)
      │ all busy
      ▼
    wait for release() (at most min(pool_timeout, l3_timeout)) ──► TierUnavailableError

    release() ──► broken or inside a transaction? ──► discard (terminated; its slot is freed)
      │ sound
      ▼
    a caller waiting? ──► hand it over : push on the idle stack          (all synchronous)

Why not ``asyncpg.Pool``: its ``release`` goes through ``asyncio.shield`` (a task: three
event-loop iterations) and arms an idle timer on every call, 3.8-4x the cost of a held
connection per call, and it lets ``acquire`` on a drained pool wait without a bound. Here the
hot path pays no task, no timer and no proxy: connections are plain ``asyncpg.Connection``.

Calls are bounded by ``l3_timeout`` without a timer each (asyncpg's ``timeout=`` arms and
cancels one per call): ``Watchdog`` keeps the calls in flight in start order (= deadline
order, the bound being one constant) and one timer for the oldest; a call still running at
its deadline has its connection terminated, so its caller fails at once.

Each connection keeps the statements the tier prepared on it (``statements``), so a
statement compiled at ``register`` is parsed once per connection, not looked up in asyncpg's
LRU on every call. Idle connections are not closed for idleness: the pool holds at most
``pool_max_size`` of them, as an application's own pool would.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from strata.config import hide_password
from strata.errors import TierUnavailableError

__all__ = ["PgPool", "Watchdog"]

Connect = Callable[[], Awaitable[asyncpg.Connection]]


class Watchdog:
    """Calls in flight by connection, oldest first; one timer, for the oldest deadline."""

    __slots__ = ("_handle", "_inflight", "_loop", "expired", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._inflight: dict[asyncpg.Connection, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self.expired: set[asyncpg.Connection] = set()  # terminated at their deadline

    def start(self, conn: asyncpg.Connection) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        self._inflight[conn] = deadline
        if self._handle is None:
            self._handle = loop.call_at(deadline, self._fire)

    def done(self, conn: asyncpg.Connection) -> None:
        self._inflight.pop(conn, None)

    def timed_out(self, conn: asyncpg.Connection) -> bool:
        """Whether ``conn`` was terminated for its deadline (asked once, after a failure)."""
        if conn in self.expired:
            self.expired.discard(conn)
            return True
        return False

    def _fire(self) -> None:
        self._handle = None
        assert self._loop is not None
        now = self._loop.time()
        inflight = self._inflight
        late = []
        for conn, deadline in inflight.items():
            if deadline > now:
                break
            late.append(conn)
        for conn in late:
            del inflight[conn]
            self.expired.add(conn)
            conn.terminate()  # the call fails now; the pool discards the connection
        if inflight:
            self._handle = self._loop.call_at(next(iter(inflight.values())), self._fire)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._inflight.clear()


class PgPool:
    """``pool_min_size`` connections opened by ``start``, at most ``max_size`` at a time."""

    __slots__ = (
        "_all",
        "_closing",
        "_connect",
        "_drained",
        "_idle",
        "_max",
        "_min",
        "_opening",
        "_pool_timeout",
        "_url",
        "_wait",
        "_waiters",
        "statements",
        "timeout",
        "watchdog",
    )

    def __init__(
        self,
        connect: Connect,
        *,
        min_size: int,
        max_size: int,
        pool_timeout: float,
        timeout: float,
        url: str,
    ) -> None:
        self._connect = connect
        self._min = min_size
        self._max = max_size
        self._pool_timeout = pool_timeout
        self.timeout = timeout  # l3_timeout: the bound of every call
        self.watchdog = Watchdog(timeout)
        # A caller finding every connection busy waits at most this long (never longer than
        # the call itself may take).
        self._wait = min(pool_timeout, timeout) if pool_timeout > 0 else timeout
        self._url = url
        self._idle: list[asyncpg.Connection] = []
        self._all: set[asyncpg.Connection] = set()
        self._opening = 0  # connects in progress (they count against max_size)
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._closing = False
        self._drained: asyncio.Future[None] | None = None
        # Statements prepared on each connection, by SQL text.
        self.statements: dict[asyncpg.Connection, dict[str, Any]] = {}

    # -- sizes (what asyncpg's Pool reports under the same names) ----------------------

    def get_size(self) -> int:
        return len(self._all) + self._opening

    def get_idle_size(self) -> int:
        return len(self._idle)

    def busy(self) -> int:
        return len(self._all) - len(self._idle)

    # -- checkout ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open ``min_size`` connections (the first failure is raised, untranslated)."""
        while len(self._all) < self._min:
            self.release(await self._open())

    def take(self) -> asyncpg.Connection | None:
        """An idle connection, or None (then ``acquire``). Synchronous: the hot path."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.is_closed():
                return conn
            self._forget(conn)  # the server or the network closed it while idle
        return None

    async def acquire(self) -> asyncpg.Connection:
        """A connection: idle, newly opened, or the next one released (within the wait)."""
        conn = self.take()
        if conn is not None:
            return conn
        if self._closing:
            raise self._closed_error()
        if len(self._all) + self._opening < self._max:
            return await self._open()
        fut: asyncio.Future[asyncpg.Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(self._wait):
                got = await fut
        except BaseException as exc:
            self._reclaim(fut)
            if isinstance(exc, TimeoutError):
                raise self._drained_error() from exc
            raise
        if got is None:  # a connection was discarded: its slot is this caller's
            return await self._open()
        return got

    def release(self, conn: asyncpg.Connection) -> None:
        """Give a connection back (synchronously). One that is closed, or left inside a
        transaction, is discarded: nothing asyncpg would have to reset comes back."""
        if conn.is_closed() or conn.is_in_transaction():
            self.discard(conn)
            return
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        self._idle.append(conn)
        if self._closing:
            self._check_drained()

    def discard(self, conn: asyncpg.Connection) -> None:
        """Terminate a connection whose state is unknown (timed out, cancelled, broken
        mid-call) and free its slot for a waiting caller."""
        if not conn.is_closed():
            conn.terminate()
        self._forget(conn)

    def _forget(self, conn: asyncpg.Connection) -> None:
        self._all.discard(conn)
        self.statements.pop(conn, None)
        self._pass_slot()
        if self._closing:
            self._check_drained()

    def _pass_slot(self) -> None:
        """A slot is free: the first waiter opens a connection of its own."""
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _reclaim(self, fut: asyncio.Future[asyncpg.Connection | None]) -> None:
        """A waiter gave up (timed out, cancelled): what it was handed goes on."""
        if fut in self._waiters:
            self._waiters.remove(fut)
        if fut.done() and not fut.cancelled():
            got = fut.result()
            if got is None:
                self._pass_slot()
            else:
                self.release(got)
        else:
            fut.cancel()

    async def _open(self) -> asyncpg.Connection:
        self._opening += 1
        try:
            conn = await self._connect()
        except BaseException:
            self._opening -= 1
            self._pass_slot()
            raise
        self._opening -= 1
        if self._closing:
            conn.terminate()
            raise self._closed_error()
        self._all.add(conn)
        return conn

    # -- errors ------------------------------------------------------------------------

    def _drained_error(self) -> TierUnavailableError:
        bound = "pool_timeout" if self._wait == self._pool_timeout else "l3_timeout"
        return TierUnavailableError(
            f"PostgreSQL at {hide_password(self._url)}: no connection free within {bound} "
            f"({self._wait:g}s): all {self._max} (pool_max_size) are in use",
            tier="l3",
        )

    def _closed_error(self) -> TierUnavailableError:
        return TierUnavailableError(
            f"PostgreSQL at {hide_password(self._url)}: the pool is closing", tier="l3"
        )

    # -- close -------------------------------------------------------------------------

    def _check_drained(self) -> None:
        if self._drained is not None and not self._drained.done() and not self.busy():
            self._drained.set_result(None)

    async def close(self, limit: float, log: logging.Logger) -> None:
        """Wait at most ``limit`` seconds for the connections in use, then close them all;
        those still in use are terminated (and logged)."""
        self._closing = True
        self.watchdog.stop()
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(self._closed_error())
                fut.exception()  # the waiter sees it through its own await
        self._drained = asyncio.get_running_loop().create_future()
        self._check_drained()
        busy = self.busy()
        try:
            async with asyncio.timeout(limit):
                await self._drained
                for conn in list(self._all):
                    await conn.close()
                    self._all.discard(conn)
        except TimeoutError:
            self.terminate()
            log.warning(
                "PostgreSQL at %s: the pool did not close within close_timeout (%gs); "
                "%d connection(s) still in use were terminated",
                hide_password(self._url),
                limit,
                busy,
            )
        self._idle.clear()
        self.statements.clear()

    def terminate(self) -> None:
        self.watchdog.stop()
        for conn in list(self._all):
            conn.terminate()
        self._all.clear()
        self._idle.clear()
        self.statements.clear()

    # -- one-call conveniences, with asyncpg's Pool signatures -------------------------

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = self.take() or await self.acquire()
        records: list[asyncpg.Record]
        records = await self._finish(conn, conn.fetch(sql, *args))
        return records

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        conn = self.take() or await self.acquire()
        return await self._finish(conn, conn.fetchrow(sql, *args))

    async def fetchval(self, sql: str, *args: Any) -> Any:
        conn = self.take() or await self.acquire()
        return await self._finish(conn, conn.fetchval(sql, *args))

    async def execute(self, sql: str, *args: Any) -> str:
        conn = self.take() or await self.acquire()
        return str(await self._finish(conn, conn.execute(sql, *args)))

    async def _finish(self, conn: asyncpg.Connection, call: Awaitable[Any]) -> Any:
        watchdog = self.watchdog
        watchdog.start(conn)
        try:
            result = await call
        except asyncpg.PostgresError:
            watchdog.done(conn)
            self.release(conn)  # the server answered: the connection is sound
            raise
        except BaseException as exc:
            watchdog.done(conn)
            timed_out = watchdog.timed_out(conn)
            self.discard(conn)
            if timed_out:
                raise TierUnavailableError(
                    f"PostgreSQL at {hide_password(self._url)} did not answer within "
                    f"l3_timeout ({self.timeout:g}s)",
                    tier="l3",
                ) from exc
            raise
        watchdog.done(conn)
        self.release(conn)
        return result

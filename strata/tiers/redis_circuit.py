"""The Redis tier's circuit breaker (see ``strata.tiers.redis`` for the states): every
network call of the tier runs through ``Circuit._run``, which fails fast while Redis is
known to be down, lets one call probe after the backoff, and translates driver errors.

While the circuit is open a background task probes too, after each backoff, so Redis is
found again without waiting for the next call: the store's repair after an outage
(``on_recover``) must not wait for traffic, or other instances would read from Redis what
this one could not overwrite while it was away (an idle writer never repaired it)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.exceptions as rexc

from strata.errors import (
    InvalidValueError,
    LifecycleError,
    StrataError,
    TierError,
    TierUnavailableError,
)
from strata.tasks import stop_tasks
from strata.tiers.redis_topology import Connection

__all__ = ["BACKOFF_MAX", "BACKOFF_MIN", "Circuit", "describe"]

T = TypeVar("T")

BACKOFF_MIN = 0.5
BACKOFF_MAX = 5.0
_ERROR_LOG_INTERVAL = 30.0
_PROBER_POLL = 0.05  # the background prober's wait while a call of the tier is probing

# Errors that mean "Redis is not there" (as opposed to Redis answering with an error).
_OUTAGE: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,  # also AuthenticationError, BusyLoadingError
    rexc.TimeoutError,
    OSError,
    TimeoutError,
)


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Circuit:
    """The breaker's state, and the calls that move it. The tier sets ``where``,
    ``_log``, ``_conn`` and the callbacks; ``_require()`` gives its client."""

    where: str
    on_error: Callable[[BaseException], None] | None
    on_recover: Callable[[], None] | None
    _log: logging.Logger
    _conn: Connection | None

    def __init__(self, max_connections: int) -> None:
        self.possible_loss = False  # see take_possible_loss()
        # Physical keys a refused write could not overwrite nor delete: deleted by the next
        # probe, before Redis serves anything again.
        self._unwritten: set[str] = set()
        # Generation counters a refused write could not bump: bumped by the probe too.
        self._unbumped: set[str] = set()
        self._closed = False
        self._up = False
        self._epoch = 0  # bumped on every open/close of the circuit
        self._retry_at = 0.0
        self._backoff = BACKOFF_MIN
        self._probing = False
        self._down_since = 0.0
        self._failures = 0  # calls failed during the current outage
        self._error_logged_at = float("-inf")
        self._slots = asyncio.Semaphore(max_connections)
        self._prober: asyncio.Task[None] | None = None

    def _require(self) -> Any:
        raise NotImplementedError

    async def _ping(self) -> bool:
        """PING what the client serves from (on a cluster every primary it knows, see
        ``Connection.ping``)."""
        self._require()
        conn = self._conn
        if conn is None:
            raise LifecycleError("RedisTier used before connect()")
        return await conn.ping()

    def _opened(self) -> None:
        """The circuit just opened: start the background prober unless it runs."""
        if self._prober is None or self._prober.done():
            self._prober = asyncio.get_running_loop().create_task(
                self._probe_until_up(), name=f"strata-l2-probe:{self.where}"
            )

    async def _probe_until_up(self) -> None:
        """Probe after each backoff until the circuit closes (or the tier closes)."""
        while not self._up and not self._closed:
            wait = self._retry_at - time.monotonic()
            await asyncio.sleep(max(wait, _PROBER_POLL))
            if self._up or self._closed or self._probing:
                continue  # a call of the tier is probing now: see how it went
            try:
                await self._run(self._ping)
            except StrataError as exc:  # still down: counted in _failures, logged once
                self._log.debug("L2 Redis at %s: probe failed: %s", self.where, describe(exc))

    async def _stop_prober(self) -> None:
        task, self._prober = self._prober, None
        if task is not None:
            await stop_tasks([task])

    def _refusing(self, exc: BaseException, physical: list[str]) -> None:
        """Redis answers but keeps values we could neither overwrite nor delete: open the
        circuit, as for an outage (reads are misses, writes are recorded for repair), and
        let the probe delete those keys before anything is served from Redis again."""
        self._unwritten.update(physical)
        if not self._up or self._closed:
            return
        now = time.monotonic()
        self._up = False
        self._epoch += 1
        self._down_since = now
        self._failures = 1
        self._backoff = BACKOFF_MIN
        self._retry_at = now + self._backoff
        self._log.warning(
            "L2 Redis at %s refuses writes (%s); serving from L3 until it takes them again",
            self.where,
            describe(exc),
        )
        self._opened()

    async def _delete_unwritten(self, client: Any) -> None:
        """The probe's first step while keys wait for deletion (see ``_refusing``)."""
        keys, counters = list(self._unwritten), list(self._unbumped)
        try:
            if keys:
                await client.delete(*keys)
            for counter in counters:
                await client.incr(counter)
        except rexc.ResponseError as exc:
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            self._retry_at = time.monotonic() + self._backoff
            self._failures += 1
            raise TierUnavailableError(
                f"L2 Redis at {self.where} still refuses writes: {exc}", tier="l2"
            ) from exc
        self._unwritten.difference_update(keys)
        self._unbumped.difference_update(counters)

    async def _run(self, call: Callable[[], Awaitable[T]], *, force: bool = False) -> T:
        """Run one network operation through the circuit breaker.

        Raises TierUnavailableError when Redis is down (without trying, inside the backoff
        window) and TierError when Redis answers with an error.
        """
        probe = not self._up and self._gate(force)
        try:
            async with self._slots:
                if not probe and not self._up:
                    probe = self._gate(force)  # the circuit opened while this call waited
                epoch = self._epoch
                try:
                    if probe and (self._unwritten or self._unbumped):
                        await self._delete_unwritten(self._require())
                    result = await call()
                except rexc.MaxConnectionsError as exc:  # pool drained by other users
                    self._log_error(exc)
                    raise TierError(f"L2 Redis pool exhausted: {exc}", tier="l2") from exc
                except _OUTAGE as exc:
                    await self._failed(exc, epoch, probe)
                    raise TierUnavailableError(
                        f"L2 Redis unavailable at {self.where}: {describe(exc)}", tier="l2"
                    ) from exc
                except rexc.DataError as exc:  # a value redis-py cannot send: the caller's bug
                    raise InvalidValueError(f"L2 Redis cannot send this value: {exc}") from exc
                except rexc.RedisError as exc:
                    # Redis answered, so it is there; the command was refused (OOM, ...).
                    if probe:
                        self._recovered()
                    self._log_error(exc)
                    raise TierError(f"L2 Redis error at {self.where}: {exc}", tier="l2") from exc
        finally:
            if probe:
                self._probing = False
        if probe:
            self._recovered()
        return result

    def _gate(self, force: bool) -> bool:
        """While the circuit is open: True if this call may probe, else fail fast."""
        now = time.monotonic()
        if not force and (self._probing or now < self._retry_at):
            self._failures += 1
            raise TierUnavailableError(
                f"L2 Redis unavailable at {self.where} (next probe in "
                f"{max(0.0, self._retry_at - now):.2f} s)",
                tier="l2",
            )
        self._probing = True
        return True

    async def _failed(self, exc: BaseException, epoch: int, probe: bool) -> None:
        if self._closed:
            return  # calls cut short by close(): not an outage
        now = time.monotonic()
        self._failures += 1
        if self._up:
            if epoch != self._epoch:
                return  # began before the last recovery: not evidence of a new outage
            self._up = False
            self._epoch += 1
            self._down_since = now
            self._failures = 1
            self._backoff = BACKOFF_MIN
            self._retry_at = now + self._backoff
            self._log.warning("L2 Redis unavailable at %s: %s", self.where, describe(exc))
            self._opened()
            conn = self._conn
            if conn is not None and conn.kind != "standalone":
                self.possible_loss = True  # a failover may be under way
            # Idle sockets may be half-dead: let the probes open fresh ones.
            if conn is not None:
                try:
                    await conn.disconnect_idle()
                except Exception:  # best effort on a pool that is failing anyway
                    self._log.debug("disconnecting idle Redis connections failed", exc_info=True)
        elif probe:
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            self._retry_at = now + self._backoff

    def _recovered(self) -> None:
        if self._up or self._closed:
            return
        self._up = True
        self._epoch += 1
        self._backoff = BACKOFF_MIN
        self._log.info(
            "L2 Redis available again at %s after %.1f s (%d calls failed meanwhile)",
            self.where,
            time.monotonic() - self._down_since,
            self._failures,
        )
        if self.on_recover is not None:
            try:
                self.on_recover()
            except Exception:
                self._log.exception("on_recover callback failed")

    def _report(self, exc: StrataError) -> None:
        if self.on_error is not None:
            try:
                self.on_error(exc)
            except Exception:
                self._log.exception("on_error callback failed")

    def _log_error(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._error_logged_at >= _ERROR_LOG_INTERVAL:
            self._error_logged_at = now
            self._log.warning(
                "L2 Redis error at %s: %s (more within %.0f s are counted, not logged)",
                self.where,
                exc,
                _ERROR_LOG_INTERVAL,
            )

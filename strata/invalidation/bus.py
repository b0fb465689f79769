"""The bus itself: ``InvalidationBus`` (see the package docstring for its flows)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, Protocol, cast

import orjson
import redis.asyncio
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from strata.errors import CodecError, StrataError, TierUnavailableError
from strata.invalidation.messages import Heartbeat, Invalidation, decode_message
from strata.invalidation.transport import Transport, transport_for
from strata.tasks import stop_tasks

__all__ = [
    "BACKOFF_MAX",
    "BACKOFF_MIN",
    "MISSED_HEARTBEATS",
    "BusClock",
    "InvalidationBus",
    "LoopClock",
]

BACKOFF_MIN: Final = 0.1
BACKOFF_MAX: Final = 5.0
#: The subscription is presumed dead after this many heartbeat intervals without our own.
MISSED_HEARTBEATS: Final = 2

# Failures that mean "Redis is unreachable or misbehaving", retried in the background.
# The builtin TimeoutError comes from our own asyncio.timeout() guards.
_OUTAGE_ERRORS: Final = (RedisError, OSError, TimeoutError)

_logger = logging.getLogger("strata.invalidation")


class BusClock(Protocol):
    """Seconds on a monotonic scale, and a sleep on that scale."""

    def time(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """The running event loop's clock (the default)."""

    def time(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _PubSub(Protocol):
    """The part of ``redis.asyncio.client.PubSub`` the bus uses (redis-py leaves it untyped)."""

    async def subscribe(self, *args: Any) -> None: ...
    async def unsubscribe(self, *args: Any) -> Any: ...
    async def get_message(
        self,
        ignore_subscribe_messages: bool = False,
        timeout: float | None = 0.0,
    ) -> dict[str, Any] | None: ...
    async def aclose(self) -> None: ...


class _SubscriptionLost(TierUnavailableError):
    """Raised inside the listener when the subscription is presumed dead."""

    def __init__(self, message: str) -> None:
        super().__init__(message, tier="l2")


def _describe_error(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _channel_of(message: Mapping[str, Any]) -> bytes:
    channel = message.get("channel")
    return channel.encode() if isinstance(channel, str) else bytes(channel or b"")


class InvalidationBus:
    """Publishes this instance's invalidations and applies everyone else's.

    ``on_message`` receives messages from other instances only; ``on_reset`` must clear the
    whole L1 (it runs whenever messages may have been missed, see the module docstring).
    Both are plain callables run on the event loop; an exception from either is logged and
    reported to ``on_error``, and never stops the bus. ``on_error`` also hears of every
    malformed message, every failed ``publish`` and each loss of the subscription.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis | RedisCluster | None,
        channel: str,
        instance_id: str,
        *,
        on_message: Callable[[Invalidation], None],
        on_reset: Callable[[], None],
        heartbeat_interval: float = 2.0,
        logger: logging.Logger | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        publisher: Callable[[str, bytes], Awaitable[bool]] | None = None,
        schemas: Callable[[], Iterable[str]] | None = None,
        transport: Transport | None = None,
        prefix: str | None = None,
        clock: BusClock | None = None,
    ) -> None:
        if not channel:
            raise ValueError("channel must be a non-empty string")
        if not instance_id:
            raise ValueError("instance_id must be a non-empty string")
        if not heartbeat_interval > 0:
            raise ValueError("heartbeat_interval must be positive")
        # The DataStore publishes through its L2 tier (behind the tier's circuit breaker);
        # the bus's own heartbeats and subscription use the client directly.
        self._publisher = publisher
        self._channel = channel
        # ``schemas`` (the names this instance caches) matters on a cluster only: one
        # sharded channel per schema (see ShardedTransport). ``transport`` replaces the
        # Redis one altogether (a test transport).
        if transport is None:
            if client is None:
                raise ValueError("an InvalidationBus needs a Redis client or a transport")
            transport = transport_for(client, channel, schemas)
        self._transport: Transport = transport
        self._subscribed: list[str] = [channel]
        self._beats: dict[bytes, float] = {}
        self._instance_id = instance_id
        self._own = b'"origin":' + orjson.dumps(instance_id)  # see _handle
        # Our app's key prefix: stamped on what we publish; messages of another prefix
        # (another app on the same Redis and channel) are ignored.
        self._prefix = prefix
        self._on_message = on_message
        self._on_reset = on_reset
        self._on_error = on_error
        self._interval = float(heartbeat_interval)
        # Heartbeat timing only (when to beat, how long since our last one was heard): a
        # test drives it with a fake clock instead of waiting.
        self._clock: BusClock = clock or LoopClock()
        self._dead_after = MISSED_HEARTBEATS * self._interval
        # Long enough for a slow connect + SUBSCRIBE round trip, short enough that a
        # blackholed connection attempt is abandoned and retried.
        self._subscribe_timeout = max(self._dead_after, 1.0)
        self._log = logger or _logger
        self._where = self._transport.where

        self.sent = 0
        self.received = 0
        self.resets = 0
        self.malformed = 0
        self.foreign = 0  # messages of another prefix, ignored

        self._listener: asyncio.Task[None] | None = None
        self._beater: asyncio.Task[None] | None = None
        self._pubsub: _PubSub | None = None
        self._connected = False
        self._connected_event = asyncio.Event()
        self._publish_failing = False
        self._reported_kinds: set[str] = set()
        self._failures = 0  # consecutive failed subscribe attempts (drives the backoff)
        self._stopping = False
        self._outage_since: float | None = None

    # -- public

    @property
    def channel(self) -> str:
        return self._channel

    @property
    def instance_id(self) -> str:
        return self._instance_id

    @property
    def connected(self) -> bool:
        """True while the subscription is confirmed and its heartbeat is not overdue."""
        return self._connected

    @property
    def running(self) -> bool:
        return self._listener is not None

    async def start(self) -> None:
        """Start the listener and heartbeat tasks. Never waits for, nor raises over, Redis.

        Use ``wait_connected`` to wait for the subscription. Starting a running bus does
        nothing; a stopped bus may be started again.
        """
        if self._listener is not None:
            return
        self._stopping = False
        self._listener = asyncio.create_task(
            self._listen_forever(), name=f"strata-invalidation-listener:{self._channel}"
        )
        self._beater = asyncio.create_task(
            self._beat_forever(), name=f"strata-invalidation-heartbeat:{self._channel}"
        )

    async def stop(self) -> None:
        """End both tasks, unsubscribe (best effort) and close the pubsub connection."""
        self._stopping = True
        tasks = {t for t in (self._listener, self._beater) if t is not None}
        self._listener = self._beater = None
        await stop_tasks(tasks)  # the loops also watch _stopping
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                # The loops catch everything, so this is a bug.
                self._log.error("invalidation bus task failed", exc_info=task.exception())
        pubsub, self._pubsub = self._pubsub, None
        was_connected = self._connected
        self._set_connected(False)
        if pubsub is not None:
            if was_connected:
                # The connection is closed right after, which unsubscribes anyway; saying
                # so is a courtesy, never worth waiting on a sick connection for.
                with contextlib.suppress(*_OUTAGE_ERRORS):
                    async with asyncio.timeout(min(1.0, self._interval)):
                        await self._transport.unsubscribe(pubsub, self._subscribed)
            await self._discard(pubsub)

    async def publish(self, message: Invalidation) -> bool:
        """PUBLISH ``message``; False (after ``on_error``) if Redis could not take it.

        Never raises for a Redis outage. ``CodecError`` if the message cannot be encoded
        (an id that is neither str nor int). The wait is bounded by the client's
        ``socket_timeout``.
        """
        if self._prefix is not None and message.prefix is None:
            message = dataclasses.replace(message, prefix=self._prefix)
        payload = message.encode()
        if self._publisher is not None:
            # The tier publishes with SPUBLISH on a cluster, on the schema's own channel.
            channel = self._transport.channel_for(message.schema)
            if not await self._publisher(channel, payload):
                return False  # the tier reported (or skipped it while known to be down)
            self.sent += 1
            return True
        try:
            await self._transport.publish(self._transport.channel_for(message.schema), payload)
        except _OUTAGE_ERRORS as exc:
            if not self._publish_failing:
                self._publish_failing = True
                self._log.warning(
                    "invalidation publish to %s (channel %r) failed: %r; other instances "
                    "may serve stale L1 entries until their TTL",
                    self._where,
                    self._channel,
                    exc,
                )
            else:
                self._log.debug("invalidation publish failed again: %r", exc)
            self._report(self._translate("invalidation publish failed", exc))
            return False
        if self._publish_failing:
            self._publish_failing = False
            self._log.info("invalidation publish to %s works again", self._where)
        self.sent += 1
        return True

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the subscription; True if it is live."""
        if self._connected:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._connected_event.wait()
        except TimeoutError:
            return self._connected
        return True

    def __repr__(self) -> str:
        state = "connected" if self._connected else "running" if self.running else "stopped"
        return (
            f"<InvalidationBus {self._channel!r} on {self._where} as {self._instance_id!r} {state}>"
        )

    # -- listener

    async def _listen_forever(self) -> None:
        while not self._stopping:
            pubsub = cast(_PubSub, self._transport.pubsub())
            self._pubsub = pubsub
            try:
                await self._session(pubsub)
            except Exception as exc:
                if self._stopping:
                    break
                try:
                    self._session_ended(exc)
                except Exception:  # never let a bug here end the listener
                    self._log.exception("invalidation listener failed to handle %r", exc)
            if self._stopping:
                break  # stop() closes self._pubsub
            await self._discard(pubsub)
            await asyncio.sleep(self._backoff(self._failures))

    async def _session(self, pubsub: _PubSub) -> None:
        """Subscribe, clear L1, then deliver messages until the subscription is lost (raises)."""
        await self._subscribe(pubsub)
        if self._stopping:
            return
        clock = self._clock
        # Subscribed: whatever was published before this point is lost to us.
        self._reset("subscribed")
        self._beat_all(clock.time())
        self._set_connected(True)
        if self._outage_since is not None:
            self._log.info(
                "invalidation bus subscribed to %r on %s again after %.1f s (%d attempts)",
                self._channel,
                self._where,
                clock.time() - self._outage_since,
                self._failures + 1,
            )
        else:
            self._log.debug("invalidation bus subscribed to %r on %s", self._channel, self._where)
        self._failures = 0
        self._outage_since = None
        await self._pump(pubsub)

    def _session_ended(self, exc: Exception) -> None:
        """Account for a failed subscribe attempt or a lost subscription: log once, reset."""
        now = self._clock.time()
        # A bug rather than an outage deserves its traceback.
        trace = None if isinstance(exc, _OUTAGE_ERRORS) else exc
        reason = str(exc) if isinstance(exc, _SubscriptionLost) else _describe_error(exc)
        if self._connected:
            self._set_connected(False)
            self._failures = 1
            self._outage_since = now
            self._log.warning(
                "invalidation bus lost its subscription to %r on %s (%s); L1 cleared, "
                "resubscribing in the background",
                self._channel,
                self._where,
                reason,
                exc_info=trace,
            )
            self._report(self._translate("invalidation subscription lost", exc))
            self._reset("subscription lost")
            return
        self._failures += 1
        if self._outage_since is None:
            self._outage_since = now
            self._log.warning(
                "invalidation bus cannot subscribe to %r on %s (%s); retrying in the "
                "background, L1 will be cleared once subscribed",
                self._channel,
                self._where,
                reason,
                exc_info=trace,
            )
            self._report(self._translate("invalidation subscribe failed", exc))
        else:
            self._log.debug("invalidation subscribe attempt %d failed: %s", self._failures, reason)

    async def _subscribe(self, pubsub: _PubSub) -> None:
        """SUBSCRIBE and wait for Redis to confirm it (bounded: a blackhole must not hang us)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._subscribe_timeout
        # Two bounds: asyncio.timeout_at for a connect or handshake that never answers, and
        # the loop's own deadline check, in case the timeout's cancellation is swallowed
        # (see stop()).
        channels = self._transport.channels()
        self._subscribed = channels
        waiting = {c.encode() for c in channels}
        async with asyncio.timeout_at(deadline):
            await self._transport.subscribe(pubsub, channels)
            while not self._stopping:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError("no confirmation of SUBSCRIBE")
                message = await self._transport.get_message(pubsub, remaining)
                if message is not None and message.get("type") == "subscribe":
                    waiting.discard(_channel_of(message))
                    if not waiting:
                        return

    async def _pump(self, pubsub: _PubSub) -> None:
        """Deliver messages until the subscription is lost (raises) or the bus stops.

        ``get_message(timeout=wait)`` returns within ``wait``, unless redis-py is busy
        reconnecting inside it (its retries, a handshake that never answers): an outer
        bound keeps the heartbeat deadline in force even then. It is armed once per stretch
        of ``interval`` seconds, not per message, so a burst pays for one timer."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            armed = loop.time()
            try:
                async with asyncio.timeout_at(armed + 3 * self._interval + 0.01):
                    while not self._stopping and loop.time() - armed < self._interval:
                        if not await self._next(pubsub):
                            break
            except TimeoutError:
                silence = self._clock.time() - self._last_beat
                raise _SubscriptionLost(
                    f"no heartbeat for {silence:.1f} s (the driver is stuck reconnecting)"
                ) from None

    async def _next(self, pubsub: _PubSub) -> bool:
        """Wait for and handle one message; False when the wait ended without one."""
        clock = self._clock
        silence = clock.time() - self._last_beat
        if silence > self._dead_after:
            # A starved event loop (a long synchronous stretch) is not a silent link:
            # let a due heartbeat task run first, and account for the lag it saw.
            await asyncio.sleep(0)
            silence = clock.time() - self._last_beat
        if silence > self._dead_after:
            raise _SubscriptionLost(f"no heartbeat for {silence:.1f} s")
        wait = min(self._interval, self._dead_after - silence) + 0.01
        message = await self._transport.get_message(pubsub, wait)
        if message is None:
            return False
        kind = message.get("type")
        if kind == "message":
            self._handle(message.get("data"), clock.time(), _channel_of(message))
        elif kind == "subscribe" and _channel_of(message) in self._beats:
            # redis-py reconnected the pubsub connection by itself and resubscribed:
            # anything published while it was away is lost.
            self._log.warning(
                "invalidation subscription to %r on %s was re-established by the driver; "
                "L1 cleared",
                self._channel,
                self._where,
            )
            self._report(
                TierUnavailableError(
                    f"invalidation subscription on {self._where} was interrupted", tier="l2"
                )
            )
            self._reset("resubscribed by driver")
            self._beat_all(clock.time())
        elif kind == "unsubscribe" and _channel_of(message) in self._beats:
            raise _SubscriptionLost("unsubscribed by the server")
        return True

    def _handle(self, data: object, now: float, channel: bytes = b"") -> None:
        if isinstance(data, bytes) and self._own in data:
            # Our own message (the JSON encoder escapes quotes inside strings, so this
            # text occurs only as the origin field): only a heartbeat needs a look, and
            # its text is known too. No JSON decoding for what we sent ourselves.
            if channel in self._beats and data.startswith(b'{"op":"heartbeat"'):
                self._beats[channel] = now
            return
        try:
            decoded = decode_message(cast(bytes, data))
        except CodecError as exc:
            self._malformed(exc, data)
            return
        if isinstance(decoded, Heartbeat):
            if decoded.origin == self._instance_id and channel in self._beats:
                self._beats[channel] = now
            return
        if decoded.origin == self._instance_id:
            return  # our own write: our L1 is already right
        if (
            decoded.prefix is not None
            and self._prefix is not None
            and decoded.prefix != self._prefix
        ):
            self.foreign += 1  # another app sharing this Redis and channel
            return
        try:
            self._on_message(decoded)
        except Exception as exc:
            self._log.exception(
                "invalidation on_message failed for %s %r", decoded.schema, decoded.op
            )
            self._report(exc)
            return
        self.received += 1

    def _malformed(self, exc: CodecError, data: object) -> None:
        self.malformed += 1
        kind = str(exc)
        if kind not in self._reported_kinds:
            self._reported_kinds.add(kind)
            sample = data[:200] if isinstance(data, bytes | str) else type(data).__name__
            self._log.warning(
                "ignoring malformed message on channel %r (%s): %r; further messages with "
                "this fault are logged at debug level",
                self._channel,
                kind,
                sample,
            )
        else:
            self._log.debug("ignoring malformed message on channel %r (%s)", self._channel, kind)
        self._report(exc)

    # -- heartbeat

    async def _beat_forever(self) -> None:
        seq = 0
        while not self._stopping:
            started = self._clock.time()
            await self._clock.sleep(self._interval)
            if self._stopping:
                break
            lag = self._clock.time() - started - self._interval
            if lag > 0.1 * self._interval:
                # The loop was starved for `lag` seconds: no beat could be sent nor heard in
                # that time, so it does not count as silence of the link.
                self._beats = {c: t + lag for c, t in self._beats.items()}
            seq += 1
            payload = Heartbeat(origin=self._instance_id, seq=seq).encode()
            try:
                async with asyncio.timeout(self._interval):
                    for channel in list(self._subscribed):
                        await self._transport.publish(channel, payload)
            except _OUTAGE_ERRORS as exc:
                # The listener notices the missing heartbeat and reports the outage once.
                self._log.debug("invalidation heartbeat %d not published: %r", seq, exc)
            except Exception:
                self._log.exception("unexpected error publishing an invalidation heartbeat")

    # -- helpers

    @property
    def _last_beat(self) -> float:
        """When the quietest subscribed channel last carried our own heartbeat."""
        return min(self._beats.values(), default=0.0)

    def _beat_all(self, now: float) -> None:
        self._beats = {c.encode(): now for c in self._subscribed}

    def channel_for(self, schema: str) -> str:
        """The channel ``schema``'s invalidations travel on (``channel`` unless sharded)."""
        return self._transport.channel_for(schema)

    def _set_connected(self, value: bool) -> None:
        self._connected = value
        if value:
            self._connected_event.set()
        else:
            self._connected_event.clear()

    def _reset(self, why: str) -> None:
        self.resets += 1
        self._log.debug("invalidation bus clears L1 (%s)", why)
        try:
            self._on_reset()
        except Exception as exc:
            self._log.exception("invalidation on_reset failed; L1 may hold stale entries")
            self._report(exc)

    def _translate(self, what: str, exc: BaseException) -> BaseException:
        """A driver error as the ``TierUnavailableError`` it means (chained); others as is."""
        if isinstance(exc, StrataError) or not isinstance(exc, _OUTAGE_ERRORS):
            return exc
        error = TierUnavailableError(f"{what} on {self._where}: {exc!r}", tier="l2")
        error.__cause__ = exc
        return error

    def _report(self, exc: BaseException) -> None:
        if self._on_error is None:
            return
        try:
            self._on_error(exc)
        except Exception:
            self._log.exception("invalidation on_error callback failed")

    @staticmethod
    def _backoff(failures: int) -> float:
        delay = BACKOFF_MIN * 2.0 ** min(failures - 1, 16)
        # A little jitter so that instances do not all reconnect in the same instant.
        return min(BACKOFF_MAX, delay * random.uniform(1.0, 1.25))

    async def _discard(self, pubsub: _PubSub) -> None:
        try:
            await self._transport.close(pubsub)
        except Exception:  # closing a broken connection may complain; it is closed anyway
            self._log.debug("closing the invalidation pubsub failed", exc_info=True)
        if self._pubsub is pubsub:
            self._pubsub = None

"""The invalidation bus: keeps every instance's L1 coherent through Redis pub/sub.

    instance A (writer)              Redis channel               instance B, C, ...
    ───────────────────              ─────────────               ──────────────────
    write L3 ── commit ──► L2 ──► L1
                                │
                                ▼
    publish(Invalidation) ─ PUBLISH ─► {"schema","id","op", ──► listener task
                                        "origin","version"}       │
                                                                  ├─ own origin ──► ignored
                                                                  ├─ malformed ──► log, on_error
                                                                  └─ else ──► on_message(msg):
                                                                              drop L1 key(s)

Publish only after the L3 commit (write-behind: after the L2 write), so that a reader woken by
the message cannot fetch the old row again. A batch write publishes one message carrying
``ids``/``versions``, not one message per row.

Redis pub/sub is fire-and-forget: a subscriber that is not connected misses messages for
good. So whenever the subscription may have missed something, the whole L1 is dropped:

    subscription confirmed ──► on_reset() ──► connected = True ──► deliver messages
          ▲                                                             │
          │                              connection error, or two own heartbeats
          │                              unanswered (blackholed link)
          │                                                             │
          │                                                             ▼
    backoff 0.1 s .. 5 s ◄── close pubsub ◄── on_reset() ◄── connected = False (one warning)

``on_reset`` also runs on the very first subscription: between ``start()`` and the moment
Redis confirms the subscription, this instance may have filled L1 while other instances'
messages could not reach it; clearing an L1 that young costs next to nothing. It also runs
when redis-py re-establishes a dropped pubsub connection by itself (it resubscribes
silently; the second subscribe confirmation on one connection gives it away).

Heartbeats: every ``heartbeat_interval`` the bus publishes ``{"op":"heartbeat","origin",
"seq"}`` on the same channel, through the shared client. Hearing its own heartbeat proves the
subscription delivers; heartbeats are never passed to ``on_message``.

The bus owns two tasks (listener, heartbeat) and one pubsub connection, all ended by
``stop()``. The shared ``redis.asyncio.Redis`` client belongs to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, cast, get_args

import orjson
import redis.asyncio
from redis.exceptions import RedisError

from strata.config import hide_password
from strata.errors import CodecError, StrataError, TierUnavailableError

__all__ = [
    "Heartbeat",
    "Invalidation",
    "InvalidationBus",
    "InvalidationOp",
    "decode_message",
]

InvalidationOp = Literal["set", "delete", "invalidate_all"]
_OPS: Final[frozenset[str]] = frozenset(get_args(InvalidationOp))
_HEARTBEAT_OP: Final = "heartbeat"

BACKOFF_MIN: Final = 0.1
BACKOFF_MAX: Final = 5.0
#: The subscription is presumed dead once this many of our own heartbeats went unanswered:
#: the oldest unanswered one was sent ``MISSED_HEARTBEATS - 1`` intervals plus half an
#: interval (the echo allowance) ago, and the socket held no echo when drained.
MISSED_HEARTBEATS: Final = 2

# Failures that mean "Redis is unreachable or misbehaving", retried in the background.
# The builtin TimeoutError comes from our own asyncio.timeout() guards.
_OUTAGE_ERRORS: Final = (RedisError, OSError, TimeoutError)

_logger = logging.getLogger("strata.invalidation")


# ----------------------------------------------------------------------------- messages


def _is_id(value: object) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def _is_version(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


@dataclass(frozen=True, slots=True)
class Invalidation:
    """One invalidation: a single key (``id``), a batch (``ids``) or a whole schema.

    ``versions`` is parallel to ``ids``; an empty ``versions`` on a batch means "no versions"
    and is normalised to ``(None,) * len(ids)``. Construction checks the shape and raises
    ``ValueError`` for a message that could not be sent.
    """

    schema: str
    op: InvalidationOp
    origin: str
    id: str | int | None = None
    version: int | None = None
    ids: tuple[str | int, ...] = ()
    versions: tuple[int | None, ...] = ()
    shape: str | None = None  # the writer's cache shape: other shapes drop their own L2 copy

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"invalidation op must be one of {sorted(_OPS)}")
        ids = tuple(self.ids)
        versions = tuple(self.versions)
        if ids and not versions:
            versions = (None,) * len(ids)
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "versions", versions)
        if len(versions) != len(ids):
            raise ValueError("invalidation 'versions' must be empty or as long as 'ids'")
        if self.op == "invalidate_all":
            if self.id is not None or ids:
                raise ValueError("an 'invalidate_all' invalidation carries no id nor ids")
        elif (self.id is None) == (not ids):
            raise ValueError(f"{self.op!r} invalidation needs exactly one of 'id' or 'ids'")
        if ids and self.version is not None:
            raise ValueError("a batch invalidation carries 'versions', not 'version'")

    @property
    def is_batch(self) -> bool:
        return bool(self.ids)

    def keys(self) -> list[tuple[str | int, int | None]]:
        """The ``(id, version)`` pairs this message covers; empty for ``invalidate_all``."""
        if self.ids:
            return list(zip(self.ids, self.versions, strict=True))
        if self.id is not None:
            return [(self.id, self.version)]
        return []

    def encode(self) -> bytes:
        """JSON bytes; ``ids``/``versions`` only for a batch. ``CodecError`` if not encodable."""
        body: dict[str, Any] = {
            "schema": self.schema,
            "id": self.id,
            "op": self.op,
            "origin": self.origin,
            "version": self.version,
        }
        if self.ids:
            body["ids"] = list(self.ids)
            body["versions"] = list(self.versions)
        if self.shape is not None:
            body["shape"] = self.shape
        try:
            return orjson.dumps(body)
        except orjson.JSONEncodeError as exc:
            raise CodecError(f"invalidation message cannot be encoded: {exc}") from exc

    @classmethod
    def decode(cls, raw: bytes | bytearray | memoryview | str) -> Invalidation:
        """The message in ``raw``; ``CodecError`` if it is malformed or a heartbeat."""
        message = decode_message(raw)
        if isinstance(message, Heartbeat):
            raise CodecError("invalidation message: a heartbeat, not an invalidation")
        return message


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The bus's liveness probe: published by each instance, only its sender looks at it."""

    origin: str
    seq: int

    def encode(self) -> bytes:
        return orjson.dumps({"op": _HEARTBEAT_OP, "origin": self.origin, "seq": self.seq})


def _field_error(name: str, expected: str) -> CodecError:
    # Fixed text per kind of fault (no values): the bus logs each distinct text once.
    return CodecError(f"invalidation message: {name!r} must be {expected}")


def decode_message(raw: bytes | bytearray | memoryview | str) -> Invalidation | Heartbeat:
    """Whatever the bus may find on its channel: an ``Invalidation`` or a ``Heartbeat``.

    Raises ``CodecError`` for anything else. Unknown extra keys are ignored, so a newer
    sender can add fields without breaking older receivers.
    """
    if not isinstance(raw, bytes | bytearray | memoryview | str):
        raise CodecError("invalidation message: not bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CodecError("invalidation message: not valid JSON") from exc
    if not isinstance(body, dict):
        raise CodecError("invalidation message: not a JSON object")
    origin = body.get("origin")
    if not isinstance(origin, str) or not origin:
        raise _field_error("origin", "a non-empty string")
    op = body.get("op")
    if op == _HEARTBEAT_OP:
        seq = body.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise _field_error("seq", "an integer")
        return Heartbeat(origin=origin, seq=seq)
    if op not in _OPS:
        raise _field_error("op", "one of " + ", ".join(sorted(_OPS)))
    schema = body.get("schema")
    if not isinstance(schema, str) or not schema:
        raise _field_error("schema", "a non-empty string")
    id_ = body.get("id")
    if id_ is not None and not _is_id(id_):
        raise _field_error("id", "a string, an integer or null")
    version = body.get("version")
    if not _is_version(version):
        raise _field_error("version", "an integer or null")
    ids = body.get("ids", [])
    if not isinstance(ids, list) or not all(_is_id(i) for i in ids):
        raise _field_error("ids", "a list of strings or integers")
    versions = body.get("versions", [])
    if not isinstance(versions, list) or not all(_is_version(v) for v in versions):
        raise _field_error("versions", "a list of integers or nulls")
    shape = body.get("shape")
    if shape is not None and not isinstance(shape, str):
        raise _field_error("shape", "a string or null")
    try:
        return Invalidation(
            schema=schema,
            op=op,
            origin=origin,
            id=id_,
            version=version,
            ids=tuple(ids),
            versions=tuple(versions),
            shape=shape,
        )
    except ValueError as exc:
        raise CodecError(f"invalidation message: {exc}") from exc


# --------------------------------------------------------------------------------- bus


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


def _describe_client(client: redis.asyncio.Redis) -> str:
    """Where the client points, password hidden, for log lines."""
    kwargs: Mapping[str, Any] = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}"
    user = kwargs.get("username") or ""
    password = kwargs.get("password")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = kwargs.get("host", "localhost")
    return hide_password(f"redis://{auth}{host}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}")


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
        client: redis.asyncio.Redis,
        channel: str,
        instance_id: str,
        *,
        on_message: Callable[[Invalidation], None],
        on_reset: Callable[[], None],
        heartbeat_interval: float = 2.0,
        logger: logging.Logger | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        publisher: Callable[[str, bytes], Awaitable[bool]] | None = None,
    ) -> None:
        if not channel:
            raise ValueError("channel must be a non-empty string")
        if not instance_id:
            raise ValueError("instance_id must be a non-empty string")
        if not heartbeat_interval > 0:
            raise ValueError("heartbeat_interval must be positive")
        self._client = client
        # The DataStore publishes through its L2 tier (behind the tier's circuit breaker);
        # the bus's own heartbeats and subscription use the client directly.
        self._publisher = publisher
        self._channel = channel
        self._channel_bytes = channel.encode()
        self._instance_id = instance_id
        self._on_message = on_message
        self._on_reset = on_reset
        self._on_error = on_error
        self._interval = float(heartbeat_interval)
        # Measured from the oldest heartbeat sent and not yet heard back, so a stalled event
        # loop (which sent nothing either) is not mistaken for a silent link.
        self._dead_after = (MISSED_HEARTBEATS - 0.5) * self._interval
        # Long enough for a slow connect + SUBSCRIBE round trip, short enough that a
        # blackholed connection attempt is abandoned and retried.
        self._subscribe_timeout = max(self._dead_after, 1.0)
        self._log = logger or _logger
        self._where = _describe_client(client)

        self.sent = 0
        self.received = 0
        self.resets = 0
        self.malformed = 0

        self._listener: asyncio.Task[None] | None = None
        self._beater: asyncio.Task[None] | None = None
        self._pubsub: _PubSub | None = None
        self._connected = False
        self._connected_event = asyncio.Event()
        self._last_beat = 0.0
        self._unanswered: dict[int, float] = {}  # heartbeat seq -> loop time it was sent
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
        pending = tasks
        while pending:
            # On Python 3.11 asyncio.wait_for (which redis-py uses to send commands when
            # socket_timeout is set) can swallow a cancellation that lands as the send
            # completes; the loops also watch _stopping, and we cancel again if need be.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
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
                        await pubsub.unsubscribe(self._channel)
            await self._discard(pubsub)

    async def publish(self, message: Invalidation) -> bool:
        """PUBLISH ``message``; False (after ``on_error``) if Redis could not take it.

        Never raises for a Redis outage. ``CodecError`` if the message cannot be encoded
        (an id that is neither str nor int). The wait is bounded by the client's
        ``socket_timeout``.
        """
        payload = message.encode()
        if self._publisher is not None:
            if not await self._publisher(self._channel, payload):
                return False  # the tier reported (or skipped it while known to be down)
            self.sent += 1
            return True
        try:
            await self._client.publish(self._channel, payload)
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
            pubsub = cast(_PubSub, self._client.pubsub())
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
        loop = asyncio.get_running_loop()
        # Subscribed: whatever was published before this point is lost to us.
        self._reset("subscribed")
        self._last_beat = loop.time()
        self._unanswered.clear()
        self._set_connected(True)
        if self._outage_since is not None:
            self._log.info(
                "invalidation bus subscribed to %r on %s again after %.1f s (%d attempts)",
                self._channel,
                self._where,
                loop.time() - self._outage_since,
                self._failures + 1,
            )
        else:
            self._log.debug("invalidation bus subscribed to %r on %s", self._channel, self._where)
        self._failures = 0
        self._outage_since = None
        await self._pump(pubsub)

    def _session_ended(self, exc: Exception) -> None:
        """Account for a failed subscribe attempt or a lost subscription: log once, reset."""
        now = asyncio.get_running_loop().time()
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
        async with asyncio.timeout_at(deadline):
            await pubsub.subscribe(self._channel)
            while not self._stopping:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError("no confirmation of SUBSCRIBE")
                message = await pubsub.get_message(timeout=remaining)
                if (
                    message is not None
                    and message.get("type") == "subscribe"
                    and _channel_of(message) == self._channel_bytes
                ):
                    return

    async def _pump(self, pubsub: _PubSub) -> None:
        """Deliver messages until the subscription is lost (raises) or the bus stops."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            silence = self._silence(loop.time())
            if silence > self._dead_after:
                await self._drain(pubsub)
                silence = self._silence(loop.time())
                if silence > self._dead_after:
                    raise _SubscriptionLost(
                        f"{len(self._unanswered)} heartbeats unanswered for {silence:.1f} s"
                    )
            wait = min(self._interval / 2, max(self._dead_after - silence, 0.0)) + 0.01
            try:
                # get_message(timeout=wait) returns within `wait`, unless redis-py is busy
                # reconnecting inside it (its retries, a handshake that never answers):
                # the outer bound keeps the heartbeat deadline in force even then.
                async with asyncio.timeout(wait + self._interval):
                    message = await pubsub.get_message(timeout=wait)
            except TimeoutError:
                silence = self._silence(loop.time())
                if silence <= self._dead_after:
                    continue  # the loop stalled, not the link: judge by the heartbeats
                raise _SubscriptionLost(
                    f"no heartbeat for {silence:.1f} s (the driver is stuck reconnecting)"
                ) from None
            if message is not None:
                self._dispatch(message, loop.time())

    def _silence(self, now: float) -> float:
        """How long the oldest heartbeat sent and not yet heard back has been out."""
        if len(self._unanswered) < MISSED_HEARTBEATS:
            return 0.0
        return now - min(self._unanswered.values())

    async def _drain(self, pubsub: _PubSub) -> None:
        """Handle whatever the socket already holds, before judging the link by it."""
        loop = asyncio.get_running_loop()
        for _ in range(10_000):
            async with asyncio.timeout(self._interval):
                message = await pubsub.get_message(timeout=0)
            if message is None:
                return
            self._dispatch(message, loop.time())

    def _dispatch(self, message: Mapping[str, Any], now: float) -> None:
        kind = message.get("type")
        if kind == "message":
            self._handle(message.get("data"), now)
        elif kind == "subscribe" and _channel_of(message) == self._channel_bytes:
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
            self._last_beat = now
            self._unanswered.clear()
        elif kind == "unsubscribe" and _channel_of(message) == self._channel_bytes:
            raise _SubscriptionLost("unsubscribed by the server")

    def _handle(self, data: object, now: float) -> None:
        try:
            decoded = decode_message(cast(bytes, data))
        except CodecError as exc:
            self._malformed(exc, data)
            return
        if isinstance(decoded, Heartbeat):
            if decoded.origin == self._instance_id:
                self._last_beat = now
                # An echo proves the link delivers; any earlier unanswered beat is moot.
                for seq in [s for s in self._unanswered if s <= decoded.seq]:
                    del self._unanswered[seq]
            return
        if decoded.origin == self._instance_id:
            return  # our own write: our L1 is already right
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
            await asyncio.sleep(self._interval)
            if self._stopping:
                break
            seq += 1
            payload = Heartbeat(origin=self._instance_id, seq=seq).encode()
            self._unanswered[seq] = asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(self._interval):
                    await self._client.publish(self._channel, payload)
            except _OUTAGE_ERRORS as exc:
                # The listener notices the missing heartbeat and reports the outage once.
                self._log.debug("invalidation heartbeat %d not published: %r", seq, exc)
            except Exception:
                self._log.exception("unexpected error publishing an invalidation heartbeat")

    # -- helpers

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
            await pubsub.aclose()
        except Exception:  # closing a broken connection may complain; it is closed anyway
            self._log.debug("closing the invalidation pubsub failed", exc_info=True)
        if self._pubsub is pubsub:
            self._pubsub = None

"""The invalidation bus over a real Redis: delivery, isolation of its own messages, faults.

Every test uses its own channel, so runs never see each other's messages. Fault tests use a
private redis-server or a fault proxy, never the shared server. Nothing here asserts on
elapsed time: tests wait (with generous timeouts) for the event they expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from integration._servers import FaultProxy, PrivateRedis
from strata.errors import CodecError, TierUnavailableError
from strata.invalidation import Heartbeat, Invalidation, InvalidationBus, decode_message

HEARTBEAT = 0.2
WAIT = 30.0  # generous: a timeout here means the behaviour never happened


class Recorder:
    """Collects what a bus hands to its callbacks and lets a test wait for it."""

    def __init__(self) -> None:
        self.messages: list[Invalidation] = []
        self.resets = 0
        self.errors: list[BaseException] = []
        self._changed = asyncio.Event()

    def on_message(self, message: Invalidation) -> None:
        self.messages.append(message)
        self._changed.set()

    def on_reset(self) -> None:
        self.resets += 1
        self._changed.set()

    def on_error(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self._changed.set()

    async def wait_until(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


def new_channel() -> str:
    return f"strata-test-inv-{uuid.uuid4().hex[:8]}"


def make_client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)


@contextlib.asynccontextmanager
async def running_bus(
    url: str, channel: str, instance_id: str, *, connect: bool = True
) -> AsyncIterator[tuple[InvalidationBus, Recorder]]:
    """A started bus on its own client; stopped and closed on exit."""
    client = make_client(url)
    recorder = Recorder()
    bus = InvalidationBus(
        client,
        channel,
        instance_id,
        on_message=recorder.on_message,
        on_reset=recorder.on_reset,
        on_error=recorder.on_error,
        heartbeat_interval=HEARTBEAT,
    )
    try:
        await bus.start()
        if connect:
            assert await bus.wait_connected(WAIT)
        yield bus, recorder
    finally:
        await bus.stop()
        await client.aclose()


def _records(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "strata.invalidation" and r.levelno == level and text in r.getMessage()
    ]


def msg(origin: str, id: str | int = "p1", *, schema: str = "players") -> Invalidation:
    return Invalidation(schema=schema, op="set", origin=origin, id=id, version=1)


@pytest.fixture
def channel() -> str:
    return new_channel()


async def test_message_reaches_other_instance(redis_url: str, channel: str) -> None:
    async with (
        running_bus(redis_url, channel, "inst-a") as (a, _),
        running_bus(redis_url, channel, "inst-b") as (_, got_b),
    ):
        sent = msg("inst-a", "p1")
        assert await a.publish(sent)

        await got_b.wait_until(lambda: len(got_b.messages) == 1)

        assert got_b.messages == [sent]


async def test_own_messages_are_not_delivered_back(redis_url: str, channel: str) -> None:
    async with (
        running_bus(redis_url, channel, "inst-a") as (a, got_a),
        running_bus(redis_url, channel, "inst-b") as (b, _),
    ):
        await a.publish(msg("inst-a", "own"))
        # Pub/sub keeps per-channel order: once A has B's later message, it would
        # already have had its own earlier one.
        await b.publish(msg("inst-b", "theirs"))

        await got_a.wait_until(lambda: len(got_a.messages) >= 1)

        assert [m.id for m in got_a.messages] == ["theirs"]


async def test_batch_arrives_as_one_call(redis_url: str, channel: str) -> None:
    async with (
        running_bus(redis_url, channel, "inst-a") as (a, _),
        running_bus(redis_url, channel, "inst-b") as (_, got_b),
    ):
        batch = Invalidation(
            schema="players",
            op="delete",
            origin="inst-a",
            ids=("p1", "p2", 3),
            versions=(4, 5, None),
        )
        await a.publish(batch)

        await got_b.wait_until(lambda: len(got_b.messages) >= 1)

        assert got_b.messages == [batch]
        assert got_b.messages[0].keys() == [("p1", 4), ("p2", 5), (3, None)]


async def test_counters_count_sent_and_applied_messages(redis_url: str, channel: str) -> None:
    async with (
        running_bus(redis_url, channel, "inst-a") as (a, _),
        running_bus(redis_url, channel, "inst-b") as (b, got_b),
    ):
        for i in range(3):
            await a.publish(msg("inst-a", i))

        await got_b.wait_until(lambda: len(got_b.messages) == 3)

        assert (a.sent, b.received) == (3, 3)
        assert (a.received, b.sent) == (0, 0)


async def test_heartbeats_are_not_delivered_to_on_message(
    redis_url: str, redis_client: aioredis.Redis, channel: str
) -> None:
    async with (
        running_bus(redis_url, channel, "inst-a") as (a, _),
        running_bus(redis_url, channel, "inst-b") as (_, got_b),
        redis_client.pubsub() as spy,
    ):
        await spy.subscribe(channel)
        # Wait until a heartbeat from A has gone over the channel ...
        async with asyncio.timeout(WAIT):
            while True:
                raw = await spy.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if raw is not None and isinstance(decode_message(raw["data"]), Heartbeat):
                    break
        # ... then a real message: B must have seen only the real one.
        await a.publish(msg("inst-a", "after-beats"))
        await got_b.wait_until(lambda: len(got_b.messages) >= 1)

        assert [m.id for m in got_b.messages] == ["after-beats"]


async def test_malformed_message_does_not_kill_the_listener(
    redis_url: str, redis_client: aioredis.Redis, channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="strata.invalidation")
    async with (
        running_bus(redis_url, channel, "inst-a") as (a, _),
        running_bus(redis_url, channel, "inst-b") as (b, got_b),
    ):
        for garbage in (b"not json", b'{"op": "nope"}', b"[]", b"not json either"):
            await redis_client.publish(channel, garbage)
        await a.publish(msg("inst-a", "valid"))

        await got_b.wait_until(lambda: len(got_b.messages) >= 1)

        assert [m.id for m in got_b.messages] == ["valid"]
        assert b.malformed == 4
        assert sum(isinstance(e, CodecError) for e in got_b.errors) == 4
        # One warning per kind of fault and bus, not one per message: each of the two
        # buses saw "not valid JSON" twice but warns of it once (3 kinds x 2 buses).
        assert len(_records(caplog, logging.WARNING, "malformed")) == 6


async def test_on_message_that_raises_does_not_kill_the_listener(
    redis_url: str, channel: str
) -> None:
    seen: list[Invalidation] = []
    delivered = asyncio.Event()
    errors: list[BaseException] = []

    def on_message(message: Invalidation) -> None:
        if message.id == "boom":
            raise RuntimeError("router bug")
        seen.append(message)
        delivered.set()

    client = make_client(redis_url)
    bus = InvalidationBus(
        client,
        channel,
        "inst-b",
        on_message=on_message,
        on_reset=lambda: None,
        on_error=errors.append,
        heartbeat_interval=HEARTBEAT,
    )
    try:
        await bus.start()
        assert await bus.wait_connected(WAIT)
        async with running_bus(redis_url, channel, "inst-a") as (a, _):
            await a.publish(msg("inst-a", "boom"))
            await a.publish(msg("inst-a", "fine"))
            async with asyncio.timeout(WAIT):
                await delivered.wait()
    finally:
        await bus.stop()
        await client.aclose()

    assert [m.id for m in seen] == ["fine"]
    assert [type(e) for e in errors] == [RuntimeError]
    assert bus.received == 1


async def test_first_subscription_clears_l1(redis_url: str, channel: str) -> None:
    async with running_bus(redis_url, channel, "inst-a") as (_, got):
        assert got.resets == 1


async def test_bus_reconnects_after_redis_restart(channel: str) -> None:
    async with (
        PrivateRedis() as server,
        running_bus(server.url, channel, "inst-a") as (a, got_a),
        running_bus(server.url, channel, "inst-b") as (b, got_b),
    ):
        resets_before = got_b.resets

        await server.stop()
        await got_b.wait_until(lambda: got_b.resets > resets_before and not b.connected)
        await server.start()

        assert await b.wait_connected(WAIT)
        assert await a.wait_connected(WAIT)
        # Reset on loss and again once resubscribed (nothing missed can survive).
        assert got_b.resets >= resets_before + 2
        assert any(isinstance(e, TierUnavailableError) for e in got_b.errors)
        after = msg("inst-a", "after-restart")
        assert await a.publish(after)
        await got_b.wait_until(lambda: after in got_b.messages)
        assert got_a.messages == []


async def test_start_does_not_raise_while_redis_is_down(channel: str) -> None:
    server = PrivateRedis()
    try:
        # Nothing listens on server.port yet.
        async with running_bus(server.url, channel, "inst-b", connect=False) as (b, got_b):
            assert not b.connected
            await got_b.wait_until(lambda: len(got_b.errors) >= 1)
            assert isinstance(got_b.errors[0], TierUnavailableError)

            await server.start()

            assert await b.wait_connected(WAIT)
            assert got_b.resets == 1
    finally:
        server.close()


async def test_publish_returns_false_when_redis_is_down(channel: str) -> None:
    async with (
        PrivateRedis() as server,
        running_bus(server.url, channel, "inst-a") as (a, got_a),
    ):
        await server.stop()

        ok = await a.publish(msg("inst-a"))

        assert ok is False
        assert a.sent == 0
        assert any(isinstance(e, TierUnavailableError) and e.tier == "l2" for e in got_a.errors)


async def test_missed_heartbeat_resets_and_recovers_after_blackhole(
    redis_url: str, channel: str
) -> None:
    async with (
        FaultProxy.for_url(redis_url) as proxy,
        running_bus(redis_url, channel, "inst-a") as (a, _),
        running_bus(proxy.url_for(redis_url), channel, "inst-b") as (b, got_b),
    ):
        resets_before = got_b.resets

        proxy.blackhole()  # connections stay open, nothing moves: only heartbeats can tell
        await got_b.wait_until(lambda: got_b.resets > resets_before and not b.connected)
        await proxy.restore()

        assert await b.wait_connected(WAIT)
        assert got_b.resets >= resets_before + 2
        after = msg("inst-a", "after-blackhole")
        assert await a.publish(after)
        await got_b.wait_until(lambda: after in got_b.messages)


async def test_bus_recovers_after_connection_cut(redis_url: str, channel: str) -> None:
    async with (
        FaultProxy.for_url(redis_url) as proxy,
        running_bus(redis_url, channel, "inst-a") as (a, _),
        running_bus(proxy.url_for(redis_url), channel, "inst-b") as (b, got_b),
    ):
        resets_before = got_b.resets

        await proxy.cut()
        await got_b.wait_until(lambda: got_b.resets > resets_before and not b.connected)
        await proxy.restore()

        assert await b.wait_connected(WAIT)
        after = msg("inst-a", "after-cut")
        assert await a.publish(after)
        await got_b.wait_until(lambda: after in got_b.messages)


async def test_stop_leaves_no_pending_tasks(redis_url: str, channel: str) -> None:
    before = asyncio.all_tasks()
    async with running_bus(redis_url, channel, "inst-a") as (a, _):
        assert a.running
        assert len(asyncio.all_tasks() - before) >= 2

    assert not a.running
    assert not a.connected
    assert asyncio.all_tasks() - before == set()


async def test_stop_while_redis_is_down_leaves_no_pending_tasks(channel: str) -> None:
    before = asyncio.all_tasks()
    server = PrivateRedis()  # never started: every attempt fails
    try:
        async with running_bus(server.url, channel, "inst-a", connect=False) as (_, got):
            await got.wait_until(lambda: len(got.errors) >= 1)
    finally:
        server.close()

    assert asyncio.all_tasks() - before == set()


async def test_stop_unsubscribes_from_the_channel(
    redis_url: str, redis_client: aioredis.Redis, channel: str
) -> None:
    async with running_bus(redis_url, channel, "inst-a"):
        counts = dict(await redis_client.pubsub_numsub(channel))
        assert counts[channel.encode()] == 1

    # The server drops the subscription when it processes the close: wait for that.
    async with asyncio.timeout(WAIT):
        while True:
            counts = dict(await redis_client.pubsub_numsub(channel))
            if counts[channel.encode()] == 0:
                break
            await asyncio.sleep(0.01)


async def test_server_closing_the_subscriber_connection_resets_and_recovers(
    channel: str,
) -> None:
    async with (
        PrivateRedis() as server,
        running_bus(server.url, channel, "inst-a") as (a, _),
        running_bus(server.url, channel, "inst-b") as (b, got_b),
    ):
        admin = make_client(server.url)
        try:
            resets_before = got_b.resets

            # Redis drops every subscriber connection; the server itself stays up.
            await admin.client_kill_filter(_type="pubsub")
            await got_b.wait_until(lambda: got_b.resets > resets_before)

            assert await b.wait_connected(WAIT)
            assert await a.wait_connected(WAIT)
            after = msg("inst-a", "after-kill")
            assert await a.publish(after)
            await got_b.wait_until(lambda: after in got_b.messages)
        finally:
            await admin.aclose()


async def test_silent_resubscribe_by_the_driver_still_resets(redis_url: str, channel: str) -> None:
    # redis-py may reconnect a pubsub connection inside get_message and resubscribe without
    # raising; the only trace is a second subscribe confirmation. Messages published while
    # it was away are lost all the same, so the bus must clear L1. The confirmation is
    # injected here, as the driver would deliver it.
    client = make_client(redis_url)
    inject = asyncio.Event()
    original = client.pubsub

    def pubsub_with_injection(**kwargs: Any) -> PubSub:
        pubsub = original(**kwargs)
        real_get_message = pubsub.get_message

        async def get_message(
            ignore_subscribe_messages: bool = False, timeout: float | None = 0.0
        ) -> dict[str, Any] | None:
            if inject.is_set():
                inject.clear()
                return {
                    "type": "subscribe",
                    "pattern": None,
                    "channel": channel.encode(),
                    "data": 1,
                }
            return await real_get_message(ignore_subscribe_messages, timeout)  # type: ignore[no-any-return]

        pubsub.get_message = get_message  # type: ignore[method-assign]
        return pubsub

    client.pubsub = pubsub_with_injection  # type: ignore[method-assign]
    got_b = Recorder()
    b = InvalidationBus(
        client,
        channel,
        "inst-b",
        on_message=got_b.on_message,
        on_reset=got_b.on_reset,
        on_error=got_b.on_error,
        heartbeat_interval=HEARTBEAT,
    )
    try:
        await b.start()
        assert await b.wait_connected(WAIT)
        resets_before = got_b.resets

        inject.set()
        await got_b.wait_until(lambda: got_b.resets > resets_before)
        assert any(isinstance(e, TierUnavailableError) for e in got_b.errors)

        async with running_bus(redis_url, channel, "inst-a") as (a, _):
            after = msg("inst-a", "after-resubscribe")
            assert await a.publish(after)
            await got_b.wait_until(lambda: after in got_b.messages)
    finally:
        await b.stop()
        await client.aclose()


async def test_an_outage_logs_one_warning_and_one_info(
    channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="strata.invalidation")
    async with (
        PrivateRedis() as server,
        running_bus(server.url, channel, "inst-b") as (b, _),
    ):
        await server.stop()
        # Let several reconnection attempts fail before the server comes back.
        async with asyncio.timeout(WAIT):
            while True:
                if len(_records(caplog, logging.DEBUG, "subscribe attempt")) >= 3:
                    break
                await asyncio.sleep(0.05)
        await server.start()
        assert await b.wait_connected(WAIT)

    warnings = [
        r
        for r in caplog.records
        if r.name == "strata.invalidation" and r.levelno >= logging.WARNING
    ]
    infos = _records(caplog, logging.INFO, "again")
    assert [r.getMessage().split(" (")[0] for r in warnings] == [
        f"invalidation bus lost its subscription to {channel!r} on {server.url}"
    ]
    assert len(infos) == 1


async def test_stop_ends_the_tasks_even_if_a_cancellation_is_swallowed(
    redis_url: str, channel: str
) -> None:
    # On Python 3.11, asyncio.wait_for (used by redis-py to send commands when
    # socket_timeout is set) can swallow a cancellation that arrives as the send completes.
    # This publish swallows it every time, so a single task.cancel() is never enough.
    client = make_client(redis_url)
    real_publish = client.publish
    in_heartbeat = asyncio.Event()

    async def swallowing_publish(channel: str, payload: bytes) -> int:
        if b'"heartbeat"' not in payload:
            return await real_publish(channel, payload)
        in_heartbeat.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return 0  # what wait_for does when its inner future has just completed
        return 0  # pragma: no cover - never set

    client.publish = swallowing_publish  # type: ignore[method-assign, assignment]
    before = asyncio.all_tasks()
    bus = InvalidationBus(
        client,
        channel,
        "inst-a",
        on_message=lambda m: None,
        on_reset=lambda: None,
        heartbeat_interval=HEARTBEAT,
    )
    try:
        await bus.start()
        async with asyncio.timeout(WAIT):
            await in_heartbeat.wait()

        async with asyncio.timeout(WAIT):
            await bus.stop()

        assert asyncio.all_tasks() - before == set()
    finally:
        await bus.stop()
        await client.aclose()

"""A silent pub/sub link (connected, but delivering nothing) is detected after two missed
heartbeats, per channel. No server and no waiting: an in-memory ``Transport`` carries the
messages and a fake clock drives the heartbeats."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from strata.invalidation import Invalidation, InvalidationBus
from strata.invalidation.bus import MISSED_HEARTBEATS

INTERVAL = 1.0
STEP = 0.05  # fake seconds per tick


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self._ticked = asyncio.Condition()

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await self.until(self.now + seconds)

    async def until(self, deadline: float, ready: Any = None) -> None:
        async with self._ticked:
            await self._ticked.wait_for(
                lambda: self.now >= deadline or (ready is not None and ready())
            )

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        async with self._ticked:
            self._ticked.notify_all()
        for _ in range(20):  # let every woken task run to its next wait
            await asyncio.sleep(0)


class Subscription:
    def __init__(self) -> None:
        self.inbox: list[dict[str, Any]] = []
        self.channels: list[str] = []


class MemoryTransport:
    """Pub/sub in memory, one channel per schema like a cluster's sharded pub/sub.
    ``silence(channel)`` blackholes a channel: publishes succeed, nothing is delivered."""

    def __init__(self, clock: FakeClock, channel: str = "inv", sharded: bool = True) -> None:
        self.clock = clock
        self.channel = channel
        self.sharded = sharded
        self.subs: list[Subscription] = []
        self.silent: set[str] = set()
        self.heartbeats: dict[str, int] = {}

    @property
    def where(self) -> str:
        return "memory"

    def channel_for(self, schema: str) -> str:
        return f"{self.channel}:{schema}" if self.sharded else self.channel

    def channels(self) -> list[str]:
        return [self.channel_for(s) for s in ("a", "b")] if self.sharded else [self.channel]

    def pubsub(self) -> Subscription:
        sub = Subscription()
        self.subs.append(sub)
        return sub

    async def subscribe(self, pubsub: Subscription, channels: list[str]) -> None:
        pubsub.channels = list(channels)
        for c in channels:
            pubsub.inbox.append({"type": "subscribe", "channel": c.encode()})

    async def unsubscribe(self, pubsub: Subscription, channels: list[str]) -> None:
        pubsub.channels = []

    async def get_message(self, pubsub: Subscription, timeout: float) -> dict[str, Any] | None:
        await self.clock.until(self.clock.now + timeout, lambda: bool(pubsub.inbox))
        return pubsub.inbox.pop(0) if pubsub.inbox else None

    async def close(self, pubsub: Subscription) -> None:
        if pubsub in self.subs:
            self.subs.remove(pubsub)

    async def publish(self, channel: str, payload: bytes) -> None:
        if b'"heartbeat"' in payload:
            self.heartbeats[channel] = self.heartbeats.get(channel, 0) + 1
        if channel in self.silent:
            return
        for sub in self.subs:
            if channel in sub.channels:
                sub.inbox.append({"type": "message", "channel": channel.encode(), "data": payload})


class Reader:
    """What the receiving instance's L1 would hold: the version it last saw per id."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.resets = 0

    def on_message(self, msg: Invalidation) -> None:
        for id, version in msg.keys():  # noqa: SIM118 - a method, not dict.keys
            if version is not None:
                self.seen[str(id)] = version

    def on_reset(self) -> None:
        self.resets += 1
        self.seen.clear()


async def _bus(transport: MemoryTransport, clock: FakeClock, reader: Reader) -> InvalidationBus:
    bus = InvalidationBus(
        None,  # type: ignore[arg-type]  # the transport replaces the client
        "inv",
        "reader",
        on_message=reader.on_message,
        on_reset=reader.on_reset,
        heartbeat_interval=INTERVAL,
        transport=transport,
        clock=clock,
    )
    await bus.start()
    for _ in range(100):
        if bus.connected:
            return bus
        await clock.advance(0)
    raise AssertionError("the in-memory bus never subscribed")


async def _ticks_until_lost(bus: InvalidationBus, clock: FakeClock, limit: float) -> float:
    start = clock.now
    while bus.connected:
        await clock.advance(STEP)
        if clock.now - start > limit:
            raise AssertionError(f"not detected after {limit} fake seconds")
    return clock.now - start


def test_two_heartbeats_is_the_documented_budget() -> None:
    assert MISSED_HEARTBEATS == 2


@pytest.mark.parametrize("silenced", ["inv:a", "inv:b"])
async def test_a_silent_channel_is_detected_after_two_missed_heartbeats(silenced: str) -> None:
    clock = FakeClock()
    transport = MemoryTransport(clock)
    reader = Reader()
    bus = await _bus(transport, clock, reader)
    try:
        for _ in range(int(5 * INTERVAL / STEP)):  # healthy: heard beats keep it connected
            await clock.advance(STEP)
        assert bus.connected
        resets = reader.resets
        transport.silent.add(silenced)  # one shard goes quiet, the other still delivers
        beats = transport.heartbeats.get(silenced, 0)

        took = await _ticks_until_lost(bus, clock, limit=10 * INTERVAL)

        assert took <= 2 * INTERVAL + 2 * STEP
        assert transport.heartbeats.get(silenced, 0) - beats <= 2
        assert reader.resets > resets  # L1 cleared
    finally:
        await bus.stop()


async def test_stale_reads_while_the_link_is_silent() -> None:
    """The figure: a reader reading one key 20 times a (fake) second while a writer changes
    it as often, from the moment its link goes silent until the bus clears its L1."""
    clock = FakeClock()
    transport = MemoryTransport(clock, sharded=False)
    reader = Reader()
    bus = await _bus(transport, clock, reader)
    writer = InvalidationBus(
        None,  # type: ignore[arg-type]
        "inv",
        "writer",
        on_message=lambda m: None,
        on_reset=lambda: None,
        heartbeat_interval=INTERVAL,
        transport=transport,
        clock=clock,
    )
    try:
        for _ in range(int(3 * INTERVAL / STEP)):
            await clock.advance(STEP)
        await writer.publish(Invalidation(schema="a", op="set", origin="writer", id="k", version=1))
        await clock.advance(0)
        assert reader.seen == {"k": 1}
        transport.silent.add("inv")
        stale = 0
        version = 1
        while bus.connected:
            version += 1
            await writer.publish(
                Invalidation(schema="a", op="set", origin="writer", id="k", version=version)
            )
            await clock.advance(STEP)
            if bus.connected and reader.seen.get("k") != version:
                stale += 1  # still served from L1: the stale copy
        print(f"stale reads before detection at 20 reads/s: {stale}")  # the figure (-s)
        assert stale <= 2 * INTERVAL / STEP
        assert reader.seen == {}  # cleared: the next read goes to L2/L3
    finally:
        await bus.stop()

"""The heartbeat deadline: a silent link is lost after two heartbeats, a stall is not a loss.

The deadline is measured from the oldest heartbeat this bus sent and has not heard back, and
the socket is drained before the subscription is declared lost, so an event loop that stalled
(publisher and listener alike) does not clear L1 when it wakes. Nothing here asserts on
elapsed time: the first test counts the heartbeats published before the reset, the second
blocks the loop (the fault) and waits for heartbeats to flow again.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from integration._servers import FaultProxy
from integration.procs import eventually
from integration.test_invalidation_bus import HEARTBEAT, WAIT, running_bus
from strata.invalidation import Heartbeat, InvalidationBus, decode_message


@pytest.fixture
def channel() -> str:
    return f"strata-test-hb-{uuid.uuid4().hex[:8]}"


def _count_heartbeats(bus: InvalidationBus) -> list[int]:
    """Wrap the bus client's publish so the test sees every heartbeat the bus sends."""
    sent: list[int] = []
    client: Any = bus._client  # the test observes traffic; it does not change it
    publish = client.publish

    async def counting(channel: str, payload: bytes) -> Any:
        decoded = decode_message(payload)
        if isinstance(decoded, Heartbeat):
            sent.append(decoded.seq)
        return await publish(channel, payload)

    client.publish = counting
    return sent


async def test_a_blackholed_subscription_is_lost_after_two_unanswered_heartbeats(
    redis_url: str, channel: str
) -> None:
    async with (
        FaultProxy.for_url(redis_url) as proxy,
        running_bus(proxy.url_for(redis_url), channel, "inst-b") as (b, got_b),
    ):
        sent = _count_heartbeats(b)
        # Two heartbeats sent through the wrap while the link is healthy.
        await eventually(lambda: len(sent) >= 2, timeout=WAIT)
        resets_before = got_b.resets
        proxy.blackhole()
        sent_at_blackhole = len(sent)
        at_reset: list[int] = []
        original = b._on_reset

        def on_reset() -> None:
            at_reset.append(len(sent))
            original()

        b._on_reset = on_reset
        await got_b.wait_until(lambda: got_b.resets > resets_before and not b.connected)
        await proxy.restore()
        # Heartbeats published after the link went silent, before the bus gave up on it.
        assert at_reset[0] - sent_at_blackhole <= 2
        assert await b.wait_connected(WAIT)


async def test_an_event_loop_stall_longer_than_the_deadline_does_not_clear_l1(
    redis_url: str, channel: str
) -> None:
    async with running_bus(redis_url, channel, "inst-a") as (a, got_a):
        sent = _count_heartbeats(a)
        await eventually(lambda: len(sent) >= 2, timeout=WAIT)
        resets_before = got_a.resets
        time.sleep(HEARTBEAT * 5)  # noqa: ASYNC251 (the fault: the whole loop is blocked)
        after_stall = len(sent)
        # Three more heartbeats published after the stall: the bus has had time to judge it.
        await eventually(lambda: len(sent) >= after_stall + 3, timeout=WAIT)
        assert got_a.resets == resets_before
        assert a.connected

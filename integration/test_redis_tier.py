"""The L2 tier against real Redis: batches, conditional fills, and life without Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from integration._servers import FaultProxy, PrivateRedis, free_port
from strata.errors import TierUnavailableError
from strata.tiers.redis import RedisTier

LOGGER = "strata.test.redis_tier"


def env(version: int, body: bytes = b"{}", fmt: bytes = b"j") -> bytes:
    """A codec envelope (see strata.codec) without needing a schema."""
    return b"S" + fmt + b"%016x" % version + body


def tomb(version: int) -> bytes:
    return env(version, b"", b"t")


class Recorder:
    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.recoveries = 0

    def on_error(self, exc: BaseException) -> None:
        self.errors.append(exc)

    def on_recover(self) -> None:
        self.recoveries += 1


@pytest.fixture
async def tier(redis_url: str) -> AsyncIterator[RedisTier]:
    t = RedisTier(redis_url)
    await t.connect()
    try:
        yield t
    finally:
        await t.close()


async def wait_until_available(tier: RedisTier, key: str) -> None:
    """Keep making ordinary (concurrent) calls until the tier has found Redis by itself."""
    for _ in range(600):
        await asyncio.gather(*(tier.get_many([key]) for _ in range(10)))
        if tier.available:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the tier never recovered")


# ------------------------------------------------------------------------- data path


async def test_set_then_get_returns_payloads_and_remaining_ttl(
    tier: RedisTier, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    a, b, missing = f"{redis_prefix}:a", f"{redis_prefix}:b", f"{redis_prefix}:missing"

    applied = await tier.set_many([(a, env(1, b'{"x":1}'), 60.0), (b, env(2), None)])
    got = await tier.get_many([a, missing, b])

    assert applied == [True, True]
    (pa, ttl_a), miss, (pb, ttl_b) = got
    assert pa == env(1, b'{"x":1}')
    assert ttl_a is not None and 0 < ttl_a <= 60.0
    assert miss == (None, None)
    assert pb == env(2)
    assert ttl_b is None  # no expiry
    assert 0 < await redis_client.pttl(a) <= 60_000
    assert await redis_client.pttl(b) == -1


async def test_fractional_ttl_is_set_in_milliseconds(
    tier: RedisTier, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    key = f"{redis_prefix}:ms"

    await tier.set_many([(key, env(1), 30.5)])

    assert 30_000 < await redis_client.pttl(key) <= 30_500


async def test_delete_many_removes_every_key(
    tier: RedisTier, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    keys = [f"{redis_prefix}:d{i}" for i in range(5)]
    await tier.set_many([(k, env(1), None) for k in keys])

    await tier.delete_many(keys[:4])

    assert await redis_client.exists(*keys) == 1
    assert [p for p, _ in await tier.get_many(keys)] == [None] * 4 + [env(1)]


async def test_empty_batches_do_nothing(tier: RedisTier) -> None:
    assert await tier.get_many([]) == []
    assert await tier.set_many([]) == []
    await tier.delete_many([])


async def test_each_batch_is_one_round_trip(
    tier: RedisTier, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [f"{redis_prefix}:rt{i}" for i in range(200)]
    # Warm up: the scripts get loaded into the server on first use.
    await tier.set_many([(f"{redis_prefix}:warm", env(1), 10.0)])
    await tier.get_many([f"{redis_prefix}:warm"])
    sends = 0
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        nonlocal sends
        sends += 1
        await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)

    await tier.set_many([(k, env(i), 10.0) for i, k in enumerate(keys)])
    after_set = sends
    got = await tier.get_many(keys)
    after_get = sends
    await tier.delete_many(keys)

    assert (after_set, after_get - after_set, sends - after_get) == (1, 1, 1)
    assert [p for p, _ in got] == [env(i) for i in range(len(keys))]


async def test_publish_reaches_subscribers(
    tier: RedisTier, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    channel = f"{redis_prefix}:chan"
    pubsub = redis_client.pubsub()
    try:
        await pubsub.subscribe(channel)
        assert await tier.publish(f"{channel}-nobody", b"hi") == 0
        assert await tier.publish(channel, b"hello") == 1
        message = None
        for _ in range(100):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                break
        assert message is not None and message["data"] == b"hello"
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_delete_pattern_removes_only_matching_keys(
    tier: RedisTier, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    doomed = [f"{redis_prefix}:s1:{i}" for i in range(1200)]
    kept = f"{redis_prefix}:s2:0"
    await tier.set_many([(k, env(1), 60.0) for k in [*doomed, kept]])

    removed = await tier.delete_pattern(f"{redis_prefix}:s1:*")

    assert removed == len(doomed)
    assert await redis_client.exists(*doomed) == 0
    assert await redis_client.exists(kept) == 1


async def test_incr_and_get_raw_serve_counters(tier: RedisTier, redis_prefix: str) -> None:
    key = f"{redis_prefix}:gen"

    assert await tier.get_raw(key) is None
    assert await tier.incr(key) == 1
    assert await tier.incr(key) == 2
    assert await tier.get_raw(key) == b"2"


async def test_generation_and_result_come_back_in_one_call(
    tier: RedisTier, redis_prefix: str
) -> None:
    counter, prefix = f"{redis_prefix}:gen", f"{redis_prefix}:q:"

    assert await tier.get_generation(counter, prefix, "d1") == (0, None)
    assert await tier.set_raw(f"{prefix}0:d1", b"result-0", 60.0)
    assert await tier.get_generation(counter, prefix, "d1") == (0, b"result-0")

    await tier.set_many([(f"{redis_prefix}:row", env(1), 60.0)], bump=counter)

    assert await tier.get_generation(counter, prefix, "d1") == (1, None)
    await tier.set_many([(f"{redis_prefix}:row", tomb(0), 5.0)], bump=counter)  # kept, bumped
    assert (await tier.get_generation(counter, prefix, "d1"))[0] == 2


async def test_set_raw_writes_unconditionally_with_ttl(
    tier: RedisTier, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    key = f"{redis_prefix}:raw"
    await tier.set_many([(key, env(9), None)])

    assert await tier.set_raw(key, b"anything", 12.0)
    assert await redis_client.get(key) == b"anything"
    assert 0 < await redis_client.pttl(key) <= 12_000


# ------------------------------------------------------------------ conditional fills


async def test_older_version_is_rejected(tier: RedisTier, redis_prefix: str) -> None:
    key = f"{redis_prefix}:c"
    await tier.set_many([(key, env(5, b'{"v":5}'), 60.0)])

    applied = await tier.set_many([(key, env(3, b'{"v":3}'), 60.0)])

    assert applied == [False]
    assert (await tier.get_many([key]))[0][0] == env(5, b'{"v":5}')


async def test_equal_and_newer_versions_are_applied(tier: RedisTier, redis_prefix: str) -> None:
    key = f"{redis_prefix}:c"
    await tier.set_many([(key, env(5, b'{"v":"a"}'), 60.0)])

    equal = await tier.set_many([(key, env(5, b'{"v":"b"}'), 60.0)])
    assert (await tier.get_many([key]))[0][0] == env(5, b'{"v":"b"}')
    newer = await tier.set_many([(key, env(6), 60.0)])

    assert (equal, newer) == ([True], [True])
    assert (await tier.get_many([key]))[0][0] == env(6)


@pytest.mark.parametrize(
    ("old", "new"),
    [(0xF, 0x10), (0xFF, 0x100), (2**32 - 1, 2**32), (2**32, 2**32 + 1), (2**63, 2**64 - 1)],
)
async def test_versions_compare_numerically_across_digit_boundaries(
    tier: RedisTier, redis_prefix: str, old: int, new: int
) -> None:
    key = f"{redis_prefix}:b"
    await tier.set_many([(key, env(new), 60.0)])

    assert await tier.set_many([(key, env(old), 60.0)]) == [False]
    await tier.delete_many([key])
    await tier.set_many([(key, env(old), 60.0)])
    assert await tier.set_many([(key, env(new), 60.0)]) == [True]


async def test_tombstone_blocks_an_older_fill(tier: RedisTier, redis_prefix: str) -> None:
    key = f"{redis_prefix}:t"
    await tier.set_many([(key, env(9), 60.0)])
    await tier.set_many([(key, tomb(10), 5.0)])

    stale_fill = await tier.set_many([(key, env(9), 60.0)])
    newer_fill = await tier.set_many([(key, env(11), 60.0)])

    assert (stale_fill, newer_fill) == ([False], [True])


async def test_older_tombstone_does_not_replace_a_newer_value(
    tier: RedisTier, redis_prefix: str
) -> None:
    key = f"{redis_prefix}:t"
    await tier.set_many([(key, env(12), 60.0)])

    assert await tier.set_many([(key, tomb(11), 5.0)]) == [False]
    assert (await tier.get_many([key]))[0][0] == env(12)


async def test_one_batch_applies_per_key(tier: RedisTier, redis_prefix: str) -> None:
    keys = [f"{redis_prefix}:m{i}" for i in range(3)]
    await tier.set_many([(keys[0], env(5), 60.0), (keys[1], env(5), 60.0)])

    applied = await tier.set_many(
        [(keys[0], env(4), 60.0), (keys[1], env(6), 60.0), (keys[2], env(1), 60.0)]
    )

    assert applied == [False, True, True]


@pytest.mark.parametrize(
    "foreign",
    [b"garbage", b"", b"Sj00000000000000", b"SjZZZZZZZZZZZZZZZZ{}", b"SJffffffffffffffff{}"],
)
async def test_value_that_is_not_an_envelope_is_overwritten(
    tier: RedisTier, redis_prefix: str, redis_client: aioredis.Redis, foreign: bytes
) -> None:
    key = f"{redis_prefix}:x"
    await redis_client.set(key, foreign)

    assert await tier.set_many([(key, env(1), 60.0)]) == [True]
    assert (await tier.get_many([key]))[0][0] == env(1)


async def test_key_of_another_type_is_a_miss_and_is_overwritten(
    tier: RedisTier, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    key = f"{redis_prefix}:list"
    await redis_client.rpush(key, b"a")

    assert await tier.get_many([key]) == [(None, None)]
    assert await tier.get_many([key, f"{redis_prefix}:other"]) == [(None, None)] * 2
    assert tier.available  # a wrong type is a miss, not an outage
    assert await tier.set_many([(key, env(1), 60.0)]) == [True]
    assert (await tier.get_many([key]))[0][0] == env(1)


async def test_payload_that_is_not_an_envelope_is_refused(
    tier: RedisTier, redis_prefix: str
) -> None:
    with pytest.raises(ValueError, match="envelope"):
        await tier.set_many([(f"{redis_prefix}:n", b"plain bytes", 60.0)])


# ------------------------------------------------------------------ degraded operation


async def test_tier_without_a_server_starts_and_serves_misses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    seen = Recorder()
    tier = RedisTier(
        f"redis://user:hunter2@127.0.0.1:{port}/0",
        timeout=0.2,
        logger=logging.getLogger(LOGGER),
        on_error=seen.on_error,
        on_recover=seen.on_recover,
    )
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    await tier.connect()
    try:
        assert not tier.available
        for i in range(50):
            assert await tier.get_many([f"k{i}", "k"]) == [(None, None), (None, None)]
        assert await tier.set_many([("k", env(1), 1.0)]) == [False]
        await tier.delete_many(["k"])
        assert await tier.publish("chan", b"m") == 0
        assert await tier.get_raw("k") is None
        assert await tier.set_raw("k", b"v", 1.0) is False
        assert await tier.get_generation("g", "q:", "d") == (0, None)
        with pytest.raises(TierUnavailableError):
            await tier.incr("k")
        assert not await tier.ping()
    finally:
        await tier.close()

    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert f"L2 Redis unavailable at 127.0.0.1:{port}" in warnings[0].getMessage()
    assert "hunter2" not in caplog.text
    assert len(seen.errors) == 56  # 50 reads and one of each other degraded call
    assert all(isinstance(e, TierUnavailableError) for e in seen.errors)
    assert seen.recoveries == 0


async def test_unresponsive_server_times_out_into_misses(redis_url: str, redis_prefix: str) -> None:
    seen = Recorder()
    async with FaultProxy.for_url(redis_url) as proxy:
        tier = RedisTier(proxy.url_for(redis_url), timeout=0.2, on_error=seen.on_error)
        await tier.connect()
        try:
            key = f"{redis_prefix}:slow"
            assert await tier.set_many([(key, env(1), 60.0)]) == [True]
            proxy.blackhole()

            assert await tier.get_many([key]) == [(None, None)]
            assert await tier.set_many([(key, env(2), 60.0)]) == [False]
            assert not tier.available
            assert len(seen.errors) == 2
        finally:
            await proxy.restore()
            await tier.close()


async def test_tier_recovers_by_itself_after_redis_restarts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = Recorder()
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with PrivateRedis() as server:
        tier = RedisTier(
            server.url,
            timeout=0.3,
            logger=logging.getLogger(LOGGER),
            on_error=seen.on_error,
            on_recover=seen.on_recover,
        )
        await tier.connect()
        try:
            assert await tier.set_many([("k", env(1), 60.0)]) == [True]
            assert tier.available

            await server.stop()
            for _ in range(20):
                assert await tier.get_many(["k"]) == [(None, None)]
                assert await tier.set_many([("k", env(2), 60.0)]) == [False]
            assert not tier.available
            assert seen.errors
            assert seen.recoveries == 0

            await server.start()  # same port, empty data, empty script cache
            await wait_until_available(tier, "k")
            assert await tier.set_many([("k", env(3), 60.0)]) == [True]
            assert (await tier.get_many(["k"]))[0][0] == env(3)
            await tier.get_many(["k"])
        finally:
            await tier.close()

    assert tier.available is False  # closed
    assert seen.recoveries == 1
    levels = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    assert [lvl for lvl, _ in levels] == [logging.WARNING, logging.INFO]
    assert "available again" in levels[1][1]


async def test_concurrent_calls_when_redis_dies_degrade_and_log_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = Recorder()
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with PrivateRedis() as server:
        tier = RedisTier(
            server.url, timeout=0.3, logger=logging.getLogger(LOGGER), on_error=seen.on_error
        )
        await tier.connect()
        try:
            await tier.set_many([(f"k{i}", env(1), 60.0) for i in range(100)])
            await asyncio.gather(*(tier.get_many([f"k{i}"]) for i in range(20)))  # warm pool
            await server.stop()

            reads = await asyncio.gather(*(tier.get_many([f"k{i}"]) for i in range(100)))
            writes = await asyncio.gather(
                *(tier.set_many([(f"k{i}", env(2), 60.0)]) for i in range(100))
            )
        finally:
            await tier.close()

    assert reads == [[(None, None)]] * 100
    assert writes == [[False]] * 100
    assert len(seen.errors) == 200
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [r.levelno for r in records] == [logging.WARNING]


async def test_ping_probes_and_restores_at_once() -> None:
    seen = Recorder()
    async with PrivateRedis() as server:
        tier = RedisTier(server.url, timeout=0.3, on_recover=seen.on_recover)
        await tier.connect()
        try:
            await server.stop()
            assert not await tier.ping()
            assert not tier.available
            await server.start()

            assert await tier.ping()  # no waiting for the backoff window
            assert tier.available
            assert await tier.ping()
        finally:
            await tier.close()
    assert seen.recoveries == 1


async def test_use_before_connect_is_a_lifecycle_error(redis_url: str) -> None:
    from strata.errors import LifecycleError

    tier = RedisTier(redis_url)
    with pytest.raises(LifecycleError):
        await tier.get_many(["k"])
    await tier.connect()
    await tier.close()
    with pytest.raises(LifecycleError):
        await tier.get_many(["k"])


async def test_a_payload_copied_under_another_key_is_a_miss_and_deleted(
    tier: RedisTier, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    source, target = f"{redis_prefix}:a", f"{redis_prefix}:b"
    await tier.set_many([(source, env(9), 60.0)])
    copied = await redis_client.get(source)
    assert copied is not None
    await redis_client.set(target, copied)

    assert await tier.get_many([target]) == [(None, None)]
    assert not await redis_client.exists(target)
    assert await tier.set_many([(target, env(1), 60.0)]) == [True]  # not "older than 9"
    assert (await tier.get_many([source, target]))[1][0] == env(1)

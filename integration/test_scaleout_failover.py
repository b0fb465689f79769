"""Redis Sentinel and Redis Cluster started by the fixtures: L2 and the bus follow a failover,
and no reader sees a value older than the last acknowledged write once it is over."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel
from redis.crc import key_slot

from integration._scaleout import RedisClusterSet, SentinelSet
from integration.procs import eventually
from integration.stacks import _cluster_url
from strata import Config, DataStore, Field, Schema
from strata.schema import MemPolicy, RedisPolicy
from strata.tiers.redis import RedisTier

KEYS = 40


class Counter(BaseModel):
    id: str = Field(primary_key=True)
    n: int = 0


COUNTERS = Schema(name="counters", model=Counter, l1=MemPolicy(ttl=60), l2=RedisPolicy(ttl=600))


@pytest.fixture(scope="session")
def sentinels() -> Iterator[SentinelSet]:
    with SentinelSet() as s:
        yield s


@pytest.fixture
def cluster(redis_cluster: list[RedisClusterSet]) -> RedisClusterSet:
    """The session's cluster, shared with the contract suite's cluster stack."""
    _cluster_url()
    return redis_cluster[0]


def _store(settings: dict[str, Any], redis_url: str) -> DataStore:
    ds = DataStore(Config(**{**settings, "redis_url": redis_url, "heartbeat_interval": 0.2}))
    ds.register(COUNTERS)
    return ds


async def _write_until(
    ds: DataStore, stop: asyncio.Event, acked: dict[str, int], failures: list[BaseException]
) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        key = f"k{n % KEYS}"
        try:
            await ds.set(Counter, Counter(id=key, n=n))
            acked[key] = n
        except Exception as exc:  # L3 is healthy: nothing may fail
            failures.append(exc)
        await asyncio.sleep(0)


def _l2_up(ds: DataStore) -> bool:
    l2 = ds._core.l2
    return l2 is not None and l2.available


def _cleaned_up(ds: DataStore) -> bool:
    """No L2 clean-up pending after a recovery (what L2 held is dropped, or never lost)."""
    l2 = ds._core.l2
    coherence = ds._coherence
    return (
        isinstance(l2, RedisTier)
        and l2.available
        and not l2.possible_loss
        and not coherence._l2_missed_overflow
        and coherence.l2_repairs_pending == 0
    )


async def _heard_from(writer: DataStore, reader: DataStore) -> None:
    """Everything ``writer`` published so far has reached ``reader``: one more write goes
    out after it on the same channel, and the reader hears it (or what came before it)."""
    heard = reader.stats().invalidations_received
    await writer.set(Counter, Counter(id="fence", n=0))
    await eventually(lambda: reader.stats().invalidations_received > heard, timeout=15)


async def _failover_leaves_no_stale_read(
    settings: dict[str, Any], url: str, kill: Any, healthy: Any
) -> None:
    writer, reader = _store(settings, url), _store(settings, url)
    async with writer, reader:
        await writer.migrate()
        acked: dict[str, int] = {}
        failures: list[BaseException] = []
        stop = asyncio.Event()
        task = asyncio.ensure_future(_write_until(writer, stop, acked, failures))
        await eventually(lambda: len(acked) == KEYS, timeout=10)
        for i in range(KEYS):  # the reader caches every key before the fault
            await reader.get(Counter, f"k{i}")
        kill()
        await eventually(healthy, timeout=30, interval=0.1)
        # L2 works again within a few seconds: a write reaches Redis and is read from it.
        await eventually(lambda: _l2_up(writer), timeout=15)
        stop.set()
        await task
        assert failures == []
        await eventually(lambda: _l2_up(reader), timeout=15)
        bus = reader._core.bus
        await eventually(lambda: bus is not None and bus.connected, timeout=15)
        # The failover is over once the writer's L2 clean-up after it has succeeded, and its
        # invalidations have reached the reader.
        await eventually(lambda: _cleaned_up(writer), timeout=15, interval=0.05)
        await _heard_from(writer, reader)
        stale = []
        for key, n in acked.items():
            got = await reader.get(Counter, key)
            if got.n != n:
                stale.append((key, got.n, n))
        assert stale == []


async def test_sentinel_failover_under_load_leaves_no_stale_read(
    sentinels: SentinelSet, settings: dict[str, Any]
) -> None:
    old: list[int] = []
    await _failover_leaves_no_stale_read(
        settings,
        sentinels.url,
        lambda: old.append(sentinels.kill_master()),
        lambda: sentinels.failed_over(old[0]),
    )


# redis-py's cluster client may leave a socket to the killed node for the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_cluster_master_killed_under_load_leaves_no_stale_read(
    cluster: RedisClusterSet, settings: dict[str, Any]
) -> None:
    port = cluster.master_port_of_slot(_slot_of(settings))
    try:
        await _failover_leaves_no_stale_read(
            settings, cluster.url, lambda: cluster.kill(port), lambda: cluster.failed_over(port)
        )
    finally:
        cluster.restart(port)  # as a replica: the session's next kill fails over too
    gc.collect()  # collect what redis-py left behind here, under this test's filter


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_idle_writer_repairs_its_failed_write_once_the_cluster_failed_over(
    cluster: RedisClusterSet, settings: dict[str, Any]
) -> None:
    # The writer's L2 step fails on the killed master and nothing calls the writer again:
    # it must find the promoted master by itself and drop what Redis may still hold.
    port = cluster.master_port_of_slot(_slot_of(settings))
    writer, reader = _store(settings, cluster.url), _store(settings, cluster.url)
    try:
        async with writer, reader:
            await writer.migrate()
            await writer.set(Counter, Counter(id="k", n=1))
            assert (await reader.get(Counter, "k")).n == 1  # cached by the reader
            cluster.kill(port)
            await writer.set(Counter, Counter(id="k", n=2))  # acknowledged, L2 step failed
            assert not _l2_up(writer)
            await eventually(lambda: cluster.failed_over(port), timeout=30, interval=0.1)
            await eventually(lambda: _cleaned_up(writer), timeout=15, interval=0.05)
            bus = reader._core.bus
            await eventually(lambda: bus is not None and bus.connected, timeout=15)
            assert (await reader.get(Counter, "k")).n == 2
    finally:
        cluster.restart(port)
    gc.collect()


def _slot_of(settings: dict[str, Any]) -> int:
    """The cluster slot of the test schema's keys (they share one hash tag)."""
    return key_slot(f"{{{settings['key_prefix']}:counters}}".encode())


async def test_sentinel_url_reads_and_writes_through_the_master(
    sentinels: SentinelSet, settings: dict[str, Any]
) -> None:
    a, b = _store(settings, sentinels.url), _store(settings, sentinels.url)
    async with a, b:
        await a.migrate()
        await a.set(Counter, Counter(id="x", n=1))
        assert (await b.get(Counter, "x")).n == 1
        await b.set(Counter, Counter(id="x", n=2))
        await eventually(lambda: a.stats().invalidations_received >= 1)
        assert (await a.get(Counter, "x")).n == 2

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
        # The failover is over once the writer's L2 clean-up after it has succeeded.
        await eventually(lambda: _cleaned_up(writer), timeout=15, interval=0.05)
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
@pytest.mark.xfail(
    reason="open: after the failover the writer's L2 circuit stays open (available False, "
    "possible_loss True, one key left to repair): its probe keeps failing with a connection "
    "error to the killed master. Fails every run with test_tx.py::test_for_update_keeps_200_"
    "concurrent_transfers_consistent[l1+cluster+pg] run first in the same process, passes "
    "alone; the probe (the deletes of unwritten keys, then the call) is not yet diagnosed",
    strict=False,
)
async def test_cluster_master_killed_under_load_leaves_no_stale_read(
    cluster: RedisClusterSet, settings: dict[str, Any]
) -> None:
    slot = key_slot(f"{{{settings['key_prefix']}:counters}}".encode())
    await _failover_leaves_no_stale_read(
        settings,
        cluster.url,
        lambda: cluster.kill(cluster.master_port_of_slot(slot)),
        cluster.healthy,
    )
    gc.collect()  # collect what redis-py left behind here, under this test's filter


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

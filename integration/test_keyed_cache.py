"""The keyed cache on real servers: every method on memory only, memory + Redis and
memory + Redis + PostgreSQL; single flight, counters, locks and rate limits across
processes; coherence of other processes' memory; the size rules for cache values and rows."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from integration.procs import REPO, eventually
from integration.procs.models import ITEMS, Item
from strata import Config, Cost, DataStore
from strata.errors import LockTimeoutError, ValueTooLargeError

STACKS = ["memory", "memory+redis", "memory+redis+pg"]


@pytest.fixture(params=STACKS)
async def store(
    request: pytest.FixtureRequest, settings: dict[str, Any]
) -> AsyncIterator[DataStore]:
    cfg = dict(settings)
    if request.param == "memory":
        cfg.pop("redis_url")
        cfg.pop("invalidation_channel")
    ds = DataStore(Config(**cfg))
    async with ds:
        if request.param.endswith("pg"):
            await ds.migrate()
        else:
            ds.cache.durable = None  # no durable tier on this stack
        yield ds


COST = {"memory": Cost.CHEAP, "memory+redis": Cost.MODERATE, "memory+redis+pg": Cost.EXPENSIVE}


async def test_set_get_delete_on_every_stack(store: DataStore) -> None:
    ns = store.cache.namespace("users", version="v2")
    await ns.set(["42", "profile"], {"name": "ann"}, ttl=60, cost=Cost.EXPENSIVE)
    store.cache.clear_memory()  # read from the slowest tier the stack has (memory: gone)
    expected = None if store.cache.tier is None else {"name": "ann"}
    assert await ns.get(["42", "profile"]) == expected
    await ns.set("k", 1, cost=Cost.EXPENSIVE)
    await ns.delete("k")
    store.cache.clear_memory()
    assert await ns.get("k") is None


async def test_get_many_set_many_add_pull_on_every_stack(store: DataStore) -> None:
    ns = store.cache.namespace("m")
    await ns.set_many({"a": 1, "b": 2}, ttl=60)
    assert await ns.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}
    assert await ns.add("c", 3) is True
    assert await ns.add("c", 4) is False
    assert await ns.pull("c") == 3
    assert await ns.get("c") is None
    await ns.delete_many(["a", "b"])
    assert await ns.get_many(["a", "b"]) == {}


async def test_remember_and_invalidate_on_every_stack(store: DataStore) -> None:
    ns = store.cache.namespace("r")
    calls = 0

    async def loader() -> int:
        nonlocal calls
        calls += 1
        return calls

    assert await ns.remember(["x", "1"], loader, ttl=60, cost=Cost.EXPENSIVE) == 1
    assert await ns.remember(["x", "1"], loader, ttl=60, cost=Cost.EXPENSIVE) == 1
    await ns.invalidate(["x", "*"])
    assert await ns.remember(["x", "1"], loader, ttl=60, cost=Cost.EXPENSIVE) == 2


async def test_counters_locks_and_rate_limits_on_every_stack(store: DataStore) -> None:
    ns = store.cache.namespace("c")
    assert [await ns.incr("n"), await ns.incr("n", by=4), await ns.decr("n")] == [1, 5, 4]
    async with ns.lock("job", ttl=5, wait=1):
        with pytest.raises(LockTimeoutError):
            await ns.lock("job", ttl=5, wait=0.05).acquire()
    decisions = [await ns.rate_limit("login", 3, 60) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]


class Clock:
    def __init__(self) -> None:
        self.now = 2_000_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_negative_ttl_on_every_stack(store: DataStore) -> None:
    clock = store.cache.clock = Clock()
    calls = 0

    async def loader() -> None:
        nonlocal calls
        calls += 1

    for _ in range(3):
        assert await store.cache.remember("n", loader, ttl=60, negative_ttl=5) is None
    assert calls == 1
    clock.now += 6
    await store.cache.remember("n", loader, ttl=60, negative_ttl=5)
    assert calls == 2


async def test_stale_value_served_and_refreshed_once_on_every_stack(store: DataStore) -> None:
    clock = store.cache.clock = Clock()
    version = 0
    refreshed = asyncio.Event()

    async def loader() -> int:
        nonlocal version
        version += 1
        if version == 2:
            refreshed.set()
        return version

    await store.cache.remember("s", loader, ttl=10, stale_ttl=60)
    clock.now += 11
    stale = await asyncio.gather(
        *(store.cache.remember("s", loader, ttl=10, stale_ttl=60) for _ in range(10))
    )
    assert stale == [1] * 10
    await refreshed.wait()
    assert await eventually(lambda: _value_via_remember(store, loader))
    assert version == 2  # one refresh for ten stale reads


async def _value_via_remember(store: DataStore, loader: Any) -> bool:
    return bool(await store.cache.remember("s", loader, ttl=10, stale_ttl=60) == 2)


async def test_durable_values_are_read_back_after_redis_lost_them(
    settings: dict[str, Any], redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    async with DataStore(Config(**settings)) as ds:
        await ds.migrate()
        await ds.cache.set("report", {"t": 1}, ttl=600, cost=Cost.EXPENSIVE)
        keys = [k async for k in redis_client.scan_iter(match=f"{{{redis_prefix}:cache}}:d:*")]
        assert keys
        await redis_client.delete(*keys)
        ds.cache.clear_memory()
        assert await ds.cache.get("report") == {"t": 1}
        assert ds.stats().cache_l3_hits == 1
        assert await redis_client.exists(*keys) == 1  # promoted back into Redis


async def test_every_redis_key_of_a_namespace_shares_one_hash_tag(
    settings: dict[str, Any], redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    async with DataStore(Config(**settings)) as ds:
        ns = ds.cache.namespace("users", version="v2")
        await ns.set("a", 1)
        await ns.incr("n")
        await ns.rate_limit("r", 5, 60)
        await ns.invalidate(["x", "*"])
        async with ns.lock("l", ttl=5):
            keys = [k.decode() async for k in redis_client.scan_iter(match=f"*{redis_prefix}*")]
    tagged = [k for k in keys if k.startswith("{")]
    assert len(tagged) >= 5
    assert {k.split("}")[0] for k in tagged} == {f"{{{redis_prefix}:cache:users"}


async def test_a_cache_value_over_max_value_bytes_is_refused_and_not_in_redis(
    settings: dict[str, Any], redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    async with DataStore(Config(**settings, max_value_bytes=10_000)) as ds:
        await ds.migrate()
        with pytest.raises(ValueTooLargeError):
            await ds.cache.set("big", os.urandom(20_000), cost=Cost.EXPENSIVE)
        assert [k async for k in redis_client.scan_iter(match=f"*{redis_prefix}:cache*")] == []
        assert await ds.cache.get("big") is None


async def test_a_row_over_max_value_bytes_is_refused_and_written_nowhere(
    settings: dict[str, Any], redis_client: aioredis.Redis, pg_conn: asyncpg.Connection
) -> None:
    async with DataStore(Config(**settings, max_value_bytes=10_000)) as ds:
        ds.register(ITEMS)
        await ds.migrate()
        big = Item(id="big", name=os.urandom(20_000).hex())
        with pytest.raises(ValueTooLargeError):
            await ds.set(Item, big)
        assert await pg_conn.fetchval("SELECT count(*) FROM items") == 0
        assert await redis_client.exists(ds._core.routes["items"].b.key("big")) == 0


async def test_a_compressible_1mb_row_is_stored_compressed_in_redis_and_reads_back(
    settings: dict[str, Any], redis_client: aioredis.Redis
) -> None:
    value = Item(id="doc", name="lorem ipsum dolor sit amet " * 40_000)  # ~1 MB
    async with DataStore(Config(**settings)) as ds, DataStore(Config(**settings)) as other:
        for s in (ds, other):
            s.register(ITEMS)
        await ds.migrate()
        await ds.set(Item, value)
        stored = await redis_client.get(ds._core.routes["items"].b.key("doc"))
        assert stored is not None and len(stored) < 100_000
        assert stored[18:19] == b"Z"
        assert await other.get(Item, "doc") == value
        assert other.stats().l2_hits == 1


# ------------------------------------------------------------------ across processes


class CachePeer:
    def __init__(self, settings: dict[str, Any], scenario: str, n: int) -> None:
        self.args = [json.dumps(settings), scenario, str(n)]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> dict[str, Any]:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "integration.procs.cache_peer",
            *self.args,
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return await self.read()

    async def read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        assert line, "cache peer exited early"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def go(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")

    async def result(self) -> Any:
        reply = await self.read()
        assert self.proc is not None
        await asyncio.wait_for(self.proc.wait(), 60)
        return reply["result"]


async def _run_together(settings: dict[str, Any], scenario: str, n: int, procs: int) -> list[Any]:
    peers = [CachePeer(settings, scenario, n) for _ in range(procs)]
    try:
        await asyncio.gather(*(p.start() for p in peers))
        for p in peers:
            p.go()
        return list(await asyncio.gather(*(p.result() for p in peers)))
    finally:
        for p in peers:
            if p.proc is not None and p.proc.returncode is None:
                p.proc.kill()
                await p.proc.wait()


async def test_50_concurrent_remember_calls_in_one_process_run_the_loader_once(
    settings: dict[str, Any], redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    (values,) = await _run_together(settings, "remember", 50, 1)
    assert len(values) == 50 and len({json.dumps(v) for v in values}) == 1
    assert int(await redis_client.get(f"{redis_prefix}:loads")) == 1


async def test_remember_across_two_processes_started_together_runs_the_loader_once(
    settings: dict[str, Any], redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    first, second = await _run_together(settings, "remember", 25, 2)
    assert first[0] == second[0]  # both processes got the one loader's value
    assert int(await redis_client.get(f"{redis_prefix}:loads")) == 1


async def test_20_stores_in_4_processes_reading_one_cold_row_cost_one_l3_query(
    settings: dict[str, Any],
) -> None:
    async with DataStore(Config(**settings)) as ds:
        ds.register(ITEMS)
        await ds.migrate()
        await ds.set(Item, Item(id="cold", name="c"))
        await ds.invalidate(Item, "cold")  # in PostgreSQL only: cold in every cache
    queries = await _run_together(settings, "get_row", 5, 4)
    assert sum(queries) == 1


async def test_200_increments_from_two_processes_are_exact(
    settings: dict[str, Any],
) -> None:
    await _run_together(settings, "incr", 100, 2)
    async with DataStore(Config(**settings)) as ds:
        assert await ds.cache.get("hits") == 200


async def test_rate_limit_is_exact_across_two_processes(settings: dict[str, Any]) -> None:
    allowed = await _run_together(settings, "rate", 50, 2)
    assert sum(allowed) == 30


async def test_lock_excludes_across_two_processes_over_many_rounds(
    settings: dict[str, Any], redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    await _run_together(settings, "lock", 40, 2)
    assert int(await redis_client.get(f"{redis_prefix}:counter")) == 80


async def test_wildcard_invalidation_reaches_another_process_memory(
    settings: dict[str, Any],
) -> None:
    async with DataStore(Config(**settings)) as ds:
        users = ds.cache.namespace("users")
        await users.set(["42", "profile"], {"name": "ann"})
        peer = CachePeer(settings, "watch", 1)
        try:
            assert await peer.start() == {"seen": {"name": "ann"}}  # now in its memory
            await peer.read()  # ready
            await users.invalidate(["42", "*"])
            peer.go()
            assert await asyncio.wait_for(peer.result(), 10) == "gone"
        finally:
            if peer.proc is not None and peer.proc.returncode is None:
                peer.proc.kill()
                await peer.proc.wait()


async def test_a_set_in_one_instance_drops_the_value_from_another_instance_memory(
    settings: dict[str, Any],
) -> None:
    async with DataStore(Config(**settings)) as a, DataStore(Config(**settings)) as b:
        await a.cache.set("k", 1)
        mem_key = ("{" + settings["key_prefix"] + ":cache}", "k")

        async def in_b_memory() -> bool:
            await b.cache.get("k")
            return b.cache.memory.get(mem_key, ("",)) is not None

        await eventually(in_b_memory)
        await a.cache.set("k", 2)
        assert await eventually(lambda: _value(b, "k", 2))


async def _value(ds: DataStore, key: str, expected: Any) -> bool:
    return bool(await ds.cache.get(key) == expected)


async def test_with_redis_unreachable_reads_miss_writes_drop_and_locks_refuse(
    settings: dict[str, Any],
) -> None:
    import socket

    from strata.errors import TierUnavailableError

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = dict(settings, redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout=0.2)
    async with DataStore(Config(**cfg)) as ds:
        await ds.cache.set("k", 1)  # not an error: the memory copy serves this instance
        assert await ds.cache.get("k") == 1
        ds.cache.clear_memory()
        assert await ds.cache.get("k") is None
        calls = 0

        async def loader() -> int:
            nonlocal calls
            calls += 1
            return 7

        assert await ds.cache.remember("r", loader, ttl=60) == 7
        assert calls == 1
        with pytest.raises(TierUnavailableError):
            async with ds.cache.lock("job", ttl=5, wait=0):
                pass
        assert ds.stats().errors > 0

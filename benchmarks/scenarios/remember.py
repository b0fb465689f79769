"""remember, hit: ``ns.remember(key, loader, ttl=60)`` on a cached key, against cashews
``@cache`` and aiocache ``@cached`` over the same kind of value (a 10-field dict), in
memory and in Redis (Strata with its memory tier held to zero seconds, so every call is a
Redis hit; cashews ``redis://`` and aiocache ``Cache.REDIS`` likewise go to Redis).

Strata also pays for single flight, negative/stale bookkeeping and a private copy of the
value per caller (the memory tier holds bytes; each hit decodes them), which the others do
not: cashews and aiocache hand out the cached object itself in memory.
"""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import urlsplit

from aiocache import Cache as AioCache
from aiocache import cached as aio_cached
from cashews import Cache as Cashews

from benchmarks.harness import Check, Env, Impl, alternate, latency_check, le, run_scenario
from strata import DataStore

KEYS = 500


def _value(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "name": f"user {i}",
        "email": f"user{i}@example.com",
        "level": i % 70,
        "score": i * 1.5,
        "active": True,
        "tags": ["a", "b", "c"],
        "region": "eu-west",
        "plan": "pro",
        "note": "x" * 40,
    }


async def run(env: Env) -> list[Check]:
    return [await _variant(env, "memory"), await _variant(env, "redis")]


async def _variant(env: Env, where: str) -> Check:
    ops = env.size(3_000, 500) if where == "memory" else env.size(600, 200)
    rounds = env.size(15, 5)
    seq = [random.Random(7).randrange(KEYS) for _ in range(ops)]

    async def upstream(i: int) -> dict[str, Any]:
        return _value(i)

    cashews = Cashews()
    if where == "memory":
        cashews.setup("mem://", size=KEYS * 2)
        config = env.config(redis_url=None, invalidation_channel="strata:invalidation")
        aio_kw: dict[str, Any] = {"cache": AioCache.MEMORY}
    else:
        cashews.setup(env.redis_url)
        config = env.config(cache_l1_ttl=0)
        url = urlsplit(env.redis_url)
        aio_kw = {
            "cache": AioCache.REDIS,
            "endpoint": url.hostname or "127.0.0.1",
            "port": url.port or 6379,
            "namespace": env.key("aiocache"),
        }

    @cashews(ttl="1m", key=env.key("cashews", where) + ":u:{i}")
    async def cashews_load(i: int) -> dict[str, Any]:
        return await upstream(i)

    @aio_cached(ttl=60, key_builder=lambda f, i: f"u:{i}", **aio_kw)
    async def aio_load(i: int) -> dict[str, Any]:
        return await upstream(i)

    ds = DataStore(config)
    async with ds:
        ns = ds.cache.namespace("bench")
        keys = [f"u:{i}" for i in range(KEYS)]
        loaders = [(lambda i=i: upstream(i)) for i in range(KEYS)]

        @ds.cache.cached(ttl=60, key="u:{i}")
        async def strata_cached(i: int) -> dict[str, Any]:
            return await upstream(i)

        for i in range(KEYS):  # warm every cache: the timed calls are all hits
            await ns.remember(keys[i], loaders[i], ttl=60)
            await strata_cached(i)
            await cashews_load(i)
            await aio_load(i)

        async def strata() -> int:
            remember = ns.remember
            for i in seq:
                await remember(keys[i], loaders[i], ttl=60)
            return ops

        async def strata_decorator() -> int:
            for i in seq:
                await strata_cached(i)
            return ops

        async def cashews_hit() -> int:
            for i in seq:
                await cashews_load(i)
            return ops

        async def aiocache_hit() -> int:
            for i in seq:
                await aio_load(i)
            return ops

        cpu: dict[str, list[float]] = {}
        before = ds.stats()
        samples = await alternate(
            {
                "strata": Impl(strata),
                "strata @cached": Impl(strata_decorator),
                "cashews @cache": Impl(cashews_hit),
                "aiocache @cached": Impl(aiocache_hit),
            },
            rounds=rounds,
            cpu=cpu,
        )
        after = ds.stats()
    await cashews.close()
    loads = after.cache_loader_calls - before.cache_loader_calls
    tier = "l1" if where == "memory" else "l2"
    hits = getattr(after, f"cache_{tier}_hits") - getattr(before, f"cache_{tier}_hits")
    note = f"{hits} {tier} hits, {loads} loader calls in the timed rounds"
    return latency_check(
        "remember, hit",
        where,
        samples,
        against="cashews @cache",
        target=le(1.0),
        note=note,
        cpu=cpu,
    )


if __name__ == "__main__":
    run_scenario(run)

"""Keyed-cache and cold-get workloads in a child process, started together by a test.

    python -m integration.procs.cache_peer '<Config fields as JSON>' SCENARIO N

The process connects, prints ``{"ready": true}``, waits for one line on stdin (the start
signal, so every peer begins at once), runs SCENARIO and prints ``{"result": ...}``:

    remember   N concurrent remember("stampede") calls; the loader INCRs the Redis key
               "<prefix>:loads" and takes 200 ms (a slow upstream)          -> values
    get_row    N DataStores, each get(Item, "cold") at once                  -> L3 queries
    incr       N concurrent incr("hits")                                      -> last value
    rate       N concurrent rate_limit("login", 30, 60)                      -> allowed
    lock       N rounds of: lock("job"); read, pause, write "<prefix>:counter" -> None
    watch      get("users:42:profile") until it is None (after a wildcard invalidation
               elsewhere); prints {"seen": value} once it has the value in memory
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import redis.asyncio as aioredis

from integration.procs.models import ITEMS, Item
from strata import Config, DataStore


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _wait_for_start() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def main(settings: dict[str, Any], scenario: str, n: int) -> None:
    cfg = Config(**settings)
    raw = aioredis.Redis.from_url(settings["redis_url"])
    prefix = settings["key_prefix"]
    count = n if scenario == "get_row" else 1
    stores = [DataStore(cfg.with_(instance_id=f"{cfg.instance_id}-{i}")) for i in range(count)]
    for ds in stores:
        ds.register(ITEMS)
        await ds.connect()
    ds = stores[0]
    try:
        if scenario == "watch":
            users = ds.cache.namespace("users")
            while await users.get(["42", "profile"]) is None:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            _say({"seen": await users.get(["42", "profile"])})
        _say({"ready": True})
        await _wait_for_start()
        result: Any = None
        if scenario == "remember":

            async def loader() -> dict[str, str]:
                await raw.incr(f"{prefix}:loads")
                await asyncio.sleep(0.2)
                return {"from": cfg.instance_id}

            result = await asyncio.gather(
                *(ds.cache.remember("stampede", loader, ttl=60) for _ in range(n))
            )
        elif scenario == "get_row":
            before = sum(s.stats().l3_queries for s in stores)
            await asyncio.gather(*(s.get(Item, "cold") for s in stores))
            result = sum(s.stats().l3_queries for s in stores) - before
        elif scenario == "incr":
            values = await asyncio.gather(*(ds.cache.incr("hits") for _ in range(n)))
            result = max(values)
        elif scenario == "rate":
            decisions = await asyncio.gather(
                *(ds.cache.rate_limit("login", 30, 60) for _ in range(n))
            )
            result = sum(d.allowed for d in decisions)
        elif scenario == "lock":
            for _ in range(n):
                async with ds.cache.lock("job", ttl=10, wait=30):
                    value = int(await raw.get(f"{prefix}:counter") or 0)
                    await asyncio.sleep(0.001)  # widen the race a missing lock would lose
                    await raw.set(f"{prefix}:counter", value + 1)
        elif scenario == "watch":
            users = ds.cache.namespace("users")
            while await users.get(["42", "profile"]) is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            result = "gone"
        _say({"result": result})
    finally:
        for s in stores:
            await s.close()
        await raw.aclose()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])))

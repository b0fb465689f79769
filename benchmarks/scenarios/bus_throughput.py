"""Invalidations applied per instance: how fast one DataStore drains a burst of other
instances' invalidations (each dropping an L1 entry), against a bare redis.asyncio
subscriber loop (``async for m in pubsub.listen(): orjson.loads(m["data"])``) draining the
same burst in the same process.

    Redis (one EVAL)                      this process
    PUBLISH x N on the channel ──────►   strata: the DataStore's bus task applies each
    (messages generated server-side,      message (foreign origin, same prefix): L1 delete
     so the client pays nothing for       raw: a plain subscriber task decodes each
     publishing)
    rate = N / (last applied - EVAL sent)

Messages are single-key ``set`` invalidations as a write-through ``set`` on another
instance publishes them. Rounds alternate between Strata and the raw loop. With
``--instances 8`` (the ``8 instances`` variant) eight child processes each hold one store
(or one raw subscriber) and all receive every burst: the rate is per instance.
"""

from __future__ import annotations

import asyncio
import time

import orjson

from benchmarks import models
from benchmarks.harness import (
    Check,
    Env,
    ge,
    median,
    open_store,
    run_scenario,
)
from strata.invalidation import Invalidation

RAW = "redis-py subscriber loop + orjson"
BURST = """
local template = ARGV[1]
for i = 1, tonumber(ARGV[2]) do
  redis.call('PUBLISH', KEYS[1], string.format(template, i, i))
end
return 1
"""


def _template(env: Env) -> str:
    """The JSON a write of id i (version i) on another instance publishes, as a Lua
    format string."""
    msg = Invalidation(
        schema="ref", op="set", origin="bench-other", id="ID", version=7, prefix=env.name
    )
    text = msg.encode().decode()
    return text.replace('"ID"', '"%d"').replace('"version":7', '"version":%d')


async def _burst(client: object, channel: str, template: str, n: int) -> float:
    start = time.perf_counter()
    await client.eval(BURST, 1, channel, template, n)  # type: ignore[attr-defined]
    return start


async def _strata_round(env: Env, ds: object, client: object, template: str, n: int) -> float:
    stats = ds.stats  # type: ignore[attr-defined]
    before = stats().invalidations_received
    start = await _burst(client, env.channel, template, n)
    while stats().invalidations_received - before < n:  # noqa: ASYNC110
        await asyncio.sleep(0.0005)
    return n / (time.perf_counter() - start)


async def _raw_round(env: Env, client: object, template: str, n: int, state: dict) -> float:
    state["count"] = 0
    state["target"] = n
    state["done"] = done = asyncio.Event()
    start = await _burst(client, env.key("raw-bus"), template, n)
    await done.wait()
    return n / (time.perf_counter() - start)


async def _raw_listener(env: Env, state: dict) -> tuple[object, asyncio.Task[None]]:
    client = env.redis()
    pubsub = client.pubsub()
    await pubsub.subscribe(env.key("raw-bus"))
    while (await pubsub.get_message(timeout=1.0)) is None:
        pass

    async def listen() -> None:
        loads = orjson.loads
        async for message in pubsub.listen():
            if message["type"] == "message":
                loads(message["data"])
                state["count"] += 1
                if state["count"] >= state["target"]:
                    state["done"].set()

    return client, asyncio.create_task(listen())


async def run(env: Env) -> list[Check]:
    n = env.size(20_000, 3_000)
    rounds = env.size(7, 3)
    rates: dict[str, list[float]] = {"strata": [], RAW: []}
    state: dict = {"count": 0, "target": 0, "done": asyncio.Event()}
    async with open_store(env, models.schema("ref")) as ds:
        await ds.set_many(models.Ref, [models.Ref(id=str(i), name="x", level=1) for i in range(n)])
        template = _template(env)
        client = env.redis()
        raw_client, listener = await _raw_listener(env, state)
        try:
            for r in range(rounds + 1):
                order = ("strata", RAW) if r % 2 == 0 else (RAW, "strata")
                for name in order:
                    await asyncio.sleep(0.05)
                    if name == "strata":
                        rate = await _strata_round(env, ds, client, template, n)
                    else:
                        rate = await _raw_round(env, client, template, n, state)
                    if r:  # round 0 warms up
                        rates[name].append(rate)
        finally:
            listener.cancel()
            await client.aclose()  # type: ignore[attr-defined]
            await raw_client.aclose()  # type: ignore[attr-defined]
    strata, raw = median(rates["strata"]), median(rates[RAW])
    return [
        Check(
            scenario="invalidations applied per instance",
            variant=f"1 instance, bursts of {n}",
            unit="msg/s",
            strata=strata,
            baselines={RAW: raw},
            against=RAW,
            target=ge(1.0),
            note=f"Strata {strata:,.0f} msg/s (issue 15: ≥ 20,000)",
        )
    ]


if __name__ == "__main__":
    run_scenario(run)

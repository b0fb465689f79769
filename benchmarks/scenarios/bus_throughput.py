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
the ``8 instances`` variant, eight child processes each hold one store (and eight more one
raw subscriber each); a burst reaches all of one kind at once: the rate is per instance.
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson

from benchmarks import models
from benchmarks.harness import (
    Check,
    Env,
    bench_env,
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
    checks = [_check(rates, f"1 instance, bursts of {n}")]
    checks.append(await _instances(env, env.size(8, 2), env.size(10_000, 2_000), rounds))
    return checks


def _check(rates: dict[str, list[float]], variant: str) -> Check:
    strata, raw = median(rates["strata"]), median(rates[RAW])
    return Check(
        scenario="invalidations applied per instance",
        variant=variant,
        unit="msg/s",
        strata=strata,
        baselines={RAW: raw},
        against=RAW,
        target=ge(1.0),
        note=f"Strata {strata:,.0f} msg/s per instance (issue 15: ≥ 20,000)",
    )


async def _instances(env: Env, count: int, n: int, rounds: int) -> Check:
    """``count`` child processes of each kind, all subscribed; a burst reaches all of one
    kind at once. Rate per instance: n / (when that child had them all - EVAL sent)."""
    rates: dict[str, list[float]] = {"strata": [], RAW: []}
    kinds = {"strata": env.channel, RAW: env.key("raw-bus")}
    children: dict[str, list[asyncio.subprocess.Process]] = {k: [] for k in kinds}
    client = env.redis()
    try:
        for kind in kinds:
            for _ in range(count):
                child = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "benchmarks.scenarios.bus_throughput",
                    "--child",
                    "strata" if kind == "strata" else "raw",
                    env.name,
                    str(n),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
                children[kind].append(child)
        for procs in children.values():
            for child in procs:
                assert child.stdout is not None
                line = await asyncio.wait_for(child.stdout.readline(), 60)
                if line.strip() != b"ready":
                    raise RuntimeError(f"bus child did not start: {line!r}")
        template = _template(env)
        for r in range(rounds + 1):
            for kind in ("strata", RAW) if r % 2 == 0 else (RAW, "strata"):
                await asyncio.sleep(0.2)
                start = time.monotonic()
                await client.eval(BURST, 1, kinds[kind], template, n)
                for child in children[kind]:
                    assert child.stdout is not None
                    done = float(await asyncio.wait_for(child.stdout.readline(), 120))
                    if r:
                        rates[kind].append(n / (done - start))
    finally:
        for procs in children.values():
            for child in procs:
                if child.stdin is not None:
                    child.stdin.close()
                try:
                    await asyncio.wait_for(child.wait(), 30)
                except TimeoutError:
                    child.kill()
                    await child.wait()
        await client.aclose()
    return _check(rates, f"{count} instances (processes), bursts of {n}")


async def _child(kind: str, name: str, n: int) -> None:
    """One subscribing instance: prints "ready", then the monotonic time at which each
    burst of ``n`` messages had all arrived; ends when stdin closes."""
    out = sys.stdout
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    async with bench_env(False, name, own=False) as env:
        if kind == "raw":
            state: dict = {"count": 0, "target": n, "done": asyncio.Event()}
            client, listener = await _raw_listener(env, state)
            out.write("ready\n")
            out.flush()
            closed = asyncio.create_task(stdin.read())
            while True:
                waiter = asyncio.create_task(state["done"].wait())
                await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
                if closed.done():
                    waiter.cancel()
                    break
                out.write(f"{time.monotonic()}\n")
                out.flush()
                state["count"] = 0
                state["done"] = asyncio.Event()
            listener.cancel()
            await client.aclose()  # type: ignore[attr-defined]
            return
        async with open_store(env, models.schema("ref"), create=False) as ds:
            out.write("ready\n")
            out.flush()
            closed = asyncio.create_task(stdin.read())
            seen = 0
            while not closed.done():
                got = ds.stats().invalidations_received
                if got - seen >= n:
                    seen += n
                    out.write(f"{time.monotonic()}\n")
                    out.flush()
                await asyncio.sleep(0.0005)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        asyncio.run(_child(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    else:
        run_scenario(run)

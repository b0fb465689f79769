"""Invalidation lag: from a write in process A (``ds.set`` has returned) to the moment
process B, another instance on the same servers, serves the new value.

    A (this process)                         B (child process, --reader)
    set(level=i) ─ returns at t_A ──►        loop: get() (an L1 hit until the message
                                                    lands and drops the entry, then an L2
                                                    hit that refills L1); yields each turn
                                             level == i at t_B ─► prints "s i t_B"
    lag = t_B - t_A (CLOCK_MONOTONIC, shared by both processes)

Baseline in the same run: a raw redis.asyncio PUBLISH from A to a plain subscriber task in
B (the same busy B), timed from the PUBLISH call, i.e. what pub/sub delivery alone costs.
It is shown beside Strata's number, not divided into it: the target is absolute. Blocks of
Strata writes and raw publishes alternate.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time

from benchmarks import models
from benchmarks.harness import (
    Check,
    Env,
    Target,
    bench_env,
    median,
    open_store,
    percentile,
    run_scenario,
)

KEY = "lag"
RAW = "raw PUBLISH call → subscriber"
BLOCK = 25


def _value(level: int) -> models.Ref:
    return models.Ref(id=KEY, name="lag probe", level=level)


async def run(env: Env) -> list[Check]:
    n = env.size(300, 50)
    blocks = max(1, n // BLOCK)
    n = blocks * BLOCK
    lags: dict[str, list[float]] = {"strata": [], RAW: []}
    dropped: list[float] = []  # until B's L1 entry was gone
    raw_channel = env.key("raw-lag")
    rng = random.Random(3)
    async with open_store(env, models.schema("ref")) as ds:
        await ds.set(models.Ref, _value(0))
        client = env.redis()
        args = ["--reader", env.name, raw_channel] + (["--durable"] if env.durable else [])
        reader = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.scenarios.invalidation",
            *args,
            stdout=asyncio.subprocess.PIPE,
        )
        assert reader.stdout is not None
        try:
            line = await asyncio.wait_for(reader.stdout.readline(), 60)
            if line.strip() != b"ready":
                raise RuntimeError(f"reader did not start: {line!r}")
            level = 0
            for block in range(2 * blocks):
                strata = block % 2 == 0
                for _ in range(BLOCK):
                    level += 1
                    await asyncio.sleep(rng.uniform(0.002, 0.006))  # B is back on L1 hits
                    if strata:
                        await ds.set(models.Ref, _value(level))
                        done = time.monotonic_ns()
                    else:
                        # From the call: PUBLISH replies after it has handed the message on,
                        # so from its reply B may be ahead (a negative lag).
                        done = time.monotonic_ns()
                        await client.publish(raw_channel, str(level))
                    line = await asyncio.wait_for(reader.stdout.readline(), 10)
                    kind, seen, at, gone = line.split()
                    if int(seen) != level or kind != (b"s" if strata else b"r"):
                        raise RuntimeError(f"reader out of step at {level}: {line!r}")
                    lags["strata" if strata else RAW].append((int(at) - done) / 1e6)
                    if strata:
                        dropped.append((int(gone) - done) / 1e6)
            await ds.set(models.Ref, _value(-1))  # tells the reader to stop
            await asyncio.wait_for(reader.wait(), 30)
        finally:
            if reader.returncode is None:
                reader.kill()
                await reader.wait()
            await client.aclose()

    checks = []
    for label, p, target in (
        ("p99", 99, Target("<=", 5.0, "absolute", "p99 ≤ 5 ms")),
        ("p50", 50, None),
    ):
        strata = percentile(lags["strata"], p) if p != 50 else median(lags["strata"])
        raw = percentile(lags[RAW], p) if p != 50 else median(lags[RAW])
        checks.append(
            Check(
                scenario=f"invalidation lag {label}",
                variant=f"ref, {len(lags['strata'])} writes",
                unit="ms",
                strata=strata,
                baselines={RAW: raw},
                target=target,
                note=(
                    f"B's L1 entry gone after {percentile(dropped, p):.2f} ms ({label}); "
                    "the rest is B's L2 read of the new value"
                ),
            )
        )
    return checks


async def _reader(name: str, raw_channel: str, durable: bool) -> None:
    """Process B: poll ``get`` and listen on the raw channel; report what changed, when."""
    out = sys.stdout
    async with (
        bench_env(False, name, own=False, durable=durable) as env,
        open_store(env, models.schema("ref"), create=False) as ds,
    ):
        client = env.redis()
        pubsub = client.pubsub()
        await pubsub.subscribe(raw_channel)
        while (await pubsub.get_message(timeout=1.0)) is None:
            pass  # the subscribe confirmation

        async def listen() -> None:
            async for message in pubsub.listen():
                if message["type"] == "message":
                    at = time.monotonic_ns()
                    out.write(f"r {int(message['data'])} {at} {at}\n")
                    out.flush()

        listener = asyncio.create_task(listen())
        last = (await ds.get(models.Ref, KEY)).level
        out.write("ready\n")
        out.flush()
        get = ds.get
        sleep = asyncio.sleep
        clock = time.monotonic_ns
        while True:
            start = clock()
            level = (await get(models.Ref, KEY)).level
            if level != last:
                at = clock()
                if level < 0:
                    break
                # start: this get missed L1, so the entry was gone by then (within one turn)
                out.write(f"s {level} {at} {start}\n")
                out.flush()
                last = level
            await sleep(0)
        listener.cancel()
        await pubsub.aclose()
        await client.aclose()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--reader":
        asyncio.run(_reader(sys.argv[2], sys.argv[3], "--durable" in sys.argv))
    else:
        run_scenario(run)

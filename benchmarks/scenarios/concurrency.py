"""Concurrency: 64 tasks on one event loop, 90% ``get`` / 10% ``set`` over 10,000 keys whose
popularity follows a Zipf law (s = 1.1), on the full stack (L1+L2+PG, write-through).
Reports throughput (ops/s) and the p99 latency of one operation.

Baseline in the same run: the cache-aside code people write by hand with the same servers:
a dict in front of Redis in front of PostgreSQL (asyncpg pool of the same size); a write
upserts, SETs the JSON, PUBLISHes an invalidation and replaces the dict entry. It does less
than Strata (no versions, no coherence between instances, no bounds on the dict), so it is
a reference, not a target.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
import time
from datetime import UTC, datetime

import orjson

from benchmarks import models
from benchmarks.harness import (
    Check,
    Env,
    Impl,
    alternate,
    open_store,
    per_second,
    percentile,
    rel_iqr,
    run_scenario,
    select_sql,
    twin_table,
    upsert_sql,
)

KEYS = 10_000
TASKS = 64
READS = 0.9
ZIPF_S = 1.1
BASELINE = "hand-written cache-aside (dict → Redis → asyncpg)"


def _workload(per_task: int, seed: int) -> list[list[tuple[bool, int]]]:
    """Per task: (is_write, key index) pairs; key ranks drawn from Zipf(s) over KEYS, the
    ranks mapped onto keys by a fixed shuffle so that hot keys are spread over the table."""
    rng = random.Random(seed)
    weights = list(itertools.accumulate(1 / (r**ZIPF_S) for r in range(1, KEYS + 1)))
    total = weights[-1]
    order = list(range(KEYS))
    rng.shuffle(order)
    plan = []
    for _ in range(TASKS):
        ops = []
        for _ in range(per_task):
            rank = bisect.bisect_left(weights, rng.random() * total)
            ops.append((rng.random() >= READS, order[min(rank, KEYS - 1)]))
        plan.append(ops)
    return plan


async def run(env: Env) -> list[Check]:
    model = models.Ref
    columns = models.REF_COLUMNS
    per_task = env.size(150, 40)
    rounds = env.size(5, 2)
    plan = _workload(per_task, seed=5)
    ops = TASKS * per_task
    values = [models.make_ref(i) for i in range(KEYS)]
    writes = [v.model_copy(update={"level": v.level % 997 + 1}) for v in values]
    latencies: dict[str, list[float]] = {"strata": [], BASELINE: []}

    async with open_store(env, models.schema("ref", max_entries=KEYS)) as ds:
        await ds.set_many(model, values)
        twin = await twin_table(env, "ref")
        pool = await env.pool()
        client = env.redis()
        upsert = upsert_sql(twin, columns)
        select = select_sql(twin, columns)
        await pool.executemany(upsert, [models.record(v, columns) for v in values])
        raw = [env.key("raw", v.id) for v in values]
        await client.mset({raw[i]: v.model_dump_json() for i, v in enumerate(values)})
        local = dict(enumerate(values))
        channel = env.key("raw-inv")
        l1_before = ds.stats()

        async def strata_task(steps: list[tuple[bool, int]], out: list[float]) -> None:
            clock = time.perf_counter_ns
            for is_write, i in steps:
                t0 = clock()
                if is_write:
                    await ds.set(model, writes[i])
                else:
                    await ds.get(model, values[i].id)
                out.append(clock() - t0)

        async def by_hand_read(i: int) -> models.Ref:
            hit = local.get(i)
            if hit is not None:
                return hit.model_copy()
            payload = await client.get(raw[i])
            if payload is not None:
                value = model.model_validate_json(payload)
            else:
                value = model.model_validate(dict(await pool.fetchrow(select, values[i].id)))
            local[i] = value
            return value.model_copy()

        async def by_hand_write(i: int) -> None:
            v = writes[i].model_copy(update={"updated_at": datetime.now(UTC)})
            await pool.execute(upsert, *models.record(v, columns))
            await client.set(raw[i], v.model_dump_json(), ex=1800)
            await client.publish(channel, orjson.dumps({"schema": "ref", "id": v.id, "op": "set"}))
            local[i] = v.model_copy()

        async def by_hand_task(steps: list[tuple[bool, int]], out: list[float]) -> None:
            clock = time.perf_counter_ns
            for is_write, i in steps:
                t0 = clock()
                if is_write:
                    await by_hand_write(i)
                else:
                    await by_hand_read(i)
                out.append(clock() - t0)

        def runner(task, name: str):  # type: ignore[no-untyped-def]
            async def go() -> int:
                out = latencies[name]
                await asyncio.gather(*(task(steps, out) for steps in plan))
                return ops

            return go

        samples = await alternate(
            {
                "strata": Impl(runner(strata_task, "strata")),
                BASELINE: Impl(runner(by_hand_task, BASELINE)),
            },
            rounds=rounds,
        )
        stats = ds.stats()
        await pool.close()
        await client.aclose()

    # latencies include the warm-up round; drop it (the first `ops` samples of each)
    p99 = {name: percentile(xs[ops:], 99) / 1e6 for name, xs in latencies.items()}
    rates = per_second(samples)
    gets = stats.gets - l1_before.gets
    l1 = stats.l1_hits - l1_before.l1_hits
    note = f"{TASKS} tasks, {ops:,} ops per round; Strata L1 hit ratio {l1 / max(gets, 1):.1%}"
    return [
        Check(
            scenario="concurrency (ops/s)",
            variant="ref, L1+L2+PG",
            unit="ops/s",
            strata=rates.pop("strata"),
            baselines=rates,
            against=BASELINE,
            spread=rel_iqr(samples["strata"]),
            note=note,
        ),
        Check(
            scenario="concurrency (p99 per op)",
            variant="ref, L1+L2+PG",
            unit="ms",
            strata=p99.pop("strata"),
            baselines=p99,
            against=BASELINE,
        ),
    ]


if __name__ == "__main__":
    run_scenario(run)

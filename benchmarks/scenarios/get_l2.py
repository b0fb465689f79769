"""get, L2 hit: ``ds.get`` with L1 off (``Schema(l1=None)``), every key in Redis, against a
plain redis.asyncio ``GET`` plus ``model_validate_json`` of the same model's JSON.
"""

from __future__ import annotations

import random

from benchmarks import models
from benchmarks.harness import (
    Check,
    Env,
    Impl,
    alternate,
    latency_check,
    le,
    open_store,
    run_scenario,
    tier_misses,
)

KEYS = 1_000


async def run(env: Env) -> list[Check]:
    checks: list[Check] = []
    for name in ("ref", "wide"):
        checks.append(await _model(env, name))
    return checks


async def _model(env: Env, name: str) -> Check:
    model = models.MODELS[name]
    ops = env.size(600, 200)
    rounds = env.size(15, 5)
    values = [models.make(name, i) for i in range(KEYS)]
    ids = [v.id for v in values]  # type: ignore[attr-defined]
    seq = [ids[i % KEYS] for i in range(ops)]
    random.Random(7).shuffle(seq)

    client = env.redis()
    raw = {k: env.key("raw", name, k) for k in ids}
    await client.mset({raw[v.id]: v.model_dump_json() for v in values})  # type: ignore[attr-defined]

    async with open_store(env, models.schema(name, l1=False)) as ds:
        await ds.set_many(model, values)

        async def strata() -> int:
            get = ds.get
            for k in seq:
                await get(model, k)
            return ops

        async def redis_get() -> int:
            get = client.get
            validate = model.model_validate_json
            for k in seq:
                validate(await get(raw[k]))
            return ops

        before = ds.stats()
        cpu: dict[str, list[float]] = {}
        samples = await alternate(
            {"strata": Impl(strata), "redis GET + model_validate_json": Impl(redis_get)},
            rounds=rounds,
            cpu=cpu,
        )
        missed = tier_misses(before, ds.stats(), "l2")
    await client.aclose()
    return latency_check(
        "get, L2 hit (L1 off)",
        name,
        samples,
        against="redis GET + model_validate_json",
        target=le(1.10),
        note=missed,
        cpu=cpu,
    )


if __name__ == "__main__":
    run_scenario(run)

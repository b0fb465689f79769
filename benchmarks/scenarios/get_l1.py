"""get, L1 hit: ``ds.get`` served from memory (full stack L1+L2+PG, every key in L1)
against a dict lookup plus ``model_copy()`` (the floor: Strata must hand out a copy),
cashews ``mem://`` and aiocache's memory cache (which hand out a shallow copy / the object).

The wide model holds nested JSON, so Strata deep-copies it (a value handed out never aliases
the cache: a pydantic-core round trip, see ``strata/tiers/memory_copy.py``); its floor is
therefore ``model_copy(deep=True)``. cashews and aiocache hand out the cached object itself,
so against them the wide row shows what a deep copy costs, not overhead.
"""

from __future__ import annotations

import random

from aiocache import Cache as AioCache
from cashews import Cache as Cashews

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
        checks += await _model(env, name)
    return checks


async def _model(env: Env, name: str) -> list[Check]:
    model = models.MODELS[name]
    ops = env.size(3_000, 500)
    rounds = env.size(15, 5)
    values = [models.make(name, i) for i in range(KEYS)]
    ids = [v.id for v in values]  # type: ignore[attr-defined]
    seq = [ids[i % KEYS] for i in range(ops)]
    random.Random(7).shuffle(seq)

    plain = dict(zip(ids, values, strict=True))
    cashews = Cashews()
    cashews.setup("mem://", size=KEYS * 2)
    aio = AioCache(AioCache.MEMORY)
    for k, v in plain.items():
        await cashews.set(k, v, expire=300)
        await aio.set(k, v, ttl=300)

    async with open_store(env, models.schema(name)) as ds:
        await ds.set_many(model, values)
        for k in ids:  # every key is an L1 hit from here on
            await ds.get(model, k)

        async def strata() -> int:
            get = ds.get
            for k in seq:
                await get(model, k)
            return ops

        async def dict_copy() -> int:
            d = plain
            for k in seq:
                d[k].model_copy()
            return ops

        async def dict_deep_copy() -> int:
            d = plain
            for k in seq:
                d[k].model_copy(deep=True)
            return ops

        async def cashews_get() -> int:
            get = cashews.get
            for k in seq:
                await get(k)
            return ops

        async def aiocache_get() -> int:
            get = aio.get
            for k in seq:
                await get(k)
            return ops

        impls = {
            "strata": Impl(strata),
            "dict + model_copy()": Impl(dict_copy),
            "dict + model_copy(deep=True)": Impl(dict_deep_copy),
            "cashews mem://": Impl(cashews_get),
            "aiocache memory": Impl(aiocache_get),
        }
        if name == "ref":
            del impls["dict + model_copy(deep=True)"]
        before = ds.stats()
        samples = await alternate(impls, rounds=rounds)
        missed = tier_misses(before, ds.stats(), "l1")

    await cashews.close()
    await aio.close()
    floor = "dict + model_copy()" if name == "ref" else "dict + model_copy(deep=True)"
    note = "" if name == "ref" else "nested JSON: Strata deep-copies, so the floor is a deep copy"
    if name == "wide":
        note += "; cashews / aiocache return the cached object (no copy)"
    note = "; ".join(n for n in (note, missed) if n)
    return [
        latency_check(
            "get, L1 hit", name, samples, against="cashews mem://", target=le(1.0), note=note
        ),
        latency_check("get, L1 hit", name, samples, against=floor, target=le(2.0), note=note),
    ]


if __name__ == "__main__":
    run_scenario(run)

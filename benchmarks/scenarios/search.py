"""search, 100 rows: ``ds.search(Ref, Q().where("level >= $1", n).order_by("level")
.limit(100))`` against asyncpg ``fetch`` of the same SQL through a pool plus
``model_validate`` of each row.

Two Strata stacks: caches off (the like-for-like comparison, the target), and the full
stack, where search also fills L1 and L2 with the rows it found (one more Redis round trip
and an encode per row: shown for what it costs, no target).
"""

from __future__ import annotations

import dataclasses
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
    quote,
    run_scenario,
)
from strata import Q

ROWS = 5_000
RAW = "asyncpg fetch + model_validate"
FILLING = "strata, L1+L2+PG (fills the caches)"


async def run(env: Env) -> list[Check]:
    model = models.Ref
    ops = env.size(100, 30)
    rounds = env.size(15, 5)
    values = [models.make_ref(i) for i in range(ROWS)]
    rng = random.Random(11)
    lows = [rng.randrange(1, 900) for _ in range(ops)]
    columns = ", ".join(quote(c) for c in models.REF_COLUMNS)
    sql = f"SELECT {columns} FROM {env.table('ref')} WHERE level >= $1 ORDER BY level LIMIT 100"
    off = models.schema("ref", l1=False, l2=False)
    full = dataclasses.replace(models.schema("ref", max_entries=ROWS), name="ref_full")

    async with open_store(env, off) as ds, open_store(env, full) as ds_full:
        await ds.set_many(model, values)
        await ds_full.set_many(model, values)
        pool = await env.pool()
        queries = [Q().where("level >= $1", lo).order_by("level").limit(100) for lo in lows]

        async def strata() -> int:
            search = ds.search
            for q in queries:
                await search(model, q)
            return ops

        async def strata_full() -> int:
            search = ds_full.search
            for q in queries:
                await search(model, q)
            return ops

        async def raw() -> int:
            fetch = pool.fetch
            validate = model.model_validate
            for lo in lows:
                [validate(dict(r)) for r in await fetch(sql, lo)]
            return ops

        cpu: dict[str, list[float]] = {}
        samples = await alternate(
            {"strata": Impl(strata), FILLING: Impl(strata_full), RAW: Impl(raw)},
            rounds=rounds,
            cpu=cpu,
        )
        await pool.close()
    full_samples = {"strata": samples[FILLING], RAW: samples[RAW]}
    del samples[FILLING]
    return [
        latency_check(
            "search 100 rows", "ref, caches off", samples, against=RAW, target=le(1.1), cpu=cpu
        ),
        latency_check(
            "search 100 rows",
            "ref, L1+L2+PG",
            full_samples,
            against=RAW,
            note="fills L1 and L2 with the rows found; no target",
        ),
    ]


if __name__ == "__main__":
    run_scenario(run)

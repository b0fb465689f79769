"""set, write-through: ``ds.set`` on the full stack (L1+L2+PG, WRITE_THROUGH) against the
sequence a careful hand-written cache-aside app runs for the same update: stamp
``updated_at``, asyncpg upsert through a pool, Redis ``SET`` of the model's JSON with a TTL,
``PUBLISH`` of a small invalidation message. The baseline writes a twin table and its own keys.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

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
    twin_table,
    upsert_sql,
)

KEYS = 1_000
BASELINE = "asyncpg upsert + SET + PUBLISH"


async def run(env: Env) -> list[Check]:
    checks: list[Check] = []
    for name in ("ref", "wide"):
        checks.append(await _model(env, name))
    return checks


async def _model(env: Env, name: str) -> Check:
    model = models.MODELS[name]
    ops = env.size(300, 100)
    rounds = env.size(15, 5)
    columns = models.COLUMNS[name]
    values = [models.make(name, i) for i in range(KEYS)]
    # The writes: each key again with a new level, in the same order for everyone.
    writes = [values[i % KEYS].model_copy(update={"level": i % 997 + 1}) for i in range(ops)]

    async with open_store(env, models.schema(name)) as ds:
        await ds.set_many(model, values)
        twin = await twin_table(env, name)
        upsert = upsert_sql(twin, columns)
        pool = await env.pool()
        await pool.executemany(upsert, [models.record(v, columns) for v in values])
        client = env.redis()
        channel = env.key("raw-inv")
        ttl = 1800

        async def strata() -> int:
            set_ = ds.set
            for v in writes:
                await set_(model, v)
            return ops

        async def by_hand() -> int:
            execute = pool.execute
            record = models.record
            for v in writes:
                v = v.model_copy(update={"updated_at": datetime.now(UTC)})
                k = v.id  # type: ignore[attr-defined]
                await execute(upsert, *record(v, columns))
                await client.set(env.key("raw", name, k), v.model_dump_json(), ex=ttl)
                await client.publish(channel, orjson.dumps({"schema": name, "id": k, "op": "set"}))
            return ops

        cpu: dict[str, list[float]] = {}
        samples = await alternate(
            {"strata": Impl(strata), BASELINE: Impl(by_hand)}, rounds=rounds, cpu=cpu
        )
        await pool.close()
        await client.aclose()
    return latency_check(
        "set, write-through", name, samples, against=BASELINE, target=le(1.2), cpu=cpu
    )


if __name__ == "__main__":
    run_scenario(run)

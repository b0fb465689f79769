"""get, L3: ``ds.get`` with both caches off (``Schema(l1=None, l2=None)``) against a
prepared asyncpg ``fetchrow`` plus ``model_validate`` on a dedicated connection (the floor),
the same through an asyncpg pool (what an application would share), and the SQLAlchemy 2
async ORM ``session.get`` (one session per read, as a request handler would) on an ORM
model declared over the same table.
"""

from __future__ import annotations

import random

from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

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
    select_sql,
    tier_misses,
)

KEYS = 1_000
FLOOR = "asyncpg prepared fetchrow + model_validate"
POOL = "asyncpg pool.fetchrow + model_validate"
ORM = "SQLAlchemy async ORM session.get"


async def run(env: Env) -> list[Check]:
    checks: list[Check] = []
    for name in ("ref", "wide"):
        checks += await _model(env, name)
    return checks


async def _model(env: Env, name: str) -> list[Check]:
    model = models.MODELS[name]
    ops = env.size(400, 100)
    rounds = env.size(15, 5)
    values = [models.make(name, i) for i in range(KEYS)]
    ids = [v.id for v in values]  # type: ignore[attr-defined]
    seq = [ids[i % KEYS] for i in range(ops)]
    random.Random(7).shuffle(seq)
    sql = select_sql(env.table(name), models.COLUMNS[name])

    engine = create_async_engine(
        "postgresql+asyncpg://" + env.database_url.split("://", 1)[1],
        pool_size=10,
        connect_args={"server_settings": {"synchronous_commit": "off"}},
        execution_options={"schema_translate_map": {models.ORM_SCHEMA: env.name}},
    )
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    orm = models.ORM[name]

    async with open_store(env, models.schema(name, l1=False, l2=False)) as ds:
        await ds.set_many(model, values)
        conn = await env.connect()
        stmt = await conn.prepare(sql)
        pool = await env.pool()

        async def strata() -> int:
            get = ds.get
            for k in seq:
                await get(model, k)
            return ops

        async def prepared() -> int:
            fetchrow = stmt.fetchrow
            validate = model.model_validate
            for k in seq:
                validate(dict(await fetchrow(k)))  # type: ignore[arg-type]
            return ops

        async def pooled() -> int:
            fetchrow = pool.fetchrow
            validate = model.model_validate
            for k in seq:
                validate(dict(await fetchrow(sql, k)))  # type: ignore[arg-type]
            return ops

        async def session_get() -> int:
            for k in seq:
                async with sessions() as session:
                    await session.get(orm, k)
            return ops

        before = ds.stats()
        cpu: dict[str, list[float]] = {}
        samples = await alternate(
            {
                "strata": Impl(strata),
                FLOOR: Impl(prepared),
                POOL: Impl(pooled),
                ORM: Impl(session_get),
            },
            rounds=rounds,
            cpu=cpu,
        )
        missed = tier_misses(before, ds.stats(), "l3")
        await conn.close()
        await pool.close()
    await engine.dispose()
    return [
        latency_check(
            "get, L3 (caches off)",
            name,
            samples,
            against=FLOOR,
            target=le(1.25),
            note=missed,
            cpu=cpu,
        ),
        latency_check(
            "get, L3 (caches off)",
            name,
            samples,
            against=ORM,
            target=le(0.2, "≥ 5× faster"),  # noqa: RUF001
            note=missed,
        ),
    ]


if __name__ == "__main__":
    run_scenario(run)

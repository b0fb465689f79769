"""64 tasks, 90/10, Zipf (issue 14's target row): the ``concurrency`` workload (64 tasks on
one loop, 90% ``get`` / 10% ``set`` over 10,000 keys, Zipf s = 1.1, L1+L2+PG write-through)
against the cache-aside people write with SQLAlchemy Core and redis-py: a dict in front of
Redis in front of PostgreSQL (SQLAlchemy async engine, asyncpg driver, pool of the same size);
a write upserts (``insert ... on_conflict_do_update``), SETs the JSON, PUBLISHes an
invalidation and replaces the dict entry. Targets: >= 1.2x its throughput, p99 no worse.

The baseline does less than Strata (no versions, no coherence between instances, no bound
on the dict), which is what a user compares against.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks import models
from benchmarks.harness import (
    Check,
    Env,
    Impl,
    Target,
    alternate,
    ge,
    open_store,
    per_second,
    percentile,
    rel_iqr,
    run_scenario,
    twin_table,
)
from benchmarks.scenarios.concurrency import KEYS, TASKS, _workload

BASELINE = "cache-aside: dict → redis-py → SQLAlchemy Core"
Steps = list[tuple[bool, int]]


def _table(env: Env) -> sa.Table:
    return sa.Table(
        "ref_raw",
        sa.MetaData(schema=env.name),
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text),
        sa.Column("email", sa.Text),
        sa.Column("level", sa.BigInteger),
        sa.Column("score", sa.Double),
        sa.Column("created_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
    )


def _engine(env: Env) -> Any:
    url = "postgresql+asyncpg://" + env.database_url.split("://", 1)[1]
    settings = {} if env.durable else {"synchronous_commit": "off"}
    return create_async_engine(
        url, pool_size=10, max_overflow=0, connect_args={"server_settings": settings}
    )


async def run(env: Env) -> list[Check]:
    model = models.Ref
    per_task = env.size(150, 40)
    rounds = env.size(5, 2)
    plan = _workload(per_task, seed=5)
    ops = TASKS * per_task
    values = [models.make_ref(i) for i in range(KEYS)]
    writes = [v.model_copy(update={"level": v.level % 997 + 1}) for v in values]
    latencies: dict[str, list[float]] = {"strata": [], BASELINE: []}

    async with open_store(env, models.schema("ref", max_entries=KEYS)) as ds:
        await ds.set_many(model, values)
        await twin_table(env, "ref")
        table = _table(env)
        engine = _engine(env)
        client = env.redis()
        rows = [v.model_dump() for v in values]
        async with engine.begin() as conn:
            await conn.execute(pg_insert(table), rows)
        raw = [env.key("raw", v.id) for v in values]
        await client.mset({raw[i]: v.model_dump_json() for i, v in enumerate(values)})
        local = dict(enumerate(values))
        channel = env.key("raw-inv")
        select = sa.select(table).where(table.c.id == sa.bindparam("id"))
        upsert = pg_insert(table)
        upsert = upsert.on_conflict_do_update(
            index_elements=[table.c.id],
            set_={
                c: upsert.excluded[c] for c in models.REF_COLUMNS if c not in ("id", "created_at")
            },
        )
        before = ds.stats()

        async def strata_op(is_write: bool, i: int) -> None:
            if is_write:
                await ds.set(model, writes[i])
            else:
                await ds.get(model, values[i].id)

        async def by_hand_op(is_write: bool, i: int) -> None:
            if is_write:
                v = writes[i].model_copy(update={"updated_at": datetime.now(UTC)})
                async with engine.begin() as conn:
                    await conn.execute(upsert, v.model_dump())
                await client.set(raw[i], v.model_dump_json(), ex=1800)
                await client.publish(channel, orjson.dumps({"id": v.id, "op": "set"}))
                local[i] = v.model_copy()
                return
            hit = local.get(i)
            if hit is not None:
                hit.model_copy()
                return
            payload = await client.get(raw[i])
            if payload is not None:
                value = model.model_validate_json(payload)
            else:
                async with engine.connect() as conn:
                    row = (await conn.execute(select, {"id": values[i].id})).mappings().one()
                value = model.model_validate(dict(row))
            local[i] = value
            value.model_copy()

        def runner(op: Callable[[bool, int], Awaitable[None]], name: str) -> Impl:
            async def task(steps: Steps, out: list[float]) -> None:
                clock = time.perf_counter_ns
                for is_write, i in steps:
                    t0 = clock()
                    await op(is_write, i)
                    out.append(clock() - t0)

            async def go() -> int:
                await asyncio.gather(*(task(steps, latencies[name]) for steps in plan))
                return ops

            return Impl(go)

        samples = await alternate(
            {"strata": runner(strata_op, "strata"), BASELINE: runner(by_hand_op, BASELINE)},
            rounds=rounds,
        )
        stats = ds.stats()
        await engine.dispose()
        await client.aclose()

    p99 = {name: percentile(xs[ops:], 99) / 1e6 for name, xs in latencies.items()}
    rates = per_second(samples)
    gets = stats.gets - before.gets
    l1 = stats.l1_hits - before.l1_hits
    note = f"{TASKS} tasks, {ops:,} ops per round; Strata L1 hit ratio {l1 / max(gets, 1):.1%}"
    return [
        Check(
            scenario="64 tasks 90/10 Zipf (ops/s)",
            variant="ref, L1+L2+PG",
            unit="ops/s",
            strata=rates.pop("strata"),
            baselines=rates,
            against=BASELINE,
            target=ge(1.2),
            spread=rel_iqr(samples["strata"]),
            note=note,
        ),
        Check(
            scenario="64 tasks 90/10 Zipf (p99 per op)",
            variant="ref, L1+L2+PG",
            unit="ms",
            strata=p99.pop("strata"),
            baselines=p99,
            against=BASELINE,
            target=Target("<=", 1.0, "ratio", "≤ 1× (no worse)"),  # noqa: RUF001
        ),
    ]


if __name__ == "__main__":
    run_scenario(run)

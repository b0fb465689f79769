"""set_many of 10,000 reference models into an empty table, in rows per second:

- Strata on the full stack (L1+L2+PG: COPY into a temporary table and one upsert, one Redis
  script for the 10,000 keys, L1, one invalidation message), and with both caches off;
- asyncpg ``copy_records_to_table`` and ``executemany`` of a hand-written upsert, both
  starting from the same models (the conversion to tuples is on their clock too).

Every round starts from empty tables (untimed TRUNCATE), so all of them insert.
"""

from __future__ import annotations

from benchmarks import models
from benchmarks.harness import (
    Check,
    Env,
    Impl,
    alternate,
    ge,
    open_store,
    per_second,
    rel_iqr,
    run_scenario,
    twin_table,
    upsert_sql,
)
from strata import PostgresPolicy, Schema

COPY = "asyncpg COPY"
EXECUTEMANY = "asyncpg executemany upsert"
CACHES_OFF = "strata, caches off (PG only)"
NOTE = "into an empty table; the baselines convert the same models to tuples on their clock"


async def run(env: Env) -> list[Check]:
    model = models.Ref
    columns = models.REF_COLUMNS
    rows = env.size(10_000, 10_000)
    rounds = env.size(7, 3)
    values = [models.make_ref(i) for i in range(rows)]
    pg_only = Schema(name="ref_pg", model=model, l1=None, l2=None, l3=PostgresPolicy())

    # A model is registered once per DataStore: the PG-only schema gets a store of its own.
    async with (
        open_store(env, models.schema("ref", max_entries=rows)) as ds,
        open_store(env, pg_only, redis_url=None) as other,
    ):
        conn = await env.connect()
        table, table_pg = env.table("ref"), env.table("ref_pg")
        copy_twin = await twin_table(env, "ref", "_copy")
        many_twin = await twin_table(env, "ref", "_many")
        upsert = upsert_sql(many_twin, columns)

        def truncate(qualified: str):  # type: ignore[no-untyped-def]
            async def setup() -> None:
                await conn.execute(f"TRUNCATE {qualified}")

            return setup

        async def strata() -> int:
            await ds.set_many(model, values)
            return rows

        async def strata_pg() -> int:
            await other.set_many(model, values)
            return rows

        async def copy() -> int:
            await conn.copy_records_to_table(
                "ref_copy",
                schema_name=env.name,
                records=[models.record(v, columns) for v in values],
                columns=list(columns),
            )
            return rows

        async def executemany() -> int:
            await conn.executemany(upsert, [models.record(v, columns) for v in values])
            return rows

        samples = await alternate(
            {
                "strata": Impl(strata, setup=truncate(table)),
                CACHES_OFF: Impl(strata_pg, setup=truncate(table_pg)),
                COPY: Impl(copy, setup=truncate(copy_twin)),
                EXECUTEMANY: Impl(executemany, setup=truncate(many_twin)),
            },
            rounds=rounds,
        )
        await conn.close()
    rates = per_second(samples)
    strata_rate = rates.pop("strata")
    return [
        Check(
            scenario="set_many 10,000",
            variant="ref, L1+L2+PG",
            unit="rows/s",
            strata=strata_rate,
            baselines=dict(rates),
            against=COPY,
            target=ge(0.67),
            spread=rel_iqr(samples["strata"]),
            note=NOTE,
        ),
        Check(
            scenario="set_many 10,000",
            variant="ref, PG only",
            unit="rows/s",
            strata=rates.pop(CACHES_OFF),
            baselines=dict(rates),
            against=COPY,
            target=ge(0.67),
            spread=rel_iqr(samples[CACHES_OFF]),
            note=NOTE,
        ),
    ]


if __name__ == "__main__":
    run_scenario(run)

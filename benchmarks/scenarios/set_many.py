"""set_many of 10,000 reference models into an empty table, in rows per second:

- Strata on the full stack (L1+L2+PG: COPY into a temporary table and one upsert, one Redis
  script for the 10,000 keys, L1, one invalidation message), and with both caches off;
- asyncpg ``copy_records_to_table`` (plain COPY: the floor, nothing checked), and the
  hand-written upserts a careful application would write: staged (COPY into a temporary
  table, then one ``INSERT ... SELECT ... ON CONFLICT``), ``unnest`` of column arrays in
  one ``INSERT ... ON CONFLICT``, and ``executemany`` of a one-row upsert. All start from
  the same models (the conversion to tuples is on their clock too). The upsert targets
  compare with the fastest of the hand-written upserts in the run.

Every round starts from empty tables (untimed TRUNCATE), so all of them insert.
"""

from __future__ import annotations

import asyncpg

from benchmarks import models
from benchmarks.harness import (
    Check,
    Env,
    Impl,
    alternate,
    ge,
    open_store,
    per_second,
    quote,
    rel_iqr,
    run_scenario,
    twin_table,
    upsert_sql,
)
from strata import PostgresPolicy, Schema

COPY = "asyncpg COPY"
EXECUTEMANY = "asyncpg executemany upsert"
STAGED = "asyncpg staged COPY + INSERT ON CONFLICT"
UNNEST = "asyncpg unnest INSERT ON CONFLICT"
UPSERTS = (STAGED, UNNEST, EXECUTEMANY)
CACHES_OFF = "strata, caches off (PG only)"
TIER = "strata L3 tier alone (rows built beforehand)"
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
        staged_twin = await twin_table(env, "ref", "_staged")
        unnest_twin = await twin_table(env, "ref", "_unnest")
        upsert = upsert_sql(many_twin, columns)
        types = await _column_types(conn, env.name, "ref", columns)
        sets = upsert_sql("t", columns).split(" ON CONFLICT ", 1)[1]
        cols = ", ".join(quote(c) for c in columns)
        staged_insert = (
            f"INSERT INTO {staged_twin} ({cols}) SELECT {cols} FROM _bench_stage "
            f"ORDER BY id ON CONFLICT {sets}"
        )
        arrays = ", ".join(f"${n}::{t}[]" for n, t in enumerate(types, 1))
        unnest_insert = (
            f"INSERT INTO {unnest_twin} ({cols}) SELECT * FROM unnest({arrays}) ON CONFLICT {sets}"
        )

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

        # What the L3 tier costs by itself: the router's rows for the same models, built
        # once, outside the clock (shows where the rest of set_many's time goes).
        route = other._core.routes["ref_pg"]
        built = [route.b.rows.to_row(route.b.stamp(v), v.id) for v in values]
        tier = other._core.l3

        async def tier_only() -> int:
            await tier.upsert_many(route.b.cs, [dict(r) for r in built])
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

        async def staged() -> int:
            records = [models.record(v, columns) for v in values]
            async with conn.transaction():
                await conn.execute(
                    f"CREATE TEMPORARY TABLE _bench_stage (LIKE {staged_twin} INCLUDING DEFAULTS) "
                    "ON COMMIT DROP"
                )
                await conn.copy_records_to_table(
                    "_bench_stage", records=records, columns=list(columns)
                )
                await conn.execute(staged_insert)
            return rows

        async def unnest() -> int:
            records = [models.record(v, columns) for v in values]
            await conn.execute(unnest_insert, *(list(c) for c in zip(*records, strict=True)))
            return rows

        samples = await alternate(
            {
                "strata": Impl(strata, setup=truncate(table)),
                CACHES_OFF: Impl(strata_pg, setup=truncate(table_pg)),
                TIER: Impl(tier_only, setup=truncate(table_pg)),
                COPY: Impl(copy, setup=truncate(copy_twin)),
                EXECUTEMANY: Impl(executemany, setup=truncate(many_twin)),
                STAGED: Impl(staged, setup=truncate(staged_twin)),
                UNNEST: Impl(unnest, setup=truncate(unnest_twin)),
            },
            rounds=rounds,
        )
        await conn.close()
    rates = per_second(samples)
    strata_rate = rates.pop("strata")
    pg_rate = rates.pop(CACHES_OFF)
    tier_rate = rates.pop(TIER)
    fastest = max(UPSERTS, key=lambda n: rates[n])
    checks = []
    for variant, rate, name, floor in (
        ("ref, L1+L2+PG", strata_rate, "strata", 0.4),
        ("ref, PG only", pg_rate, CACHES_OFF, 0.5),
    ):
        spread = rel_iqr(samples[name])
        checks.append(
            Check(
                scenario="set_many 10,000",
                variant=variant,
                unit="rows/s",
                strata=rate,
                baselines=dict(rates),
                against=COPY,
                target=ge(floor),
                spread=spread,
                note=NOTE,
            )
        )
        checks.append(
            Check(
                scenario="set_many 10,000",
                variant=variant,
                unit="rows/s",
                strata=rate,
                baselines=dict(rates),
                against=fastest,
                target=ge(0.9),
                spread=spread,
                note="against the fastest hand-written upsert of the run",
            )
        )
    checks.append(
        Check(
            scenario="set_many 10,000",
            variant="ref, the L3 tier alone",
            unit="rows/s",
            strata=tier_rate,
            baselines=dict(rates),
            against=COPY,
            spread=rel_iqr(samples[TIER]),
            note="upsert_many of rows the router built beforehand (its copy of them on the "
            "clock); no target: shows what of set_many is the tier",
        )
    )
    return checks


async def _column_types(
    conn: asyncpg.Connection, schema: str, table: str, columns: tuple[str, ...]
) -> list[str]:
    """The SQL type of each column (for the ``unnest`` arrays)."""
    found = dict(
        await conn.fetch(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = format('%I.%I', $1::text, $2::text)::regclass AND attnum > 0",
            schema,
            table,
        )
    )
    return [found[c] for c in columns]


if __name__ == "__main__":
    run_scenario(run)

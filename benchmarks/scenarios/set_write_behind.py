"""set, write-behind (L1 + PG, WRITE_BEHIND, no Redis so that a call does no I/O at all):

- per call: ``ds.set`` (stamp, queue the L3 row, fill L1) against a dict assignment plus
  ``model_copy()``, the least an in-memory write that keeps its own copy can do;
- sustained flush: rows per second the flusher moves into PostgreSQL (``flush_dirty()``
  after N distinct writes were queued, table emptied first) against asyncpg
  ``copy_records_to_table`` of the same N rows into an empty twin table.

The flusher is held back during the per-call rounds (long interval, high threshold): the
rounds time the call, the flush rounds time the flusher.
"""

from __future__ import annotations

from benchmarks import models
from benchmarks.harness import (
    Check,
    Env,
    Impl,
    alternate,
    ge,
    latency_check,
    le,
    open_store,
    per_second,
    rel_iqr,
    run_scenario,
    twin_table,
)
from strata import WriteMode

KEYS = 1_000
FLOOR = "dict assignment + model_copy()"
COPY = "asyncpg copy_records_to_table"


async def run(env: Env) -> list[Check]:
    model = models.Ref
    columns = models.REF_COLUMNS
    ops = env.size(3_000, 500)
    rounds = env.size(15, 5)
    rows = env.size(20_000, 5_000)
    flush_rounds = env.size(7, 3)
    values = [models.make_ref(i) for i in range(KEYS)]
    writes = [values[i % KEYS].model_copy(update={"level": i % 997 + 1}) for i in range(ops)]
    batch = [models.make_ref(i) for i in range(rows)]

    schema = models.schema("ref", l2=False, write_mode=WriteMode.WRITE_BEHIND)
    async with open_store(
        env,
        schema,
        redis_url=None,
        write_behind_flush_interval=3600,
        write_behind_flush_threshold=10**9,
        write_behind_max_pending=10**7,
    ) as ds:
        await ds.set_many(model, values)
        await ds.flush_dirty()
        plain = {v.id: v for v in values}

        async def strata() -> int:
            set_ = ds.set
            for v in writes:
                await set_(model, v)
            return ops

        async def dict_assign() -> int:
            d = plain
            for v in writes:
                d[v.id] = v.model_copy()
            return ops

        per_call = await alternate(
            {"strata": Impl(strata), FLOOR: Impl(dict_assign)}, rounds=rounds
        )
        await ds.flush_dirty()

        # Sustained flush.
        table = env.table("ref")
        twin = await twin_table(env, "ref")
        conn = await env.connect()
        records = [models.record(v, columns) for v in batch]

        async def queue() -> None:
            await conn.execute(f"TRUNCATE {table}")
            for v in batch:
                await ds.set(model, v)

        async def flush() -> int:
            await ds.flush_dirty()
            return rows

        async def empty_twin() -> None:
            await conn.execute(f"TRUNCATE {twin}")

        async def copy() -> int:
            await conn.copy_records_to_table(
                twin.split(".")[1].strip('"'),
                schema_name=env.name,
                records=records,
                columns=list(columns),
            )
            return rows

        flushes = await alternate(
            {"strata": Impl(flush, setup=queue), COPY: Impl(copy, setup=empty_twin)},
            rounds=flush_rounds,
        )
        landed = await conn.fetchval(f"SELECT count(*) FROM {table}")
        await conn.close()

    rates = per_second(flushes)
    note = "queued rows vs ready tuples, both into an empty table"
    if landed != rows:
        note += f"; only {landed} of {rows} rows in L3 after the flush"
    return [
        latency_check(
            "set, write-behind (per call)",
            "ref, L1+PG",
            per_call,
            against=FLOOR,
            target=le(3.0),
        ),
        Check(
            scenario="set, write-behind (sustained flush)",
            variant=f"ref, {rows:,} rows",
            unit="rows/s",
            strata=rates.pop("strata"),
            baselines=rates,
            against=COPY,
            target=ge(0.5),
            spread=rel_iqr(flushes["strata"]),
            note=note,
        ),
    ]


if __name__ == "__main__":
    run_scenario(run)

"""set, write-behind with the Redis journal (L1 + L2 + PG, WRITE_BEHIND):

- per call: ``ds.set`` acknowledged once its L2 value and journal entry are in Redis (one
  Lua script) against a write-through ``ds.set`` of the same stack (L3 upsert, then L2) —
  the journal must not make write-behind slower than write-through — and against an
  embedded write-behind ``ds.set`` (no Redis: in-process queue, nothing crash-safe), and
  against the raw floor of the same Redis work: a hand-written Lua script doing ``SET`` of
  the JSON payload with a TTL and ``XADD`` of the entry (one ``EVALSHA`` per call, the model
  serialised with ``model_dump_json`` on its clock);
- sustained flush: rows per second the journal flusher moves into PostgreSQL
  (``flush_dirty()`` after N distinct journaled writes) against asyncpg
  ``copy_records_to_table`` of the same rows into an empty twin table.
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
THROUGH = "write-through set (L1+L2+PG)"
EMBEDDED = "write-behind set, no Redis (in-process queue)"
RAW = "redis EVALSHA SET + XADD (hand-written)"
RAW_SCRIPT = """
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('XADD', KEYS[2], '*', 'id', ARGV[1], 'v', ARGV[2])
return 1
"""
COPY = "asyncpg copy_records_to_table"
HELD = {
    "write_behind_flush_interval": 3600,
    "write_behind_flush_threshold": 10**9,
    "write_behind_max_pending": 10**7,
}


async def run(env: Env) -> list[Check]:
    model = models.Ref
    ops = env.size(3_000, 500)
    rounds = env.size(15, 5)
    rows = env.size(20_000, 5_000)
    flush_rounds = env.size(5, 3)

    def keyed(prefix: str, n: int) -> list[models.Ref]:
        return [models.make_ref(i).model_copy(update={"id": f"{prefix}{i}"}) for i in range(n)]

    journaled, through, embedded = keyed("j", KEYS), keyed("t", KEYS), keyed("e", KEYS)
    raw_values = keyed("r", KEYS)

    def writes_of(values: list[models.Ref]) -> list[models.Ref]:
        return [values[i % KEYS].model_copy(update={"level": i % 997 + 1}) for i in range(ops)]

    wb = models.schema("ref", write_mode=WriteMode.WRITE_BEHIND)
    wt = models.schema("ref", write_mode=WriteMode.WRITE_THROUGH)
    wb_local = models.schema("ref", l2=False, write_mode=WriteMode.WRITE_BEHIND)
    async with (
        open_store(env, wb, **HELD) as ds,
        open_store(env, wt, create=False) as ds_wt,
        open_store(env, wb_local, create=False, redis_url=None, **HELD) as ds_local,
    ):

        def calls(store: object, values: list[models.Ref]) -> Impl:
            writes = writes_of(values)

            async def go() -> int:
                set_ = store.set  # type: ignore[attr-defined]
                for v in writes:
                    await set_(model, v)
                return ops

            return Impl(go)

        client = env.redis()
        script = client.register_script(RAW_SCRIPT)
        stream = env.key("raw", "journal")

        def raw_calls() -> Impl:
            writes = writes_of(raw_values)

            async def go() -> int:
                for v in writes:
                    key = env.key("raw", v.id)
                    await script(keys=[key, stream], args=[v.id, v.model_dump_json(), 300_000])
                return ops

            return Impl(go)

        per_call = await alternate(
            {
                "strata": calls(ds, journaled),
                THROUGH: calls(ds_wt, through),
                EMBEDDED: calls(ds_local, embedded),
                RAW: raw_calls(),
            },
            rounds=rounds,
        )
        await client.delete(stream)
        await client.aclose()
        await ds.flush_dirty()
        await ds_local.flush_dirty()

        table = env.table("ref")
        twin = await twin_table(env, "ref")
        conn = await env.connect()
        batch = keyed("f", rows)
        records = [models.record(v, models.REF_COLUMNS) for v in batch]

        async def queue() -> None:
            await conn.execute(f"TRUNCATE {table}")
            for start in range(0, rows, 500):
                await ds.set_many(model, batch[start : start + 500])

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
                columns=list(models.REF_COLUMNS),
            )
            return rows

        flushes = await alternate(
            {"strata": Impl(flush, setup=queue), COPY: Impl(copy, setup=empty_twin)},
            rounds=flush_rounds,
        )
        landed = await conn.fetchval(f"SELECT count(*) FROM {table}")
        await conn.close()

    rates = per_second(flushes)
    note = "journaled rows vs ready tuples, both into an empty table"
    if landed != rows:
        note += f"; only {landed} of {rows} rows in L3 after the flush"
    return [
        latency_check(
            "set, write-behind with journal (per call)",
            "ref, L1+L2+PG",
            per_call,
            against=THROUGH,
            target=le(1.0),
        ),
        latency_check(
            "set, write-behind with journal (per call)",
            "ref, L1+L2+PG",
            per_call,
            against=RAW,
            target=le(1.2),
        ),
        Check(
            scenario="set, write-behind with journal (sustained flush)",
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

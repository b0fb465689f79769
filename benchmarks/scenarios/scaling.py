"""Scaling (issue 14): cost per operation as the work grows. No baselines: each row is the
same operation at another size, so the report shows them as curves (``scaling.md`` /
``scaling.png`` in ``benchmarks/results``). Medians over rounds.

    L1 get                 1k / 100k / 1M entries           (flat: a dict lookup and a copy)
    model width            5 / 20 / 50 fields, L1 get and L1-only set
    get_many / set_many    batch 10 / 1k / 10k: set_many on L1+L2+PG, get_many from L2
    write-behind set       1 / 64 concurrent writers (L1+PG, no Redis: the queue alone)
    invalidations applied  1 / 8 subscribing instances in one process, per instance

``--quick`` shrinks every size (and leaves out 1M entries). The invalidation rows are
measured here until a dedicated bus scenario exists; ``INVALIDATION_HOOK`` names the module
whose ``scaling_rows(env)`` replaces them when it lands.
"""

from __future__ import annotations

import asyncio
import importlib
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, create_model

from benchmarks import models
from benchmarks.harness import Check, Env, open_store, run_scenario
from strata import Config, DataStore, Field, MemPolicy, Schema, WriteMode
from strata.testing import eventually

INVALIDATION_HOOK = "benchmarks.scenarios.bus"  # another helper's scenario, when it exists
CHUNK = 5_000


async def _median_us(batch: Callable[[], Awaitable[int]], rounds: int) -> float:
    """Median µs per operation over ``rounds`` runs of ``batch`` (after one warm-up)."""
    samples = []
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        n = await batch()
        if r:
            samples.append((time.perf_counter() - t0) / max(n, 1) * 1e6)
    return statistics.median(samples)


def _row(what: str, size: str, value: float, unit: str = "µs/op", note: str = "") -> Check:
    return Check(scenario=f"scaling: {what}", variant=size, unit=unit, strata=value, note=note)


def _embedded(tmp: str, *schemas: Schema) -> DataStore:
    ds = DataStore(Config(database_url=f"sqlite:///{Path(tmp) / 's.db'}"))
    for s in schemas:
        ds.register(s)
    return ds


def _l1_only(name: str, model: type[BaseModel], entries: int) -> Schema:
    return Schema(
        name=name, model=model, l1=MemPolicy(ttl=3600, max_entries=entries + 1), l2=None, l3=None
    )


async def l1_entries(env: Env) -> list[Check]:
    sizes = (1_000, 10_000) if env.quick else (1_000, 100_000, 1_000_000)
    ops = env.size(20_000, 2_000)
    out = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            ds = _embedded(tmp, _l1_only("ref", models.Ref, n))
            async with ds:
                for start in range(0, n, CHUNK):
                    chunk = [models.make_ref(i) for i in range(start, min(n, start + CHUNK))]
                    await ds.set_many(models.Ref, chunk)
                rng = random.Random(3)
                keys = [models.key(rng.randrange(n)) for _ in range(ops)]

                async def gets(keys: list[str] = keys, ds: DataStore = ds) -> int:
                    get = ds.get
                    for k in keys:
                        await get(models.Ref, k)
                    return len(keys)

                out.append(_row("L1 get", f"{n:,} entries", await _median_us(gets, 5)))
    return out


def _wide_model(width: int) -> type[BaseModel]:
    fields: dict[str, Any] = {"id": (str, Field(primary_key=True))}
    for j in range(1, width):
        fields[f"f{j}"] = (int, j) if j % 2 else (str, f"v{j}")
    return create_model(f"Width{width}", **fields)


async def model_width(env: Env) -> list[Check]:
    ops = env.size(10_000, 1_000)
    out = []
    for width in (5, 20, 50):
        model = _wide_model(width)
        values = [model(id=f"w{i}") for i in range(1_000)]
        with tempfile.TemporaryDirectory() as tmp:
            ds = _embedded(tmp, _l1_only("w", model, 1_000))
            async with ds:
                await ds.set_many(model, values)
                seq = [values[i % 1_000].id for i in range(ops)]  # type: ignore[attr-defined]

                async def gets(ds: DataStore = ds, model: Any = model, seq: Any = seq) -> int:
                    for k in seq:
                        await ds.get(model, k)
                    return len(seq)

                async def sets(ds: DataStore = ds, model: Any = model, vs: Any = values) -> int:
                    for i in range(ops):
                        await ds.set(model, vs[i % 1_000])
                    return ops

                out.append(
                    _row("model width, L1 get", f"{width} fields", await _median_us(gets, 5))
                )
                out.append(
                    _row("model width, set (L1 only)", f"{width} fields", await _median_us(sets, 5))
                )
    return out


async def batches(env: Env) -> list[Check]:
    sizes = (10, 100, 1_000) if env.quick else (10, 1_000, 10_000)
    rounds = env.size(5, 2)
    out = []
    schema = models.schema("ref", l1=False, max_entries=max(sizes))
    async with open_store(env, schema) as ds:
        for n in sizes:
            values = [models.make_ref(i) for i in range(n)]
            ids = [v.id for v in values]

            async def set_many(values: list[Any] = values) -> int:
                await ds.set_many(models.Ref, values)
                return len(values)

            async def get_many(ids: list[str] = ids) -> int:
                found = await ds.get_many(models.Ref, ids)
                assert len(found) == len(ids)
                return len(ids)

            per_row = await _median_us(set_many, rounds)
            per_id = await _median_us(get_many, rounds)
            out.append(_row("set_many (L2+PG), per row", f"batch {n:,}", per_row))
            out.append(_row("get_many (L2 hits), per id", f"batch {n:,}", per_id))
    return out


async def write_behind(env: Env) -> list[Check]:
    total = env.size(12_800, 1_280)
    out = []
    schema = models.schema("ref", l2=False, write_mode=WriteMode.WRITE_BEHIND, max_entries=total)
    values = [models.make_ref(i) for i in range(total)]
    async with open_store(env, schema, redis_url=None) as ds:
        for writers in (1, 64):
            share = [values[w::writers] for w in range(writers)]

            async def writer(vs: list[Any]) -> None:
                for v in vs:
                    await ds.set(models.Ref, v)

            async def all_writers(share: list[list[Any]] = share) -> int:
                await asyncio.gather(*(writer(vs) for vs in share))
                await ds.flush_dirty()  # the flush is part of the cost
                return total

            per_set = await _median_us(all_writers, env.size(3, 1))
            out.append(_row("write-behind set + flush", f"{writers} writers", per_set))
    return out


async def invalidation_rate(env: Env) -> list[Check]:
    try:
        hook = importlib.import_module(INVALIDATION_HOOK)
    except ImportError:
        hook = None
    if hook is not None and hasattr(hook, "scaling_rows"):
        rows: list[Check] = await hook.scaling_rows(env)
        return rows
    rows = env.size(2_000, 200)
    values = [models.make_ref(i) for i in range(rows)]
    changed = [v.model_copy(update={"level": v.level + 1}) for v in values]
    ids = [v.id for v in values]
    out = []
    schema = models.schema("ref", max_entries=rows)
    for n in (1, 8):
        async with open_store(env, schema) as writer:
            await writer.set_many(models.Ref, values)
            subscribers = [await _subscriber(env, schema) for _ in range(n)]
            try:
                for s in subscribers:  # every row in every instance's L1
                    await s.get_many(models.Ref, ids)
                t0 = time.perf_counter()
                for start in range(0, rows, 500):
                    await writer.set_many(models.Ref, changed[start : start + 500])

                async def dropped(subscribers: Any = subscribers) -> bool:
                    return all(s.stats().l1_entries == 0 for s in subscribers)

                await eventually(dropped, timeout=120)
                elapsed = time.perf_counter() - t0
            finally:
                for s in subscribers:
                    await s.close()
        out.append(
            _row(
                "invalidations applied per instance",
                f"{n} subscribing instance{'s' * (n > 1)}",
                rows / elapsed,
                unit="rows/s",
                note="one writer's set_many (500 rows each); from the first write until every "
                "instance's L1 is empty (the writer's cost included)",
            )
        )
    return out


async def _subscriber(env: Env, schema: Schema) -> DataStore:
    ds = DataStore(env.config())
    ds.register(schema)
    await ds.connect()
    bus = getattr(ds, "_bus", None)
    if bus is not None:
        await bus.wait_connected(10.0)
    return ds


async def run(env: Env) -> list[Check]:
    checks: list[Check] = []
    for part in (l1_entries, model_width, batches, write_behind, invalidation_rate):
        checks += await part(env)
    return checks


if __name__ == "__main__":
    run_scenario(run)

"""Memory: bytes per L1 entry when 100,000 reference models sit in Strata's L1, against the
same models in a plain ``dict`` (id -> model), both measured with tracemalloc as the growth
of traced memory, after a full collection.

Strata runs L1 only (``Schema(l2=None, l3=None)``, an embedded SQLite file it never
touches), with a TTL and ``max_entries`` above the count, so nothing is evicted: what is
measured is the model copy L1 keeps plus L1's bookkeeping (entry record, LRU order, expiry
heap). Needs no server.
"""

from __future__ import annotations

import gc
import tempfile
import tracemalloc
from pathlib import Path

from benchmarks import models
from benchmarks.harness import Check, Env, le, run_scenario
from strata import Config, DataStore, MemPolicy, Schema

CHUNK = 5_000
BASELINE = "dict of models"


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def measure_dict(n: int) -> float:
    tracemalloc.start()
    try:
        base = _traced()
        held: dict[str, models.Ref] = {}
        for i in range(n):
            v = models.make_ref(i)
            held[v.id] = v
        return (_traced() - base) / n
    finally:
        tracemalloc.stop()


async def measure_strata(n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        ds = DataStore(Config(database_url=f"sqlite:///{Path(tmp) / 'm.db'}"))
        ds.register(
            Schema(
                name="ref",
                model=models.Ref,
                l1=MemPolicy(ttl=3600, max_entries=n + 1),
                l2=None,
                l3=None,
            )
        )
        async with ds:
            tracemalloc.start()
            try:
                base = _traced()
                for start in range(0, n, CHUNK):
                    chunk = [models.make_ref(i) for i in range(start, min(n, start + CHUNK))]
                    await ds.set_many(models.Ref, chunk)
                    del chunk
                used = _traced() - base
            finally:
                tracemalloc.stop()
            entries = ds.stats().l1_entries
        return used / entries if entries else float("nan")


async def run(env: Env) -> list[Check]:
    n = env.size(100_000, 20_000)
    strata = await measure_strata(n)
    plain = measure_dict(n)
    return [
        Check(
            scenario="memory per L1 entry",
            variant=f"ref, {n:,} entries",
            unit="B/entry",
            strata=strata,
            baselines={BASELINE: plain},
            against=BASELINE,
            target=le(1.0),
            note="tracemalloc, growth after gc; L1 with TTL and max_entries; held copies share "
            "one fields set (tiers/memory_copy.py)",
        )
    ]


if __name__ == "__main__":
    run_scenario(run)

"""One module per scenario, each run in its own process by ``python -m benchmarks``.

Every module exposes ``async def run(env) -> list[Check]`` and runs itself through
``harness.run_scenario`` when executed as ``python -m benchmarks.scenarios.<name>``.
"""

from __future__ import annotations

# In report order: name -> what it measures.
SCENARIOS: dict[str, str] = {
    "get_l1": "get, L1 hit vs dict + model_copy(), cashews mem://, aiocache memory",
    "get_l2": "get, L2 hit (L1 off) vs redis.asyncio GET + model_validate_json",
    "get_l3": "get, L3 (caches off) vs asyncpg prepared fetchrow, SQLAlchemy ORM session.get",
    "set_write_through": "set, write-through (L1+L2+PG) vs asyncpg upsert + SET + PUBLISH",
    "set_write_behind": "set, write-behind: per call vs dict + copy; flush vs COPY",
    "set_write_behind_journal": "set, write-behind with the Redis journal vs write-through; "
    "journal flush vs COPY",
    "set_many": "set_many 10,000 rows vs asyncpg COPY and executemany upsert",
    "search": "search 100 rows vs asyncpg fetch + validate",
    "invalidation": "invalidation lag from a write in process A to process B (p50, p99)",
    "bus_throughput": "invalidations applied per instance vs a redis-py subscriber + orjson",
    "concurrency": "64 tasks, 90% reads / 10% writes, Zipf keys: ops/s and p99",
    "zipf": "64 tasks 90/10 Zipf vs cache-aside on SQLAlchemy Core + redis-py (issue 14 target)",
    "remember": "ds.cache remember hit (memory, Redis) vs cashews @cache and aiocache @cached",
    "memory": "bytes per L1 entry for 100,000 models vs a dict of the models",
    "scaling": "cost per op as work grows: L1 entries, model width, batches, writers, instances",
}

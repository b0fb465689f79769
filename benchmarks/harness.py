"""What every scenario shares: its private servers' namespace, the round-robin timer, and the
result records the report is built from.

A scenario module defines ``async def run(env: Env) -> list[Check]`` and ends with
``if __name__ == "__main__": run_scenario(run)``; the orchestrator starts it as
``python -m benchmarks.scenarios.<name> --json PATH [--quick]``.

Timing (``alternate``)::

    round 0 (warm-up, not kept)   A B C
    round 1                       B C A      each implementation runs the same `ops` operations;
    round 2                       C A B      its time / ops is one sample; who goes first rotates
    ...                                      so that drift (frequency scaling, a neighbour, the
                                             servers' caches) lands on everyone alike
    report: the median sample per implementation, and ratios of medians
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import statistics
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import asyncpg
import orjson
import redis.asyncio as aioredis

from strata import Config

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def database_url() -> str:
    return (
        os.environ.get("STRATA_BENCH_DATABASE_URL")
        or os.environ.get("STRATA_TEST_DATABASE_URL")
        or DEFAULT_DATABASE_URL
    )


def redis_url() -> str:
    return (
        os.environ.get("STRATA_BENCH_REDIS_URL")
        or os.environ.get("STRATA_TEST_REDIS_URL")
        or DEFAULT_REDIS_URL
    )


def asyncpg_dsn(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# -- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """``op`` compares the ratio (kind "ratio") or Strata's own value (kind "absolute")."""

    op: Literal["<=", ">="]
    value: float
    kind: Literal["ratio", "absolute"] = "ratio"
    label: str = ""  # how the report shows it, e.g. "<= 1.25x" (typeset)

    def met(self, ratio: float | None, value: float) -> bool | None:
        x = ratio if self.kind == "ratio" else value
        if x is None or math.isnan(x):
            return None
        return x <= self.value if self.op == "<=" else x >= self.value


@dataclass
class Check:
    """One row of the report: Strata's number, the baselines of the same run, one ratio."""

    scenario: str  # "get, L1 hit"
    variant: str  # "ref" / "wide" / a stack description
    unit: str  # "µs/op", "rows/s", "ms", "ops/s", "B/entry"
    strata: float
    baselines: dict[str, float] = field(default_factory=dict)
    against: str | None = None  # the baseline the ratio is taken against
    target: Target | None = None
    spread: float | None = None  # Strata's relative IQR over rounds (noise indicator)
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.against is None:
            return None
        base = self.baselines.get(self.against)
        if not base:
            return None
        return self.strata / base

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.ratio, self.strata)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = self.ratio
        out["met"] = self.met
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Check:
        data = dict(data)
        data.pop("ratio", None)
        data.pop("met", None)
        target = data.pop("target", None)
        return cls(**data, target=Target(**target) if target else None)


# -- statistics ----------------------------------------------------------------------------


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def percentile(xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not xs:
        return math.nan
    s = sorted(xs)
    rank = max(1, math.ceil(p / 100 * len(s)))
    return s[rank - 1]


def rel_iqr(xs: Sequence[float]) -> float | None:
    if len(xs) < 4:
        return None
    q1, _, q3 = statistics.quantiles(xs, n=4)
    m = median(xs)
    return (q3 - q1) / m if m else None


# -- timing --------------------------------------------------------------------------------


@dataclass
class Impl:
    """One implementation under comparison. ``run()`` performs a batch of operations and
    returns how many; ``setup()`` (untimed) runs before every batch."""

    run: Callable[[], Awaitable[int]]
    setup: Callable[[], Awaitable[None]] | None = None


async def alternate(
    impls: dict[str, Impl],
    *,
    rounds: int,
    warmup: int = 1,
    cpu: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per operation of each implementation, one sample per round (see module doc).

    A collection runs before each timed batch so that garbage left by one implementation is
    not collected on another's clock (each pays for its own). What exists before the rounds
    is frozen out of the collector, so those collections stay cheap.

    ``cpu``, when given, receives this process's CPU seconds per operation likewise: the
    client-side cost alone, which a busy machine disturbs far less than wall time."""
    names = list(impls)
    samples: dict[str, list[float]] = {n: [] for n in names}
    gc.collect()
    gc.freeze()
    try:
        for r in range(warmup + rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                impl = impls[name]
                if impl.setup is not None:
                    await impl.setup()
                # Let background tasks (heartbeats, flushers) run between batches, as they
                # would in an application: a loop that never yields starves them (Strata's
                # bus then presumes its subscription dead and clears L1).
                await asyncio.sleep(0.002)
                gc.collect()
                c0 = time.process_time_ns()
                t0 = time.perf_counter_ns()
                ops = await impl.run()
                elapsed = time.perf_counter_ns() - t0
                used = time.process_time_ns() - c0
                if r >= warmup:
                    samples[name].append(elapsed / 1e9 / max(ops, 1))
                    if cpu is not None:
                        cpu.setdefault(name, []).append(used / 1e9 / max(ops, 1))
    finally:
        gc.unfreeze()
    return samples


def micros(samples: dict[str, list[float]]) -> dict[str, float]:
    """Median seconds per op -> µs per op."""
    return {name: median(xs) * 1e6 for name, xs in samples.items()}


def per_second(samples: dict[str, list[float]]) -> dict[str, float]:
    """Median seconds per item -> items per second."""
    return {name: 1 / median(xs) for name, xs in samples.items()}


def latency_check(
    scenario: str,
    variant: str,
    samples: dict[str, list[float]],
    *,
    strata: str = "strata",
    against: str | None = None,
    target: Target | None = None,
    note: str = "",
    cpu: dict[str, list[float]] | None = None,
) -> Check:
    """A µs/op check from ``alternate`` samples. With ``cpu`` (from the same rounds), the
    note also gives this process's CPU time per op for Strata and the ``against`` baseline:
    the client-side cost, which a loaded machine blurs much less than wall time."""
    values = micros(samples)
    if cpu is not None and against is not None:
        mine, theirs = median(cpu[strata]) * 1e6, median(cpu[against]) * 1e6
        used = f"client CPU {mine:.0f} vs {theirs:.0f} µs/op ({mine / theirs:.2f}×)"  # noqa: RUF001
        note = "; ".join(n for n in (note, used) if n)
    return Check(
        scenario=scenario,
        variant=variant,
        unit="µs/op",
        strata=values.pop(strata),
        baselines=values,
        against=against,
        target=target,
        spread=rel_iqr(samples[strata]),
        note=note,
    )


def le(value: float, label: str | None = None) -> Target:
    return Target("<=", value, "ratio", label or f"≤ {value:g}×")  # noqa: RUF001


def ge(value: float, label: str | None = None) -> Target:
    return Target(">=", value, "ratio", label or f"≥ {value:g}×")  # noqa: RUF001


# -- the namespace of one scenario run ----------------------------------------------------


@dataclass
class Env:
    """One scenario's private corner of the shared servers: a PostgreSQL schema and a Redis
    key prefix, both ``bench_<random>``, removed at the end.

    Unless ``durable``, every benchmark session (Strata's pool and the baselines' alike)
    runs with ``synchronous_commit=off``, a per-session setting: on this kind of machine a
    commit's WAL flush costs milliseconds, the same for everyone, and would hide what the
    client side costs, which is what the ratios are about."""

    database_url: str
    redis_url: str
    name: str  # schema = key prefix
    quick: bool
    durable: bool = False

    @property
    def dsn(self) -> str:
        """The asyncpg DSN of benchmark sessions (see the class docstring)."""
        dsn = asyncpg_dsn(self.database_url)
        if self.durable:
            return dsn
        return dsn + ("&" if "?" in dsn else "?") + "synchronous_commit=off"

    @property
    def channel(self) -> str:
        return f"{self.name}:inv"

    def config(self, **changes: Any) -> Config:
        """A Config on this run's schema, prefix and invalidation channel (benchmark
        sessions: ``dsn``)."""
        values: dict[str, Any] = {
            "database_url": self.dsn,
            "database_schema": self.name,
            "redis_url": self.redis_url,
            "key_prefix": self.name,
            "invalidation_channel": self.channel,
        }
        values.update(changes)
        return Config(**values)

    def table(self, name: str) -> str:
        return f"{quote(self.name)}.{quote(name)}"

    def key(self, *parts: str) -> str:
        """A Redis key under this run's prefix, for the baselines."""
        return ":".join((self.name, *parts))

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    async def connect(self) -> asyncpg.Connection:
        """A raw connection for a baseline (jsonb codec as in ``pg_init``)."""
        conn = await asyncpg.connect(self.dsn)
        await pg_init(conn)
        return conn

    async def pool(self, size: int = 10) -> asyncpg.Pool:
        pool = await asyncpg.create_pool(self.dsn, min_size=size, max_size=size, init=pg_init)
        assert pool is not None
        return pool

    def redis(self) -> aioredis.Redis:
        """A plain redis.asyncio client, as a hand-written baseline would make it."""
        return aioredis.Redis.from_url(self.redis_url)


async def pg_init(conn: asyncpg.Connection) -> None:
    """jsonb as Python data, in binary (what a careful hand-written asyncpg app does)."""
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + orjson.dumps(v),
        decoder=lambda b: orjson.loads(b[1:]),
        schema="pg_catalog",
        format="binary",
    )


@contextlib.asynccontextmanager
async def bench_env(
    quick: bool, name: str | None = None, *, own: bool = True, durable: bool = False
) -> AsyncIterator[Env]:
    """Create the schema (``own``), yield the Env, then drop the schema and delete the keys
    under the prefix. ``own=False`` joins an Env another process owns."""
    name = name or f"bench_{uuid.uuid4().hex[:8]}"
    env = Env(database_url(), redis_url(), name, quick, durable)
    if not own:
        yield env
        return
    conn = await asyncpg.connect(asyncpg_dsn(env.database_url))
    try:
        await conn.execute(f"CREATE SCHEMA {quote(env.name)}")
    finally:
        await conn.close()
    try:
        yield env
    finally:
        await _drop(env)


async def _drop(env: Env) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(env.database_url))
    try:
        await conn.execute("SET lock_timeout = '30s'")
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote(env.name)} CASCADE")
    finally:
        await conn.close()
    client = aioredis.Redis.from_url(env.redis_url)
    try:
        batch: list[bytes] = []
        async for k in client.scan_iter(match=f"{env.name}*", count=1000):
            batch.append(k)
            if len(batch) >= 1000:
                await client.delete(*batch)
                batch.clear()
        if batch:
            await client.delete(*batch)
    finally:
        await client.aclose()


async def twin_table(env: Env, table: str, suffix: str = "_raw") -> str:
    """A table like ``table`` (columns, defaults, indexes) for a baseline to write to, so
    that baselines and Strata never write each other's rows. Returns its qualified name."""
    conn = await asyncpg.connect(env.dsn)
    try:
        twin = env.table(table + suffix)
        await conn.execute(f"CREATE TABLE {twin} (LIKE {env.table(table)} INCLUDING ALL)")
    finally:
        await conn.close()
    return twin


def upsert_sql(table: str, columns: Sequence[str], keep: Sequence[str] = ("created_at",)) -> str:
    """What a hand-written upsert looks like: INSERT ... ON CONFLICT (id) DO UPDATE."""
    cols = ", ".join(quote(c) for c in columns)
    params = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    sets = ", ".join(
        f"{quote(c)} = EXCLUDED.{quote(c)}" for c in columns if c != "id" and c not in keep
    )
    return f"INSERT INTO {table} ({cols}) VALUES ({params}) ON CONFLICT (id) DO UPDATE SET {sets}"


def select_sql(table: str, columns: Sequence[str]) -> str:
    return f"SELECT {', '.join(quote(c) for c in columns)} FROM {table} WHERE id = $1"


# -- the entry point of a scenario process ------------------------------------------------

Run = Callable[[Env], Awaitable[list[Check]]]


def run_scenario(run: Run, argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", help="write the checks here (default: stdout)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--durable", action="store_true", help="keep synchronous_commit on")
    args = parser.parse_args(argv)

    async def main() -> list[Check]:
        async with bench_env(args.quick, durable=args.durable) as env:
            return await run(env)

    try:
        checks = asyncio.run(main())
    except Exception:
        traceback.print_exc()
        sys.exit(1)
    payload = json.dumps([c.to_json() for c in checks], indent=1, ensure_ascii=False)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(payload)
    else:
        print(payload)


# -- Strata stores --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_store(
    env: Env, *schemas: Any, create: bool = True, **config: Any
) -> AsyncIterator[Any]:
    """A connected, migrated DataStore on this run's namespace, closed at the end.

    When it has an invalidation bus, wait for its subscription: the bus clears L1 once it
    is confirmed (messages before it may have been missed), which would empty a cache
    filled a moment earlier."""
    from strata import DataStore

    if create:
        await create_tables(env, *schemas, **config)
    ds = DataStore(env.config(**config))
    for s in schemas:
        ds.register(s)
    async with ds:
        bus = getattr(ds, "_bus", None)  # no public readiness signal yet (see the report)
        if bus is not None:
            await bus.wait_connected(10.0)
        yield ds


def tier_misses(before: Any, after: Any, tier: str) -> str:
    """A note when gets during the timed rounds were served by another tier than ``tier``
    (an empty string when all were served as intended)."""
    served = {
        t: getattr(after, f"{t}_hits") - getattr(before, f"{t}_hits") for t in ("l1", "l2", "l3")
    }
    misses = after.misses - before.misses
    other = {t: n for t, n in served.items() if t != tier and n} | (
        {"miss": misses} if misses else {}
    )
    if not other:
        return ""
    return "not all from " + tier.upper() + ": " + ", ".join(f"{k}={v}" for k, v in other.items())


async def create_tables(env: Env, *schemas: Any, **config: Any) -> None:
    """``migrate()`` the schemas' tables. Through a store on the plain URL: migrations go
    through SQLAlchemy, which refuses server settings in the URL (see ``Env.dsn``)."""
    from strata import DataStore

    plain = DataStore(env.config(**config).with_(database_url=env.database_url, redis_url=None))
    for s in schemas:
        plain.register(s)
    async with plain:
        await plain.migrate()

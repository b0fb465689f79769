"""The stacks the tier-contract suite runs over, and a factory fixture building them.

Each stack is one way a user may configure Strata; every contract test runs on each stack
that has the tiers it needs, so every stack keeps the same promises.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from integration._scaleout import RedisClusterSet
from strata import Config, DataStore, Schema, WriteMode, generate_key
from strata.schema import MemPolicy

ENCRYPTION_KEY = generate_key()


@dataclass(frozen=True)
class Stack:
    name: str
    l3: str | None  # "sqlite" | "postgresql" | None
    l1: bool = True
    l2: bool = False
    write_mode: WriteMode = WriteMode.WRITE_THROUGH
    cluster: bool = False  # L2 is the session's private Redis Cluster (redis_cluster)

    def adapt(self, schema: Schema) -> Schema:
        return dataclasses.replace(
            schema,
            l1=(schema.l1 or MemPolicy()) if self.l1 else None,
            l2=schema.l2 if self.l2 else None,
            l3=schema.l3 if self.l3 else None,
            write_mode=self.write_mode,
        )

    @property
    def write_behind(self) -> bool:
        return self.write_mode is WriteMode.WRITE_BEHIND

    @property
    def bus(self) -> bool:
        """Instances hear each other's invalidations (the bus rides on Redis)."""
        return self.l2


WB = WriteMode.WRITE_BEHIND
STACKS = [
    Stack("l1+sqlite", "sqlite"),
    Stack("l1+l2+sqlite", "sqlite", l2=True),
    Stack("l1+pg", "postgresql"),
    Stack("l1+l2+pg", "postgresql", l2=True),
    Stack("l1-async", "postgresql", l2=True, write_mode=WriteMode.WRITE_THROUGH_L1_ASYNC),
    Stack("l2+pg", "postgresql", l1=False, l2=True),
    Stack("l2-only", None, l1=False, l2=True),
    Stack("write-behind", "postgresql", l2=True, write_mode=WB),
    Stack("write-behind+sqlite", "sqlite", write_mode=WB),
    Stack("write-behind+l2+sqlite", "sqlite", l2=True, write_mode=WB),
    Stack("l1+cluster+pg", "postgresql", l2=True, cluster=True),
]
L3_STACKS = [s for s in STACKS if s.l3 is not None]
PG_STACKS = [s for s in STACKS if s.l3 == "postgresql"]
L2_STACKS = [s for s in STACKS if s.l2]
BUS_L3_STACKS = [s for s in L3_STACKS if s.bus]  # two instances, kept coherent, over L3
WB_STACKS = [s for s in STACKS if s.write_behind]
L1_ASYNC_STACKS = [s for s in STACKS if s.write_mode is WriteMode.WRITE_THROUGH_L1_ASYNC]

MakeStore = Callable[..., Awaitable[DataStore]]


@dataclass
class Env:
    """What a contract test may ask about its stack: how to build stores and read raw rows."""

    stack: Stack
    make: MakeStore
    pg_url: str
    pg_schema: str
    sqlite_path: Path
    redis_url: str = ""

    def redis(self) -> Any:
        """A raw client on this stack's Redis (a ``RedisCluster`` on the cluster stack)."""
        if self.stack.cluster:
            return aioredis.RedisCluster.from_url(
                self.redis_url.replace("redis+cluster://", "redis://").split(",")[0]
            )
        return aioredis.Redis.from_url(self.redis_url)

    async def raw_query(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Rows of ``sql`` run on L3 behind Strata's back (``$1..$n`` placeholders; unqualified
        table names)."""
        if self.stack.l3 == "postgresql":
            conn = await asyncpg.connect(
                self.pg_url, server_settings={"search_path": self.pg_schema}
            )
            try:
                return [dict(r) for r in await conn.fetch(sql, *args)]
            finally:
                await conn.close()
        import sqlite3

        with sqlite3.connect(self.sqlite_path) as db:
            db.row_factory = sqlite3.Row
            found = db.execute(re.sub(r"\$\d+", "?", sql), args).fetchall()
            return [dict(r) for r in found]

    async def raw_value(self, sql: str, *args: Any) -> Any:
        """The first column of the first row of ``sql`` (None when there is no row)."""
        rows = await self.raw_query(sql, *args)
        return next(iter(rows[0].values())) if rows else None

    async def raw_row(self, table: str, id: Any) -> dict[str, Any] | None:
        """The row as stored in L3, bypassing Strata (write-behind: call flush_dirty first)."""
        if self.stack.l3 == "postgresql":
            conn = await asyncpg.connect(self.pg_url)
            try:
                row = await conn.fetchrow(
                    f'SELECT * FROM "{self.pg_schema}"."{table}" WHERE id = $1', id
                )
            finally:
                await conn.close()
            return dict(row) if row else None
        import sqlite3

        with sqlite3.connect(self.sqlite_path) as db:
            db.row_factory = sqlite3.Row
            found = db.execute(f'SELECT * FROM "{table}" WHERE id = ?', (id,)).fetchone()
            return dict(found) if found else None


# The shared Redis answers within a millisecond, but with 4 test workers on a 2-core machine
# a process can go unscheduled for longer than the default 0.5 s redis_timeout: the L2
# breaker then opened spuriously (a journaled write fell back to the in-process queue, a
# warm batch was skipped) in about one full run in three. Tests of timeouts set their own.
TEST_REDIS_TIMEOUT = 1.5


def config_for(
    stack: Stack,
    *,
    pg_url: str,
    pg_schema: str,
    redis_url: str,
    prefix: str,
    sqlite: Path,
    channel: str,
    **extra: Any,
) -> Config:
    db = f"sqlite:///{sqlite}" if stack.l3 != "postgresql" else pg_url
    settings: dict[str, Any] = {
        "database_url": db,
        "database_schema": pg_schema if stack.l3 == "postgresql" else None,
        "redis_url": redis_url if stack.l2 else None,
        "key_prefix": prefix,
        "invalidation_channel": channel,
        "encryption_key": ENCRYPTION_KEY,
        "write_behind_flush_interval": 0.05,
        "redis_timeout": TEST_REDIS_TIMEOUT,
    }
    return Config(**{**settings, **extra})


async def _env(
    stack: Stack, pg_url: str, pg_schema: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> AsyncIterator[Env]:
    stores: list[DataStore] = []
    if stack.cluster:
        redis_url = _cluster_url()
    sqlite = tmp_path / "contract.db"
    channel = f"{redis_prefix}:inv:{uuid.uuid4().hex[:6]}"

    async def make(
        *schemas: Schema, migrate: bool = True, adapt: bool = True, **extra: Any
    ) -> DataStore:
        """A connected store of this stack (``adapt=False``: the schemas' tiers as given);
        ``extra`` overrides Config fields."""
        config = config_for(
            stack,
            pg_url=pg_url,
            pg_schema=pg_schema,
            redis_url=redis_url,
            prefix=redis_prefix,
            sqlite=sqlite,
            channel=channel,
        )
        ds = DataStore(config.with_(**extra))
        for schema in schemas:
            ds.register(stack.adapt(schema) if adapt else schema)
        await ds.connect()
        stores.append(ds)
        if migrate and stack.l3 is not None:
            await ds.migrate()
        return ds

    try:
        yield Env(stack, make, pg_url, pg_schema, sqlite, redis_url)
    finally:
        for ds in stores:
            await ds.close()


_CLUSTER: list[RedisClusterSet] = []


def _cluster_url() -> str:
    """The session's private 3 + 3 node Redis Cluster, started on first use (see
    ``redis_cluster``, which stops it at the end of the session)."""
    if not _CLUSTER:
        _CLUSTER.append(RedisClusterSet().__enter__())
    return _CLUSTER[0].url


@pytest.fixture(scope="session", autouse=True)
def redis_cluster() -> Iterator[list[RedisClusterSet]]:
    """Stops the session's Redis Cluster (if a test started one) when the session ends."""
    try:
        yield _CLUSTER
    finally:
        while _CLUSTER:
            _CLUSTER.pop().close()


def _stack_fixture(stacks: list[Stack]) -> Any:
    @pytest.fixture(params=stacks, ids=lambda s: s.name)
    async def fixture(
        request: pytest.FixtureRequest,
        pg_url: str,
        pg_schema: str,
        redis_url: str,
        redis_prefix: str,
        tmp_path: Path,
    ) -> AsyncIterator[Env]:
        async for e in _env(request.param, pg_url, pg_schema, redis_url, redis_prefix, tmp_path):
            yield e

    return fixture


env = _stack_fixture(STACKS)
"""Every stack."""
l3_env = _stack_fixture(L3_STACKS)
"""Stacks with an L3 (transactions, search, raw rows)."""
l2_env = _stack_fixture(L2_STACKS)
"""Stacks with Redis."""
bus_env = _stack_fixture(BUS_L3_STACKS)
"""Stacks with an L3 where instances hear each other (Redis)."""
wb_env = _stack_fixture(WB_STACKS)
"""Write-behind stacks."""
l1_async_env = _stack_fixture(L1_ASYNC_STACKS)
"""Write-through-L1-async stacks."""


def applies(
    stack: Stack,
    *,
    pg: bool = False,
    bus: bool = False,
    l1: bool = False,
    l2: bool = False,
    shared_redis: bool = False,
) -> bool:
    """Whether a behaviour applies to the stack: PostgreSQL-only features (row locks,
    deferred constraints, a server to cut), L1, Redis, instances hearing each other, or a
    test that reads raw keys from the shared standalone Redis (``redis_client``: not the
    cluster stack's private cluster).
    Tests say so with ``@pytest.mark.needs(...)``; the stacks a test does not apply to are
    deselected at collection (integration/conftest.py), never run and skipped."""
    if pg and stack.l3 != "postgresql":
        return False
    if l1 and not stack.l1:
        return False
    if l2 and not stack.l2:
        return False
    if shared_redis and stack.cluster:
        return False
    return not (bus and not stack.bus)


def model_id(model: BaseModel) -> Any:
    return model.model_dump()["id"]


def l2_key(ds: DataStore, schema: str, id: str) -> str:
    """The Redis key of a cached row (DESIGN.md section 4)."""
    return f"{ds.config.key_prefix}:{schema}:{ds.schemas[schema].shape}:{id}"

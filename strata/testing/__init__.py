"""Strata for your own tests: stores without servers, and the tier contracts.

    MemoryRedis, MemoryL2   an in-memory L2 with pub/sub: two DataStores on one MemoryRedis
                            share values and hear each other's invalidations; outages and
                            refused writes on demand (``server.outage()``, ...)
    MemoryTransport         its invalidation-bus Transport
    embedded_config(dir)    a Config for a throwaway embedded store (SQLite file in ``dir``)
    where(ds, schema, id)   which tiers hold a row: {"l1", "l2", "l3"}
    eventually(check)       await until ``await check()`` is true (an invalidation arrived)
    strata.testing.plugin   the pytest plugin (registered through ``pytest11``): fixtures
                            ``strata_store``, ``strata_make_store``, ``strata_redis``,
                            ``strata_schemas``
    strata.testing.contract the tier contract suites, to run against a tier of your own

Nothing here is imported by ``import strata``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strata.codec import FMT_TOMBSTONE
from strata.config import Config
from strata.testing.memory_l2 import MemoryL2, MemoryRedis, MemoryTransport

if TYPE_CHECKING:
    from strata.datastore import DataStore, SchemaRef
    from strata.tiers.base import Id

__all__ = [
    "MemoryL2",
    "MemoryRedis",
    "MemoryTransport",
    "embedded_config",
    "eventually",
    "where",
]


def embedded_config(directory: str | Path, **settings: Any) -> Config:
    """A Config for an embedded store whose SQLite file lives in ``directory`` (a test's
    ``tmp_path``); ``settings`` are further Config fields. No environment is read."""
    url = f"sqlite:///{Path(directory) / 'strata.db'}"
    return Config(**{"database_url": url, **settings})


async def where(ds: DataStore, schema: SchemaRef, id: Id) -> frozenset[str]:
    """The tiers that hold the row ``id`` right now: a subset of {"l1", "l2", "l3"}.

    Reads each tier directly, filling and counting nothing; ``id`` is coerced as the store
    coerces it (``"7"`` for an int key finds 7)."""
    core = ds._core  # the router's tiers and routes: a test looks behind the facade
    rt = ds._ops.route(schema)
    key = rt.b.cs.coerce_id(id)
    held: set[str] = set()
    if rt.l1 is not None and rt.l1.get(key) is not None:
        held.add("l1")
    if core.l2 is not None and rt.b.l2_on:
        ((payload, _),) = await core.l2.get_many([rt.b.key(key)])
        if payload is not None and payload[1:2] != FMT_TOMBSTONE:  # a tombstone holds no row
            held.add("l2")
    if rt.b.l3_on and await core.l3.get_many(rt.b.cs, [key]):
        held.add("l3")
    return frozenset(held)


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = 5.0) -> None:
    """Return once ``await check()`` is true, trying again each time the event loop has run
    the other tasks (an invalidation being delivered); TimeoutError after ``timeout`` s."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - waits on the caller's condition
            await asyncio.sleep(0)

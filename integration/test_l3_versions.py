"""L3 versions: one version space whatever the client clock says, and row locks in key order.

L3 stores ``GREATEST(client clock, old version + 1)`` (DESIGN section 4), so an instance
whose clock lags still writes after the newest row, and every version a read sees advances
the reader's clock, so its next write-behind write (conditional: only over an older row) is
not refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from pydantic import BaseModel

from integration.stacks import Env
from strata import DataStore, Field, Schema, WriteMode
from strata.clock import HybridClock
from strata.schema import MemPolicy
from strata.tiers.postgres import PostgresTier
from strata.tiers.sqlite import SqliteTier

LAGGING_WALL = 1_000  # a clock stuck decades in the past: microseconds since the epoch


class Doc(BaseModel):
    id: str = Field(primary_key=True)
    body: str = ""


def _schema(env: Env, mode: WriteMode, *, l2: bool = True) -> Schema:
    schema = env.stack.adapt(Schema(name="docs", model=Doc))
    return dataclasses.replace(schema, write_mode=mode, l2=schema.l2 if l2 else None)


LaggingStore = Callable[[Schema], Awaitable[DataStore]]


@pytest.fixture
async def lagging(l3_env: Env) -> AsyncIterator[LaggingStore]:
    """Stores of this stack whose L3 tier (and so whose router) has a lagging clock."""
    stores: list[DataStore] = []

    async def make(schema: Schema) -> DataStore:
        template = await l3_env.make(schema, adapt=False)  # the stack's Config, migrated
        config = template.config.with_(instance_id=f"lagging{len(stores)}")
        log = logging.getLogger("strata.test")
        tier: PostgresTier | SqliteTier
        if l3_env.stack.l3 == "postgresql":
            tier = PostgresTier(config, logger=log)
        else:
            tier = SqliteTier(config, logger=log)
        tier.clock = HybridClock(wall=lambda: LAGGING_WALL)
        ds = DataStore(config, l3=tier)
        ds.register(schema)
        await ds.connect()
        stores.append(ds)
        return ds

    try:
        yield make
    finally:
        for ds in stores:
            await ds.close()


async def _version(env: Env, id: str) -> int:
    row = await env.raw_row("docs", id)
    assert row is not None
    return int(row["_strata_version"])


async def test_a_lagging_clocks_write_through_supersedes_a_write_behind_row(
    l3_env: Env, lagging: LaggingStore
) -> None:
    behind = await l3_env.make(_schema(l3_env, WriteMode.WRITE_BEHIND), adapt=False)
    await behind.set(Doc, Doc(id="d", body="old"))
    await behind.flush_dirty()
    old = await _version(l3_env, "d")
    through = await lagging(_schema(l3_env, WriteMode.WRITE_THROUGH))
    await through.set(Doc, Doc(id="d", body="new"))
    assert await _version(l3_env, "d") > old
    reader = await l3_env.make(_schema(l3_env, WriteMode.WRITE_THROUGH), adapt=False)
    assert (await reader.get(Doc, "d")).body == "new"


async def test_a_lagging_clocks_set_many_supersedes_newer_rows(
    l3_env: Env, lagging: LaggingStore
) -> None:
    behind = await l3_env.make(_schema(l3_env, WriteMode.WRITE_BEHIND), adapt=False)
    await behind.set_many(Doc, [Doc(id=f"d{i}", body="old") for i in range(5)])
    await behind.flush_dirty()
    old = {f"d{i}": await _version(l3_env, f"d{i}") for i in range(5)}
    through = await lagging(_schema(l3_env, WriteMode.WRITE_THROUGH))
    await through.set_many(Doc, [Doc(id=f"d{i}", body="new") for i in range(5)])
    for id, version in old.items():
        assert await _version(l3_env, id) > version
    reader = await l3_env.make(_schema(l3_env, WriteMode.WRITE_THROUGH), adapt=False)
    found = await reader.get_many(Doc, list(old))
    assert {d.body for d in found.values()} == {"new"}


async def test_a_lagging_clocks_delete_reaches_another_instance(
    l3_env: Env, lagging: LaggingStore
) -> None:
    behind = await l3_env.make(_schema(l3_env, WriteMode.WRITE_BEHIND), adapt=False)
    await behind.set(Doc, Doc(id="d", body="old"))
    await behind.flush_dirty()
    reader = await l3_env.make(_schema(l3_env, WriteMode.WRITE_THROUGH), adapt=False)
    assert (await reader.get(Doc, "d")).body == "old"  # cached in the reader (and L2)
    through = await lagging(_schema(l3_env, WriteMode.WRITE_THROUGH))
    await through.delete(Doc, "d")
    if not l3_env.stack.bus:  # no bus: the reader's L1 keeps its copy until its TTL
        return
    deadline = asyncio.get_running_loop().time() + 10
    while await reader.exists(Doc, "d"):
        assert asyncio.get_running_loop().time() < deadline, "the delete never arrived"
        await asyncio.sleep(0.01)
    other = await l3_env.make(_schema(l3_env, WriteMode.WRITE_THROUGH), adapt=False)
    assert not await other.exists(Doc, "d")


async def test_a_lagging_clocks_set_after_a_delete_is_read_back_by_every_instance(
    l3_env: Env, lagging: LaggingStore
) -> None:
    """L3 has no row to raise the lagging version past: the delete's version, kept in
    ``_strata_deleted``, is the bound, so the caches' tombstone does not hide the row."""
    writer = await l3_env.make(_schema(l3_env, WriteMode.WRITE_THROUGH), adapt=False)
    await writer.set(Doc, Doc(id="d", body="old"))
    await writer.delete(Doc, "d")
    through = await lagging(_schema(l3_env, WriteMode.WRITE_THROUGH))
    await through.set(Doc, Doc(id="d", body="new"))
    assert (await through.get(Doc, "d")).body == "new"
    reader = await l3_env.make(_schema(l3_env, WriteMode.WRITE_THROUGH), adapt=False)
    assert (await reader.get(Doc, "d")).body == "new"
    assert (await reader.get(Doc, "d", force_l3=True)).body == "new"


async def test_a_read_from_l3_advances_a_lagging_clock_so_its_write_behind_write_lands(
    l3_env: Env, lagging: LaggingStore
) -> None:
    writer = await l3_env.make(_schema(l3_env, WriteMode.WRITE_THROUGH, l2=False), adapt=False)
    await writer.set(Doc, Doc(id="d", body="old"))
    behind = await lagging(_schema(l3_env, WriteMode.WRITE_BEHIND, l2=False))
    assert (await behind.get(Doc, "d")).body == "old"
    await behind.set(Doc, Doc(id="d", body="new"))
    await behind.flush_dirty()
    row = await l3_env.raw_row("docs", "d")
    assert row is not None and row["body"] == "new"


@pytest.mark.needs(l2=True)
async def test_a_read_from_l2_advances_a_lagging_clock_so_its_write_behind_write_lands(
    l3_env: Env, lagging: LaggingStore
) -> None:
    writer = await l3_env.make(_schema(l3_env, WriteMode.WRITE_THROUGH), adapt=False)
    await writer.set(Doc, Doc(id="d", body="old"))  # in L2 now
    schema = dataclasses.replace(_schema(l3_env, WriteMode.WRITE_BEHIND), l1=MemPolicy())
    behind = await lagging(schema)
    assert (await behind.get(Doc, "d")).body == "old"
    assert behind.stats().l2_hits == 1 and behind.stats().l3_queries == 0  # L2 served it
    await behind.set(Doc, Doc(id="d", body="new"))
    await behind.flush_dirty()
    row = await l3_env.raw_row("docs", "d")
    assert row is not None and row["body"] == "new"


@pytest.mark.needs(pg=True)
async def test_concurrent_set_many_of_the_same_ids_in_any_order_never_deadlock(
    l3_env: Env,
) -> None:
    schema = _schema(l3_env, WriteMode.WRITE_THROUGH)
    stores = [await l3_env.make(schema, adapt=False) for _ in range(2)]
    ids = [f"k{i:02d}" for i in range(20)]
    rng = random.Random(11)
    calls = []
    for n in range(60):
        order = ids[:]
        rng.shuffle(order)
        calls.append(stores[n % 2].set_many(Doc, [Doc(id=i, body=f"w{n}") for i in order]))
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    rows = {i: await l3_env.raw_row("docs", i) for i in ids}
    reader = await l3_env.make(schema, adapt=False)
    found = await reader.get_many(Doc, ids)
    for i in ids:
        row = rows[i]
        assert row is not None
        assert found[i].body == row["body"]
        # The instance that wrote the stored value reads it back (with a bus, both do).
        last_writer = stores[int(row["body"][1:]) % 2]
        for ds in stores if l3_env.stack.bus else [last_writer]:
            assert (await ds.get(Doc, i)).body == row["body"]

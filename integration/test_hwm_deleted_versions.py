"""A row written after a delete gets a version above the delete's, whatever the writer's clock.

Instance A deletes id k (version V, the tombstone Redis and L1 keep); instance B, whose
clock lags, then writes k. L3 has no row to raise B's version past, so without a stored
high-water mark B's row lands below V: Redis refuses it (the tombstone is newer), readers
get NotFound while L3 holds the row, and the row reappears once the tombstone expires.
L3 keeps, per table and id, the newest delete version (``_strata_deleted``) and every
upsert stores ``GREATEST(clock, old + 1, deleted + 1)``. Both L3 dialects, every write path.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from strata.clock import HybridClock, wall_micros
from strata.config import Config
from strata.migrations import migrate
from strata.schema import VERSION_COLUMN, CompiledSchema
from strata.testing import embedded_config
from strata.testing.contract import l3_contract_schema
from strata.tiers.postgres import PostgresTier
from strata.tiers.sqlite import SqliteTier

LAGGING_WALL = 1_000  # a clock stuck decades in the past: microseconds since the epoch
Tier = PostgresTier | SqliteTier
MakeTier = Callable[..., Any]


@pytest.fixture(params=["postgresql", "sqlite"])
def hwm_config(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    if request.param == "postgresql":
        pg_url = request.getfixturevalue("pg_url")
        pg_schema = request.getfixturevalue("pg_schema")
        return Config(database_url=pg_url, database_schema=pg_schema)
    return embedded_config(tmp_path)


@pytest.fixture
def hwm_schema(hwm_config: Config) -> CompiledSchema:
    return l3_contract_schema(hwm_config)


@pytest.fixture
async def tiers(
    hwm_config: Config, hwm_schema: CompiledSchema
) -> AsyncIterator[Callable[[Callable[[], int]], Any]]:
    """``await tiers(wall)``: a connected L3 tier of this dialect whose clock reads ``wall``."""
    await migrate(hwm_config, [hwm_schema])
    made: list[Tier] = []

    async def make(wall: Callable[[], int] = wall_micros) -> Tier:
        log = logging.getLogger("strata.test")
        tier: Tier
        if hwm_config.dialect == "postgresql":
            tier = PostgresTier(hwm_config, logger=log)
        else:
            tier = SqliteTier(hwm_config, logger=log)
        tier.clock = HybridClock(wall=wall)
        tier.register(hwm_schema)
        await tier.connect()
        made.append(tier)
        return tier

    yield make
    for tier in made:
        await tier.close()


def _row(id: str, n: int = 0) -> dict[str, Any]:
    return {"id": id, "n": n, "note": ""}


async def _stored_version(tier: Tier, cs: CompiledSchema, id: str) -> int:
    (row,) = await tier.get_many(cs, [id])
    return int(row[VERSION_COLUMN])


async def test_hwm_a_lagging_set_after_a_delete_stores_a_version_above_the_delete(
    tiers: MakeTier, hwm_schema: CompiledSchema
) -> None:
    deleter, lagging = await tiers(), await tiers(lambda: LAGGING_WALL)
    await deleter.upsert_many(hwm_schema, [_row("k")])
    deleted = await deleter.delete_many(hwm_schema, ["k"])

    stamped = await lagging.upsert_many(hwm_schema, [_row("k", 1)])

    assert stamped["k"][VERSION_COLUMN] > deleted
    assert await _stored_version(deleter, hwm_schema, "k") > deleted


async def test_hwm_a_lagging_set_many_after_a_delete_stores_versions_above_the_delete(
    tiers: MakeTier, hwm_schema: CompiledSchema
) -> None:
    ids = [f"k{i}" for i in range(5)]
    deleter, lagging = await tiers(), await tiers(lambda: LAGGING_WALL)
    await deleter.upsert_many(hwm_schema, [_row(i) for i in ids])
    deleted = await deleter.delete_many(hwm_schema, ids)

    stamped = await lagging.upsert_many(hwm_schema, [_row(i, 1) for i in [*ids, "fresh"]])

    assert all(stamped[i][VERSION_COLUMN] > deleted for i in ids)
    for i in ids:
        assert await _stored_version(deleter, hwm_schema, i) > deleted


async def test_hwm_a_delete_of_a_missing_id_still_bounds_a_later_lagging_set(
    tiers: MakeTier, hwm_schema: CompiledSchema
) -> None:
    """The caches keep a tombstone for every id a delete names, present in L3 or not."""
    deleter, lagging = await tiers(), await tiers(lambda: LAGGING_WALL)
    deleted = await deleter.delete_many(hwm_schema, ["never-written"])

    stamped = await lagging.upsert_many(hwm_schema, [_row("never-written")])

    assert stamped["never-written"][VERSION_COLUMN] > deleted


async def test_hwm_a_set_in_the_deleting_transaction_stores_a_version_above_the_delete(
    tiers: MakeTier, hwm_schema: CompiledSchema
) -> None:
    tier = await tiers(lambda: LAGGING_WALL)
    await tier.upsert_many(hwm_schema, [_row("k")])
    tx = await tier.begin()
    deleted = await tier.delete_many(hwm_schema, ["k"], tx=tx)
    tier.clock = HybridClock(wall=lambda: LAGGING_WALL)  # forget what the delete observed
    stamped = await tier.upsert_many(hwm_schema, [_row("k", 1)], tx=tx)
    await tx.commit()

    assert stamped["k"][VERSION_COLUMN] > deleted


async def test_hwm_a_write_behind_delete_bounds_a_later_lagging_set(
    tiers: MakeTier, hwm_schema: CompiledSchema
) -> None:
    deleter, lagging = await tiers(), await tiers(lambda: LAGGING_WALL)
    first = await deleter.upsert_many(hwm_schema, [_row("k")])
    version = int(first["k"][VERSION_COLUMN]) + 1_000
    assert await deleter.delete_if_older(hwm_schema, [("k", version)]) == 1

    stamped = await lagging.upsert_many(hwm_schema, [_row("k", 1)])

    assert stamped["k"][VERSION_COLUMN] > version


async def test_hwm_a_set_over_an_existing_row_is_raised_past_it_not_past_old_deletes(
    tiers: MakeTier, hwm_schema: CompiledSchema
) -> None:
    """The update path is unchanged: GREATEST(clock, old + 1)."""
    tier = await tiers()
    await tier.upsert_many(hwm_schema, [_row("k")])
    deleted = await tier.delete_many(hwm_schema, ["k"])
    again = await tier.upsert_many(hwm_schema, [_row("k", 1)])
    lagging = await tiers(lambda: LAGGING_WALL)
    stamped = await lagging.upsert_many(hwm_schema, [_row("k", 2)])
    assert deleted < again["k"][VERSION_COLUMN] < stamped["k"][VERSION_COLUMN]
    patched = await lagging.update_columns(hwm_schema, "k", {"n": 3})
    assert patched is not None and patched[VERSION_COLUMN] > stamped["k"][VERSION_COLUMN]


async def test_hwm_expired_delete_versions_are_swept_by_later_deletes(
    tiers: MakeTier, hwm_schema: CompiledSchema, hwm_config: Config
) -> None:
    """The table stays bounded: each delete removes expired entries (older than an hour by
    the deleter's clock), never the ids it is deleting now."""
    tier = await tiers()
    await tier.delete_many(hwm_schema, [f"old{i}" for i in range(20)])
    later = await tiers(lambda: wall_micros() + 2 * 3_600_000_000)
    await later.delete_many(hwm_schema, ["new", "old0"])
    left = await _deleted_ids(tier, hwm_config, hwm_schema)
    assert left == {"new", "old0"}


async def _deleted_ids(tier: Tier, config: Config, cs: CompiledSchema) -> set[str]:
    if isinstance(tier, PostgresTier):
        sql = f'SELECT id FROM "{config.database_schema}"._strata_deleted WHERE tbl = $1'
        return {r["id"] for r in await tier.fetch(sql, [cs.table.name])}
    rows = await tier.fetch("SELECT id FROM _strata_deleted WHERE tbl = ?", [cs.table.name])
    return {r["id"] for r in rows}

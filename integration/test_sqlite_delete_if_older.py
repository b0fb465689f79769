"""SQLite's ``delete_if_older``: the write-behind journal's version-guarded delete, in one
transaction (as ``PostgresTier.delete_if_older`` does in one statement), so a replayed or
late delete never removes a row written after it. Tier level, then through the journal on
SQLite with Redis."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from strata import Config, DataStore, Field, Schema, WriteMode
from strata.errors import NotFoundError
from strata.migrations import migrate
from strata.schema import VERSION_COLUMN, CompiledSchema
from strata.testing import embedded_config
from strata.testing.contract import l3_contract_schema
from strata.tiers.sqlite import SqliteTier


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return embedded_config(tmp_path)


@pytest.fixture
def cs(config: Config) -> CompiledSchema:
    return l3_contract_schema(config)


@pytest.fixture
async def tier(config: Config, cs: CompiledSchema) -> AsyncIterator[SqliteTier]:
    await migrate(config, [cs])
    tier = SqliteTier(config, logger=logging.getLogger("strata.test"))
    tier.register(cs)
    await tier.connect()
    yield tier
    await tier.close()


async def test_sqlite_delete_if_older_deletes_only_rows_older_than_the_given_version(
    tier: SqliteTier, cs: CompiledSchema
) -> None:
    stamped = await tier.upsert_many(cs, [{"id": i, "n": 0, "note": ""} for i in "abc"])
    v = {i: int(r[VERSION_COLUMN]) for i, r in stamped.items()}

    n = await tier.delete_if_older(cs, [("a", v["a"] + 1), ("b", v["b"]), ("missing", 1)])

    assert n == 1
    assert {r["id"] for r in await tier.get_many(cs, ["a", "b", "c"])} == {"b", "c"}


async def test_sqlite_delete_if_older_replayed_leaves_a_newer_row(
    tier: SqliteTier, cs: CompiledSchema
) -> None:
    first = await tier.upsert_many(cs, [{"id": "a", "n": 0, "note": ""}])
    delete = [("a", int(first["a"][VERSION_COLUMN]) + 1)]
    assert await tier.delete_if_older(cs, delete) == 1
    await tier.upsert_many(cs, [{"id": "a", "n": 1, "note": "after"}])

    assert await tier.delete_if_older(cs, delete) == 0  # a duplicate delivery

    (row,) = await tier.get_many(cs, ["a"])
    assert row["note"] == "after"
    assert await tier.delete_if_older(cs, []) == 0


class Note(BaseModel):
    id: str = Field(primary_key=True)
    text: str = ""


async def test_sqlite_write_behind_delete_reaches_l3_and_spares_a_newer_write(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    config = Config(
        database_url=f"sqlite:///{tmp_path / 'wb.db'}",
        redis_url=redis_url,
        key_prefix=redis_prefix,
        invalidation_channel=f"{redis_prefix}:inv",
        write_behind_flush_interval=0.05,
    )
    behind = DataStore(config.with_(instance_id="behind"))
    behind.register(Schema(name="notes", model=Note, write_mode=WriteMode.WRITE_BEHIND))
    through = DataStore(config.with_(instance_id="through"))
    through.register(Schema(name="notes", model=Note))
    async with behind, through:
        await behind.migrate()
        await behind.set_many(Note, [Note(id="gone", text="x"), Note(id="kept", text="x")])
        await behind.flush_dirty()
        await behind.delete(Note, "gone")
        await behind.delete(Note, "kept")
        await through.set(Note, Note(id="kept", text="newer"))  # before the delete's flush
        await behind.flush_dirty()

        with pytest.raises(NotFoundError):
            await through.get(Note, "gone", force_l3=True)
        assert (await through.get(Note, "kept", force_l3=True)).text == "newer"

"""Smaller contract gaps of issue 11 on the embedded store (L1 + SQLite, no server):
``get_many`` and the negative cache / ``before_get``, ``RedisPolicy`` TTLs, empty primary
keys, NaN and naive datetimes."""

from __future__ import annotations

import math
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from strata import Config, DataStore, Field, RedisPolicy, Schema, SchemaHooks, errors


class Item(BaseModel):
    id: str = Field(primary_key=True)
    n: int = 0
    data: dict[str, Any] = {}
    at: datetime | None = None


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "gaps.db"


async def _store(db_path: Path, **schema: Any) -> DataStore:
    ds = DataStore(Config(database_url=f"sqlite:///{db_path}"))
    ds.register(Schema(name="items", model=Item, **schema))
    await ds.connect()
    await ds.migrate()
    return ds


@pytest.fixture
async def ds(db_path: Path):
    store = await _store(db_path)
    try:
        yield store
    finally:
        await store.close()


def raw_count(db_path: Path) -> int:
    with sqlite3.connect(db_path) as db:
        return int(db.execute("SELECT count(*) FROM items").fetchone()[0])


# -- get_many: negative cache and before_get --------------------------------------------


async def test_get_many_of_a_missing_id_asks_l3_once_like_get(ds: DataStore) -> None:
    before = ds.stats().l3_queries
    for _ in range(20):
        assert await ds.get_many(Item, ["missing"]) == {}
    assert ds.stats().l3_queries - before == 1


async def test_get_many_after_get_of_a_missing_id_asks_l3_no_more(ds: DataStore) -> None:
    with pytest.raises(errors.NotFoundError):
        await ds.get(Item, "missing")
    before = ds.stats().l3_queries
    assert await ds.get_many(Item, ["missing"]) == {}
    assert ds.stats().l3_queries == before


async def test_get_many_still_finds_a_row_written_after_the_miss(ds: DataStore) -> None:
    assert await ds.get_many(Item, ["late"]) == {}
    await ds.set(Item, Item(id="late", n=3))
    found = await ds.get_many(Item, ["late"])
    assert found["late"].n == 3


async def test_get_many_fires_before_get_for_every_id(db_path: Path) -> None:
    seen: list[Any] = []
    store = await _store(db_path, hooks=SchemaHooks(before_get=seen.append))
    try:
        await store.set(Item, Item(id="a"))
        await store.get_many(Item, ["a", "b"])
        assert seen == ["a", "b"]
    finally:
        await store.close()


async def test_a_raising_before_get_aborts_get_many(db_path: Path) -> None:
    def refuse(id: Any) -> None:
        raise PermissionError(f"no {id}")

    store = await _store(db_path, hooks=SchemaHooks(before_get=refuse))
    try:
        with pytest.raises(PermissionError):
            await store.get_many(Item, ["a"])
    finally:
        await store.close()


# -- RedisPolicy ttl ---------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [0, 0.0, -1, timedelta(0), timedelta(seconds=-5)])
def test_redis_policy_refuses_a_zero_or_negative_ttl(ttl: Any) -> None:
    with pytest.raises(errors.ConfigError, match="ttl"):
        RedisPolicy(ttl=ttl)


def test_redis_policy_ttl_none_means_no_expiry_and_the_default_means_config() -> None:
    config = Config(database_url="sqlite://", default_l2_ttl=120)
    never = DataStore(config).register(Schema(name="a", model=Item, l2=RedisPolicy(ttl=None)))
    default = DataStore(config).register(Schema(name="b", model=Item, l2=RedisPolicy()))
    given = DataStore(config).register(Schema(name="c", model=Item, l2=RedisPolicy(ttl=30)))
    assert never.l2_ttl is None
    assert default.l2_ttl == 120
    assert given.l2_ttl == 30


# -- empty primary key ------------------------------------------------------------------


async def test_set_of_an_empty_primary_key_is_refused(ds: DataStore) -> None:
    with pytest.raises(errors.MissingPrimaryKeyError):
        await ds.set(Item, Item(id=""))
    with pytest.raises(errors.MissingPrimaryKeyError):
        await ds.set_many(Item, [Item(id="ok"), Item(id="")])
    assert raw_count(ds_path(ds)) == 0


@pytest.mark.parametrize("verb", ["get", "delete", "get_many", "exists"])
async def test_reads_and_deletes_of_an_empty_primary_key_are_refused(
    ds: DataStore, verb: str
) -> None:
    call: dict[str, Any] = {
        "get": lambda: ds.get(Item, ""),
        "delete": lambda: ds.delete(Item, ""),
        "get_many": lambda: ds.get_many(Item, ["a", ""]),
        "exists": lambda: ds.exists(Item, ""),
    }
    with pytest.raises(errors.MissingPrimaryKeyError):
        await call[verb]()


# -- NaN / inf in JSON, naive datetimes -------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
async def test_nan_or_inf_in_a_json_field_is_refused_and_nothing_written(
    ds: DataStore, bad: float
) -> None:
    with pytest.raises(errors.InvalidValueError, match="data"):
        await ds.set(Item, Item(id="x", data={"score": [1.0, bad]}))
    assert raw_count(ds_path(ds)) == 0
    with pytest.raises(errors.NotFoundError):
        await ds.get(Item, "x")


async def test_a_naive_datetime_reads_back_as_utc_from_every_tier(ds: DataStore) -> None:
    naive = datetime(2024, 5, 1, 12, 30, 15, 123456)
    stored = await ds.set(Item, Item(id="t", at=naive))
    expected = naive.replace(tzinfo=UTC)
    assert stored.at == expected and stored.at.tzinfo is not None
    from_l1 = await ds.get(Item, "t")
    from_l3 = await ds.get(Item, "t", force_l3=True)
    assert from_l1.at == from_l3.at == expected
    assert from_l1.at is not None and from_l1.at.utcoffset() == timedelta(0)


def ds_path(ds: DataStore) -> Path:
    return Path(ds.config.sqlite_path)


class Measure(BaseModel):
    id: str = Field(primary_key=True)
    f: float = 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
async def test_nan_or_inf_in_a_float_field_is_refused_with_a_typed_error(
    tmp_path: Path, bad: float
) -> None:
    ds = DataStore(Config(database_url=f"sqlite:///{tmp_path / 'm.db'}"))
    ds.register(Schema(name="measures", model=Measure))
    async with ds:
        await ds.migrate()
        with pytest.raises(errors.InvalidValueError, match="NaN"):
            await ds.set(Measure, Measure(id="m", f=bad))
        with pytest.raises(errors.NotFoundError):
            await ds.get(Measure, "m")
        await ds.set(Measure, Measure(id="m", f=1.5))  # a finite float is fine
        assert (await ds.get(Measure, "m", force_l3=True)).f == 1.5

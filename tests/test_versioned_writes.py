"""``ds.update`` and ``ds.patch`` on the embedded store (L1 + SQLite): two DataStores on one
database file lose no increment; bad input is refused before anything is written.

Races are forced with a barrier: every writer reads, waits until all have read, then writes.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from strata import Config, DataStore, Field, Schema, SchemaHooks, WriteMode, errors, generate_key
from strata import sync as strata_sync

WRITERS = 64
KEY = generate_key()


class Counter(BaseModel):
    id: str = Field(primary_key=True)
    n: int = 0
    label: str = ""
    data: dict[str, Any] = {}
    at: datetime | None = None
    token: str = Field(default="", encrypted=True)
    secret: str = Field(default="", omit_cache=True)
    created_at: datetime = Field(auto_now_add=True)


def _config(path: Path) -> Config:
    return Config(database_url=f"sqlite:///{path}", encryption_key=KEY)


async def _store(path: Path, **schema: Any) -> DataStore:
    ds = DataStore(_config(path))
    ds.register(Schema(name="counters", model=Counter, **schema))
    await ds.connect()
    await ds.migrate()
    return ds


@pytest.fixture
async def two(tmp_path: Path):
    a = await _store(tmp_path / "v.db")
    b = await _store(tmp_path / "v.db")
    await a.set(Counter, Counter(id="c", secret="S"))
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def raw(ds: DataStore, id: str = "c") -> dict[str, Any] | None:
    with sqlite3.connect(ds.config.sqlite_path) as db:
        db.row_factory = sqlite3.Row
        found = db.execute("SELECT * FROM counters WHERE id = ?", (id,)).fetchone()
        return dict(found) if found else None


async def _race(stores: tuple[DataStore, DataStore], bump: Any) -> None:
    barrier = asyncio.Barrier(WRITERS)
    async with asyncio.timeout(120):  # a guard against a hang, not an assertion
        await asyncio.gather(*(bump(stores[i % 2], barrier) for i in range(WRITERS)))


async def test_concurrent_updates_through_two_stores_lose_nothing(
    two: tuple[DataStore, DataStore],
) -> None:
    async def bump(ds: DataStore, barrier: asyncio.Barrier) -> None:
        waited = False

        async def inc(c: Counter) -> Counter:
            nonlocal waited
            if not waited:
                waited = True
                await barrier.wait()
            return c.model_copy(update={"n": c.n + 1})

        await ds.update(Counter, "c", inc, attempts=WRITERS + 10)

    await _race(two, bump)
    row = raw(two[0])
    assert row is not None and (row["n"], row["secret"]) == (WRITERS, "S")


async def test_the_same_race_with_get_and_set_loses_updates(
    two: tuple[DataStore, DataStore],
) -> None:
    async def bump(ds: DataStore, barrier: asyncio.Barrier) -> None:
        c = await ds.get(Counter, "c", force_l3=True)
        await barrier.wait()
        await ds.set(Counter, c.model_copy(update={"n": c.n + 1}))

    await _race(two, bump)
    row = raw(two[0])
    assert row is not None and row["n"] < WRITERS


async def test_update_may_change_the_value_in_place(two: tuple[DataStore, DataStore]) -> None:
    a, _ = two

    def inc(c: Counter) -> None:
        c.n += 2

    stored = await a.update(Counter, "c", inc)
    assert stored.n == 2 and (await a.get(Counter, "c")).n == 2
    row = raw(a)
    assert row is not None and row["n"] == 2


async def test_update_keeps_created_at_and_the_omitted_fields(
    two: tuple[DataStore, DataStore],
) -> None:
    a, _ = two
    before = raw(a)
    stored = await a.update(
        Counter, "c", lambda c: c.model_copy(update={"created_at": datetime(2000, 1, 1)})
    )
    row = raw(a)
    assert before is not None and row is not None
    assert (row["created_at"], row["secret"]) == (before["created_at"], "S")
    assert stored.created_at.year != 2000


async def test_update_runs_the_set_hooks(tmp_path: Path) -> None:
    seen: list[str] = []

    def before_set(v: Counter) -> Counter:
        seen.append("before_set")
        return v.model_copy(update={"label": "hooked"})

    ds = await _store(
        tmp_path / "h.db",
        hooks=SchemaHooks(before_set=before_set, after_set=lambda v: seen.append("after_set")),
    )
    try:
        await ds.set(Counter, Counter(id="c"))
        seen.clear()
        stored = await ds.update(Counter, "c", lambda c: c.model_copy(update={"n": 1}))
        await ds.patch(Counter, "c", n=2)
        assert stored.label == "hooked"
        assert seen == ["before_set", "after_set", "after_set"]
    finally:
        await ds.close()


@pytest.mark.parametrize("attempts", [0, -1])
async def test_update_needs_at_least_one_attempt(
    two: tuple[DataStore, DataStore], attempts: int
) -> None:
    with pytest.raises(errors.InvalidValueError, match="attempts"):
        await two[0].update(Counter, "c", lambda c: c, attempts=attempts)


async def test_update_may_not_change_the_primary_key(two: tuple[DataStore, DataStore]) -> None:
    a, _ = two
    with pytest.raises(errors.InvalidValueError, match="primary key"):
        await a.update(Counter, "c", lambda c: c.model_copy(update={"id": "d"}))
    assert raw(a, "d") is None


async def test_update_refuses_nan_and_writes_nothing(two: tuple[DataStore, DataStore]) -> None:
    a, _ = two
    before = raw(a)
    with pytest.raises(errors.InvalidValueError, match="NaN"):
        await a.update(Counter, "c", lambda c: c.model_copy(update={"data": {"x": math.nan}}))
    assert raw(a) == before


async def test_a_user_exception_in_fn_reaches_the_caller_and_writes_nothing(
    two: tuple[DataStore, DataStore],
) -> None:
    a, _ = two
    before = raw(a)

    def boom(c: Counter) -> Counter:
        raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        await a.update(Counter, "c", boom)
    assert raw(a) == before


async def test_patch_normalises_datetimes_and_refuses_nan(
    two: tuple[DataStore, DataStore],
) -> None:
    a, _ = two
    stored = await a.patch(Counter, "c", at=datetime(2024, 1, 2, 3, 4, 5))
    assert stored.at == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert (await a.get(Counter, "c", force_l3=True)).at == stored.at
    before = raw(a)
    with pytest.raises(errors.InvalidValueError, match="NaN"):
        await a.patch(Counter, "c", data={"v": [math.inf]})
    assert raw(a) == before


async def test_patch_of_encrypted_and_omitted_fields(two: tuple[DataStore, DataStore]) -> None:
    a, b = two
    await a.patch(Counter, "c", token="tok", secret="S2")
    row = raw(a)
    assert row is not None and row["secret"] == "S2" and b"tok" not in row["token"]
    fresh = await b.get(Counter, "c", force_l3=True)
    assert (fresh.token, fresh.secret) == ("tok", "S2")
    assert (await a.get(Counter, "c")).secret == ""  # omit_cache: never in L1


@pytest.mark.parametrize(
    "fields",
    [{}, {"nope": 1}, {"n": "x"}, {"created_at": datetime(2000, 1, 1)}, {"id": "d"}],
    ids=["nothing", "unknown", "wrong-type", "auto-now-add", "primary-key"],
)
async def test_a_bad_patch_writes_nothing(
    two: tuple[DataStore, DataStore], fields: dict[str, Any]
) -> None:
    a, _ = two
    before = raw(a)
    with pytest.raises(errors.InvalidValueError):
        await a.patch(Counter, "c", **fields)
    assert raw(a) == before


@pytest.mark.parametrize("verb", ["update", "patch"])
async def test_write_behind_schemas_refuse_version_checked_writes(
    tmp_path: Path, verb: str
) -> None:
    ds = await _store(tmp_path / "wb.db", write_mode=WriteMode.WRITE_BEHIND)
    try:
        await ds.set(Counter, Counter(id="c"))
        with pytest.raises(errors.UnsupportedOperationError):
            if verb == "update":
                await ds.update(Counter, "c", lambda c: c)
            else:
                await ds.patch(Counter, "c", n=1)
    finally:
        await ds.close()


async def test_cache_only_schemas_refuse_version_checked_writes(tmp_path: Path) -> None:
    ds = await _store(tmp_path / "c.db", l3=None)
    try:
        with pytest.raises(errors.UnsupportedOperationError):
            await ds.patch(Counter, "c", n=1)
    finally:
        await ds.close()


def test_the_sync_facade_has_update_and_patch(tmp_path: Path) -> None:
    with strata_sync.DataStore(_config(tmp_path / "s.db")) as ds:
        ds.register(Schema(name="counters", model=Counter))
        ds.migrate()
        ds.set(Counter, Counter(id="c"))
        assert ds.update(Counter, "c", lambda c: c.model_copy(update={"n": c.n + 1})).n == 1
        assert ds.patch(Counter, "c", label="s").label == "s"
        assert ds.get(Counter, "c").n == 1


async def test_update_returning_a_new_value_keeps_the_omitted_fields_it_did_not_assign(
    two: tuple[DataStore, DataStore],
) -> None:
    a, _ = two
    stored = await a.update(Counter, "c", lambda c: Counter(id="c", n=c.n + 1))
    row = raw(a)
    assert row is not None and (row["n"], row["secret"]) == (1, "S")
    assert stored.secret == "S"

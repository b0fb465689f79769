"""The embedded default end to end: L1 + SQLite, no server."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel

from strata import (
    Config,
    DataStore,
    Field,
    MemPolicy,
    Schema,
    SchemaHooks,
    errors,
    generate_key,
)


class Player(BaseModel):
    id: str = Field(primary_key=True)
    username: str = Field(unique=True, index=True)
    email: str | None = Field(default=None, index=True)
    level: int = Field(default=1)
    tags: list[str] = []
    created_at: datetime = Field(auto_now_add=True)
    updated_at: datetime = Field(auto_now=True)
    password_hash: str = Field(default="", omit_cache=True)
    api_key: str = Field(default="", encrypted=True)
    note: str = Field(default="", omit_l1=True)
    scratch: str = Field(default="", transient=True)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "strata.db"


@pytest.fixture
async def ds(db_path: Path):
    store = DataStore(Config(database_url=f"sqlite:///{db_path}", encryption_key=generate_key()))
    store.register(Schema(name="players", model=Player))
    async with store:
        await store.migrate()
        yield store


def raw_row(db_path: Path, id: str) -> dict[str, object] | None:
    with sqlite3.connect(db_path) as db:
        db.row_factory = sqlite3.Row
        found = db.execute("SELECT * FROM players WHERE id = ?", (id,)).fetchone()
        return dict(found) if found else None


async def test_set_then_get_round_trips(ds: DataStore) -> None:
    await ds.set(Player, Player(id="p1", username="ann", tags=["a"]))
    got = await ds.get(Player, "p1")
    assert (got.username, got.level, got.tags) == ("ann", 1, ["a"])


async def test_get_by_schema_name_works_like_by_model(ds: DataStore) -> None:
    await ds.set("players", Player(id="p1", username="ann"))
    got = await ds.get("players", "p1")
    assert isinstance(got, Player)


async def test_get_of_missing_id_raises_not_found_with_its_data(ds: DataStore) -> None:
    with pytest.raises(errors.NotFoundError) as info:
        await ds.get(Player, "nobody")
    assert (info.value.schema, info.value.id) == ("players", "nobody")


async def test_row_is_in_sqlite_after_set(ds: DataStore, db_path: Path) -> None:
    await ds.set(Player, Player(id="p1", username="ann", level=4))
    row = raw_row(db_path, "p1")
    assert row is not None and row["username"] == "ann" and row["level"] == 4


async def test_get_result_does_not_alias_the_cache(ds: DataStore) -> None:
    await ds.set(Player, Player(id="p1", username="ann", tags=["a"]))
    first = await ds.get(Player, "p1")
    first.tags.append("mutated")
    first.username = "changed"
    again = await ds.get(Player, "p1")
    assert again.tags == ["a"] and again.username == "ann"


async def test_set_does_not_keep_the_callers_object(ds: DataStore) -> None:
    p = Player(id="p1", username="ann", tags=["a"])
    await ds.set(Player, p)
    p.tags.append("mutated")
    p.username = "changed"
    assert (await ds.get(Player, "p1")).tags == ["a"]
    assert (await ds.get(Player, "p1")).username == "ann"


async def test_second_get_is_an_l1_hit(ds: DataStore) -> None:
    await ds.set(Player, Player(id="p1", username="ann"))
    before = ds.stats()
    await ds.get(Player, "p1")
    after = ds.stats()
    assert after.l1_hits == before.l1_hits + 1
    assert after.l3_queries == before.l3_queries


async def test_force_l3_reads_the_database(ds: DataStore) -> None:
    await ds.set(Player, Player(id="p1", username="ann"))
    before = ds.stats().l3_queries
    await ds.get(Player, "p1", force_l3=True)
    assert ds.stats().l3_queries == before + 1


async def test_delete_removes_everywhere_and_is_idempotent(ds: DataStore, db_path: Path) -> None:
    await ds.set(Player, Player(id="p1", username="ann"))
    await ds.delete(Player, "p1")
    await ds.delete(Player, "p1")
    assert raw_row(db_path, "p1") is None
    assert not await ds.exists(Player, "p1")
    with pytest.raises(errors.NotFoundError):
        await ds.get(Player, "p1")


async def test_exists_sees_rows_not_cached(ds: DataStore) -> None:
    await ds.set(Player, Player(id="p1", username="ann"))
    await ds.invalidate(Player, "p1")
    assert await ds.exists(Player, "p1")
    assert not await ds.exists(Player, "p2")


async def test_get_many_returns_found_ids_only(ds: DataStore) -> None:
    await ds.set_many(Player, [Player(id=f"p{i}", username=f"u{i}") for i in range(5)])
    await ds.invalidate(Player, "p3")
    got = await ds.get_many(Player, ["p0", "p3", "nope", "p4"])
    assert list(got) == ["p0", "p3", "p4"]
    assert got["p3"].username == "u3"


async def test_set_many_with_a_repeated_id_keeps_the_last(ds: DataStore) -> None:
    await ds.set_many(Player, [Player(id="p", username="a"), Player(id="p", username="b")])
    assert (await ds.get(Player, "p", force_l3=True)).username == "b"


async def test_auto_now_add_is_kept_and_auto_now_moves(ds: DataStore) -> None:
    first = await ds.set(Player, Player(id="p1", username="ann"))
    await asyncio.sleep(0.01)
    again = Player(id="p1", username="ann2", created_at=datetime.now(UTC) + timedelta(days=3))
    second = await ds.set(Player, again)
    stored = await ds.get(Player, "p1", force_l3=True)
    assert stored.created_at == first.created_at == second.created_at
    assert stored.updated_at > first.updated_at
    assert stored.created_at.tzinfo is not None and stored.updated_at.utcoffset() == timedelta(0)


async def test_omit_cache_field_is_stored_but_not_cached(ds: DataStore, db_path: Path) -> None:
    await ds.set(Player, Player(id="p1", username="ann", password_hash="h4sh"))
    assert raw_row(db_path, "p1")["password_hash"] == "h4sh"  # type: ignore[index]
    assert (await ds.get(Player, "p1")).password_hash == ""  # served from L1
    assert (await ds.get(Player, "p1", force_l3=True)).password_hash == "h4sh"


async def test_omit_l1_field_is_not_in_l1(ds: DataStore) -> None:
    await ds.set(Player, Player(id="p1", username="ann", note="n"))
    assert (await ds.get(Player, "p1")).note == ""
    assert (await ds.get(Player, "p1", force_l3=True)).note == "n"


async def test_transient_field_is_never_stored(ds: DataStore, db_path: Path) -> None:
    await ds.set(Player, Player(id="p1", username="ann", scratch="tmp"))
    assert "scratch" not in raw_row(db_path, "p1")  # type: ignore[operator]
    assert (await ds.get(Player, "p1")).scratch == ""
    assert (await ds.get(Player, "p1", force_l3=True)).scratch == ""


async def test_encrypted_field_is_ciphertext_in_sqlite(ds: DataStore, db_path: Path) -> None:
    await ds.set(Player, Player(id="p1", username="ann", api_key="sk-live-123"))
    stored = raw_row(db_path, "p1")["api_key"]  # type: ignore[index]
    assert isinstance(stored, bytes) and b"sk-live-123" not in stored
    assert (await ds.get(Player, "p1", force_l3=True)).api_key == "sk-live-123"


async def test_wrong_key_raises_decryption_error(db_path: Path) -> None:
    async with DataStore(
        Config(database_url=f"sqlite:///{db_path}", encryption_key=generate_key())
    ) as ds:
        ds.register(Schema(name="players", model=Player))
        await ds.migrate()
        await ds.set(Player, Player(id="p1", username="ann", api_key="secret"))
    async with DataStore(
        Config(database_url=f"sqlite:///{db_path}", encryption_key=generate_key())
    ) as other:
        other.register(Schema(name="players", model=Player))
        with pytest.raises(errors.DecryptionError):
            await other.get(Player, "p1")


async def test_ciphertext_moved_to_another_row_fails_to_decrypt(
    ds: DataStore, db_path: Path
) -> None:
    await ds.set(Player, Player(id="p1", username="ann", api_key="mine"))
    await ds.set(Player, Player(id="p2", username="bob", api_key="his"))
    with sqlite3.connect(db_path) as db:
        db.execute(
            "UPDATE players SET api_key = (SELECT api_key FROM players WHERE id='p1') WHERE id='p2'"
        )
    with pytest.raises(errors.DecryptionError):
        await ds.get(Player, "p2", force_l3=True)


async def test_before_set_hook_that_raises_stores_nothing(db_path: Path) -> None:
    def refuse(value: Player) -> None:
        if value.level > 99:
            raise ValueError("level too high")

    async with DataStore(Config(database_url=f"sqlite:///{db_path}")) as ds:
        ds.register(Schema(name="p", model=Tiny, hooks=SchemaHooks(before_set=refuse)))
        await ds.migrate()
        with pytest.raises(ValueError, match="too high"):
            await ds.set(Tiny, Tiny(id="x", level=100))
        assert not await ds.exists(Tiny, "x")


async def test_hooks_run_sync_or_async(db_path: Path) -> None:
    seen: list[str] = []

    async def before_set(value: Tiny) -> Tiny:
        seen.append("before_set")
        return value.model_copy(update={"level": value.level + 1})

    def after_get(value: Tiny) -> None:
        seen.append(f"after_get:{value.level}")

    async with DataStore(Config(database_url=f"sqlite:///{db_path}")) as ds:
        ds.register(
            Schema(
                name="p",
                model=Tiny,
                hooks=SchemaHooks(
                    before_set=before_set,
                    after_set=lambda v: seen.append("after_set"),
                    before_get=lambda i: seen.append(f"before_get:{i}"),
                    after_get=after_get,
                ),
            )
        )
        await ds.migrate()
        await ds.set(Tiny, Tiny(id="x", level=1))
        await ds.get(Tiny, "x")
    assert seen == ["before_set", "after_set", "before_get:x", "after_get:2"]


class Tiny(BaseModel):
    id: str = Field(primary_key=True)
    level: int = 0


async def test_on_evict_hook_sees_capacity_evictions(db_path: Path) -> None:
    evicted: list[str] = []
    async with DataStore(Config(database_url=f"sqlite:///{db_path}")) as ds:
        ds.register(
            Schema(
                name="p",
                model=Tiny,
                l1=MemPolicy(max_entries=2),
                hooks=SchemaHooks(on_evict=lambda k, v: evicted.append(k)),
            )
        )
        await ds.migrate()
        for i in range(3):
            await ds.set(Tiny, Tiny(id=str(i)))
        assert evicted == ["0"]
        assert ds.stats().l1_entries == 2


async def test_set_without_primary_key_is_a_typed_error(ds: DataStore) -> None:
    with pytest.raises(errors.MissingPrimaryKeyError):
        await ds.set(Player, Player.model_construct(username="x"))


async def test_set_of_the_wrong_type_is_a_typed_error(ds: DataStore) -> None:
    with pytest.raises(errors.InvalidValueError):
        await ds.set(Player, Tiny(id="x"))  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidValueError):
        await ds.set(Player, {"id": "x"})  # username missing


async def test_set_accepts_a_dict(ds: DataStore) -> None:
    await ds.set(Player, {"id": "d1", "username": "dict"})
    assert (await ds.get(Player, "d1")).username == "dict"


async def test_unknown_schema_is_a_typed_error(ds: DataStore) -> None:
    with pytest.raises(errors.SchemaNotRegisteredError):
        await ds.get("nope", "x")
    with pytest.raises(errors.SchemaNotRegisteredError):
        await ds.get(Tiny, "x")


async def test_unique_violation_is_an_integrity_error_and_nothing_is_cached(
    ds: DataStore,
) -> None:
    await ds.set(Player, Player(id="p1", username="ann"))
    with pytest.raises(errors.IntegrityError):
        await ds.set(Player, Player(id="p2", username="ann"))
    assert not await ds.exists(Player, "p2")


async def test_use_before_connect_and_after_close_is_refused(db_path: Path) -> None:
    ds = DataStore(Config(database_url=f"sqlite:///{db_path}"))
    ds.register(Schema(name="p", model=Tiny))
    with pytest.raises(errors.LifecycleError, match="not connected"):
        await ds.get(Tiny, "x")
    async with ds:
        await ds.migrate()
    with pytest.raises(errors.LifecycleError, match="closed"):
        await ds.get(Tiny, "x")


async def test_operations_before_migrate_say_to_migrate(db_path: Path) -> None:
    async with DataStore(Config(database_url=f"sqlite:///{db_path}")) as ds:
        ds.register(Schema(name="p", model=Tiny))
        with pytest.raises(errors.TierError, match="migrate"):
            await ds.set(Tiny, Tiny(id="x"))


async def test_stats_count_operations(ds: DataStore) -> None:
    await ds.set(Player, Player(id="p1", username="ann"))
    await ds.get(Player, "p1")
    with pytest.raises(errors.NotFoundError):
        await ds.get(Player, "zz")
    await ds.delete(Player, "p1")
    s = ds.stats()
    assert (s.sets, s.gets, s.deletes, s.l1_hits, s.misses) == (1, 2, 1, 1, 1)


async def test_concurrent_gets_of_a_cold_key_share_one_query(ds: DataStore) -> None:
    await ds.set(Player, Player(id="p1", username="ann"))
    await ds.invalidate(Player, "p1")
    before = ds.stats().l3_queries
    got = await asyncio.gather(*(ds.get(Player, "p1") for _ in range(100)))
    assert {g.username for g in got} == {"ann"}
    assert ds.stats().l3_queries == before + 1


async def test_missing_id_is_remembered_briefly(ds: DataStore) -> None:
    with pytest.raises(errors.NotFoundError):
        await ds.get(Player, "ghost")
    before = ds.stats().l3_queries
    for _ in range(10):
        with pytest.raises(errors.NotFoundError):
            await ds.get(Player, "ghost")
    assert ds.stats().l3_queries == before
    await ds.set(Player, Player(id="ghost", username="g"))  # a set drops the memory
    assert (await ds.get(Player, "ghost")).username == "g"


async def test_data_survives_a_restart(db_path: Path) -> None:
    async with DataStore(Config(database_url=f"sqlite:///{db_path}")) as ds:
        ds.register(Schema(name="p", model=Tiny))
        await ds.migrate()
        await ds.set(Tiny, Tiny(id="x", level=5))
    async with DataStore(Config(database_url=f"sqlite:///{db_path}")) as ds:
        ds.register(Schema(name="p", model=Tiny))
        assert (await ds.get(Tiny, "x")).level == 5

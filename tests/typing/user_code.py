"""What a user's type checker sees: checked by ``mypy --strict`` in ``make lint`` (it is
never run; pytest does not collect it)."""

from __future__ import annotations

from typing import Any, assert_type
from uuid import UUID

from pydantic import BaseModel

from strata import DataStore, Field, Id, Projection, Q, Stats, Tx
from strata.sync import DataStore as SyncDataStore


class Player(BaseModel):
    id: str = Field(primary_key=True)
    level: int = 1


async def reads(ds: DataStore) -> None:
    assert_type(await ds.get(Player, "p1"), Player)
    assert_type(await ds.get("players", "p1"), BaseModel)
    assert_type(await ds.get_many(Player, ["p1", 2, UUID(int=3)]), dict[Id, Player])
    assert_type(await ds.exists(Player, "p1"), bool)
    assert_type(await ds.search(Player, Q().filter(level__gt=1)), list[Player])
    assert_type(await ds.search(Player), list[Player])
    assert_type(await ds.search_cached(Player, Q().limit(5)), list[Player])
    assert_type(Q().fields("id", "level"), Projection)
    assert_type(Q().fields("id").order_by("level"), Projection)
    assert_type(await ds.search(Player, Q().fields("id")), list[dict[str, Any]])
    assert_type(await ds.search_cached(Player, Q().fields("id")), list[dict[str, Any]])
    assert_type(await ds.count(Player), int)
    assert_type(ds.stats(), Stats)


async def writes(ds: DataStore) -> None:
    assert_type(await ds.set(Player, Player(id="p1")), Player)
    assert_type(await ds.set(Player, {"id": "p2"}), Player)
    assert_type(await ds.set_many(Player, [Player(id="p1")]), list[Player])
    await ds.delete(Player, "p1")
    await ds.delete_many(Player, ["p1", "p2"])


async def version_checked_writes(ds: DataStore) -> None:
    def in_place(p: Player) -> None:
        p.level += 1

    async def fetched(p: Player) -> Player:
        return p.model_copy(update={"level": 2})

    bump = lambda p: p.model_copy(update={"level": p.level + 1})  # noqa: E731
    assert_type(await ds.update(Player, "p1", bump), Player)
    assert_type(await ds.update(Player, "p1", in_place, attempts=3), Player)
    assert_type(await ds.update(Player, "p1", fetched), Player)
    assert_type(await ds.update("players", "p1", lambda p: p), BaseModel)
    assert_type(await ds.patch(Player, "p1", level=2), Player)
    assert_type(await ds.patch("players", "p1", level=2), BaseModel)

    def wrong(p: Player) -> int:
        return p.level

    await ds.update(Player, "p1", wrong)  # type: ignore[arg-type]  # fn must give a Player
    await ds.update(Player, "p1", bump, attempts="3")  # type: ignore[call-overload]


def version_checked_writes_blocking(ds: SyncDataStore) -> None:
    assert_type(ds.update(Player, "p1", lambda p: p), Player)
    assert_type(ds.patch(Player, "p1", level=2), Player)
    assert_type(ds.patch("players", "p1", level=2), BaseModel)


async def in_a_transaction(ds: DataStore) -> None:
    async with ds.tx() as tx:
        assert_type(tx, Tx)
        assert_type(await tx.get(Player, "p1", for_update=True), Player)
        assert_type(await tx.get_many(Player, ["p1"]), dict[Id, Player])
        assert_type(await tx.search(Player, Q()), list[Player])
        assert_type(await tx.search(Player, Q().fields("level")), list[dict[str, Any]])
        assert_type(await tx.set(Player, Player(id="p1")), Player)
        assert_type(await tx.set_many(Player, [Player(id="p1")]), list[Player])


def ids_are_typed(ds: DataStore) -> None:
    ds.get(Player, 1.5)  # type: ignore[call-overload]  # a float is not an Id

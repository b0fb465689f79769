"""What a user's type checker sees: checked by ``mypy --strict`` in ``make lint`` (it is
never run; pytest does not collect it)."""

from __future__ import annotations

from typing import Any, assert_type
from uuid import UUID

from pydantic import BaseModel

from strata import DataStore, Field, Id, Projection, Q, Stats, Tx


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

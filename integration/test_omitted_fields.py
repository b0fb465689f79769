"""A set never changes an omitted column (omit_cache / omit_l1) the caller did not assign.

A value read from a cache carries its omitted fields as unknown (not in ``model_fields_set``);
writing it back keeps what L3 stores for them.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from integration.stacks import Env
from strata import Field, Schema


class Player(BaseModel):
    id: str = Field(primary_key=True)
    level: int = 1
    created_at: datetime = Field(auto_now_add=True)
    password_hash: str = Field(default="", omit_cache=True)
    note: str = Field(default="", omit_l1=True)


async def test_get_modify_set_of_a_cached_copy_keeps_the_omitted_columns(l3_env: Env) -> None:
    ds = await l3_env.make(Schema(name="players", model=Player))
    await ds.set(Player, Player(id="p", password_hash="HASH", note="NOTE"))
    await ds.flush_dirty()
    await ds.get(Player, "p")  # fills the caches
    cached = await ds.get(Player, "p")
    cached.level = 2
    await ds.set(Player, cached)
    await ds.flush_dirty()
    row = await l3_env.raw_row("players", "p")
    assert row is not None
    assert (row["level"], row["password_hash"], row["note"]) == (2, "HASH", "NOTE")


async def test_an_assigned_omitted_field_is_written(l3_env: Env) -> None:
    ds = await l3_env.make(Schema(name="players", model=Player))
    await ds.set(Player, Player(id="p", password_hash="HASH", note="NOTE"))
    await ds.flush_dirty()
    cached = await ds.get(Player, "p")
    cached.password_hash = "NEW"
    await ds.set(Player, cached.model_copy(update={"note": ""}))
    await ds.flush_dirty()
    row = await l3_env.raw_row("players", "p")
    assert row is not None
    assert (row["password_hash"], row["note"]) == ("NEW", "")


async def test_a_new_row_without_the_omitted_field_gets_its_default(l3_env: Env) -> None:
    ds = await l3_env.make(Schema(name="players", model=Player))
    await ds.set(Player, Player(id="p"))
    await ds.flush_dirty()
    row = await l3_env.raw_row("players", "p")
    assert row is not None
    assert (row["password_hash"], row["note"]) == ("", "")

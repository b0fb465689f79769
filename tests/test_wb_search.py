"""Write-behind searches read the writer's own writes (issue 11): a search reads L3, so
this instance's queued writes of the schema reach it first; embedded (in-process queue)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from strata import Config, DataStore, Field, Q, Schema, WriteMode


class Note(BaseModel):
    id: str = Field(primary_key=True)
    tag: str = Field(default="", index=True)


async def test_a_write_behind_search_sees_rows_still_queued(tmp_path: Path) -> None:
    config = Config(
        database_url=f"sqlite:///{tmp_path / 's.db'}",
        write_behind_flush_interval=3600,
        write_behind_flush_threshold=10**6,
    )
    ds = DataStore(config)
    ds.register(Schema(name="notes", model=Note, write_mode=WriteMode.WRITE_BEHIND))
    async with ds:
        await ds.migrate()
        await ds.set_many(Note, [Note(id=f"n{i}", tag="t") for i in range(3)])
        await ds.delete(Note, "n1")
        assert [n.id for n in await ds.search(Note, Q().filter(tag="t").order_by("id"))] == [
            "n0",
            "n2",
        ]
        assert await ds.count(Note, Q().filter(tag="t")) == 2
        await ds.set(Note, Note(id="n0", tag="u"))  # the queued value is what is matched
        assert [n.id for n in await ds.search(Note, Q().filter(tag="u"))] == ["n0"]

"""The repair after an L2 outage: what this instance could not write or publish while Redis
was away is dropped from Redis and announced to every other instance. It counts as pending
until those invalidations are out, so whoever waits for "no repair pending" (an operator, a
failover test) knows other instances have been told to drop what they read meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import BaseModel

from strata import Config, DataStore, Field, Schema
from tests.test_injected_tiers import DictL2


class Note(BaseModel):
    id: str = Field(primary_key=True)
    text: str = ""


class FailedOverL2(DictL2):
    """A replicated L2 that just came back from a failover (its promoted replica may lack
    acknowledged writes), whose clean-up of a schema's keys waits on ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = True
        self.cleaning = asyncio.Event()
        self.release = asyncio.Event()

    def take_possible_loss(self) -> bool:
        lost, self.lost = self.lost, False
        return lost

    async def delete_pattern(self, pattern: str) -> int:
        self.cleaning.set()
        await self.release.wait()
        return await super().delete_pattern(pattern)


async def test_a_repair_is_pending_until_its_invalidations_are_out(tmp_path: Path) -> None:
    l2 = FailedOverL2()
    async with DataStore(Config(database_url=f"sqlite:///{tmp_path / 'n.db'}"), l2=l2) as ds:
        ds.register(Schema(name="notes", model=Note))
        await ds.migrate()
        await ds.set(Note, Note(id="a", text="before"))
        coherence = ds._coherence
        running = set(ds._core.tasks)
        coherence.on_l2_recover()  # the tier is back after a failover
        (repair,) = ds._core.tasks - running
        await asyncio.wait_for(l2.cleaning.wait(), 5)
        # Redis is being cleaned, other instances not told yet: the repair is not over.
        assert coherence.l2_repairs_pending > 0
        l2.release.set()
        await asyncio.wait_for(repair, 5)
        assert coherence.l2_repairs_pending == 0
        assert not any(k.endswith(":a") for k in l2.data)  # what Redis may hold is gone
        assert (await ds.get(Note, "a")).text == "before"

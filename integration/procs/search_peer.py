"""Another process writing one row, for the cached-search tests.

    python -m integration.procs.search_peer '<Config fields as JSON>' '<Score as JSON>'

Opens its own ``DataStore`` on the given settings, registers ``SCORES``, stores the value
with one ``set`` and exits 0 (printing the stored value as JSON). The test process imports
``Score`` / ``SCORES`` from here, so both sides share one model (and one shape hash).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from pydantic import BaseModel

from strata import Config, DataStore, Field, Schema


class Score(BaseModel):
    id: str = Field(primary_key=True)
    player: str
    region: str
    points: int
    token: str = Field(default="", encrypted=True)


SCORES = Schema(name="scores", model=Score)


async def main(settings: dict[str, Any], value: dict[str, Any]) -> None:
    ds = DataStore(Config(**settings))
    ds.register(SCORES)
    async with ds:
        stored = await ds.set(Score, Score(**value))
    sys.stdout.write(stored.model_dump_json() + "\n")


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1]), json.loads(sys.argv[2])))

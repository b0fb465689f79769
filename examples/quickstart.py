"""Quick start: declare a model, store it, read it back through the tiers.

Runs on the embedded default (L1 memory + a SQLite file) with no server. Point it at
PostgreSQL and Redis with STRATA_DATABASE_URL / STRATA_REDIS_URL.
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel

from strata import Config, DataStore, Field, Index, MemPolicy, Schema, errors


class Player(BaseModel):
    id: str = Field(primary_key=True)
    username: str = Field(unique=True, index=True)
    email: str | None = Field(default=None, index=True)
    level: int = Field(default=1)
    created_at: datetime = Field(auto_now_add=True)
    updated_at: datetime = Field(auto_now=True)
    password_hash: str = Field(default="", omit_cache=True)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = Config.from_env()
        if config.database_url is None:  # embedded: a throwaway SQLite file for the demo
            config = config.with_(database_url=f"sqlite:///{Path(tmp) / 'demo.db'}")
        ds = DataStore(config)
        ds.register(
            Schema(
                name="players",
                model=Player,
                l1=MemPolicy(ttl=60, max_entries=10_000),
                indexes=[Index(fields=["level", "created_at"])],
            )
        )
        async with ds:
            await ds.migrate()
            stored = await ds.set(Player, Player(id="p1", username="ann", password_hash="x"))
            print(f"stored   {stored.username!r} created_at={stored.created_at:%H:%M:%S}")

            p = await ds.get(Player, "p1")  # an L1 hit: typed as Player
            print(f"read     {p.username!r} level={p.level} password_hash={p.password_hash!r}")

            await ds.set(Player, p.model_copy(update={"level": p.level + 1}))
            print(f"levelled {(await ds.get(Player, 'p1')).level}")

            await ds.set_many(
                Player, [Player(id=f"p{i}", username=f"user{i}") for i in range(2, 6)]
            )
            many = await ds.get_many(Player, ["p2", "p3", "missing"])
            print(f"get_many {sorted(many)}")

            await ds.delete(Player, "p1")
            try:
                await ds.get(Player, "p1")
            except errors.NotFoundError as exc:
                print(f"deleted  {exc}")

            s = ds.stats()
            print(f"stats    gets={s.gets} l1_hits={s.l1_hits} l3_hits={s.l3_hits} sets={s.sets}")


if __name__ == "__main__":
    asyncio.run(main())

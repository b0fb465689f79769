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

TIERS = {"l1": "L1 (this process's memory)", "l2": "L2 (Redis)", "l3": "L3 (the database)"}


class ServedBy:
    """An Observer: remembers which tier served the last read, so the demo can say so."""

    def __init__(self) -> None:
        self.tier: str | None = None

    def on_operation(
        self, op: str, schema: str, seconds: float, error: BaseException | None, tier: str | None
    ) -> None:
        if op == "get":
            self.tier = tier

    def __str__(self) -> str:
        return TIERS.get(self.tier or "", "no tier (not found)")


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
        served = ServedBy()
        config = Config.from_env(observer=served)
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

            p = await ds.get(Player, "p1")  # typed as Player
            print(f"read     {p.username!r} level={p.level}  <- served by {served}")
            print(
                f"         password_hash={p.password_hash!r}: the field is omit_cache=True, so "
                "it is stored in L3 only and never cached; a cached copy carries its default"
            )
            p = await ds.get(Player, "p1", force_l3=True)
            print(f"read     password_hash={p.password_hash!r} with force_l3=True  <- {served}")

            await ds.invalidate(Player, "p1")  # drop the cached copies
            p = await ds.get(Player, "p1")
            print(f"read     after invalidate  <- served by {served} (and cached again)")
            p = await ds.get(Player, "p1")
            print(f"read     once more         <- served by {served}")

            # Writing back a copy read from a cache keeps the stored omit_cache value: a
            # field the copy did not assign is left as PostgreSQL (or SQLite) has it.
            cached = await ds.get(Player, "p1")
            await ds.set(Player, cached.model_copy(update={"level": cached.level + 1}))
            p = await ds.get(Player, "p1", force_l3=True)
            print(f"levelled {p.level}, password_hash still {p.password_hash!r}")

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

"""Issue 15 operations on PostgreSQL + Redis: key rotation, the sync facade, require_redis."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
from pydantic import BaseModel

from strata import Config, DataStore, Field, Schema, generate_key
from strata.rotate import key_id_of, rotate_key
from strata.sync import DataStore as SyncDataStore

OLD, NEW = generate_key(), generate_key()


class Secret(BaseModel):
    id: str = Field(primary_key=True)
    token: str = Field(default="", encrypted=True)


def store(settings: dict[str, Any], keys: dict[str, str], active: str) -> DataStore:
    ds = DataStore(Config(**settings, encryption_key=keys, encryption_key_id=active))
    ds.register(Schema(name="secrets", model=Secret))
    return ds


async def test_rotation_on_postgres_reencrypts_rows_and_drops_redis_copies(
    settings: dict[str, Any], pg_conn: asyncpg.Connection
) -> None:
    async with store(settings, {"old": OLD}, "old") as ds:
        await ds.migrate()
        await ds.set_many(Secret, [Secret(id=f"s{i}", token=f"t{i}") for i in range(25)])
    async with store(settings, {"old": OLD, "new": NEW}, "new") as ds:
        await ds.get(Secret, "s3")  # cached in L2 with the old key's ciphertext
        report = await rotate_key(ds, batch=10)
    assert report.rotated == {"secrets": 25}
    rows = await pg_conn.fetch("SELECT token FROM secrets")
    assert {key_id_of(r["token"]) for r in rows} == {"new"}
    async with store(settings, {"new": NEW}, "new") as ds:  # the old key is gone now
        got = await ds.get_many(Secret, [f"s{i}" for i in range(25)])
    assert sorted(v.token for v in got.values()) == sorted(f"t{i}" for i in range(25))


class Counter(BaseModel):
    id: str = Field(primary_key=True)
    n: int = 0


async def test_sync_store_shared_by_threads_on_postgres_and_redis(
    settings: dict[str, Any], pg_conn: asyncpg.Connection
) -> None:
    def run() -> None:
        ds = SyncDataStore(Config(**settings))
        ds.register(Schema(name="counters", model=Counter))
        with ds:
            ds.migrate()
            start = threading.Barrier(8)

            def worker(t: int) -> None:
                start.wait()
                for i in range(10):
                    ds.set(Counter, Counter(id=f"{t}-{i}", n=i))
                    assert ds.get(Counter, f"{t}-{i}").n == i

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(worker, range(8)))
            with ds.tx() as tx:
                tx.set(Counter, Counter(id="total", n=80))

    await asyncio.to_thread(run)
    assert await pg_conn.fetchval("SELECT count(*) FROM counters") == 81
    assert [t.name for t in threading.enumerate() if t.name == "strata-sync-loop"] == []


async def test_require_redis_connects_when_redis_answers(settings: dict[str, Any]) -> None:
    ds = DataStore(Config(**settings, require_redis=True))
    async with ds:
        assert ds._core.l2 is not None and ds._core.l2.available

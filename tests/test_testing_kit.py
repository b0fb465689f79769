"""strata.testing: the in-memory L2 with pub/sub, the plugin's fixtures, the tier contracts
(run here against Strata's own in-process tiers; integration/ runs them on Redis)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from strata import Config, Field, MemPolicy, Schema
from strata.errors import TierError, TierUnavailableError
from strata.migrations import migrate
from strata.schema import CompiledSchema
from strata.testing import MemoryL2, MemoryRedis, embedded_config, eventually, where
from strata.testing.contract import L1TierContract, L2TierContract, L3TierContract
from strata.testing.plugin import StoreFactory
from strata.tiers.base import L1Tier, L2Tier, L3Tier
from strata.tiers.memory import MemoryTier
from strata.tiers.sqlite import SqliteTier

ROOT = Path(__file__).resolve().parents[1]


class Note(BaseModel):
    id: str = Field(primary_key=True)
    text: str = ""


NOTES = Schema(name="notes", model=Note, l1=MemPolicy(ttl=600))


@pytest.fixture
def strata_schemas() -> list[Schema]:
    return [NOTES]


class TestMemoryL2(L2TierContract):
    @pytest.fixture
    def l2_tier(self) -> L2Tier:
        return MemoryL2()


class TestMemoryL1(L1TierContract):
    @pytest.fixture
    def l1_tier(self) -> L1Tier:
        tier: MemoryTier[object, BaseModel] = MemoryTier()
        return tier


async def test_memory_l2_expires_keys_on_its_clock() -> None:
    now = [100.0]
    server = MemoryRedis(clock=lambda: now[0])
    tier = MemoryL2(server)
    await tier.set_raw("k", b"v", 10.0)
    assert await tier.get_many(["k"]) == [(b"v", 10.0)]
    now[0] += 10.0
    assert await tier.get_many(["k"]) == [(None, None)]


async def test_two_stores_on_one_memory_redis_hear_each_others_invalidations(
    strata_make_store: StoreFactory, strata_redis: MemoryRedis
) -> None:
    writer, reader = await strata_make_store(), await strata_make_store()
    await writer.set(Note, Note(id="a", text="one"))
    assert (await reader.get(Note, "a")).text == "one"
    assert await where(reader, Note, "a") == {"l1", "l2", "l3"}
    await writer.set(Note, Note(id="a", text="two"))

    async def reads_two() -> bool:  # once the message has dropped the reader's L1 copy
        return (await reader.get(Note, "a")).text == "two"

    await eventually(reads_two)
    await writer.delete(Note, "a")

    async def gone_from_l1() -> bool:
        return "l1" not in await where(reader, Note, "a")

    await eventually(gone_from_l1)
    assert await where(reader, Note, "a") == frozenset()
    assert any(k.endswith(":a") for k in strata_redis.scan())  # its tombstone, not a row


async def test_without_the_shared_l2_a_second_store_keeps_its_old_copy(
    strata_make_store: StoreFactory,
) -> None:
    """The control for the test above: with no bus, L1 holds the old value for its TTL."""
    writer, reader = await strata_make_store(l2=False), await strata_make_store(l2=False)
    await writer.set(Note, Note(id="a", text="one"))
    assert (await reader.get(Note, "a")).text == "one"
    await writer.set(Note, Note(id="a", text="two"))
    for _ in range(100):
        await asyncio.sleep(0)
    assert (await reader.get(Note, "a")).text == "one"
    assert (await reader.get(Note, "a", force_l3=True)).text == "two"


# -- outages of the in-memory Redis ------------------------------------------------------


async def test_while_memory_redis_is_down_reads_miss_and_writes_fail_with_typed_errors() -> None:
    server = MemoryRedis()
    tier = MemoryL2(server)
    await tier.set_raw("k", b"v", None)
    with server.outage():
        assert not tier.available
        assert await tier.get_many(["k"]) == [(None, None)]
        assert await tier.set_raw("k", b"w", None) is False
        assert await tier.publish("ch", b"m") == 0
        with pytest.raises(TierUnavailableError):
            await tier.incr("n")
        with pytest.raises(TierUnavailableError):
            await tier.delete_pattern("*")
    assert tier.available
    assert await tier.get_many(["k"]) == [(b"v", None)]  # kept, as a restarted Redis would


async def test_memory_redis_refusing_writes_raises_tier_error_and_keeps_no_old_value() -> None:
    server = MemoryRedis()
    tier = MemoryL2(server)
    old = b"Sj" + b"0" * 15 + b"1" + b"{}"
    new = b"Sj" + b"0" * 15 + b"2" + b"{}"
    assert await tier.set_many([("k", old, None)]) == [True]
    with server.refusing_writes():
        assert tier.available  # Redis answers, with an error
        assert await tier.set_many([("k", new, None)], bump="gen") == [False]
        assert await tier.get_many(["k"]) == [(None, None)]  # the old value was dropped
        assert await tier.get_raw("gen") == b"1"  # the search generation still moved on
        with pytest.raises(TierError) as caught:
            await tier.incr("n")
        assert not isinstance(caught.value, TierUnavailableError)
    assert await tier.set_many([("k", new, None)]) == [True]


async def test_a_store_on_memory_redis_reads_l3_during_an_outage_and_nothing_stale_after(
    strata_make_store: StoreFactory, strata_redis: MemoryRedis
) -> None:
    writer, reader = await strata_make_store(), await strata_make_store()
    await writer.set(Note, Note(id="a", text="old"))
    assert (await reader.get(Note, "a")).text == "old"
    with strata_redis.outage():
        await writer.set(Note, Note(id="a", text="new"))  # acknowledged: L3 has it
        assert (await writer.get(Note, "a")).text == "new"

    async def everyone_reads_new() -> bool:
        return (await reader.get(Note, "a")).text == "new" and (
            await writer.get(Note, "a")
        ).text == "new"

    await eventually(everyone_reads_new)
    fresh = await strata_make_store()
    assert (await fresh.get(Note, "a")).text == "new"


async def test_where_reports_each_tier(strata_store: object) -> None:
    ds = strata_store
    await ds.set(Note, Note(id="a"))  # type: ignore[attr-defined]
    assert await where(ds, Note, "a") == {"l1", "l2", "l3"}  # type: ignore[arg-type]
    await ds.invalidate(Note, "a")  # type: ignore[attr-defined]
    assert await where(ds, Note, "a") == {"l3"}  # type: ignore[arg-type]


def test_the_sample_project_passes_with_only_the_plugin() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT / "examples" / "sample_project",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


class TestSqliteTier(L3TierContract):
    @pytest.fixture
    def l3_config(self, tmp_path: Path) -> Config:
        return embedded_config(tmp_path)

    @pytest.fixture
    async def l3_tier(self, l3_config: Config, l3_schema: CompiledSchema) -> AsyncIterator[L3Tier]:
        await migrate(l3_config, [l3_schema])
        tier = SqliteTier(l3_config, logger=logging.getLogger("strata.test"))
        tier.register(l3_schema)
        await tier.connect()
        yield tier
        await tier.close()

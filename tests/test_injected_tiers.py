"""Tiers are injected through their protocols (strata.tiers.base): a user's own L2 and
L3 instances and an L1 factory serve a DataStore with no Redis and no server."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from strata import Config, DataStore, Field, Q, Schema
from strata.codec import peek_version
from strata.schema import CompiledSchema
from strata.tiers.base import L1Tier, L2Tier, L3Tier, Row
from strata.tiers.memory import MemoryTier
from strata.tiers.sqlite import SqliteTier


class Note(BaseModel):
    id: str = Field(primary_key=True)
    text: str = ""


class DictL2:
    """A tiny in-memory L2: envelopes by key, "only if newer", no expiry, no pub/sub."""

    subscribes = False

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.counters: dict[str, int] = {}
        self.published: list[bytes] = []

    @property
    def available(self) -> bool:
        return True

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def abandon(self) -> None:
        pass  # no connections, so none bound to an ended event loop

    def take_possible_loss(self) -> bool:
        return False  # one process's dict: no replica to fail over to

    async def get_many(self, keys: Sequence[str]) -> list[tuple[bytes | None, float | None]]:
        return [(self.data.get(k), None) for k in keys]

    async def set_many(
        self, items: Sequence[tuple[str, bytes, float | None]], *, bump: str | None = None
    ) -> list[bool]:
        done = []
        for key, payload, _ in items:
            held = self.data.get(key)
            newer = held is None or (peek_version(held) or 0) <= (peek_version(payload) or 0)
            if newer:
                self.data[key] = payload
            done.append(newer)
        if bump is not None:
            await self.incr(bump)
        return done

    async def delete_many(self, keys: Sequence[str]) -> None:
        for k in keys:
            self.data.pop(k, None)

    async def publish(self, channel: str, message: bytes) -> int:
        self.published.append(message)
        return 0

    async def set_raw(self, key: str, value: bytes, ttl: float | None) -> bool:
        self.data[key] = value
        return True

    async def get_generation(
        self, counter: str, prefix: str, digest: str
    ) -> tuple[int, bytes | None]:
        generation = self.counters.get(counter, 0)
        return generation, self.data.get(f"{prefix}{generation}:{digest}")

    async def incr(self, key: str) -> int:
        self.counters[key] = self.counters.get(key, 0) + 1
        return self.counters[key]

    async def delete_pattern(self, pattern: str) -> int:
        gone = [k for k in self.data if fnmatch.fnmatchcase(k, pattern)]
        await self.delete_many(gone)
        return len(gone)


class RecordingL3(SqliteTier):
    """A user's own L3: SQLite, recording which ids it was asked for."""

    def __init__(self, config: Config) -> None:
        super().__init__(config, logger=logging.getLogger("test"))
        self.asked: list[object] = []

    async def get_many(self, schema: CompiledSchema, ids: Sequence[Any], **kw: Any) -> list[Row]:
        self.asked.extend(ids)
        return await super().get_many(schema, ids, **kw)


def small_l1(schema: CompiledSchema) -> L1Tier:
    tier: MemoryTier[object, BaseModel] = MemoryTier(max_entries=1)
    return tier


def _fakes_fit_the_protocols(l2: DictL2, l3: RecordingL3) -> tuple[L2Tier, L3Tier]:
    return l2, l3  # mypy --strict (make lint) checks this assignment to the protocols


@pytest.fixture
def l2() -> DictL2:
    return DictL2()


async def test_a_user_written_l2_holds_what_the_store_writes(tmp_path: Path, l2: DictL2) -> None:
    config = Config(database_url=f"sqlite:///{tmp_path / 'n.db'}")
    async with DataStore(config, l2=l2) as ds:
        ds.register(Schema(name="notes", model=Note))
        await ds.migrate()
        await ds.set(Note, Note(id="a", text="hello"))
        assert [k.rsplit(":", 1)[1] for k in l2.data if ":q:" not in k] == ["a"]
        await ds.invalidate(Note, "a")  # drops L1 and L2
        assert await ds.get(Note, "a") == Note(id="a", text="hello")  # from L3, refilled
        assert ds.stats().l3_hits == 1
        await ds.invalidate_all(Note)
        assert ds.stats().l1_entries == 0
        assert (await ds.get(Note, "a")).text == "hello"
        assert ds.stats().l2_hits == 0  # invalidate_all cleared the user's L2 too


async def test_a_user_written_l2_serves_reads_when_l1_is_cold(tmp_path: Path, l2: DictL2) -> None:
    config = Config(database_url=f"sqlite:///{tmp_path / 'n.db'}")
    async with DataStore(config, l2=l2) as writer:
        writer.register(Schema(name="notes", model=Note))
        await writer.migrate()
        await writer.set(Note, Note(id="a", text="shared"))
    async with DataStore(config, l2=l2) as reader:
        reader.register(Schema(name="notes", model=Note))
        assert (await reader.get(Note, "a")).text == "shared"
        assert reader.stats().l2_hits == 1
        assert (await reader.search_cached(Note, Q().filter(text="shared")))[0].id == "a"


async def test_an_injected_l3_and_l1_factory_serve_the_store(tmp_path: Path) -> None:
    config = Config(database_url=f"sqlite:///{tmp_path / 'n.db'}")
    l3 = RecordingL3(config)
    async with DataStore(config, l1=small_l1, l3=l3) as ds:
        ds.register(Schema(name="notes", model=Note))
        await ds.migrate()
        await ds.set_many(Note, [Note(id="a", text="1"), Note(id="b", text="2")])
        assert ds.stats().l1_entries == 1  # the factory's L1 holds one entry
        assert (await ds.get(Note, "a")).text == "1"
        assert l3.asked == ["a"]  # evicted from the small L1: read from the injected L3

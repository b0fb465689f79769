"""The tier contracts as test suites, for a tier of your own (``strata.tiers.base``).

Subclass one in a test module and give it a fixture that yields the tier, connected::

    from strata.testing.contract import L2TierContract

    class TestMyCache(L2TierContract):
        @pytest.fixture
        async def l2_tier(self):
            tier = MyCache(...)
            await tier.connect()
            yield tier
            await tier.close()

Each suite asserts what the router relies on (``L1TierContract``: version-checked fills and
tombstones; ``L2TierContract``: "only if newer" writes, expiry, generations, patterns;
``L3TierContract``: upserts that bump versions, versioned upserts that never replace a newer
row, kept columns, version-stamped deletes, transactions, ordered iteration).
Strata runs them against its own tiers. The tests are async: they need pytest-asyncio.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from strata.codec import ModelCodec, Tombstone
from strata.columns import VERSION_COLUMN
from strata.config import Config
from strata.fields import Field
from strata.schema import CompiledSchema, Schema, compile_schema
from strata.tiers.base import L1Tier, L2Tier, L3Tier, Row

__all__ = ["L1TierContract", "L2TierContract", "L3TierContract", "l3_contract_schema"]


class _Item(BaseModel):
    id: str = Field(primary_key=True)
    n: int = 0


_CODEC = ModelCodec(
    compile_schema(
        Schema(name="contract_items", model=_Item),
        Config(),
        has_cipher=False,
        metadata=sa.MetaData(),
    ),
    None,
)


def envelope(n: int, version: int) -> bytes:
    """A codec envelope holding ``_Item(n=n)`` at ``version``, as the router writes them."""
    return _CODEC.encode(_Item(id="x", n=n), version)


def opened(payload: bytes | None) -> tuple[int, int] | None:
    """``(n, version)`` of an envelope written by :func:`envelope`; None for a miss."""
    if payload is None:
        return None
    decoded = _CODEC.decode(payload)
    assert not isinstance(decoded, Tombstone)
    value, version = decoded
    assert isinstance(value, _Item)
    return value.n, version


class L1TierContract:
    """What the router needs of an ``L1Tier``. Fixture to provide: ``l1_tier`` (empty)."""

    pytestmark = pytest.mark.asyncio

    @pytest.fixture
    def l1_tier(self) -> L1Tier:
        raise NotImplementedError("define an l1_tier fixture yielding the tier under test")

    async def test_a_set_value_reads_back(self, l1_tier: L1Tier) -> None:
        assert l1_tier.set("a", _Item(id="a", n=1), 1)
        assert l1_tier.get("a") == _Item(id="a", n=1)
        assert "a" in l1_tier
        assert l1_tier.get_many(["a", "b"]) == {"a": _Item(id="a", n=1)}

    async def test_an_older_fill_is_refused(self, l1_tier: L1Tier) -> None:
        assert l1_tier.set("a", _Item(id="a", n=2), 5)
        assert not l1_tier.set("a", _Item(id="a", n=1), 4)
        assert l1_tier.get("a") == _Item(id="a", n=2)

    async def test_a_tombstone_refuses_older_fills_and_allows_newer(self, l1_tier: L1Tier) -> None:
        l1_tier.set("a", _Item(id="a", n=1), 3)
        l1_tier.delete("a", 7)
        assert l1_tier.get("a") is None
        assert not l1_tier.set("a", _Item(id="a", n=1), 6)
        assert l1_tier.get("a") is None
        assert l1_tier.set("a", _Item(id="a", n=9), 8)
        assert l1_tier.get("a") == _Item(id="a", n=9)

    async def test_delete_many_and_clear_empty_the_tier(self, l1_tier: L1Tier) -> None:
        for key in "abc":
            l1_tier.set(key, _Item(id=key), 1)
        l1_tier.delete_many(["a", "b"])
        assert l1_tier.get_many("abc") == {"c": _Item(id="c")}
        l1_tier.clear()
        assert len(l1_tier) == 0
        assert l1_tier.get("c") is None


class L2TierContract:
    """What the router needs of an ``L2Tier``. Fixture to provide: ``l2_tier``, connected.

    Keys are unique per test (``key`` fixture), so a tier on a shared server needs no flush.
    """

    pytestmark = pytest.mark.asyncio

    @pytest.fixture
    def l2_tier(self) -> L2Tier:
        raise NotImplementedError("define an l2_tier fixture yielding the tier under test")

    @pytest.fixture
    def key(self) -> str:
        return f"strata-contract-{uuid.uuid4().hex[:10]}:"

    async def test_a_written_envelope_reads_back_with_its_ttl(
        self, l2_tier: L2Tier, key: str
    ) -> None:
        assert await l2_tier.set_many([(key + "a", envelope(1, 1), 60.0)]) == [True]
        ((payload, ttl),) = await l2_tier.get_many([key + "a"])
        assert opened(payload) == (1, 1)
        assert ttl is not None
        assert 0 < ttl <= 60

    async def test_a_key_without_ttl_reports_none(self, l2_tier: L2Tier, key: str) -> None:
        await l2_tier.set_many([(key + "a", envelope(1, 1), None)])
        assert (await l2_tier.get_many([key + "a"]))[0][1] is None

    async def test_a_miss_is_none(self, l2_tier: L2Tier, key: str) -> None:
        assert await l2_tier.get_many([key + "nothing"]) == [(None, None)]

    async def test_an_older_envelope_is_refused_an_equal_or_newer_applied(
        self, l2_tier: L2Tier, key: str
    ) -> None:
        k = key + "a"
        assert await l2_tier.set_many([(k, envelope(5, 5), None)]) == [True]
        assert await l2_tier.set_many([(k, envelope(4, 4), None)]) == [False]
        assert opened((await l2_tier.get_many([k]))[0][0]) == (5, 5)
        assert await l2_tier.set_many([(k, envelope(55, 5), None)]) == [True]
        assert await l2_tier.set_many([(k, envelope(6, 6), None)]) == [True]
        assert opened((await l2_tier.get_many([k]))[0][0]) == (6, 6)

    async def test_a_batch_is_decided_per_key(self, l2_tier: L2Tier, key: str) -> None:
        await l2_tier.set_many([(key + "a", envelope(9, 9), None)])
        items: list[tuple[str, bytes, float | None]] = [
            (key + "a", envelope(1, 1), None),
            (key + "b", envelope(2, 2), None),
        ]
        assert await l2_tier.set_many(items) == [False, True]
        found = await l2_tier.get_many([key + "a", key + "b"])
        assert [opened(p) for p, _ in found] == [(9, 9), (2, 2)]

    async def test_a_tombstone_refuses_older_envelopes(self, l2_tier: L2Tier, key: str) -> None:
        k = key + "a"
        assert await l2_tier.set_many([(k, _CODEC.tombstone(8), None)]) == [True]
        assert await l2_tier.set_many([(k, envelope(1, 7), None)]) == [False]
        assert await l2_tier.set_many([(k, envelope(1, 9), None)]) == [True]

    async def test_set_many_bumps_the_counter_even_when_nothing_applies(
        self, l2_tier: L2Tier, key: str
    ) -> None:
        counter = key + "gen"
        await l2_tier.set_many([(key + "a", envelope(1, 1), None)], bump=counter)
        await l2_tier.set_many([], bump=counter)
        await l2_tier.set_many([(key + "a", envelope(0, 0), None)], bump=counter)
        assert await l2_tier.incr(counter) >= 3  # [] may skip the round trip; the others bump

    async def test_delete_many_removes_the_keys(self, l2_tier: L2Tier, key: str) -> None:
        await l2_tier.set_many([(key + k, envelope(1, 1), None) for k in "ab"])
        await l2_tier.delete_many([key + "a", key + "b", key + "never"])
        assert await l2_tier.get_many([key + "a", key + "b"]) == [(None, None)] * 2

    async def test_generation_reads_the_counter_and_the_result_under_it(
        self, l2_tier: L2Tier, key: str
    ) -> None:
        counter, prefix = key + "gen", key + "q:"
        assert await l2_tier.get_generation(counter, prefix, "d1") == (0, None)
        assert await l2_tier.incr(counter) == 1
        assert await l2_tier.set_raw(f"{prefix}1:d1", b"result", 60.0)
        assert await l2_tier.get_generation(counter, prefix, "d1") == (1, b"result")
        assert await l2_tier.get_generation(counter, prefix, "d2") == (1, None)

    async def test_delete_pattern_removes_only_matching_keys(
        self, l2_tier: L2Tier, key: str
    ) -> None:
        await l2_tier.set_many([(key + k, envelope(1, 1), None) for k in ("s:1", "s:2", "t:1")])
        assert await l2_tier.delete_pattern(key + "s:*") == 2
        found = await l2_tier.get_many([key + "s:1", key + "s:2", key + "t:1"])
        assert [p is not None for p, _ in found] == [False, False, True]

    async def test_the_tier_reports_itself_available(self, l2_tier: L2Tier) -> None:
        assert l2_tier.available


class _Row(BaseModel):
    id: str = Field(primary_key=True)
    n: int = 0
    note: str = ""


def l3_contract_schema(config: Config) -> CompiledSchema:
    """The schema ``L3TierContract`` writes: a fresh table name per call."""
    schema = Schema(name=f"contract_{uuid.uuid4().hex[:10]}", model=_Row)
    return compile_schema(schema, config, has_cipher=False, metadata=sa.MetaData())


def _values(rows: list[Row]) -> dict[Any, tuple[int, str]]:
    return {r["id"]: (r["n"], r["note"]) for r in rows}


class L3TierContract:
    """What the router needs of an ``L3Tier``. Fixtures to provide: ``l3_config`` (the
    Config the schema is compiled for) and ``l3_tier(l3_schema)``: the tier connected, with
    ``l3_schema`` registered (``tier.register``) and its table created (for Strata's own
    tiers, ``strata.migrations.migrate(config, [l3_schema])``)."""

    pytestmark = pytest.mark.asyncio

    @pytest.fixture
    def l3_config(self) -> Config:
        raise NotImplementedError("define an l3_config fixture")

    @pytest.fixture
    def l3_schema(self, l3_config: Config) -> CompiledSchema:
        return l3_contract_schema(l3_config)

    @pytest.fixture
    def l3_tier(self, l3_schema: CompiledSchema) -> L3Tier:
        raise NotImplementedError("define an l3_tier fixture yielding the tier under test")

    async def test_upserted_rows_read_back_with_their_versions(
        self, l3_tier: L3Tier, l3_schema: CompiledSchema
    ) -> None:
        rows = [{"id": "a", "n": 1, "note": "x"}, {"id": "b", "n": 2, "note": "y"}]
        stamped = await l3_tier.upsert_many(l3_schema, rows)
        assert set(stamped) == {"a", "b"}
        found = await l3_tier.get_many(l3_schema, ["a", "b", "missing"])
        assert _values(found) == {"a": (1, "x"), "b": (2, "y")}
        versions = {r["id"]: r[VERSION_COLUMN] for r in found}
        assert versions == {k: v[VERSION_COLUMN] for k, v in stamped.items()}
        assert await l3_tier.exists_many(l3_schema, ["a", "missing"]) == {"a"}

    async def test_every_upsert_gives_a_greater_version(
        self, l3_tier: L3Tier, l3_schema: CompiledSchema
    ) -> None:
        seen = []
        for n in range(3):
            stamped = await l3_tier.upsert_many(l3_schema, [{"id": "a", "n": n, "note": ""}])
            seen.append(stamped["a"][VERSION_COLUMN])
        assert seen == sorted(seen)
        assert len(set(seen)) == 3

    async def test_a_versioned_upsert_never_replaces_a_newer_row(
        self, l3_tier: L3Tier, l3_schema: CompiledSchema
    ) -> None:
        first = await l3_tier.upsert_many(l3_schema, [{"id": "a", "n": 1, "note": ""}])
        v = first["a"][VERSION_COLUMN]
        newer = {"id": "a", "n": 2, "note": "", VERSION_COLUMN: v + 10}
        await l3_tier.upsert_many(l3_schema, [newer], versioned=True)
        older = {"id": "a", "n": 3, "note": "", VERSION_COLUMN: v + 5}
        await l3_tier.upsert_many(l3_schema, [older], versioned=True)
        await l3_tier.upsert_many(l3_schema, [newer], versioned=True)  # a replay: no change
        (row,) = await l3_tier.get_many(l3_schema, ["a"])
        assert (row["n"], row[VERSION_COLUMN]) == (2, v + 10)

    async def test_kept_columns_stay_on_an_existing_row_and_fill_a_new_one(
        self, l3_tier: L3Tier, l3_schema: CompiledSchema
    ) -> None:
        await l3_tier.upsert_many(l3_schema, [{"id": "a", "n": 1, "note": "secret"}])
        rows = [{"id": "a", "n": 2, "note": ""}, {"id": "b", "n": 3, "note": "given"}]
        await l3_tier.upsert_many(l3_schema, rows, kept=frozenset({"note"}))
        found = await l3_tier.get_many(l3_schema, ["a", "b"])
        assert _values(found) == {"a": (2, "secret"), "b": (3, "given")}

    async def test_a_delete_removes_rows_and_returns_a_newer_version(
        self, l3_tier: L3Tier, l3_schema: CompiledSchema
    ) -> None:
        stamped = await l3_tier.upsert_many(l3_schema, [{"id": "a", "n": 1, "note": ""}])
        version = await l3_tier.delete_many(l3_schema, ["a", "missing"])
        assert version > stamped["a"][VERSION_COLUMN]
        assert await l3_tier.get_many(l3_schema, ["a"]) == []

    async def test_a_rolled_back_transaction_leaves_nothing_a_committed_one_stays(
        self, l3_tier: L3Tier, l3_schema: CompiledSchema
    ) -> None:
        tx = await l3_tier.begin()
        await l3_tier.upsert_many(l3_schema, [{"id": "a", "n": 1, "note": ""}], tx=tx)
        assert _values(await l3_tier.get_many(l3_schema, ["a"], tx=tx)) == {"a": (1, "")}
        await tx.rollback()
        assert await l3_tier.get_many(l3_schema, ["a"]) == []
        tx = await l3_tier.begin()
        await l3_tier.upsert_many(l3_schema, [{"id": "b", "n": 2, "note": ""}], tx=tx)
        await tx.commit()
        assert _values(await l3_tier.get_many(l3_schema, ["b"])) == {"b": (2, "")}

    async def test_iterate_yields_every_row_in_key_order_in_batches(
        self, l3_tier: L3Tier, l3_schema: CompiledSchema
    ) -> None:
        ids = [f"k{i:02d}" for i in range(7)]
        await l3_tier.upsert_many(l3_schema, [{"id": i, "n": 0, "note": ""} for i in ids[::-1]])
        batches = [batch async for batch in l3_tier.iterate(l3_schema, 3)]
        assert [len(b) for b in batches] == [3, 3, 1]
        assert [r["id"] for b in batches for r in b] == ids

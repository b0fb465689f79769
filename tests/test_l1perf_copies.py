"""Copies of L1 values (issue 14): only where aliasing is possible, and never aliasing.

The store-level tests assert what a user sees (a value read back after mutating an earlier
one); the ``Copier`` tests pin down the cheap paths (no copy for frozen models, one shared
fields set for the copies L1 keeps) and that they never leak a mutation.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, PrivateAttr, field_validator

from strata import Config, DataStore, Field, MemPolicy, Schema, SchemaHooks
from strata.tiers.memory_copy import Copier


class Geo(BaseModel):
    lat: float
    lon: float


class Address(BaseModel):
    city: str
    geo: Geo
    lines: list[str] = []


class Nested(BaseModel):
    id: str = Field(primary_key=True)
    name: str
    address: Address
    tags: list[str] = []
    attrs: dict[str, int] = {}


class Flat(BaseModel):
    id: str = Field(primary_key=True)
    name: str
    level: int = 1
    at: datetime = datetime(2024, 1, 1, tzinfo=UTC)


class FrozenFlat(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str = Field(primary_key=True)
    name: str
    level: int = 1


class FrozenWithList(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str = Field(primary_key=True)
    tags: list[str] = []


class Shouting(BaseModel):
    """A validator that is not idempotent: a round trip through validation would change it."""

    id: str = Field(primary_key=True)
    name: str
    tags: list[str] = []

    @field_validator("name")
    @classmethod
    def _shout(cls, v: str) -> str:
        return v + "!"


class WithPrivate(BaseModel):
    id: str = Field(primary_key=True)
    tags: list[str] = []
    _seen: list[str] = PrivateAttr(default_factory=list)


def nested(i: int = 1) -> Nested:
    return Nested(
        id=f"n{i}",
        name="ann",
        address=Address(city="Utrecht", geo=Geo(lat=52.0, lon=5.0), lines=["a"]),
        tags=["x"],
        attrs={"k": 1},
    )


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    ds = DataStore(Config(database_url=f"sqlite:///{tmp_path / 'c.db'}"))
    for name, model in (
        ("nested", Nested),
        ("flat", Flat),
        ("frozen", FrozenFlat),
        ("frozen_list", FrozenWithList),
        ("shouting", Shouting),
    ):
        ds.register(Schema(name=name, model=model, l1=MemPolicy(ttl=60)))
    async with ds:
        await ds.migrate()
        yield ds


# -- what a user sees -------------------------------------------------------------------------


async def test_mutating_nested_parts_of_an_l1_hit_changes_nothing_cached(store: Any) -> None:
    await store.set(Nested, nested())
    await store.get(Nested, "n1")  # L1 filled
    got = await store.get(Nested, "n1")
    got.address.geo.lat = 0.0
    got.address.lines.append("mutated")
    got.address.city = "elsewhere"
    got.tags.append("mutated")
    got.attrs["k"] = 99
    again = await store.get(Nested, "n1")
    assert again == nested()


async def test_mutating_values_from_get_many_changes_nothing_cached(store: Any) -> None:
    await store.set_many(Nested, [nested(1), nested(2)])
    first = await store.get_many(Nested, ["n1", "n2"])
    for v in first.values():
        v.address.geo.lon = -1.0
        v.tags.clear()
    again = await store.get_many(Nested, ["n1", "n2"])
    assert again == {"n1": nested(1), "n2": nested(2)}


async def test_two_gets_of_a_mutable_model_never_share_objects(store: Any) -> None:
    await store.set(Nested, nested())
    a = await store.get(Nested, "n1")
    b = await store.get(Nested, "n1")
    assert a is not b and a.address is not b.address and a.tags is not b.tags


async def test_assigning_a_field_of_a_hit_does_not_mark_it_set_in_later_hits(store: Any) -> None:
    await store.set(Flat, Flat(id="f1", name="ann"))
    await store.get(Flat, "f1")
    first = await store.get(Flat, "f1")
    later_before = (await store.get(Flat, "f1")).model_fields_set
    first.level = 7  # pydantic adds "level" to first's fields set
    assert (await store.get(Flat, "f1")).model_fields_set == later_before
    assert (await store.get(Flat, "f1")).level == 1


async def test_a_frozen_model_reads_back_equal_and_cannot_be_changed(store: Any) -> None:
    await store.set(FrozenFlat, FrozenFlat(id="z1", name="ann"))
    got = await store.get(FrozenFlat, "z1")
    with pytest.raises(Exception):  # noqa: B017 - pydantic's own frozen-instance error
        got.name = "changed"  # type: ignore[misc]
    assert (await store.get(FrozenFlat, "z1")).name == "ann"


async def test_frozen_model_with_a_list_is_still_copied(store: Any) -> None:
    await store.set(FrozenWithList, FrozenWithList(id="z1", tags=["a"]))
    got = await store.get(FrozenWithList, "z1")
    got.tags.append("mutated")
    assert (await store.get(FrozenWithList, "z1")).tags == ["a"]


async def test_model_with_a_non_idempotent_validator_reads_back_unchanged(store: Any) -> None:
    await store.set(Shouting, Shouting(id="s1", name="ann", tags=["a"]))
    stored = (await store.get(Shouting, "s1")).name
    for _ in range(3):
        got = await store.get(Shouting, "s1")
        assert got.name == stored == "ann!"
        got.tags.append("mutated")
    assert (await store.get(Shouting, "s1")).tags == ["a"]


async def test_on_evict_hook_mutating_its_value_leaves_live_entries_alone(tmp_path: Path) -> None:
    def scribble(key: Any, value: Any) -> None:
        value.level = 99  # adds "level" to the value's fields set

    ds = DataStore(Config(database_url=f"sqlite:///{tmp_path / 'e.db'}"))
    ds.register(
        Schema(
            name="flat",
            model=Flat,
            l1=MemPolicy(ttl=60, max_entries=2),
            hooks=SchemaHooks(on_evict=scribble),
        )
    )
    async with ds:
        await ds.migrate()
        for i in range(4):
            await ds.set(Flat, Flat(id=f"f{i}", name="x"))
        live = await ds.get(Flat, "f3")
        assert live.level == 1 and "level" not in live.model_fields_set


# -- the Copier: what each kind of model costs ------------------------------------------------


def test_frozen_immutable_values_are_handed_out_without_a_copy() -> None:
    c = Copier(FrozenFlat, mutable=False)
    v = FrozenFlat(id="z", name="ann")
    assert c.out(v) is v


@pytest.mark.parametrize(
    ("model", "value"),
    [
        (Flat, Flat(id="f", name="ann")),
        (FrozenWithList, FrozenWithList(id="z", tags=["a"])),
        (Nested, nested()),
    ],
)
def test_non_frozen_or_mutable_values_are_copied(model: type[BaseModel], value: Any) -> None:
    mutable = model is not Flat
    out = Copier(model, mutable=mutable).out(value)
    assert out is not value and out == value
    assert out.model_fields_set == value.model_fields_set
    assert out.__pydantic_fields_set__ is not value.__pydantic_fields_set__


def test_kept_copies_share_one_fields_set_and_caller_copies_get_their_own() -> None:
    c = Copier(Flat, mutable=False)
    a = c.keep(Flat(id="a", name="x"))
    b = c.keep(Flat(id="b", name="y"))
    assert a.__pydantic_fields_set__ is b.__pydantic_fields_set__
    out = c.out(a)
    out.level = 3
    assert "level" in out.model_fields_set and "level" not in a.model_fields_set


def test_kept_copies_with_different_fields_sets_keep_their_own_sets() -> None:
    c = Copier(Flat, mutable=False)
    a = c.keep(Flat(id="a", name="x"))
    b = c.keep(Flat(id="b", name="y", level=2))
    assert a.model_fields_set == {"id", "name"}
    assert b.model_fields_set == {"id", "name", "level"}


def test_deep_copy_keeps_the_fields_set_and_private_attributes() -> None:
    v = WithPrivate(id="p", tags=["a"])
    v._seen.append("x")
    out = Copier(WithPrivate, mutable=True).out(v)
    assert out == v and out._seen == ["x"] and out._seen is not v._seen
    assert out.model_fields_set == {"id", "tags"}


def test_round_trip_copy_is_used_for_plain_nested_models_and_is_deep() -> None:
    c = Copier(Nested, mutable=True)
    v = nested()
    out = c.out(v)
    assert c.strategy == "round trip"
    assert out == v and out.address is not v.address and out.address.geo is not v.address.geo
    assert out.model_fields_set == v.model_fields_set


def test_models_with_validators_are_deep_copied_not_round_tripped() -> None:
    c = Copier(Shouting, mutable=True)
    v = Shouting(id="s", name="ann")
    assert c.strategy == "deepcopy"
    assert c.out(v).name == "ann!"

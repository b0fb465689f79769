"""Bulk row building (``RowMapper.to_rows``) and the write's private copy (``Binding.stamp``,
``Binding.l1_share``): the same rows and values as one at a time, no aliasing (issue 14)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from strata.config import Config
from strata.errors import InvalidValueError
from strata.fields import Field
from strata.router.binding import Binding
from strata.schema import Schema, compile_schema


class Level(enum.Enum):
    LOW = 1
    HIGH = 2


class Tag(BaseModel):
    name: str
    weight: float = 1.0


class Row(BaseModel):
    id: str = Field(primary_key=True)
    name: str
    email: str | None = None
    level: Level = Level.LOW
    score: float = 0.0
    tags: list[Tag] = Field(default_factory=list)
    at: datetime | None = None
    created_at: datetime = Field(auto_now_add=True)
    updated_at: datetime = Field(auto_now=True)
    scratch: str = Field(default="", transient=True)


class Plain(BaseModel):
    id: str = Field(primary_key=True)
    n: int = 0
    created_at: datetime = Field(auto_now_add=True)


def binding(model: type[BaseModel]) -> Binding:
    config = Config()
    cs = compile_schema(
        Schema(name=model.__name__.lower(), model=model),
        config,
        has_cipher=False,
        metadata=sa.MetaData(),
    )
    return Binding(cs, config, None, l2=False)


def values(n: int) -> dict[Any, Row]:
    b = binding(Row)
    out = {}
    for i in range(n):
        v = Row(
            id=f"r{i}",
            name=f"Zoë {i}" if i % 2 else f"n{i}",
            email=None if i % 3 else f"{i}@x",
            level=Level.HIGH if i % 2 else Level.LOW,
            score=i / 3,
            tags=[Tag(name=f"t{i}")] if i % 2 else [],
            at=datetime(2024, 1, 1, 12, i % 60) if i % 4 == 0 else None,  # naive
            scratch="never stored",
        )
        out[v.id] = b.stamp(v)
    return out


def test_to_rows_gives_the_rows_to_row_gives() -> None:
    b = binding(Row)
    prepared = values(25)
    one_by_one = {i: b.rows.to_row(v, i) for i, v in prepared.items()}
    assert b.rows.to_rows(prepared) == one_by_one
    assert all("scratch" not in row for row in one_by_one.values())


def test_to_rows_refuses_a_lone_surrogate_as_to_row_does() -> None:
    b = binding(Row)
    prepared = values(3)
    prepared["r1"] = prepared["r1"].model_copy(update={"name": "bad \udcff"})
    with pytest.raises(InvalidValueError, match="not valid UTF-8"):
        b.rows.to_rows(prepared)


def test_to_rows_names_the_value_of_the_wrong_type() -> None:
    b = binding(Row)
    prepared = values(3)
    prepared["r2"] = Row.model_construct(**{**dict(prepared["r2"]), "score": "high"})
    with pytest.raises(InvalidValueError, match="'r2' cannot be stored"):
        b.rows.to_rows(prepared)


def test_stamp_is_a_private_copy_marked_as_model_copy_would_mark_it() -> None:
    b = binding(Row)
    caller = Row(id="a", name="ann", tags=[Tag(name="x")])
    created = datetime(2020, 1, 1, tzinfo=UTC)
    kept = Row(id="b", name="bob", created_at=created)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    a, bb = b.stamp(caller, now), b.stamp(kept, now)
    assert a is not caller and a.tags is not caller.tags and a.tags[0] is not caller.tags[0]
    assert a.updated_at == now and a.created_at == caller.created_at
    assert bb.created_at == created
    assert {"created_at", "updated_at"} <= a.model_fields_set
    assert "created_at" not in caller.model_fields_set and caller.model_fields_set == {
        "id",
        "name",
        "tags",
    }
    a.tags.append(Tag(name="y"))
    a.name = "changed"
    assert caller.tags == [Tag(name="x")] and caller.name == "ann"


def test_stamp_of_a_model_of_immutable_values_is_still_a_copy() -> None:
    b = binding(Plain)
    caller = Plain(id="p", n=1)
    copy = b.stamp(caller)
    assert copy is not caller and copy.__dict__ is not caller.__dict__
    assert copy.model_fields_set is not caller.model_fields_set
    copy.n = 2
    assert caller.n == 1 and "created_at" not in caller.model_fields_set


def test_l1_share_keeps_the_copy_itself_unless_omitted_fields_need_resetting() -> None:
    b = binding(Plain)
    private = b.stamp(Plain(id="p", n=1))
    assert b.l1_share(private) is private

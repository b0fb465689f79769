"""The models every scenario uses, their rows, and equivalents for the baselines.

``Ref`` is the reference model of the issue (7 fields); ``Wide`` has 17 fields, three of
them nested JSON, to show what payload size and deep copies cost. Values are deterministic
(seeded) so that every implementation reads and writes the same data.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from strata import Field, Index, MemPolicy, Schema

# Placeholder schema of the ORM tables; the engine maps it to the run's bench_<random>
# schema with ``schema_translate_map``.
ORM_SCHEMA = "bench"

REF_COLUMNS = ("id", "name", "email", "level", "score", "created_at", "updated_at")


class Ref(BaseModel):
    id: str = Field(primary_key=True)
    name: str
    email: str | None = None
    level: int = 1
    score: float = 0.0
    created_at: datetime = Field(auto_now_add=True)
    updated_at: datetime = Field(auto_now=True)


class Geo(BaseModel):
    lat: float
    lon: float


class Address(BaseModel):
    street: str
    city: str
    postcode: str
    country: str
    geo: Geo


class Event(BaseModel):
    at: datetime
    kind: str
    amount: float


class Wide(BaseModel):
    id: str = Field(primary_key=True)
    name: str
    email: str | None = None
    level: int = 1
    score: float = 0.0
    active: bool = True
    country: str = ""
    city: str = ""
    bio: str = ""
    balance: float = 0.0
    visits: int = 0
    referrer: str | None = None
    created_at: datetime = Field(auto_now_add=True)
    updated_at: datetime = Field(auto_now=True)
    address: Address
    tags: list[str] = Field(default_factory=list)
    history: list[Event] = Field(default_factory=list)


WIDE_COLUMNS = tuple(Wide.model_fields)
WIDE_JSON = ("address", "tags", "history")

MODELS: dict[str, type[BaseModel]] = {"ref": Ref, "wide": Wide}
COLUMNS: dict[str, tuple[str, ...]] = {"ref": REF_COLUMNS, "wide": WIDE_COLUMNS}

_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


def key(i: int) -> str:
    return f"k{i:07d}"


def make_ref(i: int, *, level: int | None = None, rng: random.Random | None = None) -> Ref:
    rng = rng or random.Random(i)
    at = _EPOCH + timedelta(seconds=i)
    return Ref(
        id=key(i),
        name=f"player {i}",
        email=f"player{i}@example.com" if i % 5 else None,
        level=level if level is not None else rng.randrange(1, 1000),
        score=round(rng.random() * 1000, 3),
        created_at=at,
        updated_at=at + _SECOND,  # its own object, as a loaded row would have
    )


def make_wide(i: int, *, level: int | None = None) -> Wide:
    rng = random.Random(i)
    at = _EPOCH + timedelta(seconds=i)
    return Wide(
        id=key(i),
        name=f"player {i}",
        email=f"player{i}@example.com",
        level=level if level is not None else rng.randrange(1, 1000),
        score=round(rng.random() * 1000, 3),
        country="NL",
        city="Utrecht",
        bio="Plays mostly on weekends. " * 3,
        balance=round(rng.random() * 100, 2),
        visits=rng.randrange(10_000),
        referrer=None,
        created_at=at,
        updated_at=at + _SECOND,
        address=Address(
            street=f"{i} Long Street",
            city="Utrecht",
            postcode="3511 AB",
            country="NL",
            geo=Geo(lat=52.09, lon=5.12),
        ),
        tags=["pvp", "eu", f"guild-{i % 50}", "premium"],
        history=[
            Event(at=at + timedelta(hours=h), kind="purchase", amount=float(h)) for h in range(8)
        ],
    )


def make(model: str, i: int, *, level: int | None = None) -> BaseModel:
    return make_ref(i, level=level) if model == "ref" else make_wide(i, level=level)


def schema(
    model: str,
    *,
    l1: bool = True,
    l2: bool = True,
    l3: bool = True,
    max_entries: int = 10_000,
    **extra: Any,
) -> Schema:
    """The Strata schema of ``model`` with the tiers asked for (table = model name)."""
    return Schema(
        name=model,
        model=MODELS[model],
        l1=MemPolicy(ttl=300, max_entries=max_entries) if l1 else None,
        l2=Schema().l2 if l2 else None,
        l3=Schema().l3 if l3 else None,
        indexes=[Index(fields=["level"])],
        **extra,
    )


def record(model: BaseModel, columns: tuple[str, ...]) -> tuple[Any, ...]:
    """A row tuple for asyncpg (COPY, executemany, upsert parameters). JSON columns as plain
    JSON data: baseline connections get a jsonb codec (``harness.pg_init``), as any
    hand-written asyncpg code storing nested data would."""
    data = model.model_dump()
    if isinstance(model, Wide):
        data.update(model.model_dump(mode="json", include=set(WIDE_JSON)))
    return tuple(data[c] for c in columns)


def validate_row(model: type[BaseModel], row: Any) -> BaseModel:
    """What a hand-written reader does with an asyncpg Record: dict it and validate."""
    return model.model_validate(dict(row))


# -- SQLAlchemy 2 ORM over the same tables -----------------------------------------------


class OrmBase(DeclarativeBase):
    pass


class RefRow(OrmBase):
    __tablename__ = "ref"
    __table_args__ = {"schema": ORM_SCHEMA}  # noqa: RUF012 - SQLAlchemy's own convention

    id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text)
    email: Mapped[str | None] = mapped_column(sa.Text)
    level: Mapped[int] = mapped_column(sa.BigInteger)
    score: Mapped[float] = mapped_column(sa.Double)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class WideRow(OrmBase):
    __tablename__ = "wide"
    __table_args__ = {"schema": ORM_SCHEMA}  # noqa: RUF012 - SQLAlchemy's own convention

    id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text)
    email: Mapped[str | None] = mapped_column(sa.Text)
    level: Mapped[int] = mapped_column(sa.BigInteger)
    score: Mapped[float] = mapped_column(sa.Double)
    active: Mapped[bool] = mapped_column(sa.Boolean)
    country: Mapped[str] = mapped_column(sa.Text)
    city: Mapped[str] = mapped_column(sa.Text)
    bio: Mapped[str] = mapped_column(sa.Text)
    balance: Mapped[float] = mapped_column(sa.Double)
    visits: Mapped[int] = mapped_column(sa.BigInteger)
    referrer: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    address: Mapped[dict[str, Any]] = mapped_column(JSONB)
    tags: Mapped[list[str]] = mapped_column(JSONB)
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)


ORM: dict[str, type[OrmBase]] = {"ref": RefRow, "wide": WideRow}

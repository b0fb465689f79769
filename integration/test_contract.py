"""The tier contract: the promises every stack keeps (see integration/stacks.py)."""

from __future__ import annotations

import asyncio
import enum
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Literal

import pytest
from pydantic import BaseModel

from integration.stacks import Env
from strata import Field, Schema, errors


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Address(BaseModel):
    street: str
    zip: str | None = None


class AllTypes(BaseModel):
    id: str = Field(primary_key=True)
    s: str = ""
    i: int = 0
    f: float = 0.0
    b: bool = False
    dt: datetime | None = None
    d: date | None = None
    t: time | None = None
    by: bytes | None = None
    u: uuid.UUID | None = None
    dec: Decimal | None = None
    mood: Mood = Mood.HAPPY
    level: Level = Level.LOW
    address: Address | None = None
    tags: list[str] = []
    attrs: dict[str, int] = {}
    kind: Literal["x", "y"] = "x"
    maybe: str | None = None


class Player(BaseModel):
    id: str = Field(primary_key=True)
    username: str = ""
    level: int = Field(default=1)
    tags: list[str] = []
    created_at: datetime = Field(auto_now_add=True)
    updated_at: datetime = Field(auto_now=True)
    password_hash: str = Field(default="", omit_cache=True)
    api_key: str = Field(default="", encrypted=True)
    note: str = Field(default="", omit_l1=True)
    scratch: str = Field(default="", transient=True)


class IntKey(BaseModel):
    id: int = Field(primary_key=True)
    name: str = ""


class UuidKey(BaseModel):
    id: uuid.UUID = Field(primary_key=True)
    name: str = ""


class OnlyKey(BaseModel):
    id: str = Field(primary_key=True)


FULL = AllTypes(
    id="full",
    s="héllo \x01 'quoted' \"dq\"",
    i=-(2**62),
    f=3.25,
    b=True,
    dt=datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
    d=date(2026, 2, 28),
    t=time(23, 59, 58, 1000),
    by=b"\x00\xffbinary",
    u=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    dec=Decimal("12345678901234567890.123456789"),
    mood=Mood.SAD,
    level=Level.HIGH,
    address=Address(street="Main", zip=None),
    tags=["a", "b"],
    attrs={"x": 1},
    kind="y",
)


async def test_every_supported_type_round_trips(env: Env) -> None:
    ds = await env.make(Schema(name="all_types", model=AllTypes))
    await ds.set(AllTypes, FULL)
    assert await ds.get(AllTypes, "full") == FULL
    if env.stack.l3 is not None:
        await ds.flush_dirty()
        assert await ds.get(AllTypes, "full", force_l3=True) == FULL


async def test_every_type_survives_a_cold_read(env: Env) -> None:
    ds = await env.make(Schema(name="all_types", model=AllTypes))
    await ds.set(AllTypes, FULL)
    await ds.flush_dirty()
    fresh = await env.make(Schema(name="all_types", model=AllTypes), migrate=False)
    assert await fresh.get(AllTypes, "full") == FULL


async def test_int_uuid_and_key_only_models_work(env: Env) -> None:
    ds = await env.make(
        Schema(name="ints", model=IntKey),
        Schema(name="uuids", model=UuidKey),
        Schema(name="only_keys", model=OnlyKey),
    )
    u = uuid.uuid4()
    await ds.set(IntKey, IntKey(id=42, name="x"))
    await ds.set(UuidKey, UuidKey(id=u, name="y"))
    await ds.set(OnlyKey, OnlyKey(id="k"))
    assert (await ds.get(IntKey, 42)).name == "x"
    assert (await ds.get(UuidKey, str(u))).name == "y"  # a str id is coerced to the key type
    assert (await ds.get(OnlyKey, "k")).id == "k"
    await ds.set(OnlyKey, OnlyKey(id="k"))  # upserting a key-only row again is fine
    assert await ds.exists(OnlyKey, "k")


async def test_returned_values_never_alias_cached_ones(env: Env) -> None:
    ds = await env.make(Schema(name="players", model=Player))
    original = Player(id="p", username="ann", tags=["a"])
    await ds.set(Player, original)
    original.tags.append("set-mutated")
    got = await ds.get(Player, "p")
    got.tags.append("get-mutated")
    got.username = "changed"
    again = await ds.get(Player, "p")
    assert again.tags == ["a"] and again.username == "ann"


async def test_delete_reaches_every_tier_and_is_idempotent(env: Env) -> None:
    ds = await env.make(Schema(name="players", model=Player))
    await ds.set(Player, Player(id="p", username="ann"))
    await ds.get(Player, "p")
    await ds.delete(Player, "p")
    await ds.delete(Player, "p")
    with pytest.raises(errors.NotFoundError):
        await ds.get(Player, "p")
    assert not await ds.exists(Player, "p")
    await ds.flush_dirty()
    if env.stack.l3 is not None:
        assert await env.raw_row("players", "p") is None
        with pytest.raises(errors.NotFoundError):
            await ds.get(Player, "p", force_l3=True)


async def test_set_after_delete_is_readable(env: Env) -> None:
    ds = await env.make(Schema(name="players", model=Player))
    await ds.set(Player, Player(id="p", username="one"))
    await ds.delete(Player, "p")
    await ds.set(Player, Player(id="p", username="two"))
    assert (await ds.get(Player, "p")).username == "two"


async def test_exists(env: Env) -> None:
    ds = await env.make(Schema(name="players", model=Player))
    await ds.set(Player, Player(id="p", username="ann"))
    assert await ds.exists(Player, "p")
    assert not await ds.exists(Player, "q")


async def test_get_many_and_set_many_with_10000_rows(env: Env) -> None:
    ds = await env.make(Schema(name="players", model=Player))
    rows = [Player(id=f"p{i:05}", username=f"user{i}", level=i % 50) for i in range(10_000)]
    await ds.set_many(Player, rows)
    ids = [r.id for r in rows] + ["missing"]
    got = await ds.get_many(Player, ids)
    assert len(got) == 10_000 and "missing" not in got
    assert got["p09999"].username == "user9999" and got["p00042"].level == 42
    if env.stack.l3 is not None:
        await ds.flush_dirty()
        cold = await env.make(Schema(name="players", model=Player), migrate=False)
        got_cold = await cold.get_many(Player, ids)
        assert len(got_cold) == 10_000
        assert got_cold["p01234"].username == "user1234"


async def test_auto_timestamps(env: Env) -> None:
    ds = await env.make(Schema(name="players", model=Player))
    first = await ds.set(Player, Player(id="p", username="a"))
    await asyncio.sleep(0.002)
    later = Player(id="p", username="b", created_at=datetime.now(UTC) + timedelta(days=1))
    second = await ds.set(Player, later)
    got = await ds.get(Player, "p")
    assert got.created_at == first.created_at == second.created_at
    assert got.updated_at == second.updated_at > first.updated_at
    assert got.updated_at.utcoffset() == timedelta(0)
    if env.stack.l3 is not None:
        await ds.flush_dirty()
        stored = await ds.get(Player, "p", force_l3=True)
        assert stored.created_at == first.created_at
        assert stored.updated_at == second.updated_at


async def test_omit_cache_omit_l1_transient_fields(env: Env) -> None:
    ds = await env.make(Schema(name="players", model=Player))
    await ds.set(Player, Player(id="p", username="a", password_hash="h", note="n", scratch="s"))
    await ds.get(Player, "p")  # fills L1 where the write did not (write-through-L1-async)
    cached = await ds.get(Player, "p")
    assert cached.password_hash == "" and cached.scratch == ""
    assert cached.note == ("" if env.stack.l1 else "n")
    if env.stack.l3 is not None:
        await ds.flush_dirty()
        stored = await ds.get(Player, "p", force_l3=True)
        assert (stored.password_hash, stored.note, stored.scratch) == ("h", "n", "")


async def test_encrypted_field_round_trips(env: Env) -> None:
    ds = await env.make(Schema(name="players", model=Player))
    await ds.set(Player, Player(id="p", api_key="sk-123"))
    assert (await ds.get(Player, "p")).api_key == "sk-123"


async def test_missing_id_raises_not_found(env: Env) -> None:
    ds = await env.make(Schema(name="players", model=Player))
    with pytest.raises(errors.NotFoundError):
        await ds.get(Player, "nobody")


async def test_a_write_is_visible_to_the_next_read(env: Env) -> None:
    ds = await env.make(Schema(name="players", model=Player))
    for level in range(1, 20):
        await ds.set(Player, Player(id="p", level=level))
        assert (await ds.get(Player, "p")).level == level


async def test_concurrent_reads_and_writes_end_on_the_last_write(env: Env) -> None:
    ds = await env.make(Schema(name="players", model=Player))
    await ds.set(Player, Player(id="p", level=0))

    async def reader() -> None:
        for _ in range(20):
            await ds.get(Player, "p")

    async def writer() -> None:
        for level in range(1, 21):
            await ds.set(Player, Player(id="p", level=level))

    await asyncio.gather(reader(), writer(), reader())
    assert (await ds.get(Player, "p")).level == 20


async def test_raw_l3_row_holds_what_each_field_flag_promises(l3_env: Env) -> None:
    ds = await l3_env.make(Schema(name="players", model=Player))
    await ds.set(
        Player,
        Player(id="p", username="a", password_hash="h", note="n", scratch="s", api_key="sk-1"),
    )
    await ds.flush_dirty()
    row = await l3_env.raw_row("players", "p")
    assert row is not None
    assert row["password_hash"] == "h"  # omit_cache: in L3
    assert row["note"] == "n"  # omit_l1: in L3
    assert "scratch" not in row  # transient: no column at all
    assert isinstance(row["api_key"], bytes)  # encrypted: BYTEA / BLOB ciphertext
    assert b"sk-1" not in row["api_key"]
    assert row["created_at"] is not None and row["_strata_version"] > 0


async def test_cached_copies_never_hold_omit_cache_fields_or_plaintext(l2_env: Env) -> None:
    ds = await l2_env.make(Schema(name="players", model=Player))
    await ds.set(Player, Player(id="p", password_hash="pw-secret", api_key="sk-plain"))
    prefix = ds.config.key_prefix
    pattern = f"{{{prefix}:players}}:*" if l2_env.stack.cluster else f"{prefix}:players:*"
    redis_client = l2_env.redis()
    try:
        keys = [k async for k in redis_client.scan_iter(match=pattern)]
        # cached copies are strings (a write-behind journal is a stream: it is not a copy)
        values = [
            await redis_client.get(k) for k in keys if await redis_client.type(k) == b"string"
        ]
    finally:
        await redis_client.aclose()
    payloads = [v for v in values if v and v.startswith(b"S")]
    assert payloads
    for payload in payloads:
        assert b"pw-secret" not in payload
        assert b"sk-plain" not in payload

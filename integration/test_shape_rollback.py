"""Model shape rollback (DESIGN.md section 4): after an instance running a new model shape
wrote a row, an instance running the old shape (a rollback, or an old instance started
again) must not read the old value from its shape's L2 key. Old-shape copies do not outlive
a write of any shape."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from strata import Config, DataStore, Field, Schema, errors


class ItemV1(BaseModel):
    id: str = Field(primary_key=True)
    name: str = ""


class ItemV2(BaseModel):
    id: str = Field(primary_key=True)
    name: str = ""
    colour: str = Field(default="none")


@contextlib.asynccontextmanager
async def store(settings: dict[str, Any], model: type[BaseModel]) -> AsyncIterator[DataStore]:
    ds = DataStore(Config(**settings))
    ds.register(Schema(name="items", model=model))
    async with ds:
        await ds.migrate()
        yield ds


def l2_key(ds: DataStore, id: str) -> str:
    return f"{ds.config.key_prefix}:items:{ds.schemas['items'].shape}:{id}"


async def test_old_shape_does_not_read_its_copy_after_a_new_shape_wrote(
    settings: dict[str, Any], redis_client: aioredis.Redis
) -> None:
    async with store(settings, ItemV1) as old:
        await old.set(ItemV1, ItemV1(id="k", name="old"))
        assert await redis_client.exists(l2_key(old, "k"))  # the old shape's copy
    async with store(settings, ItemV2) as new:
        assert new.schemas["items"].shape != old.schemas["items"].shape
        await new.set(ItemV2, ItemV2(id="k", name="new", colour="red"))
    async with store(settings, ItemV1) as rolled_back:
        assert (await rolled_back.get(ItemV1, "k")).name == "new"


async def test_old_shape_does_not_read_a_row_a_new_shape_deleted(
    settings: dict[str, Any], redis_client: aioredis.Redis
) -> None:
    async with store(settings, ItemV1) as old:
        await old.set(ItemV1, ItemV1(id="k", name="old"))
    async with store(settings, ItemV2) as new:
        await new.delete(ItemV2, "k")
    async with store(settings, ItemV1) as rolled_back:
        with pytest.raises(errors.NotFoundError):
            await rolled_back.get(ItemV1, "k")


async def test_a_running_old_shape_instance_reads_the_new_shapes_write(
    settings: dict[str, Any],
) -> None:
    async with store(settings, ItemV1) as old, store(settings, ItemV2) as new:
        await old.set(ItemV1, ItemV1(id="k", name="old"))
        assert (await old.get(ItemV1, "k")).name == "old"
        await new.set(ItemV2, ItemV2(id="k", name="new"))
        async with store(settings, ItemV1) as fresh_old:  # no L1: reads the old shape's L2
            assert (await fresh_old.get(ItemV1, "k")).name == "new"

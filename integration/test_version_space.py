"""One version space: every write path's versions are ordered by commit, whatever the mode."""

from __future__ import annotations

import dataclasses

from pydantic import BaseModel

from integration.stacks import Env
from strata import Field, Schema, WriteMode


class Doc(BaseModel):
    id: str = Field(primary_key=True)
    body: str = ""


def _schema(env: Env, mode: WriteMode) -> Schema:
    return dataclasses.replace(env.stack.adapt(Schema(name="docs", model=Doc)), write_mode=mode)


async def test_write_through_after_write_behind_is_read_by_another_instance(
    bus_env: Env,
) -> None:
    behind = await bus_env.make(_schema(bus_env, WriteMode.WRITE_BEHIND), adapt=False)
    await behind.set(Doc, Doc(id="d", body="old"))
    await behind.flush_dirty()
    await behind.close()
    through = await bus_env.make(_schema(bus_env, WriteMode.WRITE_THROUGH), adapt=False)
    await through.set(Doc, Doc(id="d", body="new"))
    reader = await bus_env.make(_schema(bus_env, WriteMode.WRITE_THROUGH), adapt=False)
    assert (await reader.get(Doc, "d")).body == "new"


async def test_delete_after_write_behind_reaches_another_instance(bus_env: Env) -> None:
    behind = await bus_env.make(_schema(bus_env, WriteMode.WRITE_BEHIND), adapt=False)
    await behind.set(Doc, Doc(id="d", body="old"))
    await behind.flush_dirty()
    await behind.close()
    through = await bus_env.make(_schema(bus_env, WriteMode.WRITE_THROUGH), adapt=False)
    await through.delete(Doc, "d")
    reader = await bus_env.make(_schema(bus_env, WriteMode.WRITE_THROUGH), adapt=False)
    assert not await reader.exists(Doc, "d")

"""A write-behind schema for the crash tests (``Peer(settings, "integration.procs.wb_models")``)."""

from __future__ import annotations

from pydantic import BaseModel

from strata import Field, Schema, WriteMode


class Item(BaseModel):
    id: str = Field(primary_key=True)
    name: str = ""
    level: int = 0


ITEMS = Schema(name="wb_items", model=Item, write_mode=WriteMode.WRITE_BEHIND)

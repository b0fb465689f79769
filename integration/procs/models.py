"""The model the cross-process tests share: the test process and its peers import it from here."""

from __future__ import annotations

from pydantic import BaseModel

from strata import Field, Schema


class Item(BaseModel):
    id: str = Field(primary_key=True)
    name: str = ""
    level: int = 0


ITEMS = Schema(name="items", model=Item)

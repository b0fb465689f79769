"""Another service's own declaration of the ``items`` model: the same schema name, fields and
types as ``integration.procs.models.Item``, in a module of its own (as two applications that
share one database and one Redis each declare their models)."""

from __future__ import annotations

from pydantic import BaseModel

from strata import Field, Schema


class Item(BaseModel):
    id: str = Field(primary_key=True)
    name: str = ""
    level: int = 0


ITEMS = Schema(name="items", model=Item)

"""Stored ``auto_now_add`` values for the write paths that cannot ask L3 first (write-behind,
no L3): a rewrite of a row keeps the time it was created.

    set of ids ─► L1 copy ─► queued write (this process) ─► L2 copy (one round trip, only
                  for the ids neither had) ─► the stored value into the write's private copy
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from strata.router.core import Route
from strata.router.reads import Reads

__all__ = ["carry_created"]


async def carry_created(rt: Route, prepared: dict[Any, BaseModel], reads: Reads) -> None:
    """The cached copy of each row (L1, the write queue, then L2) has its stored values."""
    fields = rt.b.cs.auto_now_add
    rest = []
    l1, path = rt.l1, rt.path
    for i, v in prepared.items():
        cached = l1.get(i) if l1 is not None else None
        if cached is None:
            queued = path.pending(i)
            cached = queued[0] if queued is not None else None
        if cached is None:
            rest.append(i)
        else:
            _carry(fields, v, cached)
    if rest and rt.b.l2_on:
        found, _ = await reads.l2_get(rt, rest)
        for i, cached in found.items():
            _carry(fields, prepared[i], cached)


def _carry(fields: list[str], value: BaseModel, cached: BaseModel) -> None:
    """The stored values into the write's private copy (as model_copy would)."""
    value.__dict__.update({f: getattr(cached, f) for f in fields})
    value.__pydantic_fields_set__.update(fields)

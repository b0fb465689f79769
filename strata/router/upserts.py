"""The L3 upsert step of a write-through ``set`` / ``set_many`` (and a transaction's):
what L3 stored, as (id, value as stored, row version) items for the caches."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from strata.router.binding import Binding
from strata.router.core import Core
from strata.schema import VERSION_COLUMN
from strata.tiers.base import TxHandle

__all__ = ["Item", "upsert"]

Item = tuple[Any, BaseModel, int]
"""(id, value as stored, row version)"""


async def upsert(
    core: Core,
    b: Binding,
    prepared: dict[Any, BaseModel],
    rows: dict[Any, dict[str, Any]],
    *,
    tx: TxHandle | None = None,
    versioned: bool = False,
) -> list[Item]:
    """The L3 upsert; returns (id, value as stored, row version). With ``versioned`` the
    rows carry their own version and a newer stored row wins (it is left out)."""
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    if b.omitted:
        for i, v in prepared.items():
            groups.setdefault(b.kept(v), []).append(rows[i])
    else:  # every row writes every column
        groups[frozenset()] = list(rows.values())
    returned: dict[Any, dict[str, Any]] = {}
    for kept, group in groups.items():
        core.c.l3_queries += 1
        if kept:
            returned.update(
                await core.l3.upsert_many(b.cs, group, tx=tx, versioned=versioned, kept=kept)
            )
        else:
            returned.update(await core.l3.upsert_many(b.cs, group, tx=tx, versioned=versioned))
    items = []
    keep = [(f, b.cs.by_field[f].name) for f in b.cs.auto_now_add]
    omitted = b.omitted
    for i, v in prepared.items():
        ret = returned.get(i)
        if ret is None:  # versioned: L3 already holds a newer write of this row
            continue
        d = v.__dict__
        for f, c in keep:  # an existing row keeps its own auto_now_add values
            if d[f] != ret[c]:
                v = v.model_copy(update={f: ret[c] for f, c in keep})
                break
        if omitted:
            v = _stored_omitted(b, v, ret)
        items.append((i, v, int(ret[VERSION_COLUMN])))
    return items


def _stored_omitted(b: Binding, v: BaseModel, ret: dict[str, Any]) -> BaseModel:
    """The value with the omitted columns L3 kept (returned as stored), so no cache gets a
    default for them."""
    stored = {
        f: ret[c]
        for c, f in b.omitted.items()
        if c in ret and f not in v.model_fields_set and c not in b.rows.encrypted_columns
    }
    return v.model_copy(update=stored) if stored else v

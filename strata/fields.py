"""``strata.Field``: a drop-in for ``pydantic.Field`` that also carries storage metadata.

The metadata travels on the ``FieldInfo`` (in ``FieldInfo.metadata``) as a ``FieldMeta``
instance; pydantic ignores it, ``Schema`` compilation reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pydantic
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

__all__ = ["Field", "FieldMeta", "field_meta", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class FieldMeta:
    primary_key: bool = False
    unique: bool = False
    index: bool = False
    nullable: bool | None = None
    omit_cache: bool = False
    omit_l1: bool = False
    encrypted: bool = False
    transient: bool = False
    auto_now_add: bool = False
    auto_now: bool = False
    column: str | None = None


_PLAIN = FieldMeta()


def Field(
    default: Any = PydanticUndefined,
    *,
    primary_key: bool = False,
    unique: bool = False,
    index: bool = False,
    nullable: bool | None = None,
    omit_cache: bool = False,
    omit_l1: bool = False,
    encrypted: bool = False,
    transient: bool = False,
    auto_now_add: bool = False,
    auto_now: bool = False,
    column: str | None = None,
    **kwargs: Any,
) -> Any:
    """Declare a model field with its storage options (every ``pydantic.Field`` keyword works).

    ``auto_now_add`` / ``auto_now`` fields need no value at construction: they default to
    the current UTC time and Strata sets them again on write.
    """
    if (
        (auto_now or auto_now_add)
        and default is PydanticUndefined
        and "default_factory" not in kwargs
    ):
        kwargs["default_factory"] = utcnow
    info: FieldInfo = pydantic.Field(default, **kwargs)
    info.metadata.append(
        FieldMeta(
            primary_key=primary_key,
            unique=unique,
            index=index,
            nullable=nullable,
            omit_cache=omit_cache,
            omit_l1=omit_l1,
            encrypted=encrypted,
            transient=transient,
            auto_now_add=auto_now_add,
            auto_now=auto_now,
            column=column,
        )
    )
    return info


def field_meta(info: FieldInfo) -> FieldMeta:
    """The Strata metadata of a model field (plain pydantic fields get the defaults)."""
    for item in info.metadata:
        if isinstance(item, FieldMeta):
            return item
    return _PLAIN

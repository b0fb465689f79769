"""The L1 tier's bounds: checking them, and how many bytes a value holds for ``max_bytes``.

    default_sizeof(value)
      │ a Pydantic model ──► length of its JSON encoding (one pass in pydantic-core, no
      │                      Python walk: what L2 stores for the same value, near enough)
      ▼ anything else, or a model pydantic cannot encode
    estimate_size(value) ──► sys.getsizeof summed over everything reachable

The walk costs tens of microseconds for an ordinary model, many times the L1 set it was
paid on (issue 14), so models, by far the common value, skip it.
"""

from __future__ import annotations

import math
import sys
from types import FunctionType, MethodType, ModuleType
from typing import Final
from weakref import WeakKeyDictionary

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from strata.errors import ConfigError
from strata.schema import Eviction

__all__ = ["check_bounds", "check_callables", "default_sizeof", "estimate_size"]

_MISSING: Final = object()
# Counted but not followed: scalars have nothing inside; classes, modules and functions are
# shared by many values and would swamp the estimate.
_NOT_FOLLOWED: Final = (
    str,
    bytes,
    bytearray,
    int,
    float,
    complex,
    type(None),
    range,
    type,
    ModuleType,
    FunctionType,
    MethodType,
)
_slot_cache: WeakKeyDictionary[type, tuple[str, ...]] = WeakKeyDictionary()


def _slot_names(cls: type) -> tuple[str, ...]:
    names = _slot_cache.get(cls)
    if names is None:
        found: list[str] = []
        for klass in cls.__mro__:
            slots = klass.__dict__.get("__slots__", ())
            if isinstance(slots, str):
                slots = (slots,)
            found.extend(s for s in slots if s not in ("__dict__", "__weakref__"))
        names = _slot_cache[cls] = tuple(found)
    return names


def estimate_size(obj: object) -> int:
    """Approximate bytes held by ``obj``: ``sys.getsizeof`` summed over everything reachable
    through containers, instance ``__dict__`` and ``__slots__``, each object counted once.

    Classes, modules and functions are counted shallowly and not followed.
    """
    getsizeof = sys.getsizeof
    seen: set[int] = set()
    stack: list[object] = [obj]
    total = 0
    while stack:
        o = stack.pop()
        oid = id(o)
        if oid in seen:
            continue
        seen.add(oid)
        total += getsizeof(o)
        if isinstance(o, _NOT_FOLLOWED):
            continue
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, list | tuple | set | frozenset):
            stack.extend(o)
        else:
            d = getattr(o, "__dict__", None)
            if isinstance(d, dict):
                stack.append(d)
            for name in _slot_names(type(o)):
                # An unset slot raises AttributeError; the sentinel keeps it out of the sum.
                v = getattr(o, name, _MISSING)
                if v is not _MISSING:
                    stack.append(v)
    return total


def default_sizeof(value: object) -> int:
    """The size L1 charges a value against ``max_bytes`` unless its policy gives a sizeof:
    a model's encoded length, else ``estimate_size``."""
    if isinstance(value, BaseModel):
        try:
            return len(type(value).__pydantic_serializer__.to_json(value))
        except PydanticSerializationError:
            pass  # an arbitrary type pydantic cannot encode: measure it the slow way
    return estimate_size(value)


def check_bounds(
    ttl: object, max_entries: object, max_bytes: object, eviction: object, tombstone_ttl: object
) -> None:
    """``MemoryTier``'s bounds, or ``ConfigError``."""
    if ttl is not None and not _is_positive_finite(ttl):
        raise ConfigError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
    if max_entries is not None and not _is_positive_int(max_entries):
        raise ConfigError(f"max_entries must be an int >= 1 or None, got {max_entries!r}")
    if max_bytes is not None and not _is_positive_int(max_bytes):
        raise ConfigError(f"max_bytes must be an int >= 1 or None, got {max_bytes!r}")
    if not isinstance(eviction, Eviction):
        raise ConfigError(f"eviction must be an Eviction member, got {eviction!r}")
    if isinstance(tombstone_ttl, bool) or not (
        isinstance(tombstone_ttl, int | float) and 0 <= tombstone_ttl < math.inf
    ):
        raise ConfigError(
            f"tombstone_ttl must be a finite number of seconds >= 0, got {tombstone_ttl!r}"
        )


def check_callables(**fns: object) -> None:
    for name, fn in fns.items():
        if fn is not None and not callable(fn):
            raise ConfigError(f"{name} must be callable, got {fn!r}")


def _is_positive_finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and 0 < x < math.inf


def _is_positive_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1

"""Copies of one model's values for L1: the private copy L1 keeps, and the copy each caller
gets. A value handed out never aliases what L1 holds; copies are made only where aliasing
is possible, chosen once per schema (issue 14)::

    frozen, nothing mutable inside (no list/dict/nested model, no private attrs, no extra)
      └► the caller gets the held object itself: nobody can change it
    only immutable field values (str, int, datetime, ...)
      └► shallow copy: a new __dict__ and a new fields set (what model_copy() does, cheaper)
    mutable containers (lists, dicts, nested models)
      ├► pydantic-core round trip (to_python, then validate_python: both in Rust) when no
      │  model in the tree has custom validators, serializers, computed fields or post-init,
      │  and the first copy made reproduces its value; fields set and private attrs carried
      └► otherwise copy.deepcopy (what model_copy(deep=True) does)

The copies L1 keeps share one fields set per distinct set of field names (interned): it is
most of a small model's memory (a 7-name set is ~730 bytes), and a held copy is never
assigned to (callers get their own copy, with its own set; a frozen model refuses
assignment before it touches the set).
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Callable
from typing import Any, Final, Literal, TypeVar

from pydantic import BaseModel, functional_serializers, functional_validators
from pydantic_core import PydanticUndefined

__all__ = ["Copier"]

M = TypeVar("M", bound=BaseModel)
Strategy = Literal["none", "shallow", "round trip", "deepcopy"]

_setattr: Final = object.__setattr__
_MAX_INTERNED: Final = 64  # distinct fields sets per schema; past it, copies keep their own


class Copier:
    """How values of ``model`` are copied. ``mutable``: values can hold mutable containers
    (``CompiledSchema.mutable``). ``out(v)`` is the caller's copy, ``keep(v)`` L1's."""

    __slots__ = ("_interned", "_verified", "keep_copy", "model", "out", "strategy")

    def __init__(self, model: type[BaseModel], *, mutable: bool) -> None:
        self.model = model
        self._interned: dict[frozenset[str], set[str]] = {}
        self._verified: bool | None = False  # round trip: None once it proved unfaithful
        plain = _plain(model)
        self.strategy: Strategy
        if not mutable and plain and model.model_config.get("frozen"):
            self.strategy = "none"
        elif not mutable:
            self.strategy = "shallow"
        elif plain and _round_trippable(model):
            self.strategy = "round trip"
        else:
            self.strategy = "deepcopy"
        self.out: Callable[[BaseModel], BaseModel] = self._choose_out(plain)
        # The copy L1 keeps is never handed out, so even a frozen value is copied once.
        self.keep_copy: Callable[[BaseModel], BaseModel] = (
            (_shallow if plain else copy.copy) if self.strategy == "none" else self.out
        )

    def _choose_out(self, plain: bool) -> Callable[[BaseModel], BaseModel]:
        if self.strategy == "none":
            return _same
        if self.strategy == "shallow":
            return _shallow if plain else copy.copy
        if self.strategy == "round trip":
            return self._checked_round_trip
        return _deep

    def keep(self, value: M) -> M:
        """L1's private copy of ``value``, its fields set shared with its equals."""
        kept = typing.cast(M, self.keep_copy(value))
        self.intern(kept)
        return kept

    def intern(self, value: BaseModel) -> None:
        """Share ``value``'s fields set with the other held values that have the same one.
        Only for a value no caller will get (a held copy)."""
        names = value.__pydantic_fields_set__
        key = frozenset(names)
        shared = self._interned.get(key)
        if shared is None:
            if len(self._interned) >= _MAX_INTERNED:
                return
            shared = self._interned[key] = set(key)
        _setattr(value, "__pydantic_fields_set__", shared)

    def _checked_round_trip(self, value: BaseModel) -> BaseModel:
        """The round trip, checked on the first value: when it does not reproduce it (a
        custom type whose python form does not validate back to itself), deepcopy from then
        on. (``out`` stays this method: callers may hold it bound.)"""
        verified = self._verified
        if verified is True:
            return _round_trip(value)
        if verified is None:
            return _deep(value)
        try:
            out = _round_trip(value)
            ok = out == value
        except Exception:  # any failure means: this model needs deepcopy
            ok = False
        if not ok:
            self.strategy = "deepcopy"
            self._verified = None
            return _deep(value)
        self._verified = True
        return out


def _same(value: M) -> M:
    return value


def _shallow(value: M) -> M:
    """``model_copy()`` for a model without private attributes or extra fields."""
    cls = type(value)
    m = cls.__new__(cls)
    _setattr(m, "__dict__", value.__dict__.copy())
    _setattr(m, "__pydantic_fields_set__", set(value.__pydantic_fields_set__))
    _setattr(m, "__pydantic_extra__", None)
    _setattr(m, "__pydantic_private__", None)
    return m


def _deep(value: M) -> M:
    return copy.deepcopy(value)


def _round_trip(value: M) -> M:
    cls = type(value)
    out: M = cls.__pydantic_validator__.validate_python(
        cls.__pydantic_serializer__.to_python(value, round_trip=True)
    )
    _setattr(out, "__pydantic_fields_set__", set(value.__pydantic_fields_set__))
    private = value.__pydantic_private__
    if private is not None:
        _setattr(
            out,
            "__pydantic_private__",
            copy.deepcopy({k: v for k, v in private.items() if v is not PydanticUndefined}),
        )
    return out


def _plain(model: type[BaseModel]) -> bool:
    """No private attributes and no extra fields: the copy is the fields alone."""
    return not model.__private_attributes__ and model.model_config.get("extra") != "allow"


def _round_trippable(model: type[BaseModel]) -> bool:
    """Whether validating the model's python dump rebuilds it and runs no user code: no
    model in its field types has validators, serializers, computed fields or post-init,
    and no field type carries an ``Annotated`` validator or serializer."""
    seen: set[type] = set()
    stack: list[Any] = [model]
    while stack:
        t = stack.pop()
        if isinstance(t, _USER_CODE):
            return False
        if isinstance(t, type) and issubclass(t, BaseModel):
            if t in seen:
                continue
            seen.add(t)
            if _has_hooks(t):
                return False
            for info in t.model_fields.values():
                stack.append(info.annotation)
                stack.extend(info.metadata)
        elif isinstance(t, types.UnionType) or typing.get_origin(t) is not None:
            stack.extend(typing.get_args(t))
    return True


_USER_CODE: Final = (
    functional_validators.AfterValidator,
    functional_validators.BeforeValidator,
    functional_validators.PlainValidator,
    functional_validators.WrapValidator,
    functional_serializers.PlainSerializer,
    functional_serializers.WrapSerializer,
)


def _has_hooks(cls: type[BaseModel]) -> bool:
    d = cls.__pydantic_decorators__
    return bool(
        d.validators
        or d.field_validators
        or d.root_validators
        or d.field_serializers
        or d.model_serializers
        or d.model_validators
        or d.computed_fields
        or cls.__pydantic_post_init__ is not None
        or cls.model_config.get("extra") == "allow"
    )

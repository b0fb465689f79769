"""The ``Q`` builder and the plain values it builds (``Query``, ``Where``, ``Lookup``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Self, TypeAlias

from strata.errors import InvalidQueryError
from strata.query.guard import _check_placeholders, _scan

LOOKUPS: tuple[str, ...] = (
    "eq",
    "ne",
    "gt",
    "gte",
    "lt",
    "lte",
    "in",
    "isnull",
    "like",
    "ilike",
)
"""The ``filter()`` suffixes: ``level__gte=5``; a bare ``level=5`` is ``eq``."""


@dataclass(frozen=True, slots=True)
class Where:
    """One ``where(sql, *args)`` call; ``$1..$n`` in ``sql`` number ``args`` locally."""

    sql: str
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Lookup:
    """One ``filter()`` keyword: ``key`` as written, split into ``name`` and ``op`` (when
    compiling, ``key`` alone decides both)."""

    key: str
    name: str
    op: str
    value: Any


Condition: TypeAlias = Where | Lookup


@dataclass(frozen=True, slots=True)
class Query:
    """A built query: schema-free and immutable. Conditions are ANDed in the order given.

    ``ordering`` holds ``(identifier, descending)`` pairs (identifier ``None`` is the primary
    key: ``desc()`` without ``order_by``); ``limit=None`` means the configured default and
    ``0`` no limit; ``fields=None`` selects every column; ``tier`` is ``"l3"`` / ``"l2"``
    after ``force_l3()`` / ``force_l2()``. A hand-made ``Query`` is checked as thoroughly
    as a built one when it is compiled.
    """

    conditions: tuple[Condition, ...] = ()
    ordering: tuple[tuple[str | None, bool], ...] = ()
    limit: int | None = None
    offset: int = 0
    fields: tuple[str, ...] | None = None
    tier: Literal["l2", "l3"] | None = None


@dataclass(frozen=True, slots=True)
class Q:
    """The query builder. Immutable: each method returns a new ``Q`` and leaves this one as
    it was, so a shared base can be refined freely::

        base = Q().filter(region="eu")
        top = base.order_by("level").desc().limit(25)      # base is unchanged
    """

    _query: Query = Query()

    def _with(self, **changes: Any) -> Self:
        return type(self)(replace(self._query, **changes))

    def where(self, sql: str, *args: Any) -> Self:
        """AND a parameterised SQL condition: ``where("level > $1 AND region = $2", 10, "eu")``.

        Placeholders are numbered from ``$1`` within this call and must use exactly the
        arguments given. ``;``, ``--`` and ``/*`` outside string literals are refused.
        """
        if not isinstance(sql, str) or not sql.strip():
            raise InvalidQueryError(f"where() needs a non-empty SQL string, got {sql!r}")
        _scan(sql, "sqlite", strict=False)  # the guard, as SQLite reads quoting
        _check_placeholders(sql, _scan(sql, "postgresql"), len(args))
        return self._with(conditions=(*self._query.conditions, Where(sql.strip(), args)))

    def filter(self, **lookups: Any) -> Self:
        """AND Django-style lookups: ``level__gte=5``, ``region__in=[...]``, ``email=None``.

        Suffixes: eq (the default), ne, gt, gte, lt, lte, in, isnull, like, ilike. A key is
        split at its last ``__`` when what follows is one of them.
        """
        added = tuple(_lookup(key, value) for key, value in lookups.items())
        return self._with(conditions=(*self._query.conditions, *added))

    def order_by(self, *cols: str) -> Self:
        """Append sort keys; ``"-col"`` sorts descending. NULLs sort as the largest value on
        every dialect (last ascending, first descending)."""
        if not cols:
            raise InvalidQueryError("order_by() needs at least one column")
        added: list[tuple[str | None, bool]] = []
        for col in cols:
            descending = isinstance(col, str) and col.startswith("-")
            name = col[1:] if descending else col
            added.append((_identifier_syntax(name, "order_by"), descending))
        return self._with(ordering=(*self._query.ordering, *added))

    def desc(self) -> Self:
        """Make the most recent ``order_by`` column descending; with none, order by the
        primary key descending."""
        ordering = self._query.ordering
        if not ordering:
            return self._with(ordering=((None, True),))
        return self._with(ordering=(*ordering[:-1], (ordering[-1][0], True)))

    def limit(self, n: int | None) -> Self:
        """At most ``n`` rows; ``0`` means no limit, ``None`` the configured default."""
        return self._with(limit=None if n is None else _count_arg("limit", n))

    def offset(self, n: int) -> Self:
        return self._with(offset=_count_arg("offset", n))

    def fields(self, *cols: str) -> Projection:
        """Select only these columns (replaces an earlier ``fields()``): a ``Projection``,
        whose searches return dicts keyed by field name (typed so), not models."""
        if not cols:
            raise InvalidQueryError("fields() needs at least one column")
        chosen = tuple(_identifier_syntax(c, "fields") for c in cols)
        return Projection(replace(self._query, fields=chosen))

    def force_l3(self) -> Self:
        """Read from L3 even when a cached result set exists (the last force_* call wins)."""
        return self._with(tier="l3")

    def force_l2(self) -> Self:
        """Answer only from a cached result set (``CacheMissError`` when there is none)."""
        return self._with(tier="l2")

    def build(self) -> Query:
        """The immutable value (``Q(query)`` goes back to building from one)."""
        return self._query


@dataclass(frozen=True, slots=True)
class Projection(Q):
    """What ``Q().fields(...)`` returns: the same builder, and the static type by which
    ``search`` / ``search_cached`` know their rows are ``dict[str, Any]``."""


def as_query(q: Q | Query | None) -> Query:
    """The ``Query`` for anything a search accepts (``None`` is the empty query)."""
    if q is None:
        return Query()
    if isinstance(q, Q):
        return q.build()
    if isinstance(q, Query):
        return q
    raise InvalidQueryError(f"expected a Q, a Query or None, got {type(q).__name__}")


def _count_arg(what: str, n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise InvalidQueryError(f"{what}() takes an int, got {n!r}")
    if n < 0:
        raise InvalidQueryError(f"{what}() cannot be negative, got {n}")
    return int(n)


def _identifier_syntax(name: Any, where: str) -> str:
    """A cheap early check; the real one (exact schema match) happens when compiling."""
    if not isinstance(name, str) or not name.isidentifier():
        raise InvalidQueryError(
            f"{where}: {name!r} is not a column name",
            identifier=name if isinstance(name, str) else None,
        )
    return name


def _lookup(key: str, value: Any) -> Lookup:
    _identifier_syntax(key, "filter")
    name, op = key, "eq"
    base, sep, suffix = key.rpartition("__")
    if sep and suffix in LOOKUPS:
        name, op = base, suffix
    if op == "in":
        value = _in_values(key, value)
    elif op == "isnull":
        if not isinstance(value, bool):
            raise InvalidQueryError(
                f"filter {key}: takes True or False, got {value!r}", identifier=key
            )
    elif op in ("like", "ilike"):
        if not isinstance(value, str):
            raise InvalidQueryError(
                f"filter {key}: takes a pattern string, got {value!r}", identifier=key
            )
    elif op in ("gt", "gte", "lt", "lte") and value is None:
        raise InvalidQueryError(
            f"filter {key}=None: a comparison with NULL is never true; use {name}__isnull",
            identifier=key,
        )
    return Lookup(key=key, name=name, op=op, value=value)


def _in_values(key: str, value: Any) -> tuple[Any, ...]:
    if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Iterable):
        raise InvalidQueryError(
            f"filter {key}: takes a list of values, got {value!r}", identifier=key
        )
    if isinstance(value, set | frozenset):
        # A stable order keeps the SQL arguments, and so the result-cache digest, identical
        # in every process (set iteration order follows per-process string hashing).
        try:
            return tuple(sorted(value))
        except TypeError:
            return tuple(sorted(value, key=_canonical_json))
    return tuple(value)


def _canonical_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=repr)

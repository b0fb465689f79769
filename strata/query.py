"""Queries: the ``Q`` builder, the immutable ``Query`` it builds, and its SQL per dialect.

    Q().where(...).filter(...).order_by(...).limit(...)      builder: every call returns a new Q
        │  where(): placeholder count and statement guard checked at once
        │  filter(): lookup value shapes checked at once (in / isnull / like ...)
        ▼
    Query                                                     plain frozen value, schema-free
        │  compile_select / compile_count (schema + dialect)
        │    1. every identifier resolved EXACTLY to a field or column name, encrypted
        │       columns refused for filter / order_by            ── nothing emitted yet
        │    2. SQL assembled: identifiers quoted by SQLAlchemy's preparer, every value
        │       bound, where() placeholders renumbered into one global sequence
        ▼
    CompiledQuery(sql, args, columns, projection)  +  digest() for result caches

Values are never pasted into SQL. ``where()`` SQL is trusted application text (it may name
columns freely), yet it is scanned so that a statement separator, a comment, an unbalanced
parenthesis or a quoting trick that two SQL dialects read differently is refused.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Literal, NamedTuple, Self, TypeAlias
from uuid import UUID

from sqlalchemy.dialects import registry
from sqlalchemy.sql.compiler import IdentifierPreparer

from strata.errors import InvalidQueryError, UnsupportedOperationError
from strata.schema import VERSION_COLUMN, ColumnKind, ColumnSpec, CompiledSchema, enum_to_text

__all__ = [
    "LOOKUPS",
    "CompiledQuery",
    "Lookup",
    "Projection",
    "Q",
    "Query",
    "Where",
    "as_query",
    "compile_count",
    "compile_select",
]

Dialect: TypeAlias = Literal["postgresql", "sqlite"]
ToDb: TypeAlias = Callable[[ColumnSpec, Any], Any]

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

_COMPARE = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_TEXT_KINDS = (ColumnKind.TEXT, ColumnKind.ENUM)


# --------------------------------------------------------------------------- values


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


# --------------------------------------------------------------------------- where() SQL


Span: TypeAlias = tuple[int, int, int]  # start, end, placeholder number


def _check_placeholders(sql: str, spans: list[Span], nargs: int) -> None:
    used = {n for _, _, n in spans}
    if used != set(range(1, nargs + 1)):
        shown = ", ".join(f"${n}" for n in sorted(used)) or "none"
        raise InvalidQueryError(
            f"where({sql!r}): {nargs} argument(s) given but the placeholders used are {shown}; "
            f"use each of $1..${nargs} at least once and no others"
            if nargs
            else f"where({sql!r}): no arguments given but the placeholders used are {shown}"
        )


def _is_ident_char(c: str) -> bool:
    return c.isalnum() or c in "_$"


def _scan(sql: str, dialect: Dialect, *, strict: bool = True) -> list[Span]:
    """Placeholder spans ``(start, end, number)`` outside literals and quoted identifiers.

    Refuses, outside literals: ``;``, ``--``, ``/*``, backticks, unbalanced parentheses, a
    ``$`` that is not ``$<digits>`` (dollar-quoted strings, named parameters) and, for
    SQLite (``strict``), its own parameter markers ``?``, ``:name``, ``@name``. Inside a
    string literal a backslash right before a quote is refused: PostgreSQL ``E''`` strings
    read it as an escape, standard strings do not, and the two readings would disagree on
    where the literal ends.
    """

    def refuse(why: str) -> InvalidQueryError:
        return InvalidQueryError(f"where({sql!r}): {why}")

    if "\x00" in sql:
        raise refuse("NUL character")
    spans: list[Span] = []
    depth = 0
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"" or (c == "[" and dialect == "sqlite"):
            close = "]" if c == "[" else c
            j = i + 1
            while True:
                if j >= n:
                    raise refuse("unterminated quoted text")
                if c == "'" and sql[j] == "\\" and j + 1 < n and sql[j + 1] == "'":
                    raise refuse(
                        "a backslash before a quote in a string literal reads differently per "
                        "dialect; pass the value as an argument instead"
                    )
                if sql[j] == close:
                    if close != "]" and j + 1 < n and sql[j + 1] == close:
                        j += 2  # doubled quote: an escaped quote, still inside
                        continue
                    break
                j += 1
            i = j + 1
            continue
        if c == ";":
            raise refuse("';' is not allowed (one condition, not several statements)")
        if sql.startswith("--", i) or sql.startswith("/*", i):
            raise refuse("SQL comments are not allowed")
        if c == "`":
            raise refuse("backtick quoting is not allowed; use double quotes")
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise refuse("unbalanced parentheses")
        elif c == "$" and not (i > 0 and _is_ident_char(sql[i - 1])):
            j = i + 1
            while j < n and sql[j].isascii() and sql[j].isdigit():
                j += 1
            if j == i + 1:
                raise refuse("'$' must start a placeholder such as $1")
            spans.append((i, j, int(sql[i + 1 : j])))
            i = j
            continue
        elif strict and dialect == "sqlite" and c in "?:@":
            raise refuse(f"{c!r} is a SQLite parameter marker; use $1..$n placeholders")
        i += 1
    if depth:
        raise refuse("unbalanced parentheses")
    return spans


# --------------------------------------------------------------------------- compiled


@dataclass(frozen=True, slots=True)
class CompiledQuery:
    sql: str
    args: tuple[Any, ...]
    columns: tuple[str, ...]  # selected column names, in order
    projection: bool  # True when fields() chose the columns

    def digest(self) -> str:
        """A key for cached result sets: equal only for the same SQL and the same typed
        arguments (``1`` and ``"1"``, ``["1 2"]`` and ``["1", "2"]`` differ)."""
        payload = ["strata.query/1", self.sql, [_canonical(a) for a in self.args]]
        encoded = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
        return hashlib.blake2b(encoded.encode("ascii"), digest_size=20).hexdigest()


def _canonical(value: Any) -> Any:
    """A JSON-able form tagged with the exact type, injective for the values Strata binds."""
    tp = type(value)
    tag = f"{tp.__module__}.{tp.__qualname__}"
    body: Any
    if value is None:
        body = None
    elif isinstance(value, enum.Enum):
        body = [value.name, _canonical(value.value)]
    elif isinstance(value, str):
        body = str(value)
    elif isinstance(value, bool | int):
        body = str(int(value))
    elif isinstance(value, float):
        body = value.hex()
    elif isinstance(value, bytes | bytearray | memoryview):
        body = bytes(value).hex()
    elif isinstance(value, list | tuple):
        body = [_canonical(v) for v in value]
    elif isinstance(value, set | frozenset):
        body = sorted((_canonical(v) for v in value), key=_canonical_json)
    elif isinstance(value, Mapping):
        body = sorted(
            ([_canonical(k), _canonical(v)] for k, v in value.items()), key=_canonical_json
        )
    elif isinstance(value, datetime | date | time | Decimal | UUID):
        body = str(value)
    else:
        body = repr(value)
    return [tag, body]


def _canonical_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=repr)


@functools.cache
def _preparer(dialect: Dialect) -> IdentifierPreparer:
    preparer: IdentifierPreparer = registry.load(dialect)().identifier_preparer
    return preparer


def _identity(spec: ColumnSpec, value: Any) -> Any:
    return value


class _CheckedWhere(NamedTuple):
    where: Where
    spans: list[Span]  # placeholders, as the target dialect reads the quoting


class _CheckedLookup(NamedTuple):
    lookup: Lookup
    spec: ColumnSpec


@dataclass(frozen=True, slots=True)
class _Plan:
    """A query with every identifier resolved against the schema: nothing left to refuse."""

    conditions: tuple[_CheckedWhere | _CheckedLookup, ...]
    ordering: tuple[tuple[ColumnSpec, bool], ...]
    fields: tuple[ColumnSpec, ...] | None


def _resolve(cs: CompiledSchema, name: str, where: str, *, shown: str | None = None) -> ColumnSpec:
    shown = name if shown is None else shown
    spec = cs.by_field.get(name) if isinstance(name, str) else None
    if spec is None and isinstance(name, str):
        spec = cs.by_column.get(name)  # a field's name wins over another field's column name
    if spec is None:
        raise InvalidQueryError(
            f"{cs.name}: {where} names {shown!r}, which is not a column "
            f"(columns: {', '.join(c.field for c in cs.columns)})",
            identifier=shown if isinstance(shown, str) else None,
        )
    if where in ("filter", "order_by") and spec.meta.encrypted:
        raise InvalidQueryError(
            f"{cs.name}: cannot {'filter' if where == 'filter' else 'order'} by {shown!r}: it is "
            "encrypted and every write stores a different ciphertext, so equality and order "
            "of the stored values mean nothing",
            identifier=shown,
        )
    return spec


def _plan(q: Query, cs: CompiledSchema, dialect: Dialect) -> _Plan:
    """Check everything (a hand-made ``Query`` too) before a single word of SQL exists."""
    if q.limit is not None:
        _count_arg("limit", q.limit)
    _count_arg("offset", q.offset)
    conditions: list[_CheckedWhere | _CheckedLookup] = []
    for cond in q.conditions:
        if isinstance(cond, Where):
            # Scanned for the target dialect: renumbering must follow its quoting rules.
            spans = _scan(cond.sql, dialect)
            _check_placeholders(cond.sql, spans, len(cond.args))
            conditions.append(_CheckedWhere(cond, spans))
            continue
        if not isinstance(cond, Lookup):
            raise InvalidQueryError(f"not a query condition: {cond!r}")
        cond = _lookup(cond.key, cond.value)  # the key decides name and op
        if (
            cond.name == cond.key  # no lookup suffix was recognised
            and "__" in cond.key
            and cond.key not in cs.by_field
            and cond.key not in cs.by_column
        ):
            suffix = cond.key.rpartition("__")[2]
            raise InvalidQueryError(
                f"{cs.name}: filter {cond.key!r}: unknown lookup {suffix!r} "
                f"(valid: {', '.join(LOOKUPS)})",
                identifier=cond.key,
            )
        spec = _resolve(cs, cond.name, "filter", shown=cond.key)
        if spec.value_kind is ColumnKind.JSON and cond.op != "isnull":
            raise InvalidQueryError(
                f"{cs.name}: filter {cond.key!r}: {spec.field} holds JSON; only __isnull "
                "applies (use where() for JSON operators)",
                identifier=cond.key,
            )
        if cond.op in ("like", "ilike") and spec.value_kind not in _TEXT_KINDS:
            raise InvalidQueryError(
                f"{cs.name}: filter {cond.key!r}: {cond.op} needs a text column",
                identifier=cond.key,
            )
        conditions.append(_CheckedLookup(cond, spec))
    ordering = tuple(
        (cs.pk if name is None else _resolve(cs, name, "order_by"), descending)
        for name, descending in q.ordering
    )
    fields = None
    if q.fields is not None:
        seen: dict[str, ColumnSpec] = {}
        for name in q.fields:
            spec = _resolve(cs, name, "fields")
            seen.setdefault(spec.name, spec)
        fields = tuple(seen.values())
    return _Plan(tuple(conditions), ordering, fields)


class _Builder:
    """Binds arguments and renders conditions for one dialect."""

    def __init__(self, dialect: Dialect, to_db: ToDb) -> None:
        if dialect not in ("postgresql", "sqlite"):
            raise UnsupportedOperationError(f"no SQL dialect {dialect!r}")
        self.dialect = dialect
        self.mark = "$" if dialect == "postgresql" else "?"
        self.quote = _preparer(dialect).quote_identifier
        self._to_db = to_db
        self.args: list[Any] = []

    def to_db(self, spec: ColumnSpec, value: Any) -> Any:
        # Enum members are stored as their text on every dialect, whatever to_db does next.
        return self._to_db(spec, enum_to_text(value) if isinstance(value, enum.Enum) else value)

    def bind(self, value: Any) -> str:
        self.args.append(value)
        return f"{self.mark}{len(self.args)}"

    def table(self, cs: CompiledSchema) -> str:
        name = self.quote(cs.table.name)
        # The SQLite tier creates its tables without a schema (SQLite has none).
        if cs.table.schema and self.dialect == "postgresql":
            return f"{self.quote(cs.table.schema)}.{name}"
        return name

    def where(self, cond: Where, spans: list[Span]) -> str:
        base = len(self.args)
        self.args.extend(cond.args)
        out, last = [], 0
        for start, end, number in spans:
            out.append(cond.sql[last:start])
            out.append(f"{self.mark}{base + number}")
            last = end
        out.append(cond.sql[last:])
        return f"({''.join(out)})"

    def lookup(self, cond: Lookup, spec: ColumnSpec) -> str:
        col = self.quote(spec.name)
        op, value = cond.op, cond.value
        if op == "isnull":
            return f"{col} IS NULL" if value else f"{col} IS NOT NULL"
        if value is None and op in ("eq", "ne"):
            return f"{col} IS NULL" if op == "eq" else f"{col} IS NOT NULL"
        if op == "in":
            values = [self.to_db(spec, v) for v in value]
            if not values:
                return "1 = 0"
            if self.dialect == "postgresql":
                return f"{col} = ANY({self.bind(values)})"
            return f"{col} IN ({', '.join(self.bind(v) for v in values)})"
        if op in ("like", "ilike"):
            escape = " ESCAPE '\\'"  # the same escape character on both dialects
            pattern = self.bind(self.to_db(spec, value))
            if op == "like":
                return f"{col} LIKE {pattern}{escape}"
            if self.dialect == "postgresql":
                return f"{col} ILIKE {pattern}{escape}"
            return f"lower({col}) LIKE lower({pattern}){escape}"
        return f"{col} {_COMPARE[op]} {self.bind(self.to_db(spec, value))}"

    def where_clause(self, plan: _Plan) -> str:
        parts = [
            self.where(*cond) if isinstance(cond, _CheckedWhere) else self.lookup(*cond)
            for cond in plan.conditions
        ]
        return f" WHERE {' AND '.join(parts)}" if parts else ""

    def order_clause(self, plan: _Plan) -> str:
        keys = []
        for spec, descending in plan.ordering:
            key = self.quote(spec.name) + (" DESC" if descending else "")
            if self.dialect == "sqlite" and spec.nullable:
                # PostgreSQL sorts NULL as the largest value; make SQLite agree.
                key += " NULLS FIRST" if descending else " NULLS LAST"
            keys.append(key)
        return f" ORDER BY {', '.join(keys)}" if keys else ""


def compile_select(
    query: Q | Query | None,
    cs: CompiledSchema,
    dialect: Dialect,
    *,
    default_limit: int,
    to_db: ToDb | None = None,
    extra_columns: Sequence[str] = (VERSION_COLUMN,),
) -> CompiledQuery:
    """``SELECT`` for ``query`` on ``cs``'s table. ``limit=None`` takes ``default_limit``
    (``0`` there, as in ``limit(0)``, means no limit). ``to_db(spec, value)`` converts each
    filter value to the column's stored form (Enum members are turned into their stored
    text first; default: nothing more). ``where()`` arguments are bound as given.
    ``extra_columns`` follow the model's columns unless ``fields()`` chose the columns."""
    q = as_query(query)
    b = _Builder(dialect, to_db or _identity)
    if isinstance(default_limit, bool) or not isinstance(default_limit, int) or default_limit < 0:
        raise InvalidQueryError(f"default_limit must be an int >= 0, got {default_limit!r}")
    plan = _plan(q, cs, dialect)
    if plan.fields is not None:
        columns = tuple(spec.name for spec in plan.fields)
    else:
        names = [c.name for c in cs.columns]
        columns = tuple(names + [c for c in extra_columns if c not in names])
    sql = f"SELECT {', '.join(b.quote(c) for c in columns)} FROM {b.table(cs)}"
    sql += b.where_clause(plan) + b.order_clause(plan)
    limit = default_limit if q.limit is None else q.limit
    if limit:
        sql += f" LIMIT {int(limit)}"
    elif q.offset and dialect == "sqlite":
        sql += " LIMIT -1"  # SQLite accepts OFFSET only after a LIMIT
    if q.offset:
        sql += f" OFFSET {int(q.offset)}"
    return CompiledQuery(sql, tuple(b.args), columns, plan.fields is not None)


def compile_count(
    query: Q | Query | None,
    cs: CompiledSchema,
    dialect: Dialect,
    *,
    to_db: ToDb | None = None,
) -> CompiledQuery:
    """``SELECT count(*) AS "count"`` for the rows ``query`` matches. Ordering, limit, offset
    and fields play no part (their identifiers are still checked)."""
    b = _Builder(dialect, to_db or _identity)
    plan = _plan(as_query(query), cs, dialect)
    sql = f"SELECT count(*) AS {b.quote('count')} FROM {b.table(cs)}{b.where_clause(plan)}"
    return CompiledQuery(sql, tuple(b.args), ("count",), False)

"""``Query`` -> SQL for one schema and dialect: identifiers resolved, values bound."""

from __future__ import annotations

import enum
import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, NamedTuple, TypeAlias
from uuid import UUID

from sqlalchemy.dialects import registry
from sqlalchemy.sql.compiler import IdentifierPreparer

from strata.errors import InvalidQueryError, UnsupportedOperationError
from strata.query.builder import (
    LOOKUPS,
    Lookup,
    Q,
    Query,
    Where,
    _canonical_json,
    _count_arg,
    _lookup,
    as_query,
)
from strata.query.guard import Dialect, Span, _check_placeholders, _scan
from strata.schema import VERSION_COLUMN, ColumnKind, ColumnSpec, CompiledSchema, enum_to_text

ToDb: TypeAlias = Callable[[ColumnSpec, Any], Any]

_COMPARE = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_TEXT_KINDS = (ColumnKind.TEXT, ColumnKind.ENUM)


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
    if limit or q.offset:
        # Bound, never inlined, and both present on every page: all the pages of a query
        # are one statement text, so one prepared statement (no limit: NULL on
        # PostgreSQL, -1 on SQLite, which accepts OFFSET only after a LIMIT).
        no_limit = None if dialect == "postgresql" else -1
        sql += f" LIMIT {b.bind(int(limit) if limit else no_limit)}"
        sql += f" OFFSET {b.bind(int(q.offset))}"
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

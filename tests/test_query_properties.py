"""Property: compiled SQLite SQL selects exactly the rows the same filter selects in Python,
with SQL's NULL rules (a comparison with NULL is never true; ``ne`` excludes NULLs), and in
the order ``order_by`` promises (NULLs sort as the largest value, as on PostgreSQL)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from sqlalchemy.dialects import sqlite as sa_sqlite
from sqlalchemy.schema import CreateTable

from strata.config import Config
from strata.fields import Field
from strata.query import Q, compile_select
from strata.schema import CompiledSchema, Schema, compile_schema


class Row(BaseModel):
    id: int = Field(primary_key=True)
    level: int = Field(default=0)
    region: str = Field(default="eu")
    email: str | None = Field(default=None)


REGIONS = ["eu", "us", "ap"]
EMAILS = ["a@x", "b@x", "c@x"]


def _schema() -> CompiledSchema:
    return compile_schema(
        Schema(name="rows", model=Row), Config(), has_cipher=False, metadata=sa.MetaData()
    )


CS = _schema()
SQLITE = sa_sqlite.dialect()
OPS = ["eq", "ne", "gt", "gte", "lt", "lte", "in", "isnull"]

rows_strategy = st.lists(
    st.tuples(
        st.integers(-3, 3),
        st.sampled_from(REGIONS),
        st.none() | st.sampled_from(EMAILS),
    ),
    max_size=12,
)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "id": st.integers(-1, 12),
    "level": st.integers(-4, 4),
    "region": st.sampled_from([*REGIONS, "zz"]),
    "email": st.none() | st.sampled_from([*EMAILS, "b", "zz"]),
}


@st.composite
def lookup(draw: st.DrawFn, column: str) -> tuple[str, Any]:
    op = draw(st.sampled_from(OPS))
    if op == "isnull":
        return f"{column}__isnull", draw(st.booleans())
    if op == "in":
        return f"{column}__in", draw(st.lists(VALUES[column], max_size=4))
    value = draw(VALUES[column])
    if value is None and op not in ("eq", "ne"):
        op = "eq"  # ordering comparisons with None are refused by the builder
    return (column if op == "eq" else f"{column}__{op}"), value


@st.composite
def queries(draw: st.DrawFn) -> tuple[dict[str, Any], int | None, str | None, int]:
    columns = draw(st.lists(st.sampled_from(list(VALUES)), unique=True, max_size=3))
    lookups = dict(draw(lookup(c)) for c in columns)
    where_level = draw(st.none() | st.integers(-4, 4))
    order = draw(st.none() | st.sampled_from(["level", "-level", "email", "-email", "region"]))
    limit = draw(st.integers(0, 6))
    return lookups, where_level, order, limit


def matches(value: Any, op: str, arg: Any) -> bool:
    """One lookup in Python, with SQL's NULL semantics."""
    if op == "isnull":
        return (value is None) is arg
    if op in ("eq", "ne") and arg is None:
        return (value is None) is (op == "eq")
    if value is None:
        return False
    tests: dict[str, Callable[[Any, Any], bool]] = {
        "eq": lambda v, a: v == a,
        "ne": lambda v, a: v != a,
        "gt": lambda v, a: v > a,
        "gte": lambda v, a: v >= a,
        "lt": lambda v, a: v < a,
        "lte": lambda v, a: v <= a,
        "in": lambda v, a: v in [x for x in a if x is not None],
    }
    return tests[op](value, arg)


def split(key: str) -> tuple[str, str]:
    column, _, op = key.partition("__")
    return column, op or "eq"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_strategy, query=queries())
def test_sqlite_sql_selects_the_rows_python_selects(
    rows: list[tuple[int, str, str | None]],
    query: tuple[dict[str, Any], int | None, str | None, int],
) -> None:
    lookups, where_level, order, limit = query
    data: list[dict[str, Any]] = [
        {"id": i, "level": level, "region": region, "email": email}
        for i, (level, region, email) in enumerate(rows)
    ]
    db = sqlite3.connect(":memory:")
    try:
        db.execute(str(CreateTable(CS.table).compile(dialect=SQLITE)))
        if data:
            db.executemany(
                'INSERT INTO "rows" (id, level, region, email) VALUES (?, ?, ?, ?)',
                [(r["id"], r["level"], r["region"], r["email"]) for r in data],
            )

        q = Q().filter(**lookups).fields("id")
        if where_level is not None:
            # a where() in front: the filters' placeholders must be renumbered after it
            q = Q().where("level >= $1", where_level).filter(**lookups).fields("id")
        q = q.order_by(order, "id") if order else q.order_by("id")
        q = q.limit(limit)
        compiled = compile_select(q, CS, "sqlite", default_limit=100)
        got = [r[0] for r in db.execute(compiled.sql, compiled.args).fetchall()]
    finally:
        db.close()

    expected = [
        r
        for r in data
        if all(matches(r[split(k)[0]], split(k)[1], v) for k, v in lookups.items())
        and (where_level is None or r["level"] >= where_level)
    ]
    expected.sort(key=lambda r: r["id"])
    if order:
        column = order.lstrip("-")
        # NULLs sort as the largest value; a stable sort keeps id order among equals.
        expected.sort(
            key=lambda r: (r[column] is None, r[column] if r[column] is not None else 0),
            reverse=order.startswith("-"),
        )
    want = [r["id"] for r in expected]
    if limit:
        want = want[:limit]
    assert got == want

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

    builder.py    Q, Query, Where, Lookup: the values, checked as they are built
    guard.py      the where() SQL scan (placeholders, separators, quoting tricks)
    compiler.py   compile_select / compile_count, CompiledQuery and its digest
"""

from __future__ import annotations

from strata.query.builder import LOOKUPS, Lookup, Projection, Q, Query, Where, as_query
from strata.query.compiler import CompiledQuery, compile_count, compile_select

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

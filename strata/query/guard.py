"""The ``where()`` SQL guard: placeholders found, and what two dialects read differently
refused. Trusted application text, scanned, never rewritten beyond placeholder numbers."""

from __future__ import annotations

from typing import Literal, TypeAlias

from strata.errors import InvalidQueryError

Dialect: TypeAlias = Literal["postgresql", "sqlite"]

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

"""``migrate_from``: hand-written SQL files, applied once each, in order, with a ledger.

    directory ──► NNN_description.sql files, numeric order (other files are ignored)
      │ one transaction, under the migration lock: ensure ledger, read it; a file applied
      │ before whose content changed since  ──► MigrationError (nothing runs)
      └─ for each file not in the ledger, its own transaction:
           lock ─► re-read ledger (another process may have applied it) ─► run the file
           ─► ledger row (kind 'sql', name, sha256) ─► COMMIT
           a failing statement ──► ROLLBACK of that file, MigrationError naming it

PostgreSQL runs a file as one script (asyncpg's simple-query protocol) with ``search_path``
set to ``Config.database_schema`` (then ``public``); SQLite runs it statement by statement
(SQLite's own ``complete_statement`` finds the ends, so triggers work). A file must not hold
transaction control (BEGIN / COMMIT / ROLLBACK ...): Strata owns the transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy as sa

from strata.config import Config
from strata.errors import MigrationError, StrataError
from strata.migrations.connect import (
    pg_connection,
    pg_lock,
    sqlite_connection,
    translate,
    unavailable,
)
from strata.migrations.ledger import (
    MigrationRecord,
    ensure_bookkeeping,
    insert_record,
    read_records,
)

__all__ = ["SqlFile", "discover", "migrate_from", "split_postgres", "split_sqlite"]

FILE_PATTERN = re.compile(r"^(\d+)_(.+)\.sql$")
_TX_CONTROL = re.compile(
    r"^\s*(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|ABORT)\b", re.IGNORECASE
)


@dataclass(frozen=True)
class SqlFile:
    number: int
    name: str  # the file name, as the ledger records it
    content: str
    checksum: str  # sha256 hex of the file's bytes


async def migrate_from(config: Config, directory: str | os.PathLike[str]) -> list[MigrationRecord]:
    """Apply the SQL files of ``directory`` not applied yet; return their ledger records.

    Only files named ``NNN_description.sql`` (digits, underscore, anything, ``.sql``) are
    migrations; every other file is ignored. They run in numeric order (two files with the
    same number are an error), each in its own transaction under the migration lock, and
    are recorded in ``_strata_migrations`` with kind ``'sql'``, the file name and the sha256
    of its content. A file already recorded with the same checksum is skipped; one whose
    content changed since it was applied raises ``MigrationError`` before anything runs.
    A failing file is rolled back and raises ``MigrationError`` with the failing statement;
    the files before it stay applied.
    """
    files = await asyncio.to_thread(discover, directory)
    if config.dialect == "postgresql":
        try:
            return await _run_postgres(config, files)
        except StrataError:
            raise
        except (sa.exc.DBAPIError, asyncpg.PostgresError, OSError, TimeoutError) as exc:
            raise translate(config, exc, "migrate_from") from exc
    return await asyncio.to_thread(_run_sqlite, config, files)


def discover(directory: str | os.PathLike[str]) -> list[SqlFile]:
    """The migration files of ``directory`` in the order they apply."""
    path = Path(directory)
    if not path.is_dir():
        raise MigrationError(f"migrate_from: {str(path)!r} is not a directory")
    found: dict[int, SqlFile] = {}
    for entry in sorted(path.iterdir()):
        match = FILE_PATTERN.match(entry.name)
        if match is None or not entry.is_file():
            continue
        number = int(match.group(1))
        data = entry.read_bytes()
        if number in found:
            raise MigrationError(
                f"migrate_from: {found[number].name} and {entry.name} have the same number "
                f"{number}; the order would be ambiguous: renumber one of them"
            )
        try:
            content = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MigrationError(f"migrate_from: {entry.name} is not UTF-8: {exc}") from exc
        found[number] = SqlFile(number, entry.name, content, hashlib.sha256(data).hexdigest())
    return [found[n] for n in sorted(found)]


def _pending(files: Sequence[SqlFile], records: Sequence[MigrationRecord]) -> list[SqlFile]:
    """Files not applied yet; raises for an applied file whose content changed."""
    applied = {r.name: r for r in records if r.kind == "sql"}
    pending = []
    for f in files:
        record = applied.get(f.name)
        if record is None:
            pending.append(f)
        elif record.checksum != f.checksum:
            raise MigrationError(
                f"migrate_from: {f.name} changed after it was applied on "
                f"{record.applied_at:%Y-%m-%d %H:%M:%S %Z} (checksum {record.checksum[:12]} "
                f"in the ledger, {f.checksum[:12]} now). An applied migration must not be "
                "edited: restore it and put the change in a new file",
                diffs=[f.name],
            )
    return pending


def _check_statements(f: SqlFile, statements: Sequence[str]) -> None:
    for statement in statements:
        if _TX_CONTROL.match(statement):
            raise MigrationError(
                f"migrate_from: {f.name} contains transaction control ({statement.strip()!r}); "
                "each file already runs in its own transaction: remove it",
                diffs=[f.name],
            )


def _failure(f: SqlFile, statement: str | None, exc: BaseException) -> MigrationError:
    where = f"\nStatement:\n  {statement.strip()}" if statement else ""
    return MigrationError(
        f"migrate_from: {f.name} failed and was rolled back.{where}\nError: {exc}",
        diffs=[f.name],
    )


# -- PostgreSQL -----------------------------------------------------------------------------


async def _run_postgres(config: Config, files: list[SqlFile]) -> list[MigrationRecord]:
    schema = config.database_schema
    applied: list[MigrationRecord] = []
    async with pg_connection(config) as conn:
        async with conn.begin():
            await pg_lock(conn, config)
            records = await conn.run_sync(_bookkeeping, schema)
        for f in _pending(files, records):
            statements = split_postgres(f.content)
            _check_statements(f, [s for _, s in statements])
            try:
                async with conn.begin():
                    await pg_lock(conn, config)
                    records = await conn.run_sync(read_records, schema)
                    if not _pending([f], records):
                        continue  # another process applied it while we waited
                    raw = await _asyncpg(conn, config)
                    await raw.execute(f.content)
                    record = await conn.run_sync(_record, schema, f)
            except asyncpg.PostgresError as exc:
                statement = await _locate(conn, config, f, statements, exc)
                raise _failure(f, statement, exc) from exc
            applied.append(record)
    return applied


def _bookkeeping(conn: sa.Connection, schema: str | None) -> list[MigrationRecord]:
    ensure_bookkeeping(conn, schema)
    return read_records(conn, schema)


def _record(conn: sa.Connection, schema: str | None, f: SqlFile) -> MigrationRecord:
    return insert_record(
        conn, schema, kind="sql", name=f.name, checksum=f.checksum, statements=f.content
    )


async def _asyncpg(conn: Any, config: Config) -> Any:
    """The asyncpg connection under SQLAlchemy's, inside the current transaction, with
    ``search_path`` set for the rest of the transaction."""
    if config.database_schema:
        quoted = conn.dialect.identifier_preparer.quote(config.database_schema)
        await conn.exec_driver_sql(f"SET LOCAL search_path TO {quoted}, public")
    raw = await conn.get_raw_connection()
    return raw.driver_connection


async def _locate(
    conn: Any,
    config: Config,
    f: SqlFile,
    statements: list[tuple[int, str]],
    exc: asyncpg.PostgresError,
) -> str | None:
    """The statement that failed: from the error's position when PostgreSQL gave one, else
    by replaying the file statement by statement in a transaction that is rolled back."""
    position = getattr(exc, "position", None)
    if position and str(position).isdigit():
        offset = int(position) - 1
        for start, statement in reversed(statements):
            if start <= offset:
                return statement
    try:
        async with conn.begin() as tx:
            await pg_lock(conn, config)
            raw = await _asyncpg(conn, config)
            found = None
            for _, statement in statements:
                try:
                    await raw.execute(statement)
                except asyncpg.PostgresError:
                    found = statement
                    break
            await tx.rollback()
    except (sa.exc.DBAPIError, asyncpg.PostgresError, OSError) as replay_exc:
        raise unavailable(config, replay_exc) from exc
    return found


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_ATOMIC = re.compile(r"\s+ATOMIC\b", re.IGNORECASE)
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def split_postgres(script: str) -> list[tuple[int, str]]:
    """``(offset, statement)`` of each statement of a PostgreSQL script, knowing quotes,
    ``E''`` strings, quoted identifiers, dollar quoting, both comment styles and SQL-standard
    ``BEGIN ATOMIC ... END`` bodies. Used only to find a failing statement and to refuse
    transaction control, never to run the file."""
    out: list[tuple[int, str]] = []
    i, n, start = 0, len(script), 0
    atomic = 0  # depth inside BEGIN ATOMIC bodies (CASE ... END nests there too)
    word_end, word = -1, ""
    while i < n:
        ch = script[i]
        if ch == "-" and script.startswith("--", i):
            end = script.find("\n", i)
            i = n if end < 0 else end + 1
        elif ch == "/" and script.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if script.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif script.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif ch in "'\"":
            escapes = ch == "'" and word_end == i and word.upper() == "E"
            i += 1
            while i < n:
                if escapes and script[i] == "\\":
                    i += 2
                elif script[i] == ch:
                    if script.startswith(ch * 2, i):
                        i += 2
                    else:
                        break
                else:
                    i += 1
            i += 1
        elif ch == "$" and (tag := _DOLLAR_TAG.match(script, i)):
            end = script.find(tag.group(0), tag.end())
            i = n if end < 0 else end + len(tag.group(0))
        elif (match := _WORD.match(script, i)) is not None:
            word, i = match.group(0), match.end()
            word_end = i
            upper = word.upper()
            if upper == "BEGIN" and (atomic_kw := _ATOMIC.match(script, i)):
                atomic, i = atomic + 1, atomic_kw.end()
            elif atomic and upper == "CASE":
                atomic += 1
            elif atomic and upper == "END":
                atomic -= 1
        elif ch == ";" and not atomic:
            _add(out, script, start, i)
            i += 1
            start = i
        else:
            i += 1
    _add(out, script, start, n)
    return out


def _add(out: list[tuple[int, str]], script: str, start: int, end: int) -> None:
    text = script[start:end]
    stripped = _strip_comments(text).strip()
    if stripped:
        out.append((start + len(text) - len(text.lstrip()), stripped))


def _strip_comments(text: str) -> str:
    """``text`` without its leading comments (``--`` and nested ``/* */``), so that a
    comment never hides a statement's first keyword (nor makes an empty one look real)."""
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        else:
            return text[i:]


# -- SQLite ---------------------------------------------------------------------------------


def split_sqlite(script: str) -> list[str]:
    """The statements of a SQLite script, split where SQLite itself says a statement is
    complete (so ``;`` inside strings, comments and trigger bodies do not split)."""
    statements: list[str] = []
    buffer = ""
    for piece in re.split(r"(;)", script):
        buffer += piece
        if piece == ";" and sqlite3.complete_statement(buffer):
            if _strip_comments(buffer).strip(" \t\r\n;"):
                statements.append(buffer.strip())
            buffer = ""
    if _strip_comments(buffer).strip():
        statements.append(buffer.strip())
    return statements


def _run_sqlite(config: Config, files: list[SqlFile]) -> list[MigrationRecord]:
    applied: list[MigrationRecord] = []
    try:
        with sqlite_connection(config, write=True) as conn:
            with conn.begin():
                records = _bookkeeping(conn, None)
            for f in _pending(files, records):
                statements = split_sqlite(f.content)
                _check_statements(f, [_strip_comments(s) for s in statements])
                with conn.begin():
                    if not _pending([f], read_records(conn, None)):
                        continue
                    driver = conn.connection.driver_connection
                    assert isinstance(driver, sqlite3.Connection)
                    for statement in statements:
                        try:
                            driver.execute(statement)
                        except sqlite3.Error as exc:
                            raise _failure(f, statement, exc) from exc
                    applied.append(_record(conn, None, f))
    except StrataError:
        raise
    except (sa.exc.DBAPIError, OSError) as exc:
        raise translate(config, exc, "migrate_from") from exc
    return applied

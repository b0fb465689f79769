"""Migrations on SQLite: additive changes, drift, refusals, dry runs, SQL files, the ledger."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from strata.config import Config
from strata.errors import MigrationError, TierUnavailableError
from strata.fields import Field
from strata.migrations import (
    ChangeKind,
    DriftKind,
    Refusal,
    migrate,
    migrate_from,
    migration_status,
    plan,
)
from strata.migrations.sqlfiles import split_postgres, split_sqlite
from strata.schema import CompiledSchema, Index, Schema, compile_schema

# -- models: successive versions of one "players" table ---------------------------------------


class PlayerV1(BaseModel):
    id: str = Field(primary_key=True)
    username: str = Field(unique=True)
    email: str | None = Field(default=None, index=True)
    level: int = Field(default=1)


class PlayerV2(PlayerV1):
    score: int = Field(default=42)
    title: str = Field(default="rookie")


class PlayerRequiredNoDefault(PlayerV1):
    region: str


class PlayerWithoutLevel(BaseModel):
    id: str = Field(primary_key=True)
    username: str = Field(unique=True)
    email: str | None = Field(default=None, index=True)


class PlayerUniqueEmail(BaseModel):
    id: str = Field(primary_key=True)
    username: str = Field(unique=True)
    email: str | None = Field(default=None, unique=True)
    level: int = Field(default=1)


class PlayerUniqueNick(PlayerV1):
    nick: str | None = Field(default=None, unique=True)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "strata.db"


@pytest.fixture
def config(db_path: Path) -> Config:
    return Config(database_url=f"sqlite:///{db_path}")


def compiled(config: Config, model: type[BaseModel], **kw: object) -> list[CompiledSchema]:
    schema = Schema(name="players", model=model, **kw)  # type: ignore[arg-type]
    return [compile_schema(schema, config, has_cipher=False, metadata=sa.MetaData())]


def columns(db_path: Path, table: str = "players") -> dict[str, tuple[str, bool, str | None]]:
    """name -> (declared type, NOT NULL, default) as SQLite reports them."""
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute(f"PRAGMA table_info({table})").fetchall()
    conn.close()
    return {r[1]: (r[2], bool(r[3]), r[4]) for r in rows}


def query(db_path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def execute(db_path: Path, sql: str, *args: object) -> None:
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            conn.execute(sql, args)
    finally:
        conn.close()


def ledger(db_path: Path) -> list[tuple[object, ...]]:
    return query(db_path, "SELECT kind, name, checksum FROM _strata_migrations ORDER BY id")


# -- auto migration -------------------------------------------------------------------------


async def test_migrate_creates_table_with_indexes_unique_constraints_and_bookkeeping(
    config: Config, db_path: Path
) -> None:
    report = await migrate(config, compiled(config, PlayerV1))

    assert [c.kind for c in report.applied] == [ChangeKind.CREATE_TABLE, ChangeKind.CREATE_INDEX]
    assert set(columns(db_path)) == {"id", "username", "email", "level", "_strata_version"}
    indexes = {r[1]: r[2] for r in query(db_path, "PRAGMA index_list(players)")}
    assert indexes["ix_players_email"] == 0
    assert any(
        unique for name, unique in indexes.items() if str(name).startswith("sqlite_autoindex")
    )
    names = {r[0] for r in query(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert "_strata_deleted" in names and "_strata_seq" not in names  # no sequence table
    assert report.record is not None
    assert [row[0] for row in ledger(db_path)] == ["auto"]
    assert any("CREATE TABLE players" in s for s in report.statements)


async def test_migrate_keeps_the_version_table_of_an_existing_database(
    config: Config, db_path: Path
) -> None:
    """A database migrated by an earlier version has ``_strata_seq``: it stays (unused)."""
    execute(db_path, "CREATE TABLE _strata_seq (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
    execute(db_path, "INSERT INTO _strata_seq (id, v) VALUES (1, 7)")
    await migrate(config, compiled(config, PlayerV1))

    assert query(db_path, "SELECT id, v FROM _strata_seq") == [(1, 7)]
    assert query(db_path, "SELECT count(*) FROM _strata_deleted") == [(0,)]


async def test_second_run_applies_nothing_and_records_nothing(
    config: Config, db_path: Path
) -> None:
    await migrate(config, compiled(config, PlayerV1))

    again = await migrate(config, compiled(config, PlayerV1))

    assert again.applied == [] and again.statements == [] and again.drift == []
    assert again.record is None and not again.changed
    assert len(ledger(db_path)) == 1


async def test_added_field_becomes_column_and_existing_rows_get_its_default(
    config: Config, db_path: Path
) -> None:
    await migrate(config, compiled(config, PlayerV1))
    execute(db_path, "INSERT INTO players (id, username) VALUES ('p1', 'ann')")

    report = await migrate(config, compiled(config, PlayerV2))

    assert {c.column for c in report.applied} == {"score", "title"}
    assert all(c.kind is ChangeKind.ADD_COLUMN for c in report.applied)
    assert query(db_path, "SELECT score, title FROM players") == [(42, "rookie")]
    assert len(ledger(db_path)) == 2


async def test_not_null_field_without_default_is_refused_on_a_table_with_rows(
    config: Config, db_path: Path
) -> None:
    class Both(PlayerRequiredNoDefault):
        bonus: int = Field(default=5)  # additive and fine, but must not be applied either

    await migrate(config, compiled(config, PlayerV1))
    execute(db_path, "INSERT INTO players (id, username) VALUES ('p1', 'ann')")
    before = columns(db_path)

    with pytest.raises(MigrationError) as caught:
        await migrate(config, compiled(config, Both))

    message = str(caught.value)
    assert "players" in message and "region" in message
    assert "default" in message and "Optional" in message
    assert [(d.table, d.column) for d in caught.value.diffs] == [("players", "region")]
    assert all(isinstance(d, Refusal) and d.fatal for d in caught.value.diffs)
    assert columns(db_path) == before  # neither region nor bonus
    assert len(ledger(db_path)) == 1


async def test_not_null_field_without_default_is_added_to_an_empty_table(
    config: Config, db_path: Path
) -> None:
    await migrate(config, compiled(config, PlayerV1))

    report = await migrate(config, compiled(config, PlayerRequiredNoDefault))

    assert [c.column for c in report.applied] == ["region"]
    assert columns(db_path)["region"] == ("TEXT", True, None)
    assert (await migrate(config, compiled(config, PlayerRequiredNoDefault))).applied == []


async def test_removed_field_is_reported_as_drift_and_the_column_keeps_its_data(
    config: Config, db_path: Path
) -> None:
    await migrate(config, compiled(config, PlayerV1))
    execute(db_path, "INSERT INTO players (id, username, level) VALUES ('p1', 'ann', 7)")

    report = await migrate(config, compiled(config, PlayerWithoutLevel))

    assert report.applied == [] and report.record is None
    [drift] = report.drift
    assert (drift.table, drift.column, drift.kind) == ("players", "level", DriftKind.REMOVED_COLUMN)
    assert "never drops" in drift.explanation
    assert drift.suggested_sql is not None and "DROP COLUMN level" in drift.suggested_sql
    assert query(db_path, "SELECT level FROM players") == [(7,)]


async def test_changed_column_type_is_drift_and_nothing_is_altered(
    config: Config, db_path: Path
) -> None:
    class LevelAsText(BaseModel):
        id: str = Field(primary_key=True)
        username: str = Field(unique=True)
        email: str | None = Field(default=None, index=True)
        level: str = Field(default="1")

    await migrate(config, compiled(config, PlayerV1))

    report = await migrate(config, compiled(config, LevelAsText))

    kinds = {(d.column, d.kind) for d in report.drift}
    assert ("level", DriftKind.TYPE_CHANGE) in kinds
    assert report.applied == []
    assert columns(db_path)["level"][0] == "BIGINT"


async def test_dry_run_on_a_missing_database_returns_the_sql_and_creates_no_file(
    config: Config, db_path: Path
) -> None:
    report = await migrate(config, compiled(config, PlayerV1), dry_run=True)

    assert report.dry_run and report.record is None and not report.changed
    assert any(s.startswith("CREATE TABLE players") for s in report.statements)
    assert not await asyncio.to_thread(db_path.exists)


async def test_dry_run_changes_nothing_in_an_existing_database(
    config: Config, db_path: Path
) -> None:
    await migrate(config, compiled(config, PlayerV1))
    before = columns(db_path)

    report = await migrate(config, compiled(config, PlayerV2), dry_run=True)

    assert {c.column for c in report.applied} == {"score", "title"}
    assert any("ADD COLUMN score" in s for s in report.statements)
    assert columns(db_path) == before
    assert len(ledger(db_path)) == 1


async def test_dry_run_raises_like_the_real_run_for_a_blocking_refusal(
    config: Config, db_path: Path
) -> None:
    await migrate(config, compiled(config, PlayerV1))
    execute(db_path, "INSERT INTO players (id, username) VALUES ('p1', 'ann')")

    with pytest.raises(MigrationError, match="region"):
        await migrate(config, compiled(config, PlayerRequiredNoDefault), dry_run=True)


async def test_plan_lists_blocking_refusals_without_raising(config: Config, db_path: Path) -> None:
    await migrate(config, compiled(config, PlayerV1))
    execute(db_path, "INSERT INTO players (id, username) VALUES ('p1', 'ann')")

    planned = await plan(config, compiled(config, PlayerRequiredNoDefault))

    assert [(r.column, r.fatal) for r in planned.blocking] == [("region", True)]
    assert planned.changes == [] and not planned.has_changes


async def test_unique_constraint_is_refused_when_rows_hold_duplicates(
    config: Config, db_path: Path
) -> None:
    class UniqueEmailAndScore(PlayerUniqueEmail):
        score: int = Field(default=0)

    await migrate(config, compiled(config, PlayerV1))
    execute(db_path, "INSERT INTO players (id, username, email) VALUES ('a', 'ann', 'x@y')")
    execute(db_path, "INSERT INTO players (id, username, email) VALUES ('b', 'bob', 'x@y')")

    report = await migrate(config, compiled(config, UniqueEmailAndScore))

    [refusal] = report.refused
    assert refusal.column == "email" and not refusal.fatal
    assert "duplicate" in refusal.reason
    assert [c.column for c in report.applied] == ["score"]
    assert query(db_path, "SELECT count(*) FROM players") == [(2,)]


async def test_unique_constraint_is_added_when_rows_allow_it_and_rows_survive(
    config: Config, db_path: Path
) -> None:
    await migrate(config, compiled(config, PlayerV1))
    execute(db_path, "INSERT INTO players (id, username, email) VALUES ('a', 'ann', 'a@y')")
    execute(db_path, "INSERT INTO players (id, username, email) VALUES ('b', 'bob', NULL)")
    execute(db_path, "INSERT INTO players (id, username, email) VALUES ('c', 'cat', NULL)")

    report = await migrate(config, compiled(config, PlayerUniqueEmail))

    assert ChangeKind.ADD_UNIQUE_CONSTRAINT in {c.kind for c in report.applied}
    assert report.refused == []
    assert query(db_path, "SELECT id, email FROM players ORDER BY id") == [
        ("a", "a@y"),
        ("b", None),
        ("c", None),
    ]
    with pytest.raises(sqlite3.IntegrityError):
        execute(db_path, "INSERT INTO players (id, username, email) VALUES ('d', 'dan', 'a@y')")
    assert (await migrate(config, compiled(config, PlayerUniqueEmail))).applied == []


async def test_new_nullable_unique_field_is_added_to_a_table_with_rows(
    config: Config, db_path: Path
) -> None:
    await migrate(config, compiled(config, PlayerV1))
    execute(db_path, "INSERT INTO players (id, username) VALUES ('a', 'ann')")
    execute(db_path, "INSERT INTO players (id, username) VALUES ('b', 'bob')")

    report = await migrate(config, compiled(config, PlayerUniqueNick))

    assert {c.kind for c in report.applied} == {
        ChangeKind.ADD_COLUMN,
        ChangeKind.ADD_UNIQUE_CONSTRAINT,
    }
    assert query(db_path, "SELECT count(*) FROM players WHERE nick IS NULL") == [(2,)]


async def test_new_index_from_schema_indexes_is_created(config: Config, db_path: Path) -> None:
    await migrate(config, compiled(config, PlayerV1))

    report = await migrate(
        config, compiled(config, PlayerV1, indexes=[Index(fields=["level", "email"])])
    )

    assert [c.kind for c in report.applied] == [ChangeKind.CREATE_INDEX]
    names = {r[1] for r in query(db_path, "PRAGMA index_list(players)")}
    assert "ix_players_level_email" in names


async def test_schemas_without_l3_and_foreign_tables_are_left_alone(
    config: Config, db_path: Path
) -> None:
    execute(db_path, "CREATE TABLE legacy (x INTEGER)")
    cache_only = compile_schema(
        Schema(name="sessions", model=PlayerV1, l3=None),
        config,
        has_cipher=False,
        metadata=sa.MetaData(),
    )

    report = await migrate(config, [*compiled(config, PlayerV1), cache_only])

    tables = {r[0] for r in query(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert "sessions" not in tables and "legacy" in tables
    assert report.drift == []


async def test_migration_status_lists_the_ledger_and_is_empty_before_any_run(
    config: Config, db_path: Path
) -> None:
    assert await migration_status(config) == []
    assert not await asyncio.to_thread(db_path.exists)

    await migrate(config, compiled(config, PlayerV1))
    await migrate(config, compiled(config, PlayerV2))

    records = await migration_status(config)
    assert [r.kind for r in records] == ["auto", "auto"]
    assert records[0].applied_at.tzinfo is not None
    assert "ADD COLUMN score" in records[1].statements
    assert len(records[1].checksum) == 64


async def test_concurrent_migrations_apply_once(config: Config, db_path: Path) -> None:
    reports = await asyncio.gather(*(migrate(config, compiled(config, PlayerV1)) for _ in range(4)))

    assert sum(r.changed for r in reports) == 1
    assert len(ledger(db_path)) == 1


async def test_unreachable_database_file_is_tier_unavailable(tmp_path: Path) -> None:
    config = Config(database_url=f"sqlite:///{tmp_path}/missing-dir/x.db")

    with pytest.raises(TierUnavailableError) as caught:
        await migrate(config, compiled(config, PlayerV1))

    assert caught.value.tier == "l3"
    assert isinstance(caught.value.__cause__, Exception)


# -- migrate_from ---------------------------------------------------------------------------


def write(directory: Path, name: str, sql: str) -> Path:
    path = directory / name
    path.write_text(sql)
    return path


@pytest.fixture
def sql_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "sql"
    directory.mkdir()
    return directory


async def test_migrate_from_applies_files_in_numeric_order_and_ignores_other_files(
    config: Config, db_path: Path, sql_dir: Path
) -> None:
    write(sql_dir, "10_fill.sql", "INSERT INTO notes (id, body) VALUES (2, 'second; really');")
    write(sql_dir, "2_create.sql", "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);")
    write(sql_dir, "1_first.sql", "-- just a comment\n")
    write(sql_dir, "README.md", "not a migration")
    write(sql_dir, "create.sql", "this is not run;")

    records = await migrate_from(config, sql_dir)

    assert [r.name for r in records] == ["1_first.sql", "2_create.sql", "10_fill.sql"]
    assert all(r.kind == "sql" and len(r.checksum) == 64 for r in records)
    assert query(db_path, "SELECT body FROM notes") == [("second; really",)]
    assert [row[1] for row in ledger(db_path)] == ["1_first.sql", "2_create.sql", "10_fill.sql"]


async def test_migrate_from_is_idempotent(config: Config, db_path: Path, sql_dir: Path) -> None:
    write(sql_dir, "001_create.sql", "CREATE TABLE notes (id INTEGER PRIMARY KEY);")
    write(sql_dir, "002_fill.sql", "INSERT INTO notes VALUES (1);")
    await migrate_from(config, sql_dir)

    assert await migrate_from(config, sql_dir) == []

    assert query(db_path, "SELECT count(*) FROM notes") == [(1,)]
    assert len(ledger(db_path)) == 2


async def test_migrate_from_applies_only_new_files_on_a_later_run(
    config: Config, db_path: Path, sql_dir: Path
) -> None:
    write(sql_dir, "001_create.sql", "CREATE TABLE notes (id INTEGER PRIMARY KEY);")
    await migrate_from(config, sql_dir)
    write(sql_dir, "002_fill.sql", "INSERT INTO notes VALUES (1);")

    records = await migrate_from(config, sql_dir)

    assert [r.name for r in records] == ["002_fill.sql"]


async def test_migrate_from_refuses_a_file_changed_after_it_was_applied(
    config: Config, db_path: Path, sql_dir: Path
) -> None:
    write(sql_dir, "001_create.sql", "CREATE TABLE notes (id INTEGER PRIMARY KEY);")
    await migrate_from(config, sql_dir)
    write(sql_dir, "001_create.sql", "CREATE TABLE notes (id INTEGER PRIMARY KEY, x TEXT);")
    write(sql_dir, "002_more.sql", "CREATE TABLE more (id INTEGER PRIMARY KEY);")

    with pytest.raises(MigrationError, match=r"001_create\.sql") as caught:
        await migrate_from(config, sql_dir)

    assert "changed" in str(caught.value)
    tables = {r[0] for r in query(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert "more" not in tables


async def test_a_failing_file_is_rolled_back_and_names_the_statement(
    config: Config, db_path: Path, sql_dir: Path
) -> None:
    write(sql_dir, "001_ok.sql", "CREATE TABLE notes (id INTEGER PRIMARY KEY);")
    write(
        sql_dir,
        "002_bad.sql",
        "CREATE TABLE half (id INTEGER PRIMARY KEY);\n"
        "INSERT INTO notes VALUES (1);\n"
        "INSERT INTO notes VALUES (1);\n",
    )
    write(sql_dir, "003_never.sql", "CREATE TABLE never (id INTEGER PRIMARY KEY);")

    with pytest.raises(MigrationError) as caught:
        await migrate_from(config, sql_dir)

    message = str(caught.value)
    assert "002_bad.sql" in message and "INSERT INTO notes VALUES (1)" in message
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    tables = {r[0] for r in query(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert "notes" in tables and "half" not in tables and "never" not in tables
    assert query(db_path, "SELECT count(*) FROM notes") == [(0,)]
    assert [row[1] for row in ledger(db_path)] == ["001_ok.sql"]


async def test_migrate_from_runs_triggers_whose_bodies_hold_semicolons(
    config: Config, db_path: Path, sql_dir: Path
) -> None:
    write(
        sql_dir,
        "001_trigger.sql",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, n INTEGER DEFAULT 0);\n"
        "CREATE TABLE log (id INTEGER);\n"
        "CREATE TRIGGER t AFTER INSERT ON notes BEGIN\n"
        "  INSERT INTO log VALUES (new.id);\n"
        "  UPDATE notes SET n = n + 1 WHERE id = new.id;\n"
        "END;\n"
        "INSERT INTO notes (id) VALUES (5);\n",
    )

    await migrate_from(config, sql_dir)

    assert query(db_path, "SELECT id FROM log") == [(5,)]
    assert query(db_path, "SELECT n FROM notes") == [(1,)]


async def test_migrate_from_refuses_transaction_control_in_a_file(
    config: Config, db_path: Path, sql_dir: Path
) -> None:
    write(sql_dir, "001_tx.sql", "BEGIN;\nCREATE TABLE notes (id INTEGER);\nCOMMIT;\n")

    with pytest.raises(MigrationError, match="transaction control"):
        await migrate_from(config, sql_dir)

    tables = {r[0] for r in query(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert "notes" not in tables


async def test_migrate_from_refuses_two_files_with_one_number(
    config: Config, sql_dir: Path
) -> None:
    write(sql_dir, "001_a.sql", "SELECT 1;")
    write(sql_dir, "1_b.sql", "SELECT 2;")

    with pytest.raises(MigrationError, match="same number"):
        await migrate_from(config, sql_dir)


async def test_migrate_from_a_missing_directory_is_an_error(config: Config, tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="not a directory"):
        await migrate_from(config, tmp_path / "nope")


async def test_sql_files_and_auto_runs_share_the_ledger(
    config: Config, db_path: Path, sql_dir: Path
) -> None:
    await migrate(config, compiled(config, PlayerV1))
    write(sql_dir, "001_seed.sql", "INSERT INTO players (id, username) VALUES ('p', 'pat');")
    await migrate_from(config, sql_dir)

    assert [r.kind for r in await migration_status(config)] == ["auto", "sql"]


# -- statement splitting (pure) ---------------------------------------------------------------


def test_split_sqlite_keeps_semicolons_in_strings_comments_and_triggers() -> None:
    script = (
        "INSERT INTO t VALUES ('a;b'); -- c;d\n"
        "/* e; f */ CREATE TRIGGER x AFTER INSERT ON t BEGIN SELECT 1; SELECT 2; END;\n"
        "SELECT 3"
    )

    statements = split_sqlite(script)

    assert len(statements) == 3
    assert statements[0] == "INSERT INTO t VALUES ('a;b');"
    assert statements[1].endswith("END;")
    assert statements[2] == "SELECT 3"


def test_split_postgres_knows_quotes_dollar_quoting_and_comments() -> None:
    script = (
        "CREATE TABLE a (x text DEFAULT 'q;''r');\n"
        "-- note; here\n"
        "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\n"
        "/* outer /* inner; */ still; */ SELECT E'\\';';\n"
        'SELECT 1 AS "odd;name";'
    )

    statements = [s for _, s in split_postgres(script)]

    assert statements == [
        "CREATE TABLE a (x text DEFAULT 'q;''r')",
        "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql",
        "SELECT E'\\';'",
        'SELECT 1 AS "odd;name"',
    ]


def test_split_postgres_keeps_begin_atomic_bodies_whole() -> None:
    script = (
        "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC\n"
        "  INSERT INTO t VALUES (CASE WHEN true THEN 1 ELSE 2 END);\n"
        "  INSERT INTO t VALUES (3);\n"
        "END;\n"
        "SELECT 1;"
    )

    statements = [s for _, s in split_postgres(script)]

    assert len(statements) == 2
    assert statements[0].startswith("CREATE PROCEDURE") and statements[0].endswith("END")
    assert statements[1] == "SELECT 1"


def test_split_postgres_offsets_point_at_each_statement() -> None:
    script = "SELECT 1;\n  SELECT 2;"

    assert [(o, script[o : o + 8]) for o, _ in split_postgres(script)] == [
        (0, "SELECT 1"),
        (12, "SELECT 2"),
    ]

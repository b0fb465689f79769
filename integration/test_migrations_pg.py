"""Migrations on PostgreSQL: types, drift, refusals, concurrency, partitions, SQL files."""

from __future__ import annotations

import asyncio
import enum
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from integration import _services as svc
from strata.config import Config
from strata.errors import MigrationError, TierUnavailableError
from strata.fields import Field
from strata.migrations import (
    ChangeKind,
    DriftKind,
    migrate,
    migrate_from,
    migration_status,
    plan,
)
from strata.schema import CompiledSchema, PostgresPolicy, Schema, compile_schema

REPO = Path(__file__).resolve().parent.parent


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


class Address(BaseModel):
    street: str
    zip: str | None = None


class PlayerV1(BaseModel):
    id: str = Field(primary_key=True)
    username: str = Field(unique=True)
    email: str | None = Field(default=None, index=True)
    level: int = Field(default=1)


class PlayerAllTypes(PlayerV1):
    s: str = Field(default="it's")
    i: int = Field(default=7)
    f: float = Field(default=1.5)
    b: bool = Field(default=True)
    dt: datetime | None = None
    d: date | None = None
    t: time | None = None
    by: bytes | None = None
    u: uuid.UUID | None = None
    dec: Decimal = Field(default=Decimal("2.50"))
    mood: Mood = Field(default=Mood.HAPPY)
    address: Address | None = None
    tags: list[str] | None = None
    attrs: dict[str, int] | None = None


EXPECTED_TYPES = {
    "s": "text",
    "i": "bigint",
    "f": "double precision",
    "b": "boolean",
    "dt": "timestamp with time zone",
    "d": "date",
    "t": "time without time zone",
    "by": "bytea",
    "u": "uuid",
    "dec": "numeric",
    "mood": "text",
    "address": "jsonb",
    "tags": "jsonb",
    "attrs": "jsonb",
}


class PlayerRequiredNoDefault(PlayerV1):
    region: str


class PlayerWithoutLevel(BaseModel):
    id: str = Field(primary_key=True)
    username: str = Field(unique=True)
    email: str | None = Field(default=None, index=True)


class PlayerLevelAsText(BaseModel):
    id: str = Field(primary_key=True)
    username: str = Field(unique=True)
    email: str | None = Field(default=None, index=True)
    level: str = Field(default="1")


class PlayerEmailRequired(BaseModel):
    id: str = Field(primary_key=True)
    username: str = Field(unique=True)
    email: str = Field(index=True)
    level: int = Field(default=1)


class PlayerUniqueEmail(BaseModel):
    id: str = Field(primary_key=True)
    username: str = Field(unique=True)
    email: str | None = Field(default=None, unique=True)
    level: int = Field(default=1)


class Event(BaseModel):
    id: int = Field(primary_key=True)
    kind: str = Field(default="", index=True)


def compiled(
    config: Config, model: type[BaseModel], name: str = "players", **kw: Any
) -> list[CompiledSchema]:
    schema = Schema(name=name, model=model, **kw)
    return [compile_schema(schema, config, has_cipher=False, metadata=sa.MetaData())]


@pytest.fixture
def config(pg_url: str, pg_schema: str) -> Config:
    return Config(database_url=pg_url, database_schema=pg_schema)


@pytest.fixture
async def fresh_schema(pg_url: str) -> AsyncIterator[str]:
    """A schema name that does not exist yet (migrate creates it); dropped after."""
    name = f"m_{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        conn = await asyncpg.connect(svc.asyncpg_dsn(pg_url))
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()


async def column_types(conn: asyncpg.Connection, schema: str, table: str) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = $1 AND table_name = $2",
        schema,
        table,
    )
    return {r["column_name"]: r["data_type"] for r in rows}


async def nullable(conn: asyncpg.Connection, schema: str, table: str, column: str) -> bool:
    value = await conn.fetchval(
        "SELECT is_nullable FROM information_schema.columns "
        "WHERE table_schema = $1 AND table_name = $2 AND column_name = $3",
        schema,
        table,
        column,
    )
    return bool(value == "YES")


async def tables(conn: asyncpg.Connection, schema: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
    )
    return {r["table_name"] for r in rows}


async def ledger(conn: asyncpg.Connection, schema: str) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            f'SELECT kind, name, checksum FROM "{schema}"._strata_migrations ORDER BY id'
        )
    )


# -- auto migration -------------------------------------------------------------------------


async def test_migrate_creates_table_deleted_versions_and_ledger_in_the_schema(
    config: Config, pg_schema: str, pg_conn: asyncpg.Connection
) -> None:
    report = await migrate(config, compiled(config, PlayerV1))

    assert [c.kind for c in report.applied] == [ChangeKind.CREATE_TABLE, ChangeKind.CREATE_INDEX]
    assert {"players", "_strata_migrations", "_strata_deleted"} == await tables(pg_conn, pg_schema)
    # versions come from the hybrid clock: no sequence for a new database
    assert not await pg_conn.fetchval(
        "SELECT to_regclass($1) IS NOT NULL", f"{pg_schema}._strata_version_seq"
    )
    assert [r["kind"] for r in await ledger(pg_conn, pg_schema)] == ["auto"]


async def test_migrate_keeps_the_version_sequence_of_an_existing_database(
    config: Config, pg_schema: str, pg_conn: asyncpg.Connection
) -> None:
    """A database migrated by an earlier version has ``_strata_version_seq``: migrations
    are additive, so it stays (unused), and the new bookkeeping is added beside it."""
    await pg_conn.execute(f'CREATE SEQUENCE "{pg_schema}"._strata_version_seq')
    await migrate(config, compiled(config, PlayerV1))

    assert await pg_conn.fetchval(
        "SELECT to_regclass($1) IS NOT NULL", f"{pg_schema}._strata_version_seq"
    )
    assert "_strata_deleted" in await tables(pg_conn, pg_schema)
    assert (await migrate(config, compiled(config, PlayerV1))).applied == []


async def test_migrate_takes_a_database_url_with_libpq_options(
    pg_url: str, pg_schema: str, pg_conn: asyncpg.Connection
) -> None:
    """``?synchronous_commit=off`` used to raise TypeError from inside SQLAlchemy: its URL
    parser passed the option to asyncpg.connect() as a keyword argument."""
    sep = "&" if "?" in pg_url else "?"
    url = f"{pg_url}{sep}synchronous_commit=off&application_name=strata-migrate-test"
    config = Config(database_url=url, database_schema=pg_schema)

    report = await migrate(config, compiled(config, PlayerV1))

    assert ChangeKind.CREATE_TABLE in [c.kind for c in report.applied]
    assert "players" in await tables(pg_conn, pg_schema)


async def test_second_run_applies_nothing_and_records_nothing(
    config: Config, pg_schema: str, pg_conn: asyncpg.Connection
) -> None:
    await migrate(config, compiled(config, PlayerV1))

    again = await migrate(config, compiled(config, PlayerV1))

    assert again.applied == [] and again.drift == [] and again.record is None
    assert len(await ledger(pg_conn, pg_schema)) == 1


async def test_every_supported_type_is_added_with_its_postgresql_type(
    config: Config, pg_schema: str, pg_conn: asyncpg.Connection
) -> None:
    await migrate(config, compiled(config, PlayerV1))
    await pg_conn.execute("INSERT INTO players (id, username) VALUES ('p1', 'ann')")

    report = await migrate(config, compiled(config, PlayerAllTypes))

    assert {c.column for c in report.applied if c.kind is ChangeKind.ADD_COLUMN} == set(
        EXPECTED_TYPES
    )
    types = await column_types(pg_conn, pg_schema, "players")
    assert {name: types[name] for name in EXPECTED_TYPES} == EXPECTED_TYPES
    row = await pg_conn.fetchrow("SELECT s, i, f, b, dec, mood, tags, attrs FROM players")
    assert dict(row) == {
        "s": "it's",
        "i": 7,
        "f": 1.5,
        "b": True,
        "dec": Decimal("2.50"),
        "mood": "happy",
        "tags": None,
        "attrs": None,
    }
    again = await migrate(config, compiled(config, PlayerAllTypes))
    assert again.applied == [] and again.drift == []


async def test_not_null_field_without_default_is_refused_on_a_table_with_rows(
    config: Config, pg_schema: str, pg_conn: asyncpg.Connection
) -> None:
    class Both(PlayerRequiredNoDefault):
        bonus: int = Field(default=5)

    await migrate(config, compiled(config, PlayerV1))
    await pg_conn.execute("INSERT INTO players (id, username) VALUES ('p1', 'ann')")
    before = await column_types(pg_conn, pg_schema, "players")

    with pytest.raises(MigrationError) as caught:
        await migrate(config, compiled(config, Both))

    assert f"{pg_schema}.players" in str(caught.value) and "region" in str(caught.value)
    assert [d.column for d in caught.value.diffs] == ["region"]
    assert await column_types(pg_conn, pg_schema, "players") == before
    assert len(await ledger(pg_conn, pg_schema)) == 1


async def test_not_null_field_without_default_is_added_to_an_empty_table(
    config: Config, pg_schema: str, pg_conn: asyncpg.Connection
) -> None:
    await migrate(config, compiled(config, PlayerV1))

    report = await migrate(config, compiled(config, PlayerRequiredNoDefault))

    assert [c.column for c in report.applied] == ["region"]
    assert not await nullable(pg_conn, pg_schema, "players", "region")


async def test_removed_field_is_drift_and_the_column_keeps_its_data(
    config: Config, pg_conn: asyncpg.Connection
) -> None:
    await migrate(config, compiled(config, PlayerV1))
    await pg_conn.execute("INSERT INTO players (id, username, level) VALUES ('p1', 'ann', 9)")

    report = await migrate(config, compiled(config, PlayerWithoutLevel))

    assert [(d.column, d.kind) for d in report.drift] == [("level", DriftKind.REMOVED_COLUMN)]
    assert report.applied == []
    assert await pg_conn.fetchval("SELECT level FROM players") == 9


async def test_type_change_is_drift_and_the_column_is_not_altered(
    config: Config, pg_schema: str, pg_conn: asyncpg.Connection
) -> None:
    await migrate(config, compiled(config, PlayerV1))
    await pg_conn.execute("INSERT INTO players (id, username, level) VALUES ('p1', 'ann', 9)")

    report = await migrate(config, compiled(config, PlayerLevelAsText))

    [type_drift] = [d for d in report.drift if d.kind is DriftKind.TYPE_CHANGE]
    assert type_drift.column == "level"
    assert type_drift.suggested_sql is not None and "TYPE TEXT" in type_drift.suggested_sql
    assert report.applied == []
    assert (await column_types(pg_conn, pg_schema, "players"))["level"] == "bigint"
    assert await pg_conn.fetchval("SELECT level FROM players") == 9


async def test_nullability_change_is_drift_and_the_column_is_not_altered(
    config: Config, pg_schema: str, pg_conn: asyncpg.Connection
) -> None:
    await migrate(config, compiled(config, PlayerV1))
    await pg_conn.execute("INSERT INTO players (id, username) VALUES ('p1', 'ann')")

    report = await migrate(config, compiled(config, PlayerEmailRequired))

    [drift] = [d for d in report.drift if d.kind is DriftKind.NULLABILITY_CHANGE]
    assert drift.column == "email" and "SET NOT NULL" in drift.explanation
    assert await nullable(pg_conn, pg_schema, "players", "email")
    assert await pg_conn.fetchval("SELECT count(*) FROM players WHERE email IS NULL") == 1


async def test_column_made_not_null_by_hand_for_an_optional_field_is_drift(
    config: Config, pg_conn: asyncpg.Connection
) -> None:
    await migrate(config, compiled(config, PlayerV1))
    await pg_conn.execute("ALTER TABLE players ALTER COLUMN email SET NOT NULL")

    report = await migrate(config, compiled(config, PlayerV1))

    [drift] = report.drift
    assert (drift.column, drift.kind) == ("email", DriftKind.NULLABILITY_CHANGE)
    assert "DROP NOT NULL" in drift.explanation


async def test_unique_constraint_is_refused_when_rows_hold_duplicates(
    config: Config, pg_conn: asyncpg.Connection
) -> None:
    await migrate(config, compiled(config, PlayerV1))
    await pg_conn.execute(
        "INSERT INTO players (id, username, email) VALUES ('a', 'ann', 'x'), ('b', 'bob', 'x')"
    )

    report = await migrate(config, compiled(config, PlayerUniqueEmail))

    assert [(r.column, r.fatal) for r in report.refused] == [("email", False)]
    await pg_conn.execute("INSERT INTO players (id, username, email) VALUES ('c', 'cat', 'x')")


async def test_unique_constraint_is_added_when_rows_allow_it(
    config: Config, pg_conn: asyncpg.Connection
) -> None:
    await migrate(config, compiled(config, PlayerV1))
    await pg_conn.execute(
        "INSERT INTO players (id, username, email) VALUES ('a', 'ann', 'x'), ('b', 'bob', NULL),"
        " ('c', 'cat', NULL)"
    )

    report = await migrate(config, compiled(config, PlayerUniqueEmail))

    assert ChangeKind.ADD_UNIQUE_CONSTRAINT in {c.kind for c in report.applied}
    with pytest.raises(asyncpg.UniqueViolationError):
        await pg_conn.execute("INSERT INTO players (id, username, email) VALUES ('d', 'd', 'x')")
    assert (await migrate(config, compiled(config, PlayerUniqueEmail))).applied == []


async def test_dry_run_changes_nothing(
    config: Config, pg_schema: str, pg_conn: asyncpg.Connection
) -> None:
    report = await migrate(config, compiled(config, PlayerV1), dry_run=True)

    assert report.dry_run and report.record is None
    assert any(s.startswith(f"CREATE TABLE {pg_schema}.players") for s in report.statements)
    assert await tables(pg_conn, pg_schema) == set()


async def test_plan_shows_changes_and_drift_without_applying(
    config: Config, pg_schema: str, pg_conn: asyncpg.Connection
) -> None:
    await migrate(config, compiled(config, PlayerV1))

    planned = await plan(config, compiled(config, PlayerLevelAsText))

    assert planned.changes == []
    assert {d.kind for d in planned.drift} >= {DriftKind.TYPE_CHANGE}
    assert (await column_types(pg_conn, pg_schema, "players"))["level"] == "bigint"


async def test_migration_status_reads_the_ledger(config: Config) -> None:
    assert await migration_status(config) == []
    await migrate(config, compiled(config, PlayerV1))

    [record] = await migration_status(config)

    assert record.kind == "auto" and "CREATE TABLE" in record.statements


async def test_a_table_in_its_own_db_schema_gets_the_schema_and_a_deleted_versions_table(
    config: Config, pg_schema: str, fresh_schema: str, pg_url_conn: asyncpg.Connection
) -> None:
    schemas = compiled(config, Event, "events", l3=PostgresPolicy(db_schema=fresh_schema))

    await migrate(config, schemas)

    assert "events" in await tables(pg_url_conn, fresh_schema)
    for schema in (pg_schema, fresh_schema):
        assert "_strata_deleted" in await tables(pg_url_conn, schema)
    assert len(await ledger(pg_url_conn, pg_schema)) == 1
    assert (await migrate(config, schemas)).applied == []


# -- concurrency ----------------------------------------------------------------------------


async def test_concurrent_migrations_on_a_fresh_schema_apply_once(
    pg_url: str, fresh_schema: str, pg_url_conn: asyncpg.Connection
) -> None:
    config = Config(database_url=pg_url, database_schema=fresh_schema)

    reports = await asyncio.gather(
        migrate(config, compiled(config, PlayerV1)), migrate(config, compiled(config, PlayerV1))
    )

    assert sorted(r.changed for r in reports) == [False, True]
    assert await tables(pg_url_conn, fresh_schema) == {
        "players",
        "_strata_migrations",
        "_strata_deleted",
    }
    assert len(await ledger(pg_url_conn, fresh_schema)) == 1


MIGRATE_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import sqlalchemy as sa
    from pydantic import BaseModel
    from strata.config import Config
    from strata.fields import Field
    from strata.migrations import migrate
    from strata.schema import Schema, compile_schema

    class Player(BaseModel):
        id: str = Field(primary_key=True)
        username: str = Field(unique=True)
        level: int = Field(default=1, index=True)

    async def main() -> None:
        config = Config(database_url=sys.argv[1], database_schema=sys.argv[2])
        schema = compile_schema(
            Schema(name="players", model=Player), config, has_cipher=False,
            metadata=sa.MetaData(),
        )
        report = await migrate(config, [schema])
        print("changed" if report.changed else "unchanged")

    asyncio.run(main())
    """
)


async def test_five_processes_migrating_a_fresh_schema_at_once_all_succeed(
    pg_url: str, fresh_schema: str, pg_url_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    script = tmp_path / "migrate_once.py"
    script.write_text(MIGRATE_SCRIPT)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            pg_url,
            fresh_schema,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(5)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 120)

    assert [p.returncode for p in procs] == [0] * 5, [err.decode() for _, err in results]
    outcomes = sorted(out.decode().strip() for out, _ in results)
    assert outcomes == ["changed"] + ["unchanged"] * 4
    assert len(await ledger(pg_url_conn, fresh_schema)) == 1
    assert await tables(pg_url_conn, fresh_schema) == {
        "players",
        "_strata_migrations",
        "_strata_deleted",
    }


@pytest.fixture
async def pg_url_conn(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(svc.asyncpg_dsn(pg_url))
    try:
        yield conn
    finally:
        await conn.close()


# -- partitions -----------------------------------------------------------------------------


async def test_partitioned_table_is_created_with_its_hash_partitions(
    config: Config, pg_schema: str, pg_conn: asyncpg.Connection
) -> None:
    schemas = compiled(config, Event, "events", l3=PostgresPolicy(partition_by="id", partitions=4))

    report = await migrate(config, schemas)

    assert ChangeKind.CREATE_PARTITIONS in {c.kind for c in report.applied}
    strategy = await pg_conn.fetchval(
        "SELECT partstrat::text FROM pg_partitioned_table WHERE partrelid = $1::regclass",
        f"{pg_schema}.events",
    )
    assert strategy == "h"
    children = await pg_conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1::regclass ORDER BY c.relname",
        f"{pg_schema}.events",
    )
    assert [r["relname"] for r in children] == [f"events_p{i}" for i in range(4)]
    await pg_conn.execute("INSERT INTO events (id) SELECT generate_series(1, 40)")
    assert await pg_conn.fetchval("SELECT count(*) FROM events_p0") > 0
    again = await migrate(config, schemas)
    assert again.applied == [] and again.drift == []


async def test_partitioning_by_a_column_other_than_the_primary_key_is_refused(
    config: Config, pg_schema: str, pg_conn: asyncpg.Connection
) -> None:
    schemas = compiled(
        config, Event, "events", l3=PostgresPolicy(partition_by="kind", partitions=4)
    )

    with pytest.raises(MigrationError, match="primary key"):
        await migrate(config, schemas)

    assert "events" not in await tables(pg_conn, pg_schema)


async def test_partitioning_an_existing_table_is_drift(
    config: Config, pg_conn: asyncpg.Connection
) -> None:
    await migrate(config, compiled(config, Event, "events"))

    report = await migrate(
        config,
        compiled(config, Event, "events", l3=PostgresPolicy(partition_by="id", partitions=4)),
    )

    assert [d.kind for d in report.drift] == [DriftKind.PARTITIONING]
    assert report.applied == []


async def test_unique_field_added_to_a_partitioned_table_is_refused_not_fatal(
    config: Config, pg_conn: asyncpg.Connection
) -> None:
    class EventWithCode(Event):
        code: str | None = Field(default=None, unique=True)
        note: str = Field(default="")

    policy = PostgresPolicy(partition_by="id", partitions=2)
    await migrate(config, compiled(config, Event, "events", l3=policy))

    report = await migrate(config, compiled(config, EventWithCode, "events", l3=policy))

    [refusal] = report.refused
    assert refusal.column == "code" and "partition" in refusal.reason and not refusal.fatal
    assert {c.column for c in report.applied} == {"code", "note"}


# -- migrate_from ---------------------------------------------------------------------------


def write(directory: Path, name: str, sql: str) -> None:
    (directory / name).write_text(sql)


async def test_migrate_from_applies_files_in_order_into_the_schema(
    config: Config, pg_schema: str, pg_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    write(tmp_path, "10_fill.sql", "INSERT INTO notes (body) VALUES ('a;b'), ($$c;d$$);")
    write(tmp_path, "2_create.sql", "CREATE TABLE notes (id serial PRIMARY KEY, body text);")
    write(tmp_path, "notes.txt", "ignored")

    records = await migrate_from(config, tmp_path)

    assert [r.name for r in records] == ["2_create.sql", "10_fill.sql"]
    assert "notes" in await tables(pg_conn, pg_schema)
    assert [r["body"] for r in await pg_conn.fetch("SELECT body FROM notes ORDER BY id")] == [
        "a;b",
        "c;d",
    ]
    assert await migrate_from(config, tmp_path) == []
    assert [r["kind"] for r in await ledger(pg_conn, pg_schema)] == ["sql", "sql"]


async def test_migrate_from_runs_functions_and_begin_atomic_bodies(
    config: Config, pg_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    write(
        tmp_path,
        "001_routines.sql",
        "CREATE TABLE log (n int);\n"
        "CREATE FUNCTION add_one(x int) RETURNS int AS $$ SELECT x + 1; $$ LANGUAGE sql;\n"
        "CREATE PROCEDURE note(x int) LANGUAGE sql BEGIN ATOMIC\n"
        "  INSERT INTO log VALUES (CASE WHEN x > 0 THEN add_one(x) ELSE 0 END);\n"
        "END;\n"
        "CALL note(41);\n",
    )

    await migrate_from(config, tmp_path)

    assert await pg_conn.fetchval("SELECT n FROM log") == 42


async def test_migrate_from_refuses_a_changed_file(
    config: Config, pg_conn: asyncpg.Connection, tmp_path: Path
) -> None:
    write(tmp_path, "001_create.sql", "CREATE TABLE notes (id int);")
    await migrate_from(config, tmp_path)
    write(tmp_path, "001_create.sql", "CREATE TABLE notes (id bigint);")

    with pytest.raises(MigrationError, match=r"001_create\.sql"):
        await migrate_from(config, tmp_path)


@pytest.mark.parametrize(
    ("bad_sql", "failing"),
    [
        ("INSERT INTO notes VALUES (1);\nINSERT INTO notes VALUES (1)", "INSERT INTO notes"),
        ("INSERT INTO notes VALUES (2);\nINSERT INTO missing VALUES (1)", "INSERT INTO missing"),
    ],
    ids=["runtime-error", "error-with-position"],
)
async def test_a_failing_file_is_rolled_back_and_names_the_statement(
    config: Config,
    pg_schema: str,
    pg_conn: asyncpg.Connection,
    tmp_path: Path,
    bad_sql: str,
    failing: str,
) -> None:
    write(tmp_path, "001_create.sql", "CREATE TABLE notes (id int PRIMARY KEY);")
    write(tmp_path, "002_bad.sql", f"CREATE TABLE half (id int);\n{bad_sql};")

    with pytest.raises(MigrationError) as caught:
        await migrate_from(config, tmp_path)

    message = str(caught.value)
    assert "002_bad.sql" in message
    assert f"Statement:\n  {failing}" in message
    assert "half" not in await tables(pg_conn, pg_schema)
    assert await pg_conn.fetchval("SELECT count(*) FROM notes") == 0
    assert [r["name"] for r in await ledger(pg_conn, pg_schema)] == ["001_create.sql"]


# -- errors ---------------------------------------------------------------------------------


async def test_unreachable_server_is_tier_unavailable_without_the_password() -> None:
    config = Config(database_url="postgresql://strata:s3cret@127.0.0.1:1/test", pool_timeout=2)

    with pytest.raises(TierUnavailableError) as caught:
        await migrate(config, compiled(config, PlayerV1))

    assert caught.value.tier == "l3"
    assert "127.0.0.1:1" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert caught.value.__cause__ is not None

"""The ``strata`` console script against real PostgreSQL (and Redis), as a deploy runs it.

Every command runs the installed ``strata`` executable in a subprocess from the repository
root with ``--app examples.app:ds``; the example application reads its settings from the
environment (``STRATA_DATABASE_URL`` / ``STRATA_DATABASE_SCHEMA`` = this test's schema).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
APP = "examples.app:ds"


def executable(name: str) -> str:
    found = BIN / name
    if found.exists():
        return str(found)
    path = shutil.which(name)
    assert path is not None, f"the {name!r} console script is not installed (pip install -e .)"
    return path


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def env(pg_url: str, pg_schema: str) -> dict[str, str]:
    """The environment of a deploy: the app's database is this test's schema; no Redis."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    return {**clean, "STRATA_DATABASE_URL": pg_url, "STRATA_DATABASE_SCHEMA": pg_schema}


async def run(program: str, *args: str, env: dict[str, str]) -> Run:
    proc = await asyncio.create_subprocess_exec(
        executable(program),
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def strata(*args: str, env: dict[str, str]) -> Run:
    return await run("strata", *args, env=env)


async def tables(conn: asyncpg.Connection, schema: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
    )
    return {r["table_name"] for r in rows}


async def test_console_script_reports_its_version(env: dict[str, str]) -> None:
    result = await strata("--version", env=env)
    assert result.code == 0
    assert result.out.startswith("strata ")


async def test_migrate_creates_the_tables(
    env: dict[str, str], pg_conn: asyncpg.Connection, pg_schema: str
) -> None:
    result = await strata("migrate", "--app", APP, env=env)
    assert result.code == 0, result.err
    assert f"+ create table {pg_schema}.players" in result.out
    assert {"players", "guilds", "_strata_migrations"} <= await tables(pg_conn, pg_schema)
    assert await pg_conn.fetchval("SELECT count(*) FROM _strata_migrations") == 1
    again = await strata("migrate", "--app", APP, env=env)
    assert again.code == 0
    assert "nothing to apply" in again.out


async def test_dry_run_prints_the_sql_and_changes_nothing(
    env: dict[str, str], pg_conn: asyncpg.Connection, pg_schema: str
) -> None:
    result = await strata("migrate", "--app", APP, "--dry-run", env=env)
    assert result.code == 0, result.err
    assert f"CREATE TABLE {pg_schema}.players" in result.out
    assert "NOTHING was applied" in result.out
    assert await tables(pg_conn, pg_schema) == set()  # no table, no ledger


async def test_database_url_option_overrides_the_apps_settings(
    env: dict[str, str], pg_url: str, pg_conn: asyncpg.Connection, pg_schema: str
) -> None:
    elsewhere = {**env, "STRATA_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    result = await strata("migrate", "--app", APP, "--database-url", pg_url, env=elsewhere)
    assert result.code == 0, result.err
    assert "players" in await tables(pg_conn, pg_schema)


async def test_check_exit_codes_follow_the_database(
    env: dict[str, str], pg_conn: asyncpg.Connection, pg_schema: str
) -> None:
    before = await strata("check", "--app", APP, env=env)
    assert before.code == 1
    assert f"pending  create table {pg_schema}.players" in before.out

    assert (await strata("migrate", "--app", APP, env=env)).code == 0
    matching = await strata("check", "--app", APP, env=env)
    assert matching.code == 0, matching.out
    assert "matches the models" in matching.out

    await pg_conn.execute("ALTER TABLE players ADD COLUMN nickname text")
    drifted = await strata("check", "--app", APP, env=env)
    assert drifted.code == 1
    assert f"drift    {pg_schema}.players.nickname: the column exists in the database" in (
        drifted.out
    )


async def test_status_prints_the_ledger_rows(
    env: dict[str, str], tmp_path: Path, pg_schema: str
) -> None:
    empty = await strata("status", "--app", APP, env=env)
    assert empty.code == 0
    assert "no migrations recorded" in empty.out
    assert (await strata("migrate", "--app", APP, env=env)).code == 0
    (tmp_path / "001_audit.sql").write_text("CREATE TABLE audit (id bigint PRIMARY KEY);\n")
    assert (await strata("sql", "--app", APP, str(tmp_path), env=env)).code == 0

    result = await strata("status", "--app", APP, env=env)
    assert result.code == 0, result.err
    header, auto, sql = result.out.splitlines()
    assert header.split()[:3] == ["ID", "APPLIED", "AT"]
    assert auto.split()[0] == "1"
    assert " auto " in auto
    # the first statements, truncated: the keyed cache's table, then the app's tables
    assert f"create table {pg_schema}._strata_cache (4 columns); create table" in auto
    assert sql.split()[0] == "2"
    assert " sql " in sql
    assert sql.endswith("001_audit.sql")


async def test_revision_file_is_accepted_by_alembic_upgrade_head(
    env: dict[str, str], tmp_path: Path, pg_conn: asyncpg.Connection, pg_schema: str
) -> None:
    repo_versions = set((REPO / "migrations" / "versions").iterdir())
    project = tmp_path / "project"
    shutil.copytree(
        REPO / "migrations", project / "migrations", ignore=shutil.ignore_patterns("__pycache__")
    )
    for old in (project / "migrations" / "versions").glob("*.py"):
        old.unlink()
    shutil.copy(REPO / "alembic.ini", project / "alembic.ini")

    result = await strata(
        "revision",
        "--app",
        APP,
        "-m",
        "create players and guilds",
        "--directory",
        str(project / "migrations"),
        env=env,
    )
    assert result.code == 0, result.err
    (written,) = (project / "migrations" / "versions").glob("*.py")
    assert f"wrote {written}" in result.out
    source = written.read_text()
    assert "op.create_table('players'" in source
    assert "_strata_deleted" in source
    assert "players" not in await tables(pg_conn, pg_schema)
    assert set((REPO / "migrations" / "versions").iterdir()) == repo_versions

    upgrade = await run(
        "alembic", "-c", str(project / "alembic.ini"), "-x", f"app={APP}", "upgrade", "head",
        env=env,
    )  # fmt: skip
    assert upgrade.code == 0, upgrade.err
    assert {"players", "guilds", "alembic_version", "_strata_deleted"} <= await tables(
        pg_conn, pg_schema
    )
    assert await pg_conn.fetchval("SELECT version_num FROM alembic_version") == written.name[:12]
    # what Alembic built is exactly what the models describe, data tier included
    assert (await strata("check", "--app", APP, env=env)).code == 0
    await pg_conn.execute(
        "INSERT INTO players (id, username, created_at, updated_at, _strata_version)"
        " VALUES ('p1', 'ann', now(), now(), 1)"
    )


async def test_sql_runs_numbered_files_in_order(
    env: dict[str, str], tmp_path: Path, pg_conn: asyncpg.Connection
) -> None:
    (tmp_path / "002_seed.sql").write_text("INSERT INTO notes (id, body) VALUES (1, 'hi');\n")
    (tmp_path / "001_notes.sql").write_text(
        "CREATE TABLE notes (id bigint PRIMARY KEY, body text);\n"
    )
    (tmp_path / "notes.txt").write_text("not a migration")
    result = await strata("sql", "--app", APP, str(tmp_path), env=env)
    assert result.code == 0, result.err
    assert result.out.index("001_notes.sql") < result.out.index("002_seed.sql")
    assert await pg_conn.fetchval("SELECT body FROM notes WHERE id = 1") == "hi"
    again = await strata("sql", "--app", APP, str(tmp_path), env=env)
    assert again.code == 0
    assert "nothing to apply" in again.out


async def test_failing_statement_is_shown_and_nothing_applied(
    env: dict[str, str], pg_conn: asyncpg.Connection, pg_schema: str
) -> None:
    # a relation already holds the name of an index the migration creates
    await pg_conn.execute("CREATE TABLE ix_players_email (x int)")
    result = await strata("migrate", "--app", APP, env=env)
    assert result.code == 1
    assert "nothing was applied" in result.err
    assert f"CREATE INDEX ix_players_email ON {pg_schema}.players (email)" in (result.err)
    assert "Traceback" not in result.err
    assert "players" not in await tables(pg_conn, pg_schema)


async def test_warm_loads_rows_into_the_caches_and_reports_the_count(
    env: dict[str, str],
    pg_conn: asyncpg.Connection,
    redis_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
) -> None:
    with_redis = {**env, "STRATA_REDIS_URL": redis_url, "STRATA_KEY_PREFIX": redis_prefix}
    assert (await strata("migrate", "--app", APP, env=with_redis)).code == 0
    await pg_conn.execute(
        "INSERT INTO players (id, username, created_at, updated_at)"
        " SELECT 'p' || g, 'user' || g, now(), now() FROM generate_series(1, 30) AS g"
    )
    result = await strata("warm", "--app", APP, "players", "--limit", "20", env=with_redis)
    assert result.code == 0, result.err
    assert "warmed 20 row(s) of players into L1 and L2" in result.out
    assert "20/20 rows" in result.err
    cached = [k async for k in redis_client.scan_iter(match=f"{redis_prefix}:players:*:p*")]
    assert len(cached) == 20

    everything = await strata("warm", "--app", APP, "players", env=with_redis)
    assert "warmed 30 row(s)" in everything.out


async def test_wrong_app_path_is_a_clean_usage_error(env: dict[str, str]) -> None:
    missing_module = await strata("check", "--app", "examples.nope:ds", env=env)
    assert missing_module.code == 2
    assert "no module named 'examples.nope'" in missing_module.err
    missing_attr = await strata("check", "--app", "examples.app:store", env=env)
    assert missing_attr.code == 2
    assert "'examples.app' has no attribute 'store'" in missing_attr.err
    not_a_store = await strata("check", "--app", "examples.app:Player", env=env)
    assert not_a_store.code == 2
    assert "not a DataStore" in not_a_store.err
    for result in (missing_module, missing_attr, not_a_store):
        assert "Traceback" not in result.err
        assert result.err.count("\n") == 1  # one line


async def test_unreachable_database_names_host_and_port_and_hides_the_password(
    env: dict[str, str],
) -> None:
    url = "postgresql://deploy:Sup3r-s3cret@127.0.0.1:1/app"
    result = await strata("migrate", "--app", APP, "--database-url", url, env=env)
    assert result.code == 1
    assert "cannot reach PostgreSQL at 127.0.0.1:1" in result.err
    assert "deploy:***@127.0.0.1:1" in result.err
    assert "Sup3r-s3cret" not in result.err + result.out
    assert "Traceback" not in result.err

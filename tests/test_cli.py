"""The ``strata`` command through ``main([...])``: parsing, ``--app`` resolution, exit codes
and messages, and the commands on embedded SQLite (no server)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import uuid
from pathlib import Path

import pytest

import strata
from strata.cli import build_parser, describe_error, load_datastore, main
from strata.errors import MigrationError, TierUnavailableError

REPO = Path(__file__).resolve().parent.parent

APP_SOURCE = """
from pydantic import BaseModel

from strata import Config, DataStore, Field, Schema


class Player(BaseModel):
    id: str = Field(primary_key=True)
    username: str = Field(unique=True)
    email: str | None = Field(default=None, index=True)
    level: int = Field(default=1)
    tags: list[str] | None = None


def make_store() -> DataStore:
    store = DataStore(Config(database_url={url!r}))
    store.register(Schema(name="players", model=Player))
    return store


async def make_store_async() -> DataStore:
    return make_store()


def wrong_type() -> int:
    return 42


def needs_argument(name: str) -> DataStore:
    return make_store()


ds = make_store()
not_a_store = 17
"""


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A fresh application module (unique name) in the working directory; its store is the
    SQLite file ``db`` (not created yet). Returns (module name, database path)."""
    name = f"app_{uuid.uuid4().hex[:8]}"
    db = tmp_path / "app.db"
    (tmp_path / f"{name}.py").write_text(APP_SOURCE.format(url=f"sqlite:///{db}"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("STRATA_APP", raising=False)
    return name, db


def tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


# -- parsing ------------------------------------------------------------------------------


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"strata {strata.__version__}"


def test_no_command_prints_help_and_succeeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("migrate", "check", "status", "revision", "sql", "warm"):
        assert command in out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_commands_parse_their_options() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["migrate", "--app", "m:ds", "--database-url", "sqlite:///x.db", "--dry-run"]
    )
    assert (args.command, args.app, args.database_url, args.dry_run) == (
        "migrate",
        "m:ds",
        "sqlite:///x.db",
        True,
    )
    args = parser.parse_args(["warm", "--app", "m:ds", "players", "--limit", "10"])
    assert (args.schema, args.limit) == ("players", 10)
    args = parser.parse_args(["revision", "--app", "m:ds", "-m", "add guilds"])
    assert (args.message, args.directory) == ("add guilds", None)
    args = parser.parse_args(["sql", "--app", "m:ds", "--database-schema", "s", "sql/"])
    assert (args.directory, args.database_schema) == ("sql/", "s")


def test_revision_requires_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["revision", "--app", "m:ds"]) == 2
    assert "-m/--message" in capsys.readouterr().err


def test_warm_limit_must_be_a_number(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["warm", "--app", "m:ds", "players", "--limit", "many"]) == 2
    assert "invalid int value" in capsys.readouterr().err


def test_missing_app_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRATA_APP", raising=False)
    assert main(["check"]) == 2
    assert "--app MODULE:ATTR is required" in capsys.readouterr().err


def test_strata_app_variable_is_the_default_app(
    app: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module, _ = app
    monkeypatch.setenv("STRATA_APP", f"{module}:ds")
    assert main(["check"]) == 1  # resolved: the (missing) table is a difference
    assert "create table players" in capsys.readouterr().out


# -- --app resolution ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "--app must be MODULE:ATTR"),
        (":ds", "--app must be MODULE:ATTR"),
        ("no_such_module_xyz:ds", "no module named 'no_such_module_xyz'"),
        ("no_such_package_xyz.app:ds", "no module named 'no_such_package_xyz'"),
    ],
)
def test_unresolvable_app_path_is_a_usage_error(
    spec: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--app", spec]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_missing_attribute_names_it_and_the_stores_there(
    app: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    module, _ = app
    assert main(["check", "--app", f"{module}:store"]) == 2
    err = capsys.readouterr().err
    assert f"{module!r} has no attribute 'store'" in err
    assert "DataStores defined there: ds" in err


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        ("not_a_store", "is int, not a DataStore or a function returning one"),
        ("Player", "is the class Player, not a DataStore"),
        ("wrong_type", "calling it returned int, not a DataStore"),
        ("needs_argument", "a factory must take no arguments"),
    ],
)
def test_app_that_is_not_a_datastore_is_a_usage_error(
    app: tuple[str, Path], attr: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    module, _ = app
    assert main(["check", "--app", f"{module}:{attr}"]) == 2
    assert message in capsys.readouterr().err


def test_error_inside_the_app_module_is_a_failure_with_its_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("x = 1\nraise RuntimeError('boom at import')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["check", "--app", f"{name}:ds"]) == 1
    err = capsys.readouterr().err
    assert f"RuntimeError at {name}.py:2: boom at import" in err
    assert f"while importing {name!r}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("attr", ["ds", "make_store", "make_store_async"])
def test_app_may_be_a_store_a_function_or_an_async_function(
    app: tuple[str, Path], attr: str, capsys: pytest.CaptureFixture[str]
) -> None:
    module, db = app
    assert main(["migrate", "--app", f"{module}:{attr}"]) == 0
    assert "players" in tables(db)


# -- commands on SQLite -------------------------------------------------------------------


def test_dry_run_prints_the_sql_and_creates_nothing(
    app: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    module, db = app
    assert main(["migrate", "--app", f"{module}:ds", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "CREATE TABLE players" in out
    assert "CREATE INDEX ix_players_email" in out
    assert "NOTHING was applied" in out
    assert not db.exists()


def test_migrate_applies_and_says_what_it_did(
    app: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    module, db = app
    assert main(["migrate", "--app", f"{module}:ds"]) == 0
    out = capsys.readouterr().out
    assert "applied 3 change(s)" in out  # players, its index, and the keyed cache's table
    assert "+ create table players" in out
    assert {"players", "_strata_migrations", "_strata_cache"} <= tables(db)
    assert main(["migrate", "--app", f"{module}:ds"]) == 0
    assert "nothing to apply" in capsys.readouterr().out


def test_database_url_option_replaces_the_apps_database(
    app: tuple[str, Path], tmp_path: Path
) -> None:
    module, db = app
    other = tmp_path / "other.db"
    assert main(["migrate", "--app", f"{module}:ds", "--database-url", f"sqlite:///{other}"]) == 0
    assert "players" in tables(other)
    assert not db.exists()


def test_bad_database_url_is_a_usage_error(
    app: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    module, _ = app
    assert main(["check", "--app", f"{module}:ds", "--database-url", "mysql://u:pw@h/db"]) == 2
    err = capsys.readouterr().err
    assert "database_url must be postgresql://" in err
    assert "pw" not in err


def test_check_fails_until_migrated_then_passes_then_reports_an_unknown_column(
    app: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    module, db = app
    assert main(["check", "--app", f"{module}:ds"]) == 1
    assert "pending  create table players" in capsys.readouterr().out
    assert main(["migrate", "--app", f"{module}:ds"]) == 0
    capsys.readouterr()
    assert main(["check", "--app", f"{module}:ds"]) == 0
    assert "matches the models" in capsys.readouterr().out
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE players ADD COLUMN nickname TEXT")
    assert main(["check", "--app", f"{module}:ds"]) == 1
    out = capsys.readouterr().out
    assert "drift    players.nickname: the column exists in the database" in out


def test_status_lists_the_ledger(app: tuple[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    module, _ = app
    assert main(["status", "--app", f"{module}:ds"]) == 0
    assert "no migrations recorded" in capsys.readouterr().out
    assert main(["migrate", "--app", f"{module}:ds"]) == 0
    capsys.readouterr()
    assert main(["status", "--app", f"{module}:ds", "--statements"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "APPLIED", "AT", "(UTC)", "KIND", "CHECKSUM", "NAME"]
    assert lines[1].split()[0] == "1"
    assert "auto" in lines[1]
    assert "create table players" in lines[1]
    assert any("CREATE TABLE players" in line for line in lines[2:])


def test_sql_applies_files_in_order_once(
    app: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module, db = app
    files = tmp_path / "sql"
    files.mkdir()
    (files / "002_fill.sql").write_text("INSERT INTO notes (id, body) VALUES (1, 'hello');\n")
    (files / "001_notes.sql").write_text(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);\n"
    )
    (files / "README.txt").write_text("not a migration")
    assert main(["sql", "--app", f"{module}:ds", str(files)]) == 0
    out = capsys.readouterr().out
    assert out.index("001_notes.sql") < out.index("002_fill.sql")
    assert main(["sql", "--app", f"{module}:ds", str(files)]) == 0
    assert "nothing to apply" in capsys.readouterr().out
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT body FROM notes").fetchall() == [("hello",)]


def test_sql_failure_shows_the_statement_and_what_was_applied_before(
    app: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module, _ = app
    files = tmp_path / "sql"
    files.mkdir()
    (files / "001_notes.sql").write_text("CREATE TABLE notes (id INTEGER PRIMARY KEY);\n")
    (files / "002_bad.sql").write_text("INSERT INTO missing_table VALUES (1);\n")
    assert main(["sql", "--app", f"{module}:ds", str(files)]) == 1
    captured = capsys.readouterr()
    assert "applied 1 file(s) before the failure" in captured.out
    assert "002_bad.sql failed and was rolled back" in captured.err
    assert "INSERT INTO missing_table VALUES (1)" in captured.err
    assert "Traceback" not in captured.err


def test_warm_rejects_an_unknown_schema(
    app: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    module, _ = app
    assert main(["warm", "--app", f"{module}:ds", "nope"]) == 2
    assert "schema 'nope' is not registered" in capsys.readouterr().err


def test_revision_writes_an_additive_alembic_file_that_upgrades_an_empty_database(
    app: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from alembic import command
    from alembic.config import Config as AlembicConfig

    module, db = app
    env = tmp_path / "migrations"
    shutil.copytree(REPO / "migrations", env, ignore=shutil.ignore_patterns("*.py[co]"))
    for old in (env / "versions").glob("*.py"):
        old.unlink()
    assert main(["revision", "--app", f"{module}:ds", "-m", "first", "--directory", str(env)]) == 0
    written = list((env / "versions").glob("*_first.py"))
    assert len(written) == 1
    assert f"wrote {written[0]}" in capsys.readouterr().out
    source = written[0].read_text()
    assert "op.create_table('players'" in source
    assert "drop" not in source.split("def downgrade")[0]
    assert "players" not in tables(db)  # autogenerate compared; it created no model table

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(env))
    cfg.cmd_opts = type("Opts", (), {"x": [f"app={module}:ds"]})()  # alembic -x app=...
    command.upgrade(cfg, "head")
    assert {"players", "alembic_version"} <= tables(db)
    assert main(["check", "--app", f"{module}:ds"]) == 0
    assert main(["revision", "--app", f"{module}:ds", "-m", "again", "--directory", str(env)]) == 0
    assert "no revision written" in capsys.readouterr().out
    assert list((env / "versions").glob("*_again.py")) == []


def test_revision_leaves_drift_out_and_writes_nothing_when_only_drift_remains(
    app: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module, db = app
    env = tmp_path / "migrations"
    shutil.copytree(REPO / "migrations", env, ignore=shutil.ignore_patterns("*.py[co]"))
    for old in (env / "versions").glob("*.py"):
        old.unlink()
    assert main(["migrate", "--app", f"{module}:ds"]) == 0
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE players ADD COLUMN nickname TEXT")
    capsys.readouterr()
    assert main(["revision", "--app", f"{module}:ds", "-m", "drop", "--directory", str(env)]) == 0
    out = capsys.readouterr().out
    assert "no revision written" in out
    assert "left out of the revision" in out
    assert "! players.nickname: the column exists in the database" in out
    assert list((env / "versions").glob("*.py")) == []


def test_revision_without_an_alembic_environment_says_so(
    app: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module, _ = app
    assert main(["revision", "--app", f"{module}:ds", "-m", "x", "--directory", "nowhere"]) == 2
    assert "no Alembic environment in" in capsys.readouterr().err


# -- errors -------------------------------------------------------------------------------


def test_unreachable_database_names_host_and_port_and_hides_the_password(
    app: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    module, _ = app
    url = "postgresql://admin:s3cret-pw@127.0.0.1:1/prod"
    assert main(["check", "--app", f"{module}:ds", "--database-url", url]) == 1
    err = capsys.readouterr().err
    assert "cannot reach PostgreSQL at 127.0.0.1:1" in err
    assert "s3cret-pw" not in err
    assert "Traceback" not in err


def test_error_messages_hide_passwords_in_any_url() -> None:
    exc = TierUnavailableError("lost redis://:hunter2@cache:6379/0 mid-call", tier="l2")
    code, message = describe_error(exc)
    assert code == 1
    assert "hunter2" not in message
    assert "redis://:***@cache:6379/0" in message


def test_migration_errors_keep_their_message() -> None:
    code, message = describe_error(MigrationError("migration refused, nothing was applied"))
    assert (code, message) == (1, "migration: migration refused, nothing was applied")


def test_traceback_option_shows_the_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--traceback", "check", "--app", "no_such_module_xyz:ds"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_example_app_resolves_from_the_project_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("STRATA_DATABASE_URL", "sqlite:///:memory:")
    store = load_datastore("examples.app:make_store", database_schema="ignored_by_sqlite")
    assert list(store.schemas) == ["players", "guilds"]
    assert store.config.database_schema == "ignored_by_sqlite"


def test_warm_refuses_when_there_is_no_shared_tier_to_warm(
    app: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    module, _ = app
    assert main(["migrate", "--app", f"{module}:ds"]) == 0
    capsys.readouterr()
    assert main(["warm", "--app", f"{module}:ds", "players"]) == 2
    err = capsys.readouterr().err
    assert "nothing to warm" in err
    assert "no redis_url is configured" in err


def test_check_json_reports_pending_changes_then_ok(
    app: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    module, _ = app
    assert main(["check", "--app", f"{module}:ds", "--json"]) == 1
    before = json.loads(capsys.readouterr().out)
    assert before["ok"] is False
    assert any("players" in p for p in before["pending"])
    assert before["drift"] == [] and before["refused"] == []
    assert main(["migrate", "--app", f"{module}:ds"]) == 0
    capsys.readouterr()
    assert main(["check", "--app", f"{module}:ds", "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after == {**after, "ok": True, "pending": [], "drift": [], "refused": []}
    assert after["tables"] == 2  # players and the keyed cache's _strata_cache

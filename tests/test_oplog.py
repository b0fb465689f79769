"""What an operator reads in the log: one INFO line on connect, migrate and close; drift as a
WARNING; no Alembic chatter from ds.migrate(); require_redis fails fast."""

from __future__ import annotations

import logging
import socket
import sqlite3
from pathlib import Path

import pytest
from pydantic import BaseModel

from strata import Config, DataStore, Field, Schema, WriteMode, errors


class Item(BaseModel):
    id: str = Field(primary_key=True)
    n: int = 0


def store(db: Path, **config: object) -> DataStore:
    ds = DataStore(Config(database_url=f"sqlite:///{db}", **config))  # type: ignore[arg-type]
    ds.register(Schema(name="items", model=Item, write_mode=WriteMode.WRITE_BEHIND))
    return ds


def lines(caplog: pytest.LogCaptureFixture, name: str = "strata") -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == name]


async def test_connect_and_close_log_one_info_line_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with store(tmp_path / "a.db"):
        pass
    [(level, connected), (_, closed)] = lines(caplog)
    assert level == logging.INFO
    assert "L2 none" in connected
    assert "sqlite" in connected
    assert "items=write_behind" in connected
    assert closed.startswith("strata closed")


async def test_migrate_logs_what_it_applied_and_then_that_nothing_is_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with store(tmp_path / "a.db") as ds:
        caplog.set_level(logging.INFO)
        await ds.migrate()
        await ds.migrate()
    migrate_lines = [m for _, m in lines(caplog) if m.startswith("strata migrate")]
    assert len(migrate_lines) == 2
    assert "applied" in migrate_lines[0] and "items" in migrate_lines[0]
    assert "up to date" in migrate_lines[1]


async def test_migrate_keeps_alembic_info_lines_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # the root logger at INFO, as many apps configure it
    logging.getLogger("alembic").setLevel(logging.NOTSET)
    async with store(tmp_path / "a.db") as ds:
        await ds.migrate()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("alembic")] == []


async def test_drift_is_logged_as_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "a.db"
    async with store(db) as ds:
        await ds.migrate()
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE items ADD COLUMN legacy TEXT")
    async with store(db) as ds:
        caplog.set_level(logging.INFO)
        await ds.migrate()
    warnings = [m for level, m in lines(caplog) if level == logging.WARNING]
    assert len(warnings) == 1
    assert "drift" in warnings[0] and "legacy" in warnings[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_require_redis_fails_fast_at_connect_when_redis_is_unreachable(
    tmp_path: Path,
) -> None:
    ds = store(
        tmp_path / "a.db",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        require_redis=True,
        redis_timeout=0.2,
    )
    with pytest.raises(errors.TierUnavailableError) as caught:
        await ds.connect()
    assert caught.value.tier == "l2"
    assert "require_redis" in str(caught.value)
    with pytest.raises(errors.LifecycleError):
        await ds.get(Item, "a")


async def test_without_require_redis_an_unreachable_redis_degrades_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ds = store(tmp_path / "a.db", redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout=0.2)
    async with ds:
        await ds.migrate()
        await ds.set(Item, Item(id="a"))
    assert any("degraded" in m for _, m in lines(caplog))


def test_require_redis_without_a_redis_url_is_a_config_error() -> None:
    with pytest.raises(errors.ConfigError, match="require_redis"):
        Config(require_redis=True)


def test_require_redis_comes_from_the_environment() -> None:
    env = {"STRATA_REDIS_URL": "redis://127.0.0.1:6379/0", "STRATA_REQUIRE_REDIS": "true"}
    assert Config.from_env(env).require_redis is True
    with pytest.raises(errors.ConfigError, match="STRATA_REQUIRE_REDIS"):
        Config.from_env({**env, "STRATA_REQUIRE_REDIS": "maybe"})

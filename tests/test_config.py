"""Config: defaults, validation, environment variables, URL handling."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import BaseModel

from strata import Config, DataStore, Field, MemPolicy, Schema, WriteMode, errors
from strata.config import hide_password


def test_default_is_embedded_sqlite() -> None:
    config = Config()
    assert config.dialect == "sqlite"
    assert config.sqlite_path == "strata.db"
    assert config.redis_url is None


def test_from_env_reads_strata_variables() -> None:
    config = Config.from_env(
        {
            "STRATA_DATABASE_URL": "postgresql://u:secret@db.example:5433/app",
            "STRATA_REDIS_URL": "redis://cache:6379/1",
            "STRATA_DEFAULT_WRITE_MODE": "write_behind",
            "STRATA_DEFAULT_L1_TTL": "12.5",
            "STRATA_KEY_PREFIX": "svc",
        }
    )
    assert config.dialect == "postgresql"
    assert config.redis_url == "redis://cache:6379/1"
    assert config.default_write_mode is WriteMode.WRITE_BEHIND
    assert config.default_l1_ttl == 12.5
    assert config.key_prefix == "svc"


def test_from_env_keyword_overrides_win() -> None:
    config = Config.from_env({"STRATA_KEY_PREFIX": "env"}, key_prefix="kw")
    assert config.key_prefix == "kw"


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"STRATA_DEFAULT_L1_TTL": "soon"}, "STRATA_DEFAULT_L1_TTL"),
        ({"STRATA_DEFAULT_WRITE_MODE": "eventually"}, "STRATA_DEFAULT_WRITE_MODE"),
        ({"STRATA_DATABASE_URL": "mysql://x/y"}, "postgresql"),
        ({"STRATA_REDIS_URL": "http://x"}, "redis_url"),
    ],
)
def test_bad_environment_values_are_config_errors(env: dict[str, str], match: str) -> None:
    with pytest.raises(errors.ConfigError, match=match):
        Config.from_env(env)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"default_l1_ttl": -1},
        {"pool_min_size": 0},
        {"pool_min_size": 5, "pool_max_size": 2},
        {"codec": "pickle"},
        {"key_prefix": "a:b"},
        {"write_behind_max_pending": 0},
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(errors.ConfigError):
        Config(**kwargs)  # type: ignore[arg-type]


def test_ttls_take_a_timedelta() -> None:
    class M(BaseModel):
        id: str = Field(primary_key=True)

    ds = DataStore(Config(default_l2_ttl=timedelta(minutes=5)))
    cs = ds.register(Schema(model=M, l1=MemPolicy(ttl=timedelta(seconds=90))))
    assert (cs.l1_ttl, cs.l2_ttl) == (90.0, 300.0)


def test_passwords_are_hidden_in_urls_and_messages() -> None:
    assert hide_password("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert hide_password("redis://h:6379/0") == "redis://h:6379/0"
    ds = DataStore(Config(database_url="postgresql://u:secret@h:5432/db"))
    assert "secret" not in repr(ds)


def test_memory_database_is_private_to_its_config() -> None:
    a, b = Config(database_url="sqlite:///:memory:"), Config(database_url="sqlite:///:memory:")
    assert a.sqlite_path.startswith("file:") and a.sqlite_path != b.sqlite_path


def test_bad_encryption_key_is_a_config_error() -> None:
    with pytest.raises(errors.ConfigError, match="32 bytes"):
        DataStore(Config(encryption_key="c2hvcnQ="))

"""Config for the scale-out engines: Sentinel / Cluster URLs and ``prepared_statements``."""

from __future__ import annotations

import pytest

from strata import Config, errors
from strata.config import hide_password, parse_redis_url


def test_prepared_statements_is_read_from_the_environment() -> None:
    assert Config.from_env({"STRATA_PREPARED_STATEMENTS": "0"}).prepared_statements is False
    assert Config.from_env({"STRATA_PREPARED_STATEMENTS": "on"}).prepared_statements is True
    assert Config.from_env({}).prepared_statements is True


def test_a_bad_prepared_statements_value_is_a_config_error() -> None:
    with pytest.raises(errors.ConfigError, match="STRATA_PREPARED_STATEMENTS"):
        Config.from_env({"STRATA_PREPARED_STATEMENTS": "maybe"})
    with pytest.raises(errors.ConfigError, match="prepared_statements"):
        Config(prepared_statements="no")  # type: ignore[arg-type]


def test_a_sentinel_url_names_sentinels_service_db_and_password() -> None:
    target = parse_redis_url("redis+sentinel://s3cret@10.0.0.1:26379,10.0.0.2/cache/2")
    assert target.kind == "sentinel"
    assert target.hosts == (("10.0.0.1", 26379), ("10.0.0.2", 26379))
    assert (target.service, target.db, target.password) == ("cache", 2, "s3cret")


def test_a_cluster_url_names_its_startup_nodes() -> None:
    target = parse_redis_url("redis+cluster://a:7000,b:7001")
    assert (target.kind, target.hosts) == ("cluster", (("a", 7000), ("b", 7001)))
    Config(redis_url="redis+cluster://a:7000,b:7001")  # accepted


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://h:26379",  # no service name
        "redis+sentinel://h:26379/svc/x",  # db not a number
        "redis+cluster://a:7000/3",  # a cluster has db 0 only
        "redis+cluster://a:port",
        "memcached://a:11211",
    ],
)
def test_a_bad_redis_url_is_a_config_error(url: str) -> None:
    with pytest.raises(errors.ConfigError):
        Config(redis_url=url)


def test_a_sentinel_password_is_hidden_in_messages() -> None:
    assert "s3cret" not in hide_password("redis+sentinel://s3cret@h:26379/svc")
    assert "s3cret" not in hide_password("redis+cluster://u:s3cret@h:7000")

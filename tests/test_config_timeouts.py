"""Config: the L3 timeout, the close timeout, and a tombstone lifetime that outlives both."""

from __future__ import annotations

from datetime import timedelta

import pytest

from strata import Config
from strata.errors import ConfigError


def test_l3_timeout_defaults_to_five_seconds_and_reads_from_the_environment() -> None:
    assert Config().l3_timeout_seconds == 5.0
    env = {"STRATA_L3_TIMEOUT": "1.5", "STRATA_CLOSE_TIMEOUT": "3"}
    config = Config.from_env(env)
    assert config.l3_timeout_seconds == 1.5
    assert config.close_timeout_seconds == 3.0


@pytest.mark.parametrize("name", ["l3_timeout", "close_timeout"])
@pytest.mark.parametrize("value", [0, -1, "5"])
def test_a_timeout_that_is_not_positive_seconds_is_refused(name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=name):
        Config(**{name: value})


def test_the_default_tombstone_outlives_the_l3_timeout() -> None:
    for timeout in (0.1, 5.0, 30.0, timedelta(minutes=2)):
        config = Config(l3_timeout=timeout)
        assert config.tombstone_seconds >= config.l3_timeout_seconds
        assert config.tombstone_seconds >= 5.0


def test_a_tombstone_shorter_than_the_l3_timeout_is_refused() -> None:
    with pytest.raises(ConfigError, match="tombstone_ttl"):
        Config(l3_timeout=10.0, tombstone_ttl=5.0)
    assert Config(l3_timeout=10.0, tombstone_ttl=10.0).tombstone_seconds == 10.0

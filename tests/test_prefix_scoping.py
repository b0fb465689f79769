"""Messages and patterns scoped by key prefix (the Redis side is in
integration/test_prefix_isolation.py)."""

from __future__ import annotations

import orjson
import pytest

from strata.errors import CodecError
from strata.invalidation import Invalidation, decode_message
from strata.router.coherence import invalidation_channel
from strata.tiers.redis_topology import glob_escape


def test_a_message_carries_its_prefix_through_the_wire() -> None:
    msg = Invalidation(schema="players", op="delete", origin="a", id="p1", prefix="app")
    assert decode_message(msg.encode()) == msg


def test_a_message_without_prefix_decodes_to_none() -> None:
    raw = orjson.dumps({"schema": "players", "op": "set", "origin": "a", "id": "p1"})
    decoded = decode_message(raw)
    assert isinstance(decoded, Invalidation)
    assert decoded.prefix is None


def test_a_prefix_that_is_not_a_string_is_malformed() -> None:
    raw = orjson.dumps({"schema": "s", "op": "set", "origin": "a", "id": "p", "prefix": 3})
    with pytest.raises(CodecError, match="prefix"):
        decode_message(raw)


@pytest.mark.parametrize(
    ("text", "escaped"),
    [("plain", "plain"), ("X*", "X\\*"), ("a?b", "a\\?b"), ("[x]", "\\[x\\]"), ("a\\b", "a\\\\b")],
)
def test_glob_escape_makes_specials_literal(text: str, escaped: str) -> None:
    assert glob_escape(text) == escaped


def test_the_default_channel_is_scoped_by_the_key_prefix() -> None:
    assert invalidation_channel("strata:invalidation", "strata") == "strata:invalidation"
    assert invalidation_channel("strata:invalidation", "app2") == "app2:invalidation"
    assert invalidation_channel("mine", "app2") == "mine"

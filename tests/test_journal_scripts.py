"""The journal's APPEND_PUBLISH script is APPEND with the write's invalidation published
after its writes (DESIGN section 4: after the journaled L2 write), nothing else changed."""

from __future__ import annotations

from strata.journal.scripts import APPEND_LUA, APPEND_PUBLISH_LUA

PUBLISH = "redis.call('PUBLISH', ARGV[#ARGV - 1], ARGV[#ARGV])"


def test_append_publish_publishes_once_after_the_values_and_entries_are_written() -> None:
    assert "PUBLISH" not in APPEND_LUA
    assert APPEND_PUBLISH_LUA.count("PUBLISH") == 1
    at = APPEND_PUBLISH_LUA.index(PUBLISH)
    assert APPEND_PUBLISH_LUA.rindex("XADD") < at and APPEND_PUBLISH_LUA.rindex("SET") < at
    assert APPEND_PUBLISH_LUA.index("return {-1, len}") < at  # a full journal publishes nothing


def test_append_publish_is_append_apart_from_the_publish() -> None:
    assert APPEND_PUBLISH_LUA.replace(PUBLISH + "\n", "-- publish\n") == APPEND_LUA

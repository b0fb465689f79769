"""The hybrid logical clock: strictly increasing, never behind what it observed."""

from __future__ import annotations

from strata.clock import HybridClock


def test_versions_increase_when_the_wall_clock_stands_still() -> None:
    clock = HybridClock(wall=lambda: 1000)
    assert [clock.now() for _ in range(3)] == [1000, 1001, 1002]


def test_a_version_after_an_observed_one_is_greater_even_with_a_clock_behind() -> None:
    clock = HybridClock(wall=lambda: 1000)
    clock.observe(5_000)
    assert clock.now() == 5_001


def test_observing_an_older_version_changes_nothing() -> None:
    clock = HybridClock(wall=lambda: 1000)
    clock.observe(10)
    assert clock.now() == 1000

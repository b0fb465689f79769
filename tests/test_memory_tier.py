"""L1 memory tier: expiry, bounds, eviction policies, versions and tombstones, callbacks."""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import BaseModel

from strata.errors import ConfigError
from strata.tiers.memory import Eviction, MemoryTier, estimate_size


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, **kwargs: Any) -> MemoryTier[str, Any]:
    return MemoryTier(clock=clock, **kwargs)


# -- TTL ------------------------------------------------------------------------------------


def test_entry_is_served_until_its_ttl_and_not_after(clock: FakeClock) -> None:
    tier = make(clock, ttl=10.0)
    tier.set("a", 1)
    clock.advance(9.999)
    assert tier.get("a") == 1
    clock.advance(0.001)
    assert tier.get("a") is None


def test_store_without_ttl_never_expires(clock: FakeClock) -> None:
    tier = make(clock)
    tier.set("a", 1)
    clock.advance(10**9)
    assert tier.get("a") == 1
    assert tier.get_entry("a") == (1, 0, None)


def test_explicit_ttl_overrides_store_ttl_both_ways(clock: FakeClock) -> None:
    tier = make(clock, ttl=10.0)
    tier.set("short", 1, ttl=2.0)
    tier.set("long", 2, ttl=30.0)
    clock.advance(5)
    assert tier.get("short") is None
    assert tier.get("long") == 2
    clock.advance(20)
    assert tier.get("long") == 2
    clock.advance(5)
    assert tier.get("long") is None


def test_explicit_ttl_none_means_no_expiry_despite_store_ttl(clock: FakeClock) -> None:
    tier = make(clock, ttl=1.0)
    assert tier.set("a", 1, ttl=None)
    clock.advance(10**6)
    assert tier.get("a") == 1
    assert tier.sweep() == 0


@pytest.mark.parametrize("ttl", [0, 0.0, -1.0, math.nan])
def test_non_positive_ttl_is_not_stored(clock: FakeClock, ttl: float) -> None:
    tier = make(clock)
    assert tier.set("a", 1, ttl=ttl) is False
    assert tier.get("a") is None
    assert len(tier) == 0


def test_get_entry_reports_value_version_and_remaining_ttl(clock: FakeClock) -> None:
    tier = make(clock, ttl=10.0)
    tier.set("a", "v", version=7)
    clock.advance(4)
    value, version, remaining = tier.get_entry("a") or (None, None, None)
    assert (value, version) == ("v", 7)
    assert remaining == pytest.approx(6.0)


def test_expired_entry_is_never_served_by_any_read(clock: FakeClock) -> None:
    tier = make(clock, ttl=5.0)
    for key in "abcd":
        tier.set(key, key.upper())
    clock.advance(5)
    assert tier.get("a") is None
    assert tier.get_entry("b") is None
    assert tier.get_many(["c", "d"]) == {}
    assert "a" not in tier
    assert tier.keys() == []
    assert len(tier) == 0


def test_len_counts_only_live_entries_without_an_explicit_sweep(clock: FakeClock) -> None:
    tier = make(clock, ttl=5.0)
    tier.set("a", 1)
    tier.set("b", 2, ttl=50.0)
    clock.advance(10)
    assert len(tier) == 1
    assert tier.keys() == ["b"]


def test_updating_an_entry_restarts_its_ttl(clock: FakeClock) -> None:
    tier = make(clock, ttl=10.0)
    tier.set("a", 1)
    clock.advance(8)
    tier.set("a", 2)
    clock.advance(8)  # 16s after the first set, 8s after the update
    assert tier.get("a") == 2
    assert tier.sweep() == 0
    clock.advance(2)
    assert tier.get("a") is None


def test_update_with_shorter_ttl_expires_at_the_shorter_time(clock: FakeClock) -> None:
    evicted: list[str] = []
    tier = make(clock, ttl=100.0, on_evict=lambda k, v: evicted.append(k))
    tier.set("a", 1)
    tier.set("a", 2, ttl=1.0)
    clock.advance(1)
    assert tier.sweep() == 1
    assert evicted == ["a"]
    assert len(tier) == 0


def test_sweep_reclaims_expired_entries_and_calls_on_evict(clock: FakeClock) -> None:
    evicted: list[tuple[str, int]] = []
    tier = make(clock, ttl=5.0, on_evict=lambda k, v: evicted.append((k, v)))
    tier.set("a", 1)
    tier.set("b", 2)
    tier.set("c", 3, ttl=60.0)
    clock.advance(5)
    assert tier.sweep() == 2
    assert sorted(evicted) == [("a", 1), ("b", 2)]
    assert tier.evictions == 2
    assert tier.keys() == ["c"]
    assert tier.sweep() == 0
    assert len(evicted) == 2


def test_expired_entry_found_by_get_calls_on_evict_exactly_once(clock: FakeClock) -> None:
    evicted: list[str] = []
    tier = make(clock, ttl=5.0, on_evict=lambda k, v: evicted.append(k))
    tier.set("a", 1)
    clock.advance(6)
    assert tier.get("a") is None
    assert tier.sweep() == 0
    assert tier.get("a") is None
    assert evicted == ["a"]


def test_sweep_limit_expires_a_large_store_in_slices(clock: FakeClock) -> None:
    tier = make(clock, ttl=1.0)
    tier.set_many((f"k{i}", i, 0) for i in range(2500))
    clock.advance(1)
    assert [tier.sweep(limit=1000) for _ in range(4)] == [1000, 1000, 500, 0]
    assert len(tier) == 0


def test_sweep_handles_100k_entries(clock: FakeClock) -> None:
    tier: MemoryTier[int, int] = MemoryTier(ttl=10.0, clock=clock)
    tier.set_many((i, i, 0) for i in range(100_000))
    clock.advance(5)
    tier.set_many((i, i, 0) for i in range(50_000))  # these now live until t+15
    clock.advance(5)
    assert tier.sweep() == 50_000
    assert len(tier) == 50_000
    assert tier.get(0) == 0
    assert tier.get(99_999) is None


# -- eviction policies ------------------------------------------------------------------------


def test_lru_evicts_least_recently_used_and_get_counts_as_use(clock: FakeClock) -> None:
    tier = make(clock, max_entries=3, eviction=Eviction.LRU)
    for key in "abc":
        tier.set(key, key)
    assert tier.get("a") == "a"
    tier.set("d", "d")
    assert sorted(tier.keys()) == ["a", "c", "d"]


def test_lru_get_many_and_get_entry_count_as_use(clock: FakeClock) -> None:
    tier = make(clock, max_entries=3, eviction=Eviction.LRU)
    for key in "abc":
        tier.set(key, key)
    tier.get_many(["a"])
    tier.get_entry("b")
    tier.set("d", "d")
    assert sorted(tier.keys()) == ["a", "b", "d"]


def test_membership_test_is_not_a_use(clock: FakeClock) -> None:
    tier = make(clock, max_entries=2, eviction=Eviction.LRU)
    tier.set("a", 1)
    tier.set("b", 2)
    assert "a" in tier
    tier.set("c", 3)
    assert "a" not in tier
    assert sorted(tier.keys()) == ["b", "c"]


def test_lru_set_of_existing_key_counts_as_use(clock: FakeClock) -> None:
    tier = make(clock, max_entries=3, eviction=Eviction.LRU)
    for key in "abc":
        tier.set(key, key)
    tier.set("a", "A")
    tier.set("d", "d")
    assert sorted(tier.keys()) == ["a", "c", "d"]
    assert tier.get("a") == "A"


def test_fifo_evicts_oldest_inserted_even_if_it_was_just_read(clock: FakeClock) -> None:
    tier = make(clock, max_entries=3, eviction=Eviction.FIFO)
    for key in "abc":
        tier.set(key, key)
    for _ in range(5):
        assert tier.get("a") == "a"
    tier.set("d", "d")
    assert sorted(tier.keys()) == ["b", "c", "d"]


def test_fifo_update_of_existing_key_does_not_move_it(clock: FakeClock) -> None:
    tier = make(clock, max_entries=3, eviction=Eviction.FIFO)
    for key in "abc":
        tier.set(key, key)
    tier.set("a", "A")
    tier.set("d", "d")
    assert sorted(tier.keys()) == ["b", "c", "d"]


def test_fifo_key_deleted_and_set_again_counts_as_newly_inserted(clock: FakeClock) -> None:
    tier = make(clock, max_entries=3, eviction=Eviction.FIFO)
    for key in "abc":
        tier.set(key, key)
    tier.delete("a")
    tier.set("a", "A")
    tier.set("d", "d")
    assert sorted(tier.keys()) == ["a", "c", "d"]


def test_lfu_evicts_least_accessed_entry(clock: FakeClock) -> None:
    tier = make(clock, max_entries=3, eviction=Eviction.LFU)
    for key in "abc":
        tier.set(key, key)
    for key in ("a", "a", "c", "c", "b"):
        tier.get(key)
    # a: 3 accesses, b: 2, c: 3 -> b goes even though it was used most recently
    tier.set("d", "d")
    assert sorted(tier.keys()) == ["a", "c", "d"]


def test_lfu_breaks_ties_by_least_recently_used(clock: FakeClock) -> None:
    tier = make(clock, max_entries=3, eviction=Eviction.LFU)
    for key in "abc":
        tier.set(key, key)
    tier.get("b")
    tier.get("a")
    tier.get("c")
    # all have 2 accesses; b's last access is the oldest
    tier.set("d", "d")
    assert sorted(tier.keys()) == ["a", "c", "d"]


def test_lfu_set_counts_as_an_access(clock: FakeClock) -> None:
    tier = make(clock, max_entries=2, eviction=Eviction.LFU)
    tier.set("a", 1)
    tier.set("b", 1)
    tier.set("a", 2)  # a: 2 accesses, b: 1
    tier.set("c", 1)
    assert sorted(tier.keys()) == ["a", "c"]


def test_lfu_new_entry_is_not_evicted_by_its_own_insert(clock: FakeClock) -> None:
    tier = make(clock, max_entries=2, eviction=Eviction.LFU)
    tier.set("a", 1)
    tier.set("b", 1)
    for _ in range(3):
        tier.get("a")
        tier.get("b")
    assert tier.set("c", 1)
    assert tier.get("c") == 1
    assert sorted(tier.keys()) == ["b", "c"]


def test_capacity_eviction_prefers_expired_entries(clock: FakeClock) -> None:
    tier = make(clock, max_entries=3)
    tier.set("old", 0)
    tier.set("short", 1, ttl=1.0)
    tier.set("x", 2)
    clock.advance(2)
    tier.set("y", 3)
    assert sorted(tier.keys()) == ["old", "x", "y"]


@dataclass
class _Model:
    """Reference policy: victims chosen by an O(n) scan over explicit counters."""

    eviction: Eviction
    cap: int
    tick: int = 0
    entries: dict[int, list[int]] = field(default_factory=dict)  # value, uses, last, inserted

    def _touch(self, key: int) -> None:
        self.tick += 1
        e = self.entries[key]
        e[1] += 1
        e[2] = self.tick

    def get(self, key: int) -> int | None:
        if key not in self.entries:
            return None
        self._touch(key)
        return self.entries[key][0]

    def set(self, key: int, value: int) -> None:
        if key in self.entries:
            self.entries[key][0] = value
            self._touch(key)
            return
        if len(self.entries) >= self.cap:
            if self.eviction is Eviction.LRU:
                victim = min(self.entries, key=lambda k: self.entries[k][2])
            elif self.eviction is Eviction.FIFO:
                victim = min(self.entries, key=lambda k: self.entries[k][3])
            else:
                victim = min(self.entries, key=lambda k: (self.entries[k][1], self.entries[k][2]))
            del self.entries[victim]
        self.tick += 1
        self.entries[key] = [value, 1, self.tick, self.tick]

    def delete(self, key: int) -> None:
        self.entries.pop(key, None)


@pytest.mark.parametrize("eviction", list(Eviction))
def test_eviction_matches_reference_policy_under_random_operations(
    clock: FakeClock, eviction: Eviction
) -> None:
    rng = random.Random(1234)
    tier: MemoryTier[int, int] = MemoryTier(max_entries=50, eviction=eviction, clock=clock)
    model = _Model(eviction, 50)
    for step in range(20_000):
        key = rng.randrange(120)
        op = rng.random()
        if op < 0.5:
            assert tier.get(key) == model.get(key), step
        elif op < 0.95:
            tier.set(key, step)
            model.set(key, step)
        else:
            tier.delete(key)
            model.delete(key)
    assert sorted(tier.keys()) == sorted(model.entries)
    assert tier.get_many(model.entries) == {k: e[0] for k, e in model.entries.items()}


@pytest.mark.parametrize("eviction", list(Eviction))
def test_max_entries_is_a_global_bound_under_10k_random_inserts(
    clock: FakeClock, eviction: Eviction
) -> None:
    rng = random.Random(42)
    evicted: list[int] = []
    tier: MemoryTier[int, int] = MemoryTier(
        max_entries=100,
        ttl=50.0,
        eviction=eviction,
        clock=clock,
        on_evict=lambda k, v: evicted.append(k),
    )
    stored = 0
    for i, key in enumerate(rng.sample(range(1_000_000), 10_000)):
        if tier.set(key, i, ttl=rng.choice([1.0, 10.0, 100.0, None])):
            stored += 1
        if rng.random() < 0.3:
            tier.get(rng.randrange(1_000_000))
        if rng.random() < 0.05:
            clock.advance(rng.random() * 5)
        assert len(tier.keys()) <= 100
    keys = tier.keys()
    assert len(tier) == len(keys) == 100
    assert all(tier.get(k) is not None for k in keys)
    # Every stored entry is either still there or was reported as evicted.
    assert stored == len(keys) + len(evicted) == len(keys) + tier.evictions


def test_entries_over_max_entries_evict_with_on_evict(clock: FakeClock) -> None:
    evicted: list[tuple[str, int]] = []
    tier = make(clock, max_entries=2, on_evict=lambda k, v: evicted.append((k, v)))
    tier.set("a", 1)
    tier.set("b", 2)
    tier.set("c", 3)
    assert evicted == [("a", 1)]
    assert tier.evictions == 1


# -- max_bytes --------------------------------------------------------------------------------


def _len_size(value: str) -> int:
    return len(value)


def test_max_bytes_bound_holds_by_evicting_lru_entries(clock: FakeClock) -> None:
    tier = make(clock, max_bytes=10, sizeof=_len_size)
    tier.set("a", "xxxx")
    tier.set("b", "xxxx")
    tier.get("a")
    tier.set("c", "xxxxx")
    assert sorted(tier.keys()) == ["a", "c"]
    assert tier.nbytes == 9
    tier.set("d", "x" * 10)
    assert tier.keys() == ["d"]
    assert tier.nbytes == 10


def test_entry_larger_than_max_bytes_is_not_stored(clock: FakeClock) -> None:
    tier = make(clock, max_bytes=10, sizeof=_len_size)
    tier.set("small", "xxx")
    assert tier.set("big", "x" * 11) is False
    assert tier.get("big") is None
    assert tier.get("small") == "xxx"
    assert tier.nbytes == 3


def test_oversized_newer_write_drops_the_older_cached_value(clock: FakeClock) -> None:
    tier = make(clock, max_bytes=10, sizeof=_len_size)
    tier.set("a", "old", version=1)
    assert tier.set("a", "x" * 11, version=2) is False
    assert tier.get("a") is None
    assert tier.set("a", "old", version=1) is False  # a slow reader cannot put it back
    assert tier.set("a", "new", version=2) is True


def test_growing_update_evicts_other_entries_not_itself(clock: FakeClock) -> None:
    tier = make(clock, max_bytes=10, sizeof=_len_size, eviction=Eviction.FIFO)
    tier.set("a", "xx")
    tier.set("b", "xx")
    tier.set("c", "xx")
    assert tier.set("a", "x" * 7)
    assert tier.get("a") == "x" * 7
    assert sorted(tier.keys()) == ["a", "c"]
    assert tier.nbytes == 9


def test_nbytes_is_zero_without_max_bytes(clock: FakeClock) -> None:
    calls: list[object] = []

    def sizeof(v: object) -> int:
        calls.append(v)
        return 100

    tier = make(clock, sizeof=sizeof)
    tier.set("a", "x")
    assert tier.nbytes == 0
    assert calls == []


def test_nbytes_follows_updates_deletes_and_expiry(clock: FakeClock) -> None:
    tier = make(clock, max_bytes=100, sizeof=_len_size, ttl=5.0)
    tier.set("a", "x" * 10)
    tier.set("b", "x" * 20)
    tier.set("a", "x" * 5)
    assert tier.nbytes == 25
    tier.delete("b")
    assert tier.nbytes == 5
    clock.advance(5)
    assert tier.nbytes == 0


def test_default_sizeof_counts_nested_contents_once() -> None:
    class Slotted:
        __slots__ = ("payload", "unset")

        def __init__(self, payload: object) -> None:
            self.payload = payload

    class Plain:
        def __init__(self, payload: object) -> None:
            self.payload = payload

    big = "x" * 10_000
    assert estimate_size(Plain(big)) > 10_000
    assert estimate_size(Slotted(big)) > 10_000
    assert estimate_size({"k": [big, (big,)]}) < 11_000  # the shared string counted once
    cyclic: list[object] = []
    cyclic.append(cyclic)
    assert estimate_size(cyclic) > 0


def test_default_sizeof_is_used_when_max_bytes_is_set(clock: FakeClock) -> None:
    tier = make(clock, max_bytes=5_000)
    assert tier.set("small", {"a": 1})
    assert tier.set("big", {"a": "x" * 10_000}) is False
    assert 0 < tier.nbytes < 5_000


class _Row(BaseModel):
    id: str
    tags: list[str] = []


def test_a_model_is_sized_by_its_encoded_length(clock: FakeClock) -> None:
    # Walking every object inside the value cost ~30x the set itself (issue 14); the
    # encoded length is one pass in pydantic-core and what L2 stores for the same value.
    tier: MemoryTier[str, _Row] = MemoryTier(clock=clock, max_bytes=10_000)
    row = _Row(id="r1", tags=["a", "b"] * 50)
    assert tier.set("r1", row)
    assert tier.nbytes == len(row.model_dump_json().encode())


def test_max_bytes_holds_for_models_with_the_default_sizer(clock: FakeClock) -> None:
    rows = [_Row(id=f"r{i:03d}", tags=["x" * 10] * 5) for i in range(100)]
    size = len(rows[0].model_dump_json().encode())
    tier: MemoryTier[str, _Row] = MemoryTier(clock=clock, max_bytes=10 * size)
    for row in rows:
        assert tier.set(row.id, row)
        assert tier.nbytes <= 10 * size
    assert tier.keys() == [row.id for row in rows[-10:]]
    assert tier.evictions == 90
    assert tier.set("big", _Row(id="big", tags=["x" * 10] * 100)) is False
    assert tier.get("big") is None


# -- versions and tombstones ------------------------------------------------------------------


def test_older_version_set_is_ignored(clock: FakeClock) -> None:
    tier = make(clock)
    assert tier.set("a", "v5", version=5)
    assert tier.set("a", "v4", version=4) is False
    assert tier.get_entry("a") == ("v5", 5, None)


def test_equal_or_newer_version_set_replaces(clock: FakeClock) -> None:
    tier = make(clock)
    tier.set("a", "first", version=5)
    assert tier.set("a", "second", version=5)
    assert tier.get("a") == "second"
    assert tier.set("a", "third", version=6)
    assert tier.get_entry("a") == ("third", 6, None)


def test_versioned_delete_leaves_tombstone_that_blocks_older_sets(clock: FakeClock) -> None:
    tier = make(clock, tombstone_ttl=5.0)
    tier.set("a", "v1", version=1)
    assert tier.delete("a", version=2) is True
    assert tier.get("a") is None
    assert tier.set("a", "v1", version=1) is False
    assert tier.get("a") is None


def test_tombstone_is_replaced_by_equal_or_newer_version(clock: FakeClock) -> None:
    tier = make(clock)
    tier.delete("a", version=2)
    assert tier.set("a", "v2", version=2)
    assert tier.get("a") == "v2"
    tier.delete("b", version=2)
    assert tier.set("b", "v3", version=3)
    assert tier.get("b") == "v3"


def test_tombstone_expires_after_tombstone_ttl(clock: FakeClock) -> None:
    tier = make(clock, tombstone_ttl=5.0)
    tier.delete("a", version=9)
    clock.advance(4.9)
    assert tier.set("a", "old", version=1) is False
    clock.advance(0.1)
    assert tier.set("a", "old", version=1) is True
    assert tier.get("a") == "old"


def test_tombstone_keeps_the_greatest_version_known(clock: FakeClock) -> None:
    tier = make(clock)
    tier.set("a", "v5", version=5)
    tier.delete("a", version=3)
    assert tier.set("a", "v4", version=4) is False
    assert tier.set("a", "v5", version=5) is True


def test_tombstones_do_not_count_in_len_or_max_entries(clock: FakeClock) -> None:
    tier = make(clock, max_entries=2)
    for i in range(10):
        tier.delete(f"gone{i}", version=1)
    assert len(tier) == 0
    tier.set("a", 1)
    tier.set("b", 2)
    assert len(tier) == 2
    assert sorted(tier.keys()) == ["a", "b"]
    assert tier.evictions == 0


def test_unversioned_delete_leaves_no_tombstone(clock: FakeClock) -> None:
    tier = make(clock)
    tier.set("a", "v5", version=5)
    assert tier.delete("a") is True
    assert tier.set("a", "v1", version=1) is True


def test_expired_entry_version_no_longer_blocks(clock: FakeClock) -> None:
    tier = make(clock, ttl=5.0)
    tier.set("a", "v5", version=5)
    clock.advance(5)
    assert tier.set("a", "v1", version=1) is True
    assert tier.get("a") == "v1"


def test_sweep_reclaims_tombstones(clock: FakeClock) -> None:
    tier = make(clock, tombstone_ttl=1.0)
    tier.delete("a", version=5)
    clock.advance(1)
    assert tier.sweep() == 0  # tombstones are not live entries
    assert tier.set("a", "v1", version=1) is True


def test_clear_drops_entries_and_tombstones(clock: FakeClock) -> None:
    tier = make(clock)
    tier.set("a", 1, version=3)
    tier.delete("b", version=3)
    tier.clear()
    assert len(tier) == 0
    assert tier.set("a", 1, version=1)
    assert tier.set("b", 1, version=1)


def test_delete_reports_whether_a_live_entry_was_removed(clock: FakeClock) -> None:
    tier = make(clock, ttl=5.0)
    tier.set("a", 1)
    tier.set("b", 1)
    clock.advance(5)
    tier.set("c", 1)
    assert tier.delete("missing") is False
    assert tier.delete("a") is False  # expired
    assert tier.delete("c") is True
    assert tier.delete_many(["b", "c"]) == 0


# -- batch operations -------------------------------------------------------------------------


def test_batch_operations_apply_versions_per_item(clock: FakeClock) -> None:
    tier = make(clock)
    tier.set("b", "newer", version=9)
    assert tier.set_many([("a", "A", 1), ("b", "B", 1), ("c", "C", 1)]) == 2
    assert tier.get_many(["a", "b", "c", "missing"]) == {"a": "A", "b": "newer", "c": "C"}
    assert tier.delete_many(["a", "c", "missing"], version=2) == 2
    assert tier.set_many([("a", "A", 1), ("c", "C", 2)]) == 1
    assert tier.keys() == ["b", "c"]


def test_set_many_ttl_applies_to_every_item(clock: FakeClock) -> None:
    tier = make(clock, ttl=100.0)
    tier.set_many([("a", 1, 0), ("b", 2, 0)], ttl=1.0)
    clock.advance(1)
    assert tier.get_many(["a", "b"]) == {}


def test_cache_stores_the_given_object_without_copying(clock: FakeClock) -> None:
    tier = make(clock)
    value = {"mutable": [1]}
    tier.set("a", value)
    assert tier.get("a") is value


# -- callbacks --------------------------------------------------------------------------------


def test_on_evict_not_called_on_delete_clear_or_replace(clock: FakeClock) -> None:
    evicted: list[str] = []
    tier = make(clock, ttl=10.0, on_evict=lambda k, v: evicted.append(k))
    tier.set("a", 1)
    tier.set("a", 2)
    tier.set("b", 1)
    tier.delete("b", version=1)
    tier.set("c", 1)
    tier.delete_many(["c"])
    tier.set("d", 1)
    tier.clear()
    clock.advance(100)
    tier.sweep()
    assert evicted == []
    assert tier.evictions == 0


def test_on_evict_error_goes_to_on_error_and_cache_stays_consistent(clock: FakeClock) -> None:
    errors: list[BaseException] = []
    boom = RuntimeError("boom")

    def on_evict(key: str, value: int) -> None:
        raise boom

    tier = make(clock, max_entries=2, on_evict=on_evict, on_error=errors.append)
    tier.set("a", 1)
    tier.set("b", 2)
    assert tier.set("c", 3) is True
    assert tier.set("d", 4) is True
    assert errors == [boom, boom]
    assert sorted(tier.keys()) == ["c", "d"]
    assert tier.get_many(["a", "b", "c", "d"]) == {"c": 3, "d": 4}
    assert tier.evictions == 2


def test_on_evict_error_without_on_error_is_logged(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def on_evict(key: str, value: int) -> None:
        raise RuntimeError("boom")

    tier = make(clock, ttl=1.0, on_evict=on_evict)
    tier.set("a", 1)
    clock.advance(1)
    with caplog.at_level(logging.WARNING, logger="strata"):
        assert tier.get("a") is None
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)
    assert len(tier) == 0


def test_on_evict_may_call_back_into_the_cache(clock: FakeClock) -> None:
    tier: MemoryTier[str, int]
    seen: list[tuple[str, int | None]] = []
    errors: list[BaseException] = []

    def on_evict(key: str, value: int) -> None:
        seen.append((key, tier.get("c")))
        if key == "a":
            tier.set("z", 26)  # evicts again, from inside the callback

    tier = MemoryTier(max_entries=2, on_evict=on_evict, on_error=errors.append, clock=clock)
    tier.set("a", 1)
    tier.set("b", 2)
    tier.set("c", 3)
    assert errors == []
    assert seen == [("a", 3), ("b", 3)]  # each callback runs once the set has completed
    assert sorted(tier.keys()) == ["c", "z"]
    assert tier.get_many(["a", "b", "c", "z"]) == {"c": 3, "z": 26}


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl": -1.0},
        {"ttl": 0},
        {"ttl": math.nan},
        {"ttl": math.inf},
        {"max_entries": 0},
        {"max_entries": -5},
        {"max_entries": 1.5},
        {"max_bytes": 0},
        {"tombstone_ttl": -1.0},
        {"tombstone_ttl": math.inf},
        {"eviction": "lru"},
        {"on_evict": "not callable"},
    ],
)
def test_bad_constructor_arguments_raise_config_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        MemoryTier(**kwargs)


def test_valid_constructor_arguments_are_accepted() -> None:
    tier: MemoryTier[str, int] = MemoryTier(
        ttl=1, max_entries=1, max_bytes=1, tombstone_ttl=0, eviction=Eviction.FIFO
    )
    assert len(tier) == 0

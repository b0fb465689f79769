"""The keyed cache embedded (memory + SQLite durable table, no Redis): every method, with an
injected clock for expiry, staleness and refresh-ahead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from strata import Config, Cost, DataStore
from strata.errors import (
    InvalidKeyError,
    InvalidValueError,
    LifecycleError,
    LockTimeoutError,
    ValueTooLargeError,
)


class Profile(BaseModel):
    name: str
    tags: list[str] = []


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def ds(tmp_path: Path, clock: Clock) -> AsyncIterator[DataStore]:
    store = DataStore(Config(database_url=f"sqlite:///{tmp_path / 'c.db'}"))
    store.cache.clock = clock
    async with store:
        await store.migrate()
        yield store


async def test_set_then_get_returns_the_value(ds: DataStore) -> None:
    users = ds.cache.namespace("users", version="v2")
    await users.set(["42", "profile"], {"name": "ann"}, ttl=300)
    assert await users.get(["42", "profile"]) == {"name": "ann"}


async def test_get_of_a_missing_key_returns_the_default(ds: DataStore) -> None:
    assert await ds.cache.get("nope") is None
    assert await ds.cache.get("nope", default=7) == 7


async def test_string_key_and_segments_name_the_same_key(ds: DataStore) -> None:
    await ds.cache.set("user:42", 1)
    assert await ds.cache.get(["user", "42"]) == 1


async def test_model_values_come_back_as_models_with_model(ds: DataStore) -> None:
    await ds.cache.set("p", Profile(name="ann", tags=["x"]))
    got = await ds.cache.get("p", model=Profile)
    assert got == Profile(name="ann", tags=["x"])
    assert await ds.cache.get("p") == {"name": "ann", "tags": ["x"]}


async def test_bytes_values_round_trip(ds: DataStore) -> None:
    await ds.cache.set("b", b"\x00\xffraw")
    assert await ds.cache.get("b") == b"\x00\xffraw"


async def test_values_handed_out_never_alias_each_other(ds: DataStore) -> None:
    await ds.cache.set("l", {"items": [1]})
    first = await ds.cache.get("l")
    first["items"].append(2)
    assert await ds.cache.get("l") == {"items": [1]}


@pytest.mark.parametrize("key", ["", [], "a::b", ["a:b"], ["a*"], "*", ["*", "x"], [None], 1.5])
async def test_bad_keys_raise_invalid_key_error(ds: DataStore, key: Any) -> None:
    with pytest.raises(InvalidKeyError):
        await ds.cache.set(key, 1)


async def test_a_value_orjson_cannot_encode_is_invalid_value_error(ds: DataStore) -> None:
    with pytest.raises(InvalidValueError):
        await ds.cache.set("o", object())


async def test_namespaces_do_not_see_each_other(ds: DataStore) -> None:
    v1 = ds.cache.namespace("users", version="v1")
    v2 = ds.cache.namespace("users", version="v2")
    await v1.set("k", "one")
    assert await v2.get("k") is None
    assert v2.namespace("sessions").name == "users:v2:sessions"


async def test_get_many_and_set_many(ds: DataStore) -> None:
    ns = ds.cache.namespace("m")
    await ns.set_many({"a": 1, "b:c": 2}, ttl=60)
    assert await ns.get_many(["a", ["b", "c"], "zz"]) == {"a": 1, "b:c": 2}


async def test_ttl_expires_values(ds: DataStore, clock: Clock) -> None:
    await ds.cache.set("t", 1, ttl=10)
    clock.now += 9
    assert await ds.cache.get("t") == 1
    clock.now += 2
    assert await ds.cache.get("t") is None


async def test_add_stores_only_when_absent(ds: DataStore) -> None:
    assert await ds.cache.add("a", 1) is True
    assert await ds.cache.add("a", 2) is False
    assert await ds.cache.get("a") == 1


async def test_pull_returns_the_value_and_deletes_it(ds: DataStore) -> None:
    await ds.cache.set("p", {"x": 1}, cost=Cost.EXPENSIVE)
    assert await ds.cache.pull("p") == {"x": 1}
    assert await ds.cache.get("p") is None


async def test_delete_and_delete_many_reach_the_durable_table(ds: DataStore) -> None:
    await ds.cache.set_many({"a": 1, "b": 2, "c": 3}, cost=Cost.EXPENSIVE)
    await ds.cache.delete("a")
    await ds.cache.delete_many(["b"])
    ds.cache.clear_memory()
    assert await ds.cache.get_many(["a", "b", "c"]) == {"c": 3}


async def test_wildcard_invalidation_drops_every_key_under_the_prefix(ds: DataStore) -> None:
    users = ds.cache.namespace("users")
    await users.set(["42", "profile"], 1, cost=Cost.EXPENSIVE)
    await users.set(["42", "avatar"], 2)
    await users.set(["43", "profile"], 3, cost=Cost.EXPENSIVE)
    await users.invalidate(["42", "*"])
    assert await users.get(["42", "profile"]) is None
    assert await users.get(["42", "avatar"]) is None
    ds.cache.clear_memory()  # the durable copy is gone too; 43 is untouched
    assert await users.get(["42", "profile"]) is None
    assert await users.get(["43", "profile"]) == 3


async def test_namespace_wildcard_invalidation_drops_every_version(ds: DataStore) -> None:
    v2 = ds.cache.namespace("users", version="v2")
    await v2.set("k", 1)
    await ds.cache.namespace("users").invalidate("*")
    assert await v2.get("k") is None


async def test_50_concurrent_remember_calls_run_the_loader_once(ds: DataStore) -> None:
    calls = 0
    gate = asyncio.Event()

    async def loader() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await gate.wait()
        return {"v": 1}

    tasks = [asyncio.ensure_future(ds.cache.remember("k", loader, ttl=60)) for _ in range(50)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*tasks) == [{"v": 1}] * 50
    assert calls == 1
    assert ds.stats().cache_loader_calls == 1


async def test_remember_hit_does_not_call_the_loader(ds: DataStore) -> None:
    async def loader() -> Profile:
        return Profile(name="ann")

    await ds.cache.remember("p", loader, ttl=60, model=Profile)

    async def boom() -> Profile:
        raise AssertionError("loader called on a hit")

    assert await ds.cache.remember("p", boom, ttl=60, model=Profile) == Profile(name="ann")
    assert ds.stats().cache_l1_hits == 1


async def test_none_results_are_cached_for_negative_ttl(ds: DataStore, clock: Clock) -> None:
    calls = 0

    async def loader() -> None:
        nonlocal calls
        calls += 1

    assert await ds.cache.remember("n", loader, ttl=60, negative_ttl=5) is None
    assert await ds.cache.remember("n", loader, ttl=60, negative_ttl=5) is None
    assert calls == 1
    clock.now += 6
    await ds.cache.remember("n", loader, ttl=60, negative_ttl=5)
    assert calls == 2


async def test_stale_value_is_served_while_one_refresh_runs(ds: DataStore, clock: Clock) -> None:
    version = 0
    refreshed = asyncio.Event()

    async def loader() -> int:
        nonlocal version
        version += 1
        if version > 1:
            refreshed.set()
        return version

    assert await ds.cache.remember("s", loader, ttl=10, stale_ttl=60) == 1
    clock.now += 11
    assert await ds.cache.remember("s", loader, ttl=10, stale_ttl=60) == 1  # stale
    await refreshed.wait()
    await _settled()
    assert await ds.cache.remember("s", loader, ttl=10, stale_ttl=60) == 2
    stats = ds.stats()
    assert (stats.cache_stale_served, stats.cache_refreshes, version) == (1, 1, 2)


async def test_failing_refresh_keeps_the_stale_value(ds: DataStore, clock: Clock) -> None:
    failed = asyncio.Event()

    async def good() -> str:
        return "old"

    async def bad() -> str:
        failed.set()
        raise ConnectionError("upstream down")

    await ds.cache.remember("s", good, ttl=10, stale_ttl=60)
    clock.now += 11
    assert await ds.cache.remember("s", bad, ttl=10, stale_ttl=60) == "old"
    await failed.wait()
    await _settled()
    assert await ds.cache.remember("s", bad, ttl=10, stale_ttl=60) == "old"
    assert ds.stats().errors >= 1


async def test_refresh_ahead_refreshes_a_hit_near_the_end_of_its_life(
    ds: DataStore, clock: Clock
) -> None:
    version = 0
    refreshed = asyncio.Event()

    async def loader() -> int:
        nonlocal version
        version += 1
        if version == 2:
            refreshed.set()
        return version

    await ds.cache.remember("r", loader, ttl=50, refresh_ahead=0.2)
    clock.now += 30
    assert await ds.cache.remember("r", loader, ttl=50, refresh_ahead=0.2) == 1
    assert version == 1  # in the first 80 % of its life: no refresh
    clock.now += 15
    assert await ds.cache.remember("r", loader, ttl=50, refresh_ahead=0.2) == 1
    await refreshed.wait()
    await _settled()
    assert await ds.cache.remember("r", loader, ttl=50, refresh_ahead=0.2) == 2
    assert ds.stats().cache_refreshes == 1


async def test_expensive_values_outlive_the_process_in_the_durable_table(
    tmp_path: Path,
) -> None:
    cfg = Config(database_url=f"sqlite:///{tmp_path / 'd.db'}")
    async with DataStore(cfg) as first:
        await first.migrate()
        await first.cache.set("report", {"total": 3}, ttl=3600, cost=Cost.EXPENSIVE)
        await first.cache.set("cheap", 1, cost=Cost.CHEAP)
    async with DataStore(cfg) as second:
        assert await second.cache.get("report") == {"total": 3}
        assert await second.cache.get("cheap") is None
        assert second.stats().cache_l3_hits == 1


async def test_purge_removes_expired_rows(ds: DataStore, clock: Clock) -> None:
    await ds.cache.set("old", 1, ttl=5, cost=Cost.EXPENSIVE)
    await ds.cache.set("new", 2, ttl=500, cost=Cost.EXPENSIVE)
    clock.now += 10
    assert await ds.cache.purge() == 1


async def test_incr_and_decr_count(ds: DataStore) -> None:
    assert await ds.cache.incr("c") == 1
    assert await ds.cache.incr("c", by=5) == 6
    assert await ds.cache.decr("c") == 5
    assert await ds.cache.get("c") == 5


async def test_lock_excludes_a_second_holder_until_released(ds: DataStore) -> None:
    async with ds.cache.lock("job", ttl=10, wait=1):
        with pytest.raises(LockTimeoutError) as caught:
            async with ds.cache.lock("job", ttl=10, wait=0):
                pass
        assert caught.value.key == "job"
    async with ds.cache.lock("job", ttl=10, wait=0):
        pass


async def test_an_expired_lock_is_not_released_by_its_old_holder(
    ds: DataStore, clock: Clock
) -> None:
    first = ds.cache.lock("job", ttl=5, wait=0)
    await first.acquire()
    clock.now += 6
    second = ds.cache.lock("job", ttl=5, wait=0)
    await second.acquire()
    assert await first.release() is False
    with pytest.raises(LockTimeoutError):
        await ds.cache.lock("job", ttl=5, wait=0).acquire()


async def test_fixed_window_rate_limit_is_exact_under_concurrency(ds: DataStore) -> None:
    results = await asyncio.gather(*(ds.cache.rate_limit("login", 30, 60) for _ in range(100)))
    assert sum(r.allowed for r in results) == 30
    assert min(r.remaining for r in results) == 0
    assert ds.stats().cache_rate_limited == 70


async def test_sliding_window_rate_limit_frees_calls_as_they_age(
    ds: DataStore, clock: Clock
) -> None:
    assert (await ds.cache.rate_limit("k", 2, 10, sliding=True)).allowed
    clock.now += 6
    assert (await ds.cache.rate_limit("k", 2, 10, sliding=True)).allowed
    denied = await ds.cache.rate_limit("k", 2, 10, sliding=True)
    assert not denied.allowed and denied.reset_after == pytest.approx(4)
    clock.now += 5
    assert (await ds.cache.rate_limit("k", 2, 10, sliding=True)).allowed


async def test_cached_decorator_uses_the_key_template(ds: DataStore) -> None:
    calls: list[int] = []

    @ds.cache.cached(ttl=60, key="user:{user_id}")
    async def load_user(user_id: int) -> Profile:
        calls.append(user_id)
        return Profile(name=f"u{user_id}")

    assert await load_user(1) == Profile(name="u1")
    assert await load_user(user_id=1) == Profile(name="u1")
    assert calls == [1]
    assert await ds.cache.get("user:1") == {"name": "u1", "tags": []}


async def test_cached_decorator_default_key_depends_on_the_arguments(ds: DataStore) -> None:
    calls: list[tuple[int, int]] = []

    @ds.cache.cached(ttl=60)
    async def add(a: int, b: int = 2) -> int:
        calls.append((a, b))
        return a + b

    assert [await add(1), await add(1, 2), await add(2)] == [3, 3, 4]
    assert calls == [(1, 2), (2, 2)]


async def test_cached_refuses_a_sync_function(ds: DataStore) -> None:
    with pytest.raises(InvalidValueError):

        @ds.cache.cached(ttl=1)
        def f() -> int:
            return 1


async def test_value_over_max_value_bytes_is_refused_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    cfg = Config(database_url=f"sqlite:///{tmp_path / 's.db'}", max_value_bytes=1000)
    async with DataStore(cfg) as ds:
        await ds.migrate()
        noise = bytes(range(256)) * 8  # incompressible-ish, 2 kB
        with pytest.raises(ValueTooLargeError) as caught:
            await ds.cache.set("big", noise, cost=Cost.EXPENSIVE)
        assert caught.value.limit == 1000
        ds.cache.clear_memory()
        assert await ds.cache.get("big") is None


async def test_compressible_values_are_stored_compressed_and_read_back(tmp_path: Path) -> None:
    cfg = Config(database_url=f"sqlite:///{tmp_path / 'z.db'}", max_value_bytes=100_000)
    async with DataStore(cfg) as ds:
        await ds.migrate()
        value = {"text": "abc" * 200_000}  # 600 kB of JSON, far over the limit raw
        await ds.cache.set("z", value, cost=Cost.EXPENSIVE)
        ds.cache.clear_memory()
        assert await ds.cache.get("z") == value


async def test_observer_sees_each_cache_operation(tmp_path: Path) -> None:
    seen: list[tuple[str, str, str | None]] = []

    class Recorder:
        def on_operation(
            self,
            op: str,
            schema: str,
            seconds: float,
            error: BaseException | None,
            tier: str | None,
        ) -> None:
            seen.append((op, schema, tier))

    cfg = Config(database_url=f"sqlite:///{tmp_path / 'o.db'}", observer=Recorder())
    async with DataStore(cfg) as ds:
        await ds.migrate()
        users = ds.cache.namespace("users", version="v2")
        await users.set("k", 1)
        await users.get("k")
        await ds.cache.get("missing")
    assert seen == [
        ("cache.set", "users:v2", None),
        ("cache.get", "users:v2", "l1"),
        ("cache.get", "", None),
    ]


async def test_migrate_creates_the_cache_table_once_and_reports_no_drift(ds: DataStore) -> None:
    report = await ds.migrate()
    assert (report.applied, report.drift, report.refused) == ([], [], [])
    assert "_strata_cache" in ds.metadata.tables


async def test_the_cache_refuses_use_before_connect() -> None:
    ds = DataStore(Config(database_url="sqlite:///:memory:"))
    with pytest.raises(LifecycleError):
        await ds.cache.get("k")


async def _settled() -> None:
    """Let background refresh tasks that were woken finish their last step."""
    for _ in range(10):
        await asyncio.sleep(0)

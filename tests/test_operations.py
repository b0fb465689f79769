"""The operation template: one Observer call per public operation, errors counted and
typed, hooks after a commit that cannot leave a cache stale. Embedded stack (L1 + SQLite)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from strata import Config, DataStore, Field, Q, Schema, SchemaHooks, errors
from strata.observability import COUNTER_NAMES, Counters, Stats

ROOT = Path(__file__).resolve().parent.parent


class Item(BaseModel):
    id: str = Field(primary_key=True)
    level: int = 1
    name: str = ""


class Other(BaseModel):
    id: str = Field(primary_key=True)
    level: int = 1


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, BaseException | None, str | None]] = []

    def on_operation(
        self,
        op: str,
        schema: str,
        seconds: float,
        error: BaseException | None,
        tier: str | None,
    ) -> None:
        assert seconds >= 0
        self.calls.append((op, schema, error, tier))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def ds(tmp_path: Path, recorder: Recorder) -> AsyncIterator[DataStore]:
    config = Config(database_url=f"sqlite:///{tmp_path / 'ops.db'}", observer=recorder)
    async with DataStore(config) as store:
        store.register(Schema(name="items", model=Item))
        store.register(Schema(name="others", model=Other))
        await store.migrate()
        yield store


async def test_observer_receives_one_call_per_public_operation(
    ds: DataStore, recorder: Recorder
) -> None:
    await ds.set(Item, Item(id="a"))
    await ds.set_many("items", [Item(id="b"), Item(id="c")])
    await ds.get(Item, "a")
    await ds.get_many(Item, ["a", "b"])
    await ds.exists(Item, "c")
    await ds.search(Item, Q().filter(level=1))
    await ds.search_cached(Item)
    await ds.count(Item)
    await ds.invalidate(Item, "a")
    await ds.get(Item, "a")
    await ds.invalidate_all(Item)
    await ds.warm_cache(Item)
    await ds.flush_dirty()
    await ds.delete(Item, "c")
    await ds.delete_many(Item, ["b"])
    async with ds.tx() as tx:
        await tx.set(Item, Item(id="t"))
        await tx.get(Item, "t")
        await tx.get_many(Item, ["t"])
        await tx.search(Item)
        await tx.delete(Item, "t")
    assert [(op, schema, tier) for op, schema, _, tier in recorder.calls] == [
        ("set", "items", None),
        ("set_many", "items", None),
        ("get", "items", "l1"),
        ("get_many", "items", "l1"),
        ("exists", "items", "l1"),
        ("search", "items", "l3"),
        ("search_cached", "items", "l3"),
        ("count", "items", "l3"),
        ("invalidate", "items", None),
        ("get", "items", "l3"),
        ("invalidate_all", "items", None),
        ("warm_cache", "items", None),
        ("flush_dirty", "", None),
        ("delete", "items", None),
        ("delete_many", "items", None),
        ("tx.set", "items", None),
        ("tx.get", "items", "l3"),
        ("tx.get_many", "items", "l3"),
        ("tx.search", "items", "l3"),
        ("tx.delete", "items", None),
        ("tx", "", None),
    ]
    assert all(error is None for _, _, error, _ in recorder.calls)


async def test_observer_sees_the_error_an_operation_raised(
    ds: DataStore, recorder: Recorder
) -> None:
    with pytest.raises(errors.NotFoundError) as missing:
        await ds.get(Item, "nope")
    with pytest.raises(errors.SchemaNotRegisteredError) as unknown:
        await ds.set("nobody", {"id": "x"})
    assert recorder.calls == [
        ("get", "items", missing.value, None),
        ("set", "nobody", unknown.value, None),
    ]


async def test_observer_is_called_for_an_operation_refused_after_close(
    tmp_path: Path, recorder: Recorder
) -> None:
    config = Config(database_url=f"sqlite:///{tmp_path / 'c.db'}", observer=recorder)
    async with DataStore(config) as ds:
        ds.register(Schema(name="items", model=Item))
    with pytest.raises(errors.LifecycleError) as closed:
        await ds.get(Item, "a")
    assert recorder.calls == [("get", "items", closed.value, None)]


async def test_stats_errors_counts_raised_errors_but_not_misses(ds: DataStore) -> None:
    with pytest.raises(errors.NotFoundError):
        await ds.get(Item, "nope")
    assert ds.stats().errors == 0
    assert ds.stats().misses == 1
    with pytest.raises(errors.InvalidValueError):
        await ds.set(Item, {"id": "x", "level": "not a number"})
    assert ds.stats().errors == 1


# -- no builtin exception escapes ---------------------------------------------------------


@pytest.mark.parametrize("op", ["get", "exists", "delete", "invalidate"])
async def test_a_surrogate_in_an_id_is_an_invalid_value(ds: DataStore, op: str) -> None:
    with pytest.raises(errors.InvalidValueError):
        await getattr(ds, op)(Item, "\ud800")


async def test_a_surrogate_in_an_id_being_set_is_an_invalid_value(ds: DataStore) -> None:
    with pytest.raises(errors.InvalidValueError):
        await ds.set(Item, Item(id="\ud800"))
    assert await ds.count(Item) == 0


async def test_a_surrogate_in_a_text_value_is_an_invalid_value_and_nothing_is_stored(
    ds: DataStore,
) -> None:
    with pytest.raises(errors.InvalidValueError, match="name"):
        await ds.set(Item, Item(id="a", name="\udcff"))
    assert not await ds.exists(Item, "a")
    assert await ds.count(Item) == 0


async def test_model_construct_with_a_wrong_type_in_set_many_stores_nothing(
    ds: DataStore,
) -> None:
    bad = Item.model_construct(id="c", level="zz", name="")
    with pytest.raises(errors.InvalidValueError, match="c"):
        await ds.set_many(Item, [Item(id="b"), bad])
    assert await ds.get_many(Item, ["b", "c"]) == {}
    assert await ds.count(Item) == 0


async def test_a_surrogate_in_a_transaction_is_an_invalid_value(ds: DataStore) -> None:
    with pytest.raises(errors.InvalidValueError):
        async with ds.tx() as tx:
            await tx.set(Item, Item(id="a", name="\udcff"))
    assert await ds.count(Item) == 0


# -- hooks after a commit ------------------------------------------------------------------


def _failing_after_set(value: Item | Other) -> None:
    if value.level >= 2:
        raise RuntimeError(f"after_set failed for {value}")


async def test_an_after_set_hook_that_raises_after_commit_leaves_no_cache_stale(
    tmp_path: Path,
) -> None:
    config = Config(database_url=f"sqlite:///{tmp_path / 'h.db'}")
    hooks = SchemaHooks(after_set=_failing_after_set)
    async with DataStore(config) as ds:
        ds.register(Schema(name="items", model=Item, hooks=hooks))
        ds.register(Schema(name="others", model=Other, hooks=hooks))
        await ds.migrate()
        async with ds.tx() as tx:
            await tx.set(Item, Item(id="a", level=1))
            await tx.set(Other, Other(id="a", level=1))
        assert (await ds.get(Item, "a")).level == 1  # both in L1 now
        assert (await ds.get(Other, "a")).level == 1
        with contextlib.suppress(RuntimeError):  # raised before the fix; what counts is below
            async with ds.tx() as tx:
                await tx.set(Item, Item(id="a", level=2))
                await tx.set(Other, Other(id="a", level=2))
        assert (await ds.get(Item, "a", force_l3=True)).level == 2  # committed
        assert (await ds.get(Item, "a")).level == 2  # and no cache says otherwise
        assert (await ds.get(Other, "a")).level == 2


async def test_an_after_set_hook_failing_after_commit_is_counted_and_reported(
    tmp_path: Path,
) -> None:
    reported: list[BaseException] = []
    config = Config(database_url=f"sqlite:///{tmp_path / 'h.db'}", on_error=reported.append)
    async with DataStore(config) as ds:
        ds.register(
            Schema(name="items", model=Item, hooks=SchemaHooks(after_set=_failing_after_set))
        )
        await ds.migrate()
        async with ds.tx() as tx:  # the commit stands: the block does not raise
            await tx.set(Item, Item(id="a", level=2))
        assert ds.stats().errors == 1
        assert [type(e) for e in reported] == [RuntimeError]
        assert (await ds.get(Item, "a")).level == 2


async def test_an_async_on_evict_hook_error_is_counted_like_a_sync_one(tmp_path: Path) -> None:
    reported: list[BaseException] = []

    async def on_evict(id: Any, value: BaseModel) -> None:
        raise RuntimeError(f"evict {id}")

    from strata import MemPolicy

    config = Config(database_url=f"sqlite:///{tmp_path / 'e.db'}", on_error=reported.append)
    async with DataStore(config) as ds:
        ds.register(
            Schema(
                name="items",
                model=Item,
                l1=MemPolicy(max_entries=1),
                hooks=SchemaHooks(on_evict=on_evict),
            )
        )
        await ds.migrate()
        await ds.set(Item, Item(id="a"))
        await ds.set(Item, Item(id="b"))  # evicts a: the hook's task fails
        await ds.flush_dirty()
        await ds.close()  # the runner's tasks end with the DataStore
        assert ds.stats().errors == 1
        assert [str(e) for e in reported] == ["evict a"]


# -- the one list of counters --------------------------------------------------------------


def test_counters_are_derived_from_stats() -> None:
    counters = Counters()
    assert set(Counters.__slots__) == set(COUNTER_NAMES)
    assert set(Counters.__annotations__) == set(COUNTER_NAMES)
    assert set(COUNTER_NAMES) <= set(Stats.__dataclass_fields__)
    assert all(getattr(counters, name) == 0 for name in COUNTER_NAMES)


def test_every_counter_is_bumped_somewhere() -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "strata").rglob("*.py"))
    never = [n for n in COUNTER_NAMES if not re.search(rf"\.{n} \+=", source)]
    assert never == []

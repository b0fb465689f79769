"""Model-based test of the coherence contract (issue 11; DESIGN.md section 4).

Seeded random sequences of get / get_many / set / set_many / delete / search / invalidate
(and ``update`` when ``DataStore.update`` exists), with races and injected faults, run over
two DataStores sharing PostgreSQL and a private Redis, for every write mode with L1 on and
off; every read is checked against the reference model in ``integration/_model.py``.

Knobs (environment):
    STRATA_MODEL_BUDGET   seconds of random sequences per configuration (default 3: CI);
                          at least one sequence always runs. Minutes find more.
    STRATA_MODEL_SEED     the first seed (default: derived from the configuration's name,
                          so CI is reproducible); ``random`` picks one.
    STRATA_MODEL_LENGTH   operations per sequence (default 30).
    STRATA_MODEL_SHRINK   seconds spent shrinking a failing sequence (default 120).
    STRATA_MODEL_ALL      set: also walk the configurations known broken (``KNOWN_BROKEN``).
    STRATA_MODEL_FAULTS   comma-separated faults to inject (default: all of ``FAULTS``;
                          ``none``: no faults), e.g. to chase one combination.

A failure prints the seed, the broken promise, the last steps, and the shrunk sequence,
ready to paste into a regression test: ``await _replay(config, ops, faults, settings)``, or a
focused test written from it (as the ones at the end of this file). ``make model`` runs the
walk for minutes.

Known bugs the walk found are kept out of it until fixed (``SKIP_OPS``, ``WRITERS``); each
has an ``xfail(strict=False)`` regression test below that names it. Remove the exclusion
with the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from integration._model import (
    FAULTS,
    CheckFailed,
    Faults,
    Model,
    ModelConfig,
    Op,
    generate,
    run_sequence,
    shrink,
)
from integration.procs.models import Item
from strata import Config, DataStore, MemPolicy, Q, Schema, WriteMode
from strata.errors import NotFoundError

HAS_UPDATE = hasattr(DataStore, "update")
MODES = (WriteMode.WRITE_THROUGH, WriteMode.WRITE_THROUGH_L1_ASYNC, WriteMode.WRITE_BEHIND)


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _config(
    mode: WriteMode,
    l1: bool,
    faults: tuple[str, ...] = FAULTS,
    skip: tuple[str, ...] = (),
    writers: tuple[str, ...] = ("A", "B"),
    monotonic_in_faults: bool = True,
) -> ModelConfig:
    return ModelConfig(mode, l1, faults, HAS_UPDATE, skip, writers, monotonic_in_faults)


# Known bugs (issue 11) left out of the main walk until they are fixed; each has a
# regression test below, made from the walk's shrunk sequence.
SKIP_OPS = {
    # update is refused in write-behind by design (no L3 row to check the version of)
    WriteMode.WRITE_BEHIND: ("update",),
}
WRITERS: dict[WriteMode, tuple[str, ...]] = {}
# Modes whose non-writing reader is only checked for phantoms during a fault (none now).
LAX_IN_FAULTS: set[WriteMode] = set()
# Write-behind (the Redis journal): walked with both instances writing and searching. With
# faults it still finds about one failure per minute, mostly not reproducible from the
# shrunk sequence (timing: a heal while a peer's rescue or flush is in flight). Run, shown
# as xfail, without the long shrink (STRATA_MODEL_SHRINK still applies when set), only when
# STRATA_MODEL_ALL is set (``make model`` sets it): a failing walk costs a minute, and the
# regression tests (here and in test_wb_walk_regressions.py) pin the bugs it found in CI.
KNOWN_BROKEN = {WriteMode.WRITE_BEHIND}
_BROKEN = pytest.mark.xfail(
    strict=False,
    reason="issue 11/12: write-behind breaks read-your-writes and convergence (see the report)",
)
CONFIGS = [
    pytest.param(
        _config(
            mode,
            l1,
            skip=SKIP_OPS.get(mode, ()),
            writers=WRITERS.get(mode, ("A", "B")),
            monotonic_in_faults=mode not in LAX_IN_FAULTS,
        ),
        marks=[_BROKEN] if mode in KNOWN_BROKEN else [],
        id=f"{mode.value}-{'l1' if l1 else 'no-l1'}",
    )
    for mode in MODES
    if mode not in KNOWN_BROKEN or os.environ.get("STRATA_MODEL_ALL")
    for l1 in (True, False)
]


@pytest.fixture
async def faults(pg_url: str) -> AsyncIterator[Faults]:
    async with Faults.open(pg_url) as f:
        yield f


def _first_seed(config: ModelConfig) -> int:
    raw = os.environ.get("STRATA_MODEL_SEED")
    if raw == "random":
        return random.randrange(2**32)
    if raw:
        return int(raw)
    return zlib.crc32(config.name.encode())


@pytest.mark.parametrize("config", CONFIGS)
async def test_every_read_keeps_the_coherence_contract(
    config: ModelConfig, faults: Faults, settings: dict[str, Any]
) -> None:
    budget = _env_float("STRATA_MODEL_BUDGET", 3.0)
    length = int(_env_float("STRATA_MODEL_LENGTH", 30))
    seed = _first_seed(config)
    chosen = os.environ.get("STRATA_MODEL_FAULTS")
    if chosen is not None:
        picked = tuple(f for f in chosen.split(",") if f in FAULTS)
        config = dataclasses.replace(config, faults=picked)
    deadline = time.monotonic() + budget
    runs = 0
    while runs == 0 or time.monotonic() < deadline:
        ops = generate(seed + runs, config, length=length)
        failure = await run_sequence(config, ops, faults, settings, tag=f"s{seed + runs}")
        if failure is not None:
            await _report(config, seed + runs, ops, failure, faults, settings)
        runs += 1


async def _report(
    config: ModelConfig,
    seed: int,
    ops: list[Op],
    failure: Any,
    faults: Faults,
    settings: dict[str, Any],
) -> None:
    tries = 0

    async def fails(candidate: list[Op]) -> Any:
        nonlocal tries
        tries += 1
        return await run_sequence(config, candidate, faults, settings, tag=f"x{seed}-{tries}")

    default = 0.0 if config.mode in KNOWN_BROKEN else 120.0
    shrunk = await shrink(
        ops, fails, failure.kind, budget=_env_float("STRATA_MODEL_SHRINK", default)
    )
    again = await fails(shrunk)
    report = (
        f"{config.name}: seed {seed} (STRATA_MODEL_SEED={seed} STRATA_MODEL_BUDGET=0)\n"
        f"{failure}\n\nshrunk to {len(shrunk)} of {len(ops)} steps ({tries} runs):\n"
        f"ops = [\n" + "".join(f"    {op!r},\n" for op in shrunk) + "]\n"
        f"the shrunk sequence, run again: {again}"
    )
    print(report, flush=True)  # with -s, visible as soon as it is known
    pytest.fail(report)


# ------------------------------------------------------- the model itself rejects bad reads


def _item(key: str, n: int) -> Any:
    return Item(id=key, name=Model.token(key, n), level=n)


def test_the_model_refuses_a_read_older_than_the_readers_own_write() -> None:
    model = Model()
    model.ack("A", "k", model.begin("k"))
    n2 = model.begin("k")
    model.ack("A", "k", n2)
    with pytest.raises(CheckFailed) as raised:
        model.observe("A", "k", _item("k", 1), "get")
    assert raised.value.kind == "monotonic"
    assert model.observe("A", "k", _item("k", n2), "get") == n2


def test_the_model_refuses_going_back_in_the_other_instance_and_allows_lagging() -> None:
    model = Model()
    n1 = model.begin("k")
    model.ack("A", "k", n1)
    assert model.observe("B", "k", None, "get") == 0  # not arrived yet: allowed
    assert model.observe("B", "k", _item("k", n1), "get") == n1
    with pytest.raises(CheckFailed) as raised:
        model.observe("B", "k", None, "get")
    assert raised.value.kind == "monotonic"


def test_the_model_settles_a_maybe_applied_write_once_and_for_all() -> None:
    model = Model()
    n1 = model.begin("k")
    model.ack("A", "k", n1)
    n2 = model.begin("k")
    model.maybe("k", n2)
    assert model.observe("B", "k", _item("k", n1), "get") == n1
    model.resolve("k", n1)  # both instances converged on w1: w2 was not applied
    with pytest.raises(CheckFailed) as raised:
        model.observe("A", "k", _item("k", n2), "get")
    assert raised.value.kind == "stale-after-heal"


def test_the_model_refuses_phantoms_and_values_of_other_keys() -> None:
    model = Model()
    model.ack("A", "k", model.begin("k"))
    for bad in (_item("j", 1), _item("k", 7)):
        with pytest.raises(CheckFailed) as raised:
            model.observe("B", "k", bad, "get")
        assert raised.value.kind == "phantom"


# ----------------------------------------------- regression tests from shrunk sequences


async def _replay(config: ModelConfig, ops: list[Op], faults: Faults, settings: Any) -> None:
    failure = await run_sequence(config, ops, faults, settings, tag="regression")
    assert failure is None, str(failure)


WB = WriteMode.WRITE_BEHIND


@contextlib.asynccontextmanager
async def _two_write_behind_stores(
    settings: dict[str, Any], *, l1: bool = True
) -> AsyncIterator[list[DataStore]]:
    """Two write-behind stores that flush only when told to (``flush_dirty``)."""
    config = Config(
        **settings, write_behind_flush_interval=3600, write_behind_flush_threshold=10**6
    )
    stores = [DataStore(config.with_(instance_id=f"wb-{n}")) for n in "AB"]
    for ds in stores:
        ds.register(Schema(name="items", model=Item, write_mode=WB, l1=MemPolicy() if l1 else None))
    async with stores[0], stores[1]:
        await stores[0].migrate()
        yield stores


async def _read(ds: DataStore, id: str, *, force_l3: bool = False) -> str | None:
    try:
        return (await ds.get(Item, id, force_l3=force_l3)).name
    except NotFoundError:
        return None


async def test_write_behind_delete_is_not_undone_by_another_instances_older_set(
    settings: dict[str, Any],
) -> None:
    # Shrunk by the walk (seed 1002, write_behind-l1, no fault), which also finds the set/set
    # form of it: [Op('set_many', 'B', ('k2', 'k3', 'k1')), Op('delete', 'A', ('k1',))]
    async with _two_write_behind_stores(settings) as (a, b):
        await b.set(Item, Item(id="k1", name="old"))
        await a.delete(Item, "k1")  # the newer write of k1, acknowledged
        await a.flush_dirty(timeout=20)
        await b.flush_dirty(timeout=20)  # B's older set reaches L3 second
        assert await _read(a, "k1", force_l3=True) is None
        await a.invalidate(Item, "k1")
        assert [await _read(ds, "k1") for ds in (a, b)] == [None, None]


async def test_write_behind_search_returns_the_writers_queued_write(
    settings: dict[str, Any],
) -> None:
    # Shrunk by the walk (every write_behind configuration, with or without faults):
    # [Op('set', 'A', ('k0',)), Op('search', 'A')]
    async with _two_write_behind_stores(settings) as (a, _):
        await a.set(Item, Item(id="k0", name="old"))
        await a.flush_dirty(timeout=20)
        await a.set(Item, Item(id="k0", name="new"))  # queued, not in L3 yet
        assert [r.name for r in await a.search(Item, Q().filter(id="k0"))] == ["new"]
        assert await _read(a, "k0") == "new"


async def test_write_behind_invalidate_of_a_queued_write_does_not_bring_back_the_old_row(
    settings: dict[str, Any],
) -> None:
    # Shrunk by the walk (write_behind-l1, no fault, seed 3242209172):
    # [Op('set_many', 'A', ('k3', 'k0', 'k2', 'k1')), Op('set', 'A', ('k2',)),
    #  Op('get', 'A', ('k1',)), Op('get_many', 'A', ('k0', 'k3', 'k1', 'k2')),
    #  Op('invalidate', 'B', ('k2',))] then both instances read k2 after the flush
    async with _two_write_behind_stores(settings) as (a, b):
        await a.set(Item, Item(id="k2", name="old"))
        await a.flush_dirty(timeout=20)
        await a.set(Item, Item(id="k2", name="new"))  # acknowledged, queued
        await b.invalidate(Item, "k2")
        await _read(b, "k2")  # may still be old here: the write is not in L3 yet
        await a.flush_dirty(timeout=20)
        assert [await _read(ds, "k2") for ds in (a, b)] == ["new", "new"]


async def test_write_behind_get_does_not_prefer_an_older_queued_write_of_its_own(
    settings: dict[str, Any],
) -> None:
    # Shrunk by the walk (write_behind-no-l1, no fault, seed 1001):
    # [Op('set_many', 'B', ('k0', 'k2', 'k1', 'k3')), Op('set_many', 'A', ('k1', 'k2', 'k0', 'k3')),
    #  Op('get_many', 'B', ('k0', 'k2')), Op('get', 'B', ('k0',))]
    # Without L1 B reads the newer write at once. (With L1, B's own older copy is served
    # until A's invalidation arrives, as the contract allows: see test_wb_coherence.py.)
    async with _two_write_behind_stores(settings, l1=False) as (a, b):
        await b.set(Item, Item(id="k0", name="old"))  # queued in B
        await a.set(Item, Item(id="k0", name="new"))  # the newer write, queued in A
        assert (await b.get_many(Item, ["k0"]))["k0"].name == "new"
        assert await _read(b, "k0") == "new"


async def test_write_behind_reader_does_not_go_back_in_time_when_redis_dies(
    faults: Faults, settings: dict[str, Any]
) -> None:
    ops = [  # shrunk by the walk (write_behind-no-l1, redis_kill, seed 1002)
        Op(kind="set_many", inst="A", keys=("k1", "k2")),
        Op(kind="set_many", inst="A", keys=("k0", "k3")),
        Op(kind="get", inst="B", keys=("k2",)),
        Op(kind="fault", inst="A", keys=("redis_kill",)),
        Op(kind="get_many", inst="B", keys=("k2", "k3", "k1")),
    ]
    await _replay(_config(WB, False, writers=("A",)), ops, faults, settings)


async def test_write_behind_search_and_count_see_the_writers_rows_not_flushed_yet(
    settings: dict[str, Any],
) -> None:
    # Shrunk by the walk (write_behind-l1, seed 3242209164, no fault):
    # [Op('set_many', 'A', ('k0', 'k3', 'k1', 'k2')), Op('search', 'A')] read k0 absent.
    # A search reads L3, so the writer's own journaled writes of the schema go there first.
    async with _two_write_behind_stores(settings) as (a, b):
        await a.set_many(Item, [Item(id=f"n{i}", name="new", level=7) for i in range(3)])
        await a.delete(Item, "n1")
        await b.set(Item, Item(id="other", name="b's", level=7))  # B's: may lag, as documented
        found = await a.search(Item, Q().filter(level=7).order_by("id"))
        assert [r.id for r in found if r.id != "other"] == ["n0", "n2"]
        assert await a.count(Item, Q().filter(id__in=["n0", "n1", "n2"])) == 2
        assert [r.id for r in await a.search_cached(Item, Q().filter(id="n2"))] == ["n2"]
        assert await a.search(Item, Q().filter(id="n0").force_l3()) != []  # in L3 now

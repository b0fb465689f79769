"""Shrunk sequences of the write-behind model walk (integration/test_model_based.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from integration._model import Faults, Op
from integration.test_model_based import WB, _config, _replay


@pytest.fixture
async def faults(pg_url: str) -> AsyncIterator[Faults]:
    async with Faults.open(pg_url) as f:
        yield f


async def test_a_write_queued_in_process_after_redis_died_wins_over_the_held_journaled_one(
    faults: Faults, settings: dict[str, Any]
) -> None:
    # write_behind-no-l1, seed 2327812124: A read its older journaled write after the heal
    ops = [
        Op(kind="set", inst="A", keys=("k0",)),
        Op(kind="fault", inst="A", keys=("redis_kill",)),
        Op(kind="set", inst="A", keys=("k0",)),
    ]
    await _replay(_config(WB, False, writers=("A",)), ops, faults, settings)


async def test_a_reader_does_not_read_the_older_row_when_redis_comes_back_empty(
    faults: Faults, settings: dict[str, Any]
) -> None:
    # write_behind-l1, seed 3242209166
    ops = [
        Op(kind="set", inst="A", keys=("k1",)),
        Op(kind="get", inst="A", keys=("k3",)),
        Op(kind="get_many", inst="B", keys=("k1", "k3", "k2")),
        Op(kind="fault", inst="A", keys=("redis_kill",)),
    ]
    await _replay(_config(WB, True, writers=("A",)), ops, faults, settings)


async def test_a_journaled_delete_wins_over_an_older_write_queued_while_redis_was_away(
    faults: Faults, settings: dict[str, Any]
) -> None:
    # write_behind-no-l1, seed 2327812126: after the second heal A read its older queued
    # write (w1), not its own journaled delete (d2)
    ops = [
        Op(kind="fault", inst="A", keys=("redis_kill",)),
        Op(kind="race", inst="B", keys=("k3",)),
        Op(kind="heal", inst="A", keys=()),
        Op(kind="delete", inst="A", keys=("k3",)),
        Op(kind="fault", inst="A", keys=("redis_kill",)),
    ]
    await _replay(_config(WB, False, writers=("A",)), ops, faults, settings)


async def test_a_reader_refuses_the_older_row_after_redis_lost_its_data_twice(
    faults: Faults, settings: dict[str, Any]
) -> None:
    # write_behind-l1, seed 3242209181: after the second loss B read k2 absent (L3 had no
    # row yet) instead of waiting for A's rescue of w1
    ops = [
        Op(kind="fault", inst="A", keys=("redis_kill",)),
        Op(kind="heal", inst="A", keys=()),
        Op(kind="get", inst="B", keys=("k1",)),
        Op(kind="set", inst="A", keys=("k2",)),
        Op(kind="heal", inst="A", keys=()),
        Op(kind="fault", inst="A", keys=("redis_kill",)),
        Op(kind="race", inst="B", keys=("k1",)),
    ]
    await _replay(_config(WB, True, writers=("A",)), ops, faults, settings)


async def test_a_reader_does_not_serve_its_own_held_write_older_than_one_it_read(
    faults: Faults, settings: dict[str, Any]
) -> None:
    # write_behind-no-l1, two writers, seed 2327812173: B read A's newer write of k3 (the
    # heal converged on it), then, Redis killed, served its own older held write of k3
    ops = [
        Op(kind="set", inst="B", keys=("k3",)),
        Op(kind="set", inst="A", keys=("k3",)),
        Op(kind="heal", inst="A", keys=()),
        Op(kind="fault", inst="A", keys=("redis_kill",)),
        Op(kind="get", inst="B", keys=("k3",)),
    ]
    await _replay(_config(WB, False), ops, faults, settings)


async def test_the_writer_reads_its_rescued_write_not_an_older_fill_that_raced_the_rescue(
    faults: Faults, settings: dict[str, Any]
) -> None:
    # write_behind-l1, two writers, seed 3242209181: Redis came back empty, B filled L2 from
    # the older L3 row while A's rescue of w2 landed (it dropped the key: the fill took the
    # hole), and A read w1 afterwards. The rescue now writes its value into L2.
    ops = [
        Op(kind="set", inst="A", keys=("k2",)),
        Op(kind="search", inst="B", keys=()),
        Op(kind="race", inst="B", keys=("k2",)),
        Op(kind="fault", inst="A", keys=("redis_kill",)),
        Op(kind="get_many", inst="A", keys=("k1", "k0", "k2")),
    ]
    await _replay(_config(WB, True), ops, faults, settings)


async def test_a_delete_queued_while_redis_was_away_wins_over_anothers_held_older_set(
    faults: Faults, settings: dict[str, Any]
) -> None:
    # write_behind-l1, two writers, seed 3242209171: B's journaled set of k3, Redis
    # killed, A's delete of k3 queued in process; after the heal A read B's older set
    ops = [
        Op(kind="set_many", inst="B", keys=("k0", "k3", "k2", "k1")),
        Op(kind="fault", inst="A", keys=("redis_kill",)),
        Op(kind="delete", inst="A", keys=("k3",)),
    ]
    await _replay(_config(WB, True), ops, faults, settings)

"""Tests of shop.py, written with the strata.testing plugin's fixtures only."""

from __future__ import annotations

import pytest
from shop import Cart, add_item, item_count

from strata import DataStore
from strata.testing import eventually, where
from strata.testing.plugin import StoreFactory


async def test_items_add_up(strata_store: DataStore) -> None:
    await add_item(strata_store, "c1", "ann", "apple", 2)
    await add_item(strata_store, "c1", "ann", "apple")
    assert await item_count(strata_store, "c1") == 3
    assert await where(strata_store, Cart, "c1") == {"l1", "l2", "l3"}


async def test_a_bad_count_writes_nothing(strata_store: DataStore) -> None:
    with pytest.raises(ValueError, match="positive"):
        await add_item(strata_store, "c1", "ann", "apple", 0)
    assert await where(strata_store, Cart, "c1") == frozenset()


async def test_a_second_instance_sees_the_first_ones_writes(
    strata_make_store: StoreFactory,
) -> None:
    web, worker = await strata_make_store(), await strata_make_store()
    await add_item(web, "c1", "ann", "apple")
    assert await item_count(worker, "c1") == 1  # worker's L1 now holds the cart
    await add_item(web, "c1", "ann", "pear")

    async def worker_sees_two() -> bool:  # once the invalidation reaches the worker's L1
        return await item_count(worker, "c1") == 2

    await eventually(worker_sees_two)

"""The pytest plugin of ``strata.testing``, registered through the ``pytest11`` entry point.

Fixtures (each test gets fresh ones; everything is closed after the test):

    strata_schemas     the schemas a store registers: override it in your conftest.py
    strata_redis       a MemoryRedis shared by the stores of one test
    strata_make_store  ``await strata_make_store(*schemas, l2=True, **config)``: a connected,
                       migrated embedded store (SQLite in ``tmp_path``, L1, and an in-memory
                       L2 on ``strata_redis``); two of them behave as two instances
    strata_store       ``await strata_make_store()``: one store with ``strata_schemas``

The async fixtures need pytest-asyncio (any mode; in strict mode mark the tests
``@pytest.mark.asyncio``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from strata.testing.memory_l2 import MemoryL2, MemoryRedis

if TYPE_CHECKING:  # strata itself is imported when a fixture runs, not when pytest starts
    from strata.datastore import DataStore
    from strata.schema import Schema

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the fixtures then explain what is missing
    pytest_asyncio = None  # type: ignore[assignment]

__all__ = ["StoreFactory"]


class StoreFactory(Protocol):
    """``strata_make_store``: a connected, migrated store registering ``schemas`` (default:
    ``strata_schemas``); ``l2=False`` leaves the in-memory L2 out; ``settings`` are Config
    fields."""

    def __call__(
        self, *schemas: Schema, l2: bool = True, **settings: Any
    ) -> Awaitable[DataStore]: ...


@pytest.fixture
def strata_schemas() -> list[Schema]:
    """The ``strata.Schema`` list ``strata_store`` registers; override in conftest.py."""
    return []


@pytest.fixture
def strata_redis() -> MemoryRedis:
    return MemoryRedis()


async def _stores(
    directory: Path, schemas: list[Schema], redis: MemoryRedis
) -> AsyncIterator[StoreFactory]:
    from strata.datastore import DataStore
    from strata.testing import embedded_config

    made: list[DataStore] = []

    async def make(*own: Schema, l2: bool = True, **settings: Any) -> DataStore:
        ds = DataStore(embedded_config(directory, **settings), l2=MemoryL2(redis) if l2 else None)
        for schema in own or schemas:
            ds.register(schema)
        made.append(ds)
        await ds.connect()
        await ds.migrate()
        return ds

    try:
        yield make
    finally:
        for ds in reversed(made):
            await ds.close()


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def strata_make_store(
        tmp_path: Path, strata_schemas: list[Schema], strata_redis: MemoryRedis
    ) -> AsyncIterator[StoreFactory]:
        async for make in _stores(tmp_path, strata_schemas, strata_redis):
            yield make

    @pytest_asyncio.fixture
    async def strata_store(strata_make_store: StoreFactory) -> DataStore:
        return await strata_make_store()

else:  # pragma: no cover

    @pytest.fixture
    def strata_make_store() -> Any:
        pytest.fail("strata's store fixtures need pytest-asyncio: pip install pytest-asyncio")

    @pytest.fixture
    def strata_store() -> Any:
        pytest.fail("strata's store fixtures need pytest-asyncio: pip install pytest-asyncio")

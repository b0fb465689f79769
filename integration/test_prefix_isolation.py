"""Two apps sharing one Redis never see each other (DESIGN.md section 4, promise 4).

App A (its own SQLite file) and app B (PostgreSQL, two instances B and B2) use the same
schema name and ids on one Redis, under different ``key_prefix``es. B2's message to B is the
barrier: one channel delivers in order, so when B has applied B2's message it has also seen
anything A published before it on that channel.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from integration.procs import eventually
from integration.procs.models import ITEMS, Item
from strata import Config, DataStore

WAIT = 10.0


def _config(settings: dict[str, Any], prefix: str, **over: Any) -> Config:
    kwargs = {k: v for k, v in settings.items() if k != "invalidation_channel"}
    kwargs["key_prefix"] = prefix
    kwargs.update(over)
    return Config(**kwargs)


async def _open(config: Config) -> DataStore:
    ds = DataStore(config)
    ds.register(ITEMS)
    await ds.__aenter__()
    await ds.migrate()
    return ds


class Apps:
    def __init__(self, a: DataStore, b: DataStore, b2: DataStore) -> None:
        self.a, self.b, self.b2 = a, b, b2

    async def barrier(self) -> None:
        """B applies a message from B2 (its own app), published after A's last one."""
        before = self.b.stats().invalidations_received
        await self.b2.invalidate(Item, "barrier")
        await eventually(lambda: self.b.stats().invalidations_received > before, timeout=WAIT)

    async def b_serves_from_l1(self, id: str) -> Item:
        """B's very next read of ``id`` is an L1 hit: nothing dropped its entry."""
        hits = self.b.stats().l1_hits
        value = await self.b.get(Item, id)
        assert self.b.stats().l1_hits == hits + 1, "B's L1 entry was dropped"
        return value

    async def b_holds_in_l1(self, id: str) -> Item:
        value = await self.b.get(Item, id)
        hits = self.b.stats().l1_hits
        assert await self.b.get(Item, id) == value
        assert self.b.stats().l1_hits == hits + 1, "B's L1 does not hold the value"
        return value


async def _apps(
    settings: dict[str, Any], tmp_path: Path, a_prefix: str, b_prefix: str, **over: Any
) -> AsyncIterator[Apps]:
    sqlite = f"sqlite:///{tmp_path / 'app_a.db'}"
    a = await _open(_config(settings, a_prefix, database_url=sqlite, database_schema=None, **over))
    b = await _open(_config(settings, b_prefix, **over))
    b2 = await _open(_config(settings, b_prefix, **over))
    try:
        yield Apps(a, b, b2)
    finally:
        for ds in (b2, b, a):
            await ds.__aexit__(None, None, None)


@pytest.fixture
async def apps(settings: dict[str, Any], redis_prefix: str, tmp_path: Path) -> AsyncIterator[Apps]:
    """Both apps on the default invalidation channel."""
    async for apps in _apps(settings, tmp_path, f"{redis_prefix}a", f"{redis_prefix}b"):
        yield apps


@pytest.fixture
async def shared_channel_apps(
    settings: dict[str, Any], redis_prefix: str, tmp_path: Path
) -> AsyncIterator[Apps]:
    """Both apps configured onto the same channel: the messages must still be told apart."""
    channel = f"{redis_prefix}:shared-invalidation"
    async for apps in _apps(
        settings,
        tmp_path,
        f"{redis_prefix}a",
        f"{redis_prefix}b",
        invalidation_channel=channel,
    ):
        yield apps


async def test_other_app_deleting_the_same_id_leaves_our_l1_entry(apps: Apps) -> None:
    await apps.a.set(Item, Item(id="p1", name="a's"))
    await apps.b.set(Item, Item(id="p1", name="b's"))
    await apps.b_holds_in_l1("p1")
    await apps.a.delete(Item, "p1")
    await apps.barrier()
    assert await apps.b_serves_from_l1("p1") == Item(id="p1", name="b's")


async def test_other_app_invalidate_all_leaves_our_l1_full(apps: Apps) -> None:
    await apps.b.set(Item, Item(id="p1", name="b's"))
    await apps.b_holds_in_l1("p1")
    await apps.a.invalidate_all(Item)
    await apps.barrier()
    assert await apps.b_serves_from_l1("p1") == Item(id="p1", name="b's")


async def test_messages_on_a_shared_channel_are_scoped_by_prefix(
    shared_channel_apps: Apps,
) -> None:
    apps = shared_channel_apps
    await apps.a.set(Item, Item(id="p1", name="a's"))
    await apps.b.set(Item, Item(id="p1", name="b's"))
    await apps.b_holds_in_l1("p1")
    await apps.a.delete(Item, "p1")
    await apps.a.invalidate_all(Item)
    await apps.barrier()
    assert await apps.b_serves_from_l1("p1") == Item(id="p1", name="b's")


@pytest.mark.parametrize("glob", ["*", "?", "[x]"])
async def test_glob_characters_in_a_prefix_match_only_themselves(
    settings: dict[str, Any],
    redis_prefix: str,
    redis_client: aioredis.Redis,
    tmp_path: Path,
    glob: str,
) -> None:
    """``invalidate_all`` under prefix ``X*`` must not delete the keys of prefix ``Xx``."""
    base = f"{redis_prefix}X"
    async for apps in _apps(settings, tmp_path, base + glob, base + "x"):
        await apps.b.set(Item, Item(id="p1", name="b's"))
        keys = [k async for k in redis_client.scan_iter(match=f"{base}x:items:*")]
        assert keys, "B's value is not in Redis"
        await apps.a.invalidate_all(Item)
        for key in keys:
            assert await redis_client.exists(key), f"A's invalidate_all deleted B's {key!r}"

"""Write-behind coherence (issue 11, issue 12): reads never prefer an older write to a newer
acknowledged one, whether the newer write waits in this process's queue, in the Redis
journal, or in another instance's.

    L3 row ◄── older than ── a journaled write (Redis, every instance sees it)
                             a queued write (this process: no Redis, or Redis was away)

``search`` / ``search_cached`` overlay the newer write on the L3 row (a delete removes it),
``warm_cache`` and every fill leave such rows out of L1 and L2, a key ``invalidate`` dropped
from L2 is read from the journal, and ``force_l3`` reads what PostgreSQL holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from integration._servers import FaultProxy, PrivateRedis
from integration.procs.models import Item
from strata import Config, DataStore, MemPolicy, Q, Schema, WriteMode
from strata.errors import NotFoundError, TierUnavailableError
from strata.testing import eventually

WB = WriteMode.WRITE_BEHIND
WAIT = 20.0
NEVER = 3600.0  # a flush interval no test outlives


def _schema(mode: WriteMode = WB, *, l1: bool = True) -> Schema:
    return Schema(name="items", model=Item, write_mode=mode, l1=MemPolicy() if l1 else None)


@contextlib.asynccontextmanager
async def _store(
    settings: dict[str, Any],
    name: str,
    *,
    mode: WriteMode = WB,
    l1: bool = True,
    migrate: bool = True,
    **overrides: Any,
) -> AsyncIterator[DataStore]:
    config = Config(
        **{
            **settings,
            "write_behind_flush_interval": NEVER,
            "write_behind_flush_threshold": 10**6,
            "instance_id": f"wb-{name}",
            **overrides,
        }
    )
    ds = DataStore(config)
    ds.register(_schema(mode, l1=l1))
    async with ds:
        if migrate:
            await ds.migrate()
        yield ds


async def _read(ds: DataStore, id: str, *, force_l3: bool = False) -> str | None:
    try:
        return (await ds.get(Item, id, force_l3=force_l3)).name
    except NotFoundError:
        return None


def _no_redis(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k != "redis_url"}


# ------------------------------------------------------------ search and warm_cache


async def test_search_cached_returns_the_journaled_write_not_the_older_row(
    settings: dict[str, Any],
) -> None:
    async with _store(settings, "A") as a, _store(settings, "B", migrate=False) as b:
        await a.set(Item, Item(id="k", name="old"))
        await a.flush_dirty(timeout=WAIT)
        await a.set(Item, Item(id="k", name="new"))
        await a.set(Item, Item(id="gone", name="x"))
        await a.flush_dirty(timeout=WAIT)
        await a.delete(Item, "gone")  # journaled; L3 still has the row
        for ds in (a, b):
            q = Q().filter(id__in=["k", "gone"])
            assert [r.name for r in await ds.search_cached(Item, q)] == ["new"]
            assert [r.name for r in await ds.search(Item, q)] == ["new"]


async def test_search_without_redis_returns_the_queued_write_and_keeps_it_in_l1(
    settings: dict[str, Any],
) -> None:
    async with _store(_no_redis(settings), "A") as a:
        await a.set(Item, Item(id="k", name="old"))
        await a.flush_dirty(timeout=WAIT)
        await a.set(Item, Item(id="k", name="new"))  # in the in-process queue
        a._core.routes["items"].l1.clear()  # evicted: the L3 row must not fill it
        assert [r.name for r in await a.search(Item, Q().filter(id="k"))] == ["new"]
        await a.warm_cache(Item)
        assert await _read(a, "k") == "new"
        await a.flush_dirty(timeout=WAIT)
        assert await _read(a, "k") == "new"


async def test_warm_cache_of_another_instance_never_caches_a_row_older_than_the_journal(
    settings: dict[str, Any],
) -> None:
    async with _store(settings, "A") as a, _store(settings, "B", migrate=False) as b:
        await a.set(Item, Item(id="k", name="old"))
        await a.flush_dirty(timeout=WAIT)
        await a.set(Item, Item(id="k", name="new"))
        await a.invalidate(Item, "k")  # L2 no longer holds the journaled value
        assert await b.warm_cache(Item) == 1
        assert [await _read(ds, "k") for ds in (a, b)] == ["new", "new"]
        await a.flush_dirty(timeout=WAIT)
        assert [await _read(ds, "k") for ds in (a, b)] == ["new", "new"]


# ------------------------------------------------------------ invalidate


async def test_a_reader_of_a_journaled_key_invalidate_dropped_reads_the_journal(
    settings: dict[str, Any],
) -> None:
    async with _store(settings, "A") as a, _store(settings, "B", migrate=False) as b:
        await a.set(Item, Item(id="k", name="old"))
        await a.flush_dirty(timeout=WAIT)
        await a.set(Item, Item(id="k", name="new"))
        await b.invalidate(Item, "k")
        assert [await _read(ds, "k") for ds in (b, a)] == ["new", "new"]
        assert (await b.get_many(Item, ["k"]))["k"].name == "new"
        assert await b.exists(Item, "k")
        await a.delete(Item, "k")
        await a.invalidate(Item, "k")
        assert await _read(b, "k") is None  # the journaled delete, not the L3 row
        assert await b.get_many(Item, ["k"]) == {}


# ------------------------------------------------------------ one version space


async def test_with_l1_another_instances_newer_write_is_read_once_its_invalidation_arrived(
    settings: dict[str, Any],
) -> None:
    async with _store(settings, "A") as a, _store(settings, "B", migrate=False) as b:
        await b.set(Item, Item(id="k", name="old"))  # in B's L1
        received = b.stats().invalidations_received
        await a.set(Item, Item(id="k", name="new"))

        async def arrived() -> bool:
            return b.stats().invalidations_received > received

        await eventually(arrived, timeout=WAIT)
        assert await _read(b, "k") == "new"
        assert (await b.get_many(Item, ["k"]))["k"].name == "new"


async def test_a_write_queued_in_process_while_redis_was_away_loses_to_a_newer_one(
    settings: dict[str, Any],
) -> None:
    """B's write went to its in-process queue (its Redis link was cut); A then wrote a newer
    one through the journal: B reads A's, and PostgreSQL ends with A's."""
    async with FaultProxy.for_url(settings["redis_url"]) as proxy:
        b_settings = {**settings, "redis_url": proxy.url_for(settings["redis_url"])}
        async with (
            _store(settings, "A", l1=False) as a,
            _store(b_settings, "B", l1=False, migrate=False, redis_timeout=0.25) as b,
        ):
            await proxy.cut()
            await b.set(Item, Item(id="k", name="old"))  # queued in B
            await proxy.restore()

            async def b_sees_redis() -> bool:
                core: Any = b._core
                await core.l2.ping()
                return bool(core.l2.available)

            await eventually(b_sees_redis, timeout=WAIT)
            await a.set(Item, Item(id="k", name="new"))
            assert await _read(b, "k") == "new"
            assert (await b.get_many(Item, ["k"]))["k"].name == "new"
            await b.flush_dirty(timeout=WAIT)
            await a.flush_dirty(timeout=WAIT)
            assert await _read(a, "k", force_l3=True) == "new"


async def test_a_delete_from_the_in_process_queue_never_removes_a_newer_row(
    settings: dict[str, Any],
) -> None:
    """The queue's deletes are version-checked like the journal's."""
    plain = _no_redis(settings)
    async with (
        _store(plain, "A") as a,
        _store(plain, "B", mode=WriteMode.WRITE_THROUGH, migrate=False) as b,
    ):
        await b.set(Item, Item(id="k", name="old"))
        await a.delete(Item, "k")  # queued in A
        await b.set(Item, Item(id="k", name="newer"))  # in L3, newer than the delete
        await a.flush_dirty(timeout=WAIT)
        assert await _read(b, "k", force_l3=True) == "newer"


# ------------------------------------------------------------ force_l3


async def test_force_l3_reads_what_postgresql_holds_while_a_write_is_journaled(
    settings: dict[str, Any],
) -> None:
    """Documented: ``force_l3=True`` (and ``Q().force_l3()``) is what PostgreSQL holds."""
    async with _store(settings, "A") as a:
        await a.set(Item, Item(id="k", name="old"))
        await a.flush_dirty(timeout=WAIT)
        await a.set(Item, Item(id="k", name="new"))
        assert await _read(a, "k", force_l3=True) == "old"
        assert [r.name for r in await a.search(Item, Q().filter(id="k").force_l3())] == ["old"]
        assert await _read(a, "k") == "new"
        await a.flush_dirty(timeout=WAIT)
        assert await _read(a, "k", force_l3=True) == "new"


# ------------------------------------------------------------ close is bounded


async def test_close_with_postgresql_down_leaves_journaled_writes_for_a_peer(
    settings: dict[str, Any],
) -> None:
    async with FaultProxy.for_url(settings["database_url"]) as pg:
        cut = {**settings, "database_url": pg.url_for(settings["database_url"])}
        async with _store(settings, "setup"):
            pass  # the table exists
        ds = DataStore(
            Config(**cut, instance_id="wb-dying", close_timeout=0.5, write_behind_claim_after=1)
        )
        ds.register(_schema())
        await ds.connect()
        await ds.set(Item, Item(id="k", name="acked"))
        await pg.cut()
        async with asyncio.timeout(WAIT):  # write_behind_wait_timeout (30 s) is not the bound
            await ds.close()
    async with _store(settings, "peer", migrate=False, write_behind_claim_after=1) as peer:

        async def in_postgresql() -> bool:
            return await _read(peer, "k", force_l3=True) == "acked"

        await eventually(in_postgresql, timeout=WAIT)


async def test_close_without_redis_waits_close_timeout_then_names_the_writes_it_left(
    settings: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    async with FaultProxy.for_url(settings["database_url"]) as pg:
        plain = _no_redis({**settings, "database_url": pg.url_for(settings["database_url"])})
        ds = DataStore(Config(**plain, close_timeout=0.5, write_behind_max_retry=10**6))
        ds.register(_schema())
        await ds.connect()
        await ds.migrate()
        await ds.set_many(Item, [Item(id=f"k{n}", name="acked") for n in range(3)])
        await pg.cut()
        with caplog.at_level(logging.ERROR, logger="strata"):
            async with asyncio.timeout(WAIT):
                await ds.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("3 write-behind writes" in m and "not" in m for m in errors), errors


# ------------------------------------------------------------ Redis dies with writes journaled


async def test_redis_lost_with_writes_only_journaled_the_writer_rescues_them_to_postgresql(
    settings: dict[str, Any],
) -> None:
    """Redis is killed (and comes back empty) while a write is only in the journal: the
    writer, still alive, writes it to PostgreSQL itself; the other instance, which read it,
    never reads the older row meanwhile (it may raise while it cannot know better)."""
    async with PrivateRedis() as redis:
        fast = {**settings, "redis_url": redis.url, "redis_timeout": 0.25}
        quick = {"write_behind_claim_after": 1, "heartbeat_interval": 0.5}
        async with (
            _store(fast, "A", **quick) as a,
            _store(fast, "B", migrate=False, **quick) as b,
            _store(_no_redis(settings), "PG", mode=WriteMode.WRITE_THROUGH, migrate=False) as pg,
        ):
            await a.set(Item, Item(id="k", name="old"))
            await a.flush_dirty(timeout=WAIT)
            await a.set(Item, Item(id="k", name="new"))  # journaled only
            assert await _read(b, "k") == "new"
            await redis.stop()
            seen: set[str | None] = set()

            async def rescued() -> bool:
                for ds in (a, b):
                    with contextlib.suppress(TierUnavailableError):
                        seen.add(await _read(ds, "k"))
                return await _read(pg, "k", force_l3=True) == "new"

            await eventually(rescued, timeout=WAIT)
            assert "old" not in seen, seen
            await redis.start()  # empty: the journal is gone

            async def both_new() -> bool:
                got = []
                for ds in (a, b):
                    with contextlib.suppress(TierUnavailableError):
                        got.append(await _read(ds, "k"))
                seen.update(got)
                return got == ["new", "new"]

            await eventually(both_new, timeout=WAIT)
            assert "old" not in seen, seen


async def test_redis_back_empty_before_the_rescue_another_instance_never_reads_the_older_row(
    settings: dict[str, Any],
) -> None:
    """Redis restarts without its data and the writer's rescue cannot reach PostgreSQL yet
    (its link is cut): the other instance, which read the newer write from Redis, refuses
    the older row PostgreSQL still holds instead of serving it, and the writer keeps
    reading its own write; once the rescue lands both read it."""
    async with (
        PrivateRedis() as redis,
        FaultProxy.for_url(settings["database_url"]) as pg_a,
    ):
        # 1 s: a killed Redis refuses at once, and a shorter timeout under load can trip A's
        # circuit, sending its writes to the in-process queue instead of the journal
        fast = {**settings, "redis_url": redis.url, "redis_timeout": 1.0}
        quick = {"heartbeat_interval": 0.5}
        a_url = {**fast, "database_url": pg_a.url_for(settings["database_url"])}
        async with (
            _store(a_url, "A", **quick) as a,
            # B without L1: its L1 copy of the newer write (not stale) could outlive the
            # restart until its bus notices; the point is what it makes of PostgreSQL's row.
            _store(fast, "B", migrate=False, l1=False, **quick) as b,
            _store(_no_redis(settings), "PG", mode=WriteMode.WRITE_THROUGH, migrate=False) as pg,
        ):
            # The older row goes to PostgreSQL without the journal: a flush_dirty() of A would
            # wake its flusher, which may then take the newer writes to PostgreSQL as well.
            await pg.set(Item, Item(id="k-new", name="old"))
            for name in ("new", "newer"):  # over an older row; a key PostgreSQL never had
                key = f"k-{name}"
                await a.set(Item, Item(id=key, name=name))  # journaled only
                assert await _read(b, key) == name
            await pg_a.cut()  # the writer's rescue cannot land
            await redis.stop()
            await redis.start()  # empty: the journal and the L2 values are gone
            for key, want in (("k-new", "new"), ("k-newer", "newer")):
                assert await _read(a, key) == want  # read your writes
                with pytest.raises(TierUnavailableError):
                    await _read(b, key)  # not "old", not absent
            await pg_a.restore()

            async def both() -> bool:
                got = []
                for ds in (a, b):
                    for key in ("k-new", "k-newer"):
                        with contextlib.suppress(TierUnavailableError):
                            got.append(await _read(ds, key))
                return got == ["new", "newer", "new", "newer"]

            await eventually(both, timeout=WAIT)

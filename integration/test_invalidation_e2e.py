"""Two DataStores in two processes, one Redis and one PostgreSQL: L1 stays coherent.

Instance A lives in the test process; instance B is a child process
(``integration/procs/peer.py``) driven line by line. B first loads a value into its own L1
(checked: its next read is an L1 hit), then A changes it; once B has received A's
invalidation (``Stats.invalidations_received``), B must read the new state. Without the
invalidation bus, B would keep serving its L1 copy for the whole L1 TTL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from integration.procs import Peer, PeerError, eventually
from integration.procs.models import ITEMS, Item
from strata import Config, DataStore

WAIT = 10.0  # generous: a timeout means the message never arrived


@pytest.fixture
async def a(settings: dict[str, Any]) -> AsyncIterator[DataStore]:
    ds = DataStore(Config(**settings))
    ds.register(ITEMS)
    async with ds:
        await ds.migrate()
        yield ds


@pytest.fixture
async def b(a: DataStore, settings: dict[str, Any]) -> AsyncIterator[Peer]:
    async with Peer(settings) as peer:
        await subscribed_both_ways(a, peer)
        yield peer


async def subscribed_both_ways(a: DataStore, b: Peer) -> None:
    """Wait until each instance hears the other. A subscription confirmed late clears L1
    (messages may have been missed), so tests start filling L1 only after this."""

    async def heard(publish: Any, received: Any) -> None:
        for _ in range(int(WAIT / 0.5)):
            await publish()
            try:
                await eventually(received, timeout=0.5)
                return
            except AssertionError:
                continue  # published before the subscription was confirmed: lost
        raise AssertionError("the instances never heard each other")

    async def b_received() -> bool:
        return (await b.stats())["invalidations_received"] > 0

    await heard(lambda: a.invalidate(Item, "handshake"), b_received)
    await heard(
        lambda: b.call("invalidate", id="handshake"),
        lambda: a.stats().invalidations_received > 0,
    )


async def received_by(b: Peer, count: int) -> None:
    """Wait until B has applied ``count`` invalidations in all."""

    async def reached() -> bool:
        return (await b.stats())["invalidations_received"] >= count

    await eventually(reached, timeout=WAIT)


async def load_into_peer_l1(b: Peer, id: str) -> dict[str, Any]:
    """B reads ``id`` and holds it in its L1 (its next read is an L1 hit)."""
    value = await b.get(id)
    before = await b.stats()
    assert await b.get(id) == value
    after = await b.stats()
    assert after["l1_hits"] == before["l1_hits"] + 1, "B's L1 does not hold the value"
    return value


async def test_write_in_one_process_is_seen_by_the_other_after_invalidation(
    a: DataStore, b: Peer
) -> None:
    await a.set(Item, Item(id="k", name="old"))
    assert (await load_into_peer_l1(b, "k"))["name"] == "old"
    received = (await b.stats())["invalidations_received"]

    await a.set(Item, Item(id="k", name="new"))
    await received_by(b, received + 1)

    assert (await b.get("k"))["name"] == "new"


async def test_writer_l1_stays_warm_after_its_own_write(a: DataStore, b: Peer) -> None:
    await a.set(Item, Item(id="k", name="v1"))
    await a.get(Item, "k")
    b_received = (await b.stats())["invalidations_received"]
    a_received = a.stats().invalidations_received

    await a.set(Item, Item(id="k", name="v2"))
    # Fence: B got A's message, then B publishes one; once A has applied B's message, A's
    # own (published earlier on the same channel) has reached A too.
    await received_by(b, b_received + 1)
    await b.call("invalidate", id="fence")
    await eventually(lambda: a.stats().invalidations_received > a_received, timeout=WAIT)
    before = a.stats()
    got = await a.get(Item, "k")
    after = a.stats()

    assert got.name == "v2"
    assert after.l1_hits == before.l1_hits + 1
    assert after.l2_hits == before.l2_hits
    assert after.l3_queries == before.l3_queries


async def test_delete_in_one_process_reaches_the_other(a: DataStore, b: Peer) -> None:
    await a.set(Item, Item(id="k", name="doomed"))
    await load_into_peer_l1(b, "k")
    received = (await b.stats())["invalidations_received"]

    await a.delete(Item, "k")
    await received_by(b, received + 1)

    with pytest.raises(PeerError) as caught:
        await b.get("k")
    assert caught.value.error == "NotFoundError"


async def test_invalidate_all_in_one_process_reaches_the_other(
    a: DataStore, b: Peer, pg_conn: asyncpg.Connection
) -> None:
    ids = ["k1", "k2", "k3"]
    await a.set_many(Item, [Item(id=i, name="cached") for i in ids])
    for i in ids:
        await load_into_peer_l1(b, i)
    # Changed behind Strata's back: only dropping the caches can reveal it.
    await pg_conn.execute("UPDATE items SET name = 'in-db'")
    received = (await b.stats())["invalidations_received"]

    await a.invalidate_all(Item)
    await received_by(b, received + 1)

    assert (await b.stats())["l1_entries"] == 0
    got = await b.call("get_many", ids=ids)
    assert {i: v["name"] for i, v in got.items()} == dict.fromkeys(ids, "in-db")


async def test_set_many_invalidates_every_key_in_the_other_process_with_one_message(
    a: DataStore, b: Peer
) -> None:
    ids = [f"k{n}" for n in range(5)]
    await a.set_many(Item, [Item(id=i, name="v1") for i in ids])
    for i in ids:
        await load_into_peer_l1(b, i)
    received = (await b.stats())["invalidations_received"]
    sent = a.stats().invalidations_sent

    await a.set_many(Item, [Item(id=i, name="v2") for i in ids])
    await a.invalidate(Item, "fence")  # one more message: when it is in, the batch's are too
    await received_by(b, received + 2)

    assert (await b.stats())["invalidations_received"] == received + 2
    assert a.stats().invalidations_sent == sent + 2
    got = await b.call("get_many", ids=ids)
    assert {i: v["name"] for i, v in got.items()} == dict.fromkeys(ids, "v2")


async def test_other_process_counts_the_invalidations_it_receives(a: DataStore, b: Peer) -> None:
    received = (await b.stats())["invalidations_received"]

    await a.set(Item, Item(id="k", name="x"))
    await a.delete(Item, "k")
    await a.invalidate_all(Item)

    await received_by(b, received + 3)
    assert (await b.stats())["invalidations_received"] == received + 3


async def test_write_is_seen_by_a_process_that_declares_the_model_in_its_own_module(
    a: DataStore, settings: dict[str, Any]
) -> None:
    # Two applications sharing one database and one Redis each declare the `items` model
    # (same schema name, fields and types) in a module of their own.
    async with Peer(settings, module="integration.procs.other_service") as other:
        await subscribed_both_ways(a, other)
        await a.set(Item, Item(id="k", name="old"))
        await load_into_peer_l1(other, "k")
        received = (await other.stats())["invalidations_received"]

        await a.set(Item, Item(id="k", name="new"))
        await received_by(other, received + 1)

        assert (await other.get("k"))["name"] == "new"

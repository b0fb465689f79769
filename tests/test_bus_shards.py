"""Sharded pub/sub on a cluster: a message on one shard is read at once, however long
another shard stays silent (strata/invalidation/shards.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from strata.invalidation.shards import ShardReaders


class Node:
    """A node's pubsub: get_message(timeout=None) blocks until something is delivered."""

    def __init__(self) -> None:
        self.delivered: asyncio.Queue[dict[str, Any] | Exception] = asyncio.Queue()

    async def get_message(self, ignore_subscribe_messages: bool, timeout: float | None) -> Any:
        assert timeout is None
        item = await self.delivered.get()
        if isinstance(item, Exception):
            raise item
        return item


class Cluster:
    def __init__(self, *nodes: Node) -> None:
        self.node_pubsub_mapping = {f"n{i}": n for i, n in enumerate(nodes)}


async def test_a_message_on_one_shard_is_read_while_another_shard_is_silent() -> None:
    silent, busy = Node(), Node()
    readers = ShardReaders()
    cluster = Cluster(silent, busy)
    assert await readers.get(cluster, 0) is None
    for n in range(50):
        busy.delivered.put_nowait({"type": "smessage", "data": n})
    # An hour's wait would be spent on the silent node if shards were polled in turn.
    got = [await readers.get(cluster, 3600) for _ in range(50)]
    assert [m["data"] for m in got if m] == list(range(50))
    await readers.close()


async def test_a_node_that_joins_later_is_read_too_and_a_failed_one_raises() -> None:
    first = Node()
    cluster = Cluster(first)
    readers = ShardReaders()
    assert await readers.get(cluster, 0) is None
    later = Node()
    cluster.node_pubsub_mapping["n1"] = later
    later.delivered.put_nowait({"type": "smessage", "data": "late"})
    assert (await readers.get(cluster, 3600) or {})["data"] == "late"
    first.delivered.put_nowait(ConnectionError("node gone"))
    with pytest.raises(ConnectionError):
        await readers.get(cluster, 3600)
    await readers.close()

"""Reading sharded pub/sub from every node at once.

redis-py's ``ClusterPubSub.get_sharded_message(timeout=t)`` polls one node's connection
after another, each for up to ``t``: a message on one shard waits while the call blocks on
another, idle one. With channels on two shards (two schemas, or a schema and the keyed
cache) every invalidation was delayed by part of the bus's wait, seconds in all for a burst.
Here one reader task per node connection blocks on its own socket and hands what it reads
to one queue, so a message is seen as soon as any node delivers it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from strata.tasks import stop_tasks

__all__ = ["ShardReaders"]

_Item = tuple[dict[str, Any] | None, BaseException | None]


class ShardReaders:
    """One reader task per node pubsub of a cluster pubsub; ``get`` returns the next
    message from any of them, or raises what a reader failed with."""

    def __init__(self) -> None:
        self._inbox: asyncio.Queue[_Item] = asyncio.Queue()
        self._tasks: dict[int, tuple[Any, asyncio.Task[None]]] = {}

    async def get(self, pubsub: Any, timeout: float) -> dict[str, Any] | None:
        self._watch(pubsub)
        try:
            message, error = self._inbox.get_nowait()
        except asyncio.QueueEmpty:
            try:
                message, error = await asyncio.wait_for(self._inbox.get(), max(timeout, 0))
            except TimeoutError:
                return None
        if error is not None:
            raise error
        return message

    def _watch(self, pubsub: Any) -> None:
        """Start a reader for each node connection the cluster pubsub holds now (nodes
        join when a channel on a new shard is subscribed, or after a failover)."""
        nodes = list((getattr(pubsub, "node_pubsub_mapping", None) or {}).values())
        for node in nodes:
            known = self._tasks.get(id(node))
            if known is None or known[0] is not node or known[1].done():
                task = asyncio.get_running_loop().create_task(self._read(node))
                self._tasks[id(node)] = (node, task)
        live = {id(n) for n in nodes}
        for key in [k for k in self._tasks if k not in live]:
            self._tasks.pop(key)[1].cancel()

    async def _read(self, node: Any) -> None:
        try:
            while True:
                message = await node.get_message(ignore_subscribe_messages=False, timeout=None)
                if message is not None:
                    self._inbox.put_nowait((message, None))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the connection failed: the bus reconnects
            self._inbox.put_nowait((None, exc))

    async def close(self) -> None:
        tasks = [task for _, task in self._tasks.values()]
        self._tasks.clear()
        await stop_tasks(tasks)
        self._inbox = asyncio.Queue()

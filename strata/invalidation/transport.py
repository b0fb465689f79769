"""How the bus reaches Redis: one small ``Transport`` protocol, two implementations.

    PubSubTransport    SUBSCRIBE / PUBLISH on one channel (standalone, Sentinel)
    ShardedTransport   SSUBSCRIBE / SPUBLISH, one channel per schema (Redis Cluster)

``transport_for(client, ...)`` picks one. The subscription object a transport hands out is
opaque to the bus: it only passes it back. A test transport (in memory) implements the
same protocol.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol, cast

import redis.asyncio
from redis.asyncio.cluster import RedisCluster

from strata.config import hide_password
from strata.invalidation.shards import ShardReaders

__all__ = [
    "BusCarrier",
    "PubSubTransport",
    "ShardedTransport",
    "Transport",
    "describe_client",
    "transport_for",
]


class Transport(Protocol):
    """What the bus needs from its channel. ``pubsub()`` opens one subscription object;
    the others take it back. Errors are the driver's (RedisError, OSError, TimeoutError)."""

    @property
    def where(self) -> str: ...  # for log lines, password hidden
    def channel_for(self, schema: str) -> str: ...
    def channels(self) -> list[str]: ...
    def pubsub(self) -> Any: ...
    async def subscribe(self, pubsub: Any, channels: list[str]) -> None: ...
    async def unsubscribe(self, pubsub: Any, channels: list[str]) -> None: ...
    async def get_message(self, pubsub: Any, timeout: float) -> dict[str, Any] | None: ...
    async def close(self, pubsub: Any) -> None: ...
    async def publish(self, channel: str, payload: bytes) -> None: ...


class BusCarrier(Protocol):
    """An L2 tier that ``subscribes``: it hands the bus the transport to use (the Redis tier
    its pub/sub, ``strata.testing.MemoryL2`` its in-memory channels). ``schemas()`` names
    what the instance caches (a sharded transport subscribes one channel per schema)."""

    def transport(self, channel: str, schemas: Callable[[], Iterable[str]]) -> Transport: ...


# Sharded pub/sub (Redis Cluster) names its events with an "s"; the bus speaks plain names.
_SHARDED_KINDS: Final = {
    "smessage": "message",
    "ssubscribe": "subscribe",
    "sunsubscribe": "unsubscribe",
}


class PubSubTransport:
    """Classic pub/sub: every schema's invalidations on one channel."""

    def __init__(self, client: redis.asyncio.Redis | RedisCluster, channel: str) -> None:
        self.client = client
        self.channel = channel
        self._where = describe_client(client)

    @property
    def where(self) -> str:
        return self._where

    def channel_for(self, schema: str) -> str:
        return self.channel

    def channels(self) -> list[str]:
        return [self.channel]

    def pubsub(self) -> Any:
        return self.client.pubsub()

    async def subscribe(self, pubsub: Any, channels: list[str]) -> None:
        await pubsub.subscribe(*channels)

    async def unsubscribe(self, pubsub: Any, channels: list[str]) -> None:
        await pubsub.unsubscribe(*channels)

    async def get_message(self, pubsub: Any, timeout: float) -> dict[str, Any] | None:
        # A burst is mostly read from what the socket already delivered: then a blocking
        # read returns at once and spares redis-py's per-read timeout (the bus keeps its
        # own deadline over the whole stretch).
        wait = None if _buffered(pubsub) else timeout
        return cast("dict[str, Any] | None", await pubsub.get_message(timeout=wait))

    async def close(self, pubsub: Any) -> None:
        await pubsub.aclose()

    async def publish(self, channel: str, payload: bytes) -> None:
        await self.client.publish(channel, payload)


class ShardedTransport(PubSubTransport):
    """Sharded pub/sub on a Redis Cluster, SSUBSCRIBE / SPUBLISH, on one channel per schema,
    ``{channel}:{schema}`` (and ``{channel}:cache`` for the keyed cache): each channel
    lives on the shard its name hashes to, and an instance subscribes only to the schemas
    it has registered, so it hears only what it caches. Heartbeats go to every subscribed
    channel (each shard proves itself)."""

    def __init__(
        self,
        client: RedisCluster,
        channel: str,
        schemas: Callable[[], Iterable[str]] | None,
    ) -> None:
        super().__init__(client, channel)
        self.cluster = client
        self._schemas = schemas
        self._readers = ShardReaders()

    def channel_for(self, schema: str) -> str:
        # Schema names are identifiers; a name with a ':' is one of a family sharing the
        # channel of its first part (the keyed cache's "cache:<namespace>": one channel
        # for every namespace, created at any time, so never missing from a subscription).
        return f"{self.channel}:{schema.partition(':')[0]}"

    def channels(self) -> list[str]:
        if self._schemas is None:
            return [self.channel]
        names = sorted({self.channel_for(n) for n in self._schemas()})
        return names or [self.channel]

    async def subscribe(self, pubsub: Any, channels: list[str]) -> None:
        await pubsub.ssubscribe(*channels)

    async def unsubscribe(self, pubsub: Any, channels: list[str]) -> None:
        await pubsub.sunsubscribe(*channels)

    async def get_message(self, pubsub: Any, timeout: float) -> dict[str, Any] | None:
        # Every node read at once (redis-py's get_sharded_message polls them in turn).
        message = await self._readers.get(pubsub, timeout)
        if message is not None:
            kind: Any = message.get("type")
            kind = kind.decode() if isinstance(kind, bytes) else kind
            message = {**message, "type": _SHARDED_KINDS.get(kind, kind)}
        return message

    async def close(self, pubsub: Any) -> None:
        await self._readers.close()
        # One pubsub per node, each with its own connection.
        for node_pubsub in list(getattr(pubsub, "node_pubsub_mapping", {}).values()):
            with contextlib.suppress(Exception):
                await node_pubsub.aclose()
        await pubsub.aclose()

    async def publish(self, channel: str, payload: bytes) -> None:
        await self.cluster.spublish(channel, payload)


def _buffered(pubsub: Any) -> bool:
    """True when redis-py's (hiredis) parser holds unread reply bytes for ``pubsub``. Private
    attributes, read defensively: any other parser answers False (the ordinary read)."""
    reader = getattr(getattr(getattr(pubsub, "connection", None), "_parser", None), "_reader", None)
    has_data = getattr(reader, "has_data", None)
    return bool(has_data()) if callable(has_data) else False


def transport_for(
    client: redis.asyncio.Redis | RedisCluster,
    channel: str,
    schemas: Callable[[], Iterable[str]] | None = None,
) -> PubSubTransport:
    """Sharded pub/sub on a cluster (``schemas``: the names this instance caches), else
    classic pub/sub."""
    if isinstance(client, RedisCluster):
        return ShardedTransport(client, channel, schemas)
    return PubSubTransport(client, channel)


def describe_client(client: redis.asyncio.Redis | RedisCluster) -> str:
    """Where the client points, password hidden, for log lines."""
    if isinstance(client, RedisCluster):
        nodes = ",".join(f"{n.host}:{n.port}" for n in client.get_nodes()[:3])
        return f"cluster {nodes}"
    kwargs: Mapping[str, Any] = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}"
    user = kwargs.get("username") or ""
    password = kwargs.get("password")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = kwargs.get("host", "localhost")
    return hide_password(f"redis://{auth}{host}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}")

"""How the L2 tier reaches Redis: one server, a Sentinel-monitored master, or a Cluster.

    redis:// rediss:// unix://            redis.asyncio.Redis on one pool
    redis+sentinel://h:p,h:p/service/db   redis.asyncio.sentinel: the master the sentinels
                                          name; a connection asks them again after a failure,
                                          so a failover is followed by the next probe
    redis+cluster://h:p,h:p               redis.asyncio.cluster.RedisCluster: the slot map is
                                          discovered from the startup nodes and refreshed on
                                          MOVED / connection errors (failover)

Cluster key layout. Every key of one schema must live in one slot (scripts touch several of
them at once), so on a cluster the first two segments of a key become its hash tag:

    standalone / sentinel:  {key_prefix}:{schema}:{shape}:{id}    e.g. strata:players:1a2b:p1
    cluster:                {{key_prefix}:{schema}}:{shape}:{id}  e.g. {strata:players}:1a2b:p1

and likewise ``{strata:players}:gen`` and ``{strata:players}:1a2b:q:<gen>:<digest>``. A key
that already carries a hash tag (``{...}``) is left as it is.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.crc import key_slot

from strata.config import hide_password, parse_redis_url

__all__ = [
    "Connection",
    "by_slot",
    "connect_client",
    "glob_escape",
    "hash_tagged",
    "scan_unlink",
    "set_by_slot",
    "where_of",
]

_POOL_HEADROOM = 8
_SCAN_BATCH = 500
Script = Callable[[Any, Sequence[str], Sequence[bytes | int | str]], Awaitable[Any]]


_GLOB_SPECIALS = frozenset("*?[]\\")


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern (SCAN MATCH): ``X*`` matches only
    ``X*``, not ``Xx``. Key prefixes and ids may hold any of ``* ? [ ] \\``."""
    return "".join("\\" + c if c in _GLOB_SPECIALS else c for c in text)


def where_of(url: str) -> str:
    """``host:port`` (or the socket path) of a Redis URL, for log lines."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return parts.path
        if parts.hostname:
            return f"{parts.hostname}:{parts.port or 6379}"
    except ValueError:
        pass
    return hide_password(url)


def hash_tagged(key: str) -> str:
    """The cluster form of an L2 key or glob pattern (see the module doc)."""
    if "{" in key:
        return key
    first, sep, rest = key.partition(":")
    if not sep:
        return "{" + key + "}"
    second, sep, tail = rest.partition(":")
    return "{" + first + ":" + second + "}" + (":" + tail if sep else "")


def by_slot(keys: Sequence[str]) -> dict[int, list[int]]:
    """Positions of ``keys`` grouped by cluster slot (insertion ordered)."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key_slot(key.encode())].append(i)
    return groups


@dataclass
class Connection:
    """A connected client and what else must be closed with it."""

    kind: str  # "standalone" | "sentinel" | "cluster"
    client: Any  # aioredis.Redis | RedisCluster
    where: str
    extra: list[Any] = field(default_factory=list)  # sentinel clients

    @property
    def cluster(self) -> bool:
        return self.kind == "cluster"

    async def aclose(self) -> None:
        try:
            await self.client.aclose()
        finally:
            for other in self.extra:
                await other.aclose()

    async def ping(self) -> bool:
        """PING the server; on a cluster every primary of the client's slot map, so a
        failed-over master fails it and makes redis-py reload the map and ask the promoted
        one (a PING to the default node may answer while a shard is still down)."""
        if self.cluster:
            return bool(await self.client.ping(target_nodes=RedisCluster.PRIMARIES))
        return bool(await self.client.ping())

    async def disconnect_idle(self) -> None:
        """Drop idle sockets (they may be half-dead after an outage)."""
        if self.cluster:
            # A failed node may be dropped from the slot map by the next refresh, with its
            # sockets still open: close them while the node is still known.
            for node in self.client.get_nodes():
                await node.disconnect()
            return
        await self.client.connection_pool.disconnect(inuse_connections=False)


def connect_client(url: str, *, timeout: float, max_connections: int) -> Connection:
    """Build (not yet connect) the client for ``url``; nothing touches the network here."""
    target = parse_redis_url(url)
    # One immediate retry on a fresh connection covers a pooled socket that died with a
    # restarted server; anything longer is the circuit breaker's job.
    retry = Retry(NoBackoff(), 1, supported_errors=(rexc.ConnectionError,))
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "decode_responses": False,
    }
    if target.kind == "cluster":
        client = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.hosts],
            username=target.username,
            password=target.password,
            max_connections=max_connections + _POOL_HEADROOM,
            retry=Retry(NoBackoff(), 2),
            **common,
        )
        return Connection("cluster", client, target.where)
    if target.kind == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.hosts),
            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
        )
        client = sentinel.master_for(
            target.service or "",
            redis_class=aioredis.Redis,
            db=target.db,
            username=target.username,
            password=target.password,
            max_connections=max_connections + _POOL_HEADROOM,
            retry=retry,
            **common,
        )
        return Connection("sentinel", client, target.where, list(sentinel.sentinels))
    # The tier bounds its own concurrency with a semaphore (cheaper than redis-py's
    # BlockingConnectionPool); the headroom serves the pub/sub bus and direct client use.
    pool = aioredis.ConnectionPool.from_url(
        url, max_connections=max_connections + _POOL_HEADROOM, retry=retry, **common
    )
    return Connection("standalone", aioredis.Redis.from_pool(pool), "")


async def scan_unlink(client: Any, pattern: str, node: Any) -> int:
    """SCAN + UNLINK ``pattern`` on one node (``node`` None: the only server)."""
    removed = 0
    cursor: int = 0
    extra = {} if node is None else {"target_nodes": node}
    while True:
        reply, batch = await client.scan(cursor, match=pattern, count=_SCAN_BATCH, **extra)
        # RedisCluster answers with a cursor per node name.
        cursor = reply[node.name] if isinstance(reply, dict) else reply
        if batch:
            removed += int(await client.unlink(*batch))
        if cursor == 0:
            return removed


async def set_by_slot(
    script: Script,
    client: RedisCluster,
    keys: Sequence[str],
    args: Sequence[bytes | int | str],
    bump: str | None,
) -> list[Any]:
    """The set script once per slot; the generation bump rides with its own slot's group
    (one schema's keys and its counter share a hash tag, so that is the usual one call)."""
    groups = by_slot(keys)
    bump_slot = None if bump is None else by_slot([bump]).popitem()[0]
    calls: list[Awaitable[Any]] = []
    for slot, group in groups.items():
        ks = [keys[i] for i in group]
        if slot == bump_slot and bump is not None:
            ks.append(bump)
        calls.append(script(client, ks, [a for i in group for a in args[2 * i : 2 * i + 2]]))
    if bump is not None and bump_slot not in groups:
        calls.append(client.incr(bump))
    replies = await asyncio.gather(*calls)
    applied: list[Any] = [0] * len(keys)
    for group, reply in zip(groups.values(), replies, strict=False):
        for n, i in enumerate(group):
            applied[i] = reply[n]
    return applied

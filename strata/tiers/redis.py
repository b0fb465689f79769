"""L2: Redis, shared by every instance. Batch-first, one round trip per batch, and never the
reason a read or a write fails.

    get_many(keys)   GET (one key) | MGET (a batch; per slot on a cluster): one round trip,
                     no PTTL: each payload carries its expiry in its binding trailer
                     -> [(payload | None, remaining ttl seconds | None), ...]
    set_many(items)  EVALSHA set  -> [applied?, ...]   "only if newer", see below
                     (set_many_and_publish: + the write's invalidation, same round trip)
    delete_many      DEL k1 k2 ...
    get_generation   EVALSHA: a schema's search-result generation and the result under it

Conditional fill. Every payload is a codec envelope ``S | fmt | 16 hex digits | body``
(``strata.codec``). The set script writes a key unless it already holds an envelope whose
version is greater than the new one (equal versions are written, so a retry is harmless);
a tombstone is an envelope too, so a fresh tombstone blocks a fill with the older row that
a slow reader fetched before the delete committed. A value that is not an envelope is
overwritten.

Degraded operation. When Redis cannot be reached or does not answer within ``timeout``:

    closed --failure--> open --backoff elapsed--> one call probes --ok--> closed + on_recover()
                         ^                               |
                         +--------failure (backoff x2, up to 5 s)

The probe is the next call after the backoff, or the tier's background prober when no call
comes (PING; on a cluster PING to every primary, which makes redis-py follow a failover).

While open, calls fail fast without touching the network: reads are misses, writes are not
applied, deletes and publishes are dropped, and ``on_error`` is called for each (the router
counts them in ``Stats.errors``). The outage is logged once when it starts and once when it
ends. ``on_recover`` tells the router that invalidations were lost while Redis was away.

Refused writes. Redis may answer a write with an error (OOM under ``noeviction``, READONLY
on a demoted master) and keep the key's old value, which would then be served after the
write was acknowledged. So a refused ``set_many`` deletes its keys; when even DEL is refused,
the keys are remembered and the circuit opens as for an outage (reads are misses, the router
records the writes for repair), and the probe deletes those keys before Redis serves again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from strata.codec import peek_version
from strata.config import hide_password
from strata.errors import (
    CodecError,
    LifecycleError,
    TierError,
    TierUnavailableError,
)
from strata.invalidation.transport import Transport, transport_for
from strata.tiers.redis_circuit import Circuit
from strata.tiers.redis_scripts import (
    DELETE_IF,
    DROP_REFUSED,
    GENERATION,
    SET,
    SET_PUBLISH,
    SHAPES,
    bind,
    get_one,
    ttl_ms,
    unbind_entry,
)
from strata.tiers.redis_topology import (
    Connection,
    connect_client,
    hash_tagged,
    scan_unlink,
    set_by_slot,
    where_of,
)

__all__ = ["RedisTier"]

T = TypeVar("T")
Client = aioredis.Redis | RedisCluster

_log = logging.getLogger(__name__)


def _same(key: str) -> str:
    return key


class RedisTier(Circuit):
    """The L2 tier. ``connect()`` never fails because Redis is down; see the module doc."""

    subscribes = True  # carries the invalidation bus (``transport()``)

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.5,
        max_connections: int = 50,
        logger: logging.Logger | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_recover: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(max_connections)
        self.url = url
        self.where = where_of(url)
        self.timeout = timeout
        self.max_connections = max_connections
        self.on_error = on_error
        self.on_recover = on_recover
        self._log = logger or _log
        self._client: Client | None = None
        self._conn: Connection | None = None
        self._key = _same  # the physical key of a logical one (cluster: hash-tagged)
        self.unbound_dropped = 0  # payloads found not bound to their key, deleted

    def __repr__(self) -> str:
        state = "up" if self.available else "down"
        return f"<RedisTier {hide_password(self.url)} {state}>"

    # ------------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        """Create the pool and probe the server; an unreachable server is logged, not raised."""
        if self._closed:
            raise LifecycleError("RedisTier is closed")
        if self._client is not None:
            return
        conn = connect_client(self.url, timeout=self.timeout, max_connections=self.max_connections)
        self._conn = conn
        self._client = conn.client
        if conn.where:
            self.where = conn.where
        if conn.cluster:
            self._key = hash_tagged
        self._up = True  # so that a failed first ping reports the outage
        await self.ping()

    def abandon(self) -> None:
        """Forget the client of an event loop that has ended; ``connect()`` makes a new
        one."""
        self._conn = self._client = None
        self._prober = None  # ended with its loop
        self._slots = asyncio.Semaphore(self.max_connections)  # bound to the old loop

    async def close(self) -> None:
        self._closed = True
        self._up = False
        await self._stop_prober()
        conn, self._conn, self._client = self._conn, None, None
        if conn is not None:
            await conn.aclose()

    @property
    def available(self) -> bool:
        """False before connect, after close, and while the circuit is open."""
        return self._up and self._client is not None

    @property
    def client(self) -> Client:
        """The underlying client (its pool is shared with the pub/sub bus): a
        ``redis.asyncio.Redis``, or a ``RedisCluster`` for ``redis+cluster://``."""
        return self._require()

    def transport(self, channel: str, schemas: Callable[[], Iterable[str]]) -> Transport:
        """What the invalidation bus subscribes and publishes through: pub/sub on
        ``channel``, or on a cluster sharded pub/sub with one channel per schema of
        ``schemas()``. Shares this tier's client (and its pool)."""
        return transport_for(self._require(), channel, schemas)

    @property
    def cluster(self) -> bool:
        """True for ``redis+cluster://``: keys are hash-tagged, pub/sub is sharded."""
        return self._conn is not None and self._conn.cluster

    def physical_key(self, key: str) -> str:
        """The key as stored in Redis (on a cluster: ``{prefix:schema}:...``)."""
        return self._key(key)

    def take_possible_loss(self) -> bool:
        """True (once) after an outage of a replicated deployment (Sentinel, Cluster): a
        failover may have promoted a replica that missed the last acknowledged writes, so
        what L2 holds may be older than them and must be dropped."""
        lost, self.possible_loss = self.possible_loss, False
        return lost

    def _require(self) -> Client:
        client = self._client
        if client is None:
            raise LifecycleError(
                "RedisTier is closed" if self._closed else "RedisTier used before connect()"
            )
        return client

    async def ping(self) -> bool:
        """Probe the server now (even inside a backoff window) and update the state."""
        self._require()
        try:
            await self._run(self._ping, force=True)
        except TierError:
            return False
        return True

    # ------------------------------------------------------------------ data

    async def get_many(self, keys: Sequence[str]) -> list[tuple[bytes | None, float | None]]:
        """``(payload, remaining ttl in seconds)`` per key; ``(None, None)`` for a miss.
        The ttl is None for a key without expiry (or written without its expiry in the
        trailer: the journal's). All misses while Redis is unreachable."""
        client = self._require()
        if not keys:
            return []
        physical = [self._key(k) for k in keys]
        try:
            if isinstance(client, RedisCluster):
                values = await self._run(lambda: client.mget_nonatomic(physical))
            elif len(keys) == 1:
                values = [await self._run(lambda: get_one(client, physical[0]))]
            else:
                values = await self._run(lambda: client.mget(physical))
        except TierError as exc:
            self._report(exc)
            return [(None, None)] * len(keys)
        out: list[tuple[bytes | None, float | None]] = []
        unbound: list[tuple[str, bytes]] = []
        unknown: list[int] = []  # positions whose trailer does not carry the expiry
        now_ms = time.time() * 1000
        for n, (key, value) in enumerate(zip(physical, values, strict=True)):
            entry = None if value is None else unbind_entry(key, value)
            if entry is None:
                if value is not None:
                    unbound.append((key, value))
                out.append((None, None))
                continue
            payload, expires = entry
            if expires is None:
                unknown.append(n)
            # Expiring this instant (or a clock behind the writer's) is kept as 1 ms left.
            out.append((payload, max(expires - now_ms, 1.0) / 1000 if expires else None))
        if unknown:
            await self._ask_ttl(client, physical, unknown, out)
        if unbound:
            await self._drop_unbound(client, unbound)
        return out

    async def _ask_ttl(
        self,
        client: Client,
        physical: list[str],
        positions: list[int],
        out: list[tuple[bytes | None, float | None]],
    ) -> None:
        """PTTL for payloads whose trailer does not carry their expiry (the journal's)."""

        async def run() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for n in positions:
                pipe.pttl(physical[n])
            replies: list[Any] = await pipe.execute()
            return replies

        try:
            pttls = await self._run(run)
        except TierError as exc:
            self._report(exc)
            return  # an unknown remaining life: the caller's own TTL bounds it
        for n, pttl in zip(positions, pttls, strict=True):
            # PTTL -1: no expiry; 0 (expiring this instant) is kept as a positive 1 ms.
            out[n] = (out[n][0], max(pttl, 1) / 1000 if pttl >= 0 else None)

    async def _drop_unbound(self, client: Client, found: list[tuple[str, bytes]]) -> None:
        """Values not bound to their key (planted under another id, corrupted, not ours):
        a miss for the reader, deleted here (unless replaced meanwhile), and reported."""
        self.unbound_dropped += len(found)
        self._report(
            CodecError(
                f"L2 Redis at {self.where}: {len(found)} payload(s) not bound to their key "
                f"(e.g. {found[0][0]!r}); dropped"
            )
        )
        for key, value in found:
            try:
                await self._run(functools.partial(DELETE_IF, client, [key], [value]))
            except TierError as exc:
                self._report(exc)
                return

    async def set_many(
        self, items: Sequence[tuple[str, bytes, float | None]], *, bump: str | None = None
    ) -> list[bool]:
        """Write each ``(key, payload, ttl seconds | None)`` unless the key holds a newer
        envelope. True where written; all False while Redis is unreachable.

        ``bump`` names a counter to INCR in the same round trip (a schema's search-result
        generation), whether or not any payload was written.
        """
        applied, _ = await self.set_many_and_publish(items, bump=bump)
        return applied

    async def set_many_and_publish(
        self,
        items: Sequence[tuple[str, bytes, float | None]],
        *,
        bump: str | None = None,
        publish: tuple[str, bytes] | None = None,
    ) -> tuple[list[bool], bool]:
        """``set_many``, then PUBLISH ``publish`` (channel, message) in the same round trip
        (inside the script; on a cluster SPUBLISH right after). Returns what was written and
        whether the message went out (False: the caller publishes it as usual)."""
        client = self._require()
        if not items:
            return [], False
        keys, args = self._set_args(items)
        written = list(keys)
        published = publish is not None
        try:
            if isinstance(client, RedisCluster):
                tag = None if bump is None else self._key(bump)
                applied = await self._run(lambda: set_by_slot(SET, client, keys, args, tag))
                if publish is not None:
                    channel, message = publish
                    await self._run(lambda: client.spublish(channel, message))
            else:
                if bump is not None:
                    keys.append(bump)
                if publish is None:
                    applied = await self._run(lambda: SET(client, keys, args))
                else:
                    head: list[bytes | int | str] = [publish[0], publish[1]]
                    applied = await self._run(lambda: SET_PUBLISH(client, keys, head + args))
        except TierUnavailableError as exc:
            self._report(exc)
            return [False] * len(items), False
        except TierError as exc:
            self._report(exc)
            await self._drop_refused(written, bump)
            return [False] * len(items), False
        return [bool(flag) for flag in applied], published

    def _set_args(
        self, items: Sequence[tuple[str, bytes, float | None]]
    ) -> tuple[list[str], list[bytes | int | str]]:
        """Physical keys, and the set script's arguments: bound payload, ttl ms per key."""
        keys: list[str] = []
        args: list[bytes | int | str] = []
        now_ms = int(time.time() * 1000)
        for key, payload, ttl in items:
            if not isinstance(payload, bytes):
                raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
            if peek_version(payload) is None:
                raise ValueError(f"payload for {key!r} is not a codec envelope")
            physical = self._key(key)
            keys.append(physical)
            ms = ttl_ms(ttl)
            args.append(bind(physical, payload, expires_ms=now_ms + ms if ms else 0))
            args.append(ms)
        return keys, args

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Unconditional DEL; dropped (and reported) while Redis is unreachable."""
        client = self._require()
        if not keys:
            return
        physical = [self._key(k) for k in keys]
        try:
            # (RedisCluster splits a multi-key DEL per slot itself.)
            await self._run(lambda: client.delete(*physical))
        except TierUnavailableError as exc:
            self._report(exc)
        except TierError as exc:  # refused (READONLY): the keys still hold their values
            self._report(exc)
            self._refusing(exc, physical)

    async def _drop_refused(self, physical: list[str], bump: str | None = None) -> None:
        """A refused write (OOM, READONLY) left each key's old value in Redis, where it
        would be served after the write was acknowledged: delete the keys, and start the
        new search-result generation the write would have (``bump``). When Redis refuses
        even that, stop serving from it until a probe could (``_refusing``)."""
        client = self._require()
        counters = [] if bump is None else [self._key(bump)]
        try:
            if isinstance(client, RedisCluster):
                await self._run(lambda: client.delete(*physical))
                for counter in counters:
                    await self._run(functools.partial(DROP_REFUSED, client, [counter], ["1"]))
            else:
                keys, flag = physical + counters, "1" if counters else "0"
                await self._run(functools.partial(DROP_REFUSED, client, keys, [flag]))
        except TierUnavailableError:
            # The circuit is open: the probe deletes them (and bumps) first.
            self._unwritten.update(physical)
            self._unbumped.update(counters)
        except TierError as exc:
            self._unbumped.update(counters)
            self._refusing(exc, physical)

    async def publish(self, channel: str, message: bytes) -> int:
        """Number of subscribers reached; 0 (and reported) while Redis is unreachable.
        On a cluster this is SPUBLISH (sharded pub/sub: only the channel's shard carries it)."""
        client = self._require()
        send = client.spublish if isinstance(client, RedisCluster) else client.publish
        try:
            receivers: int = await self._run(lambda: send(channel, message))
        except TierError as exc:
            self._report(exc)
            return 0
        return receivers

    async def set_raw(self, key: str, value: bytes, ttl: float | None) -> bool:
        """An unconditional SET (cached search results, not envelopes); False while Redis is
        unreachable."""
        client = self._require()
        px = ttl_ms(ttl) or None
        key = self._key(key)
        try:
            await self._run(lambda: client.set(key, value, px=px))
        except TierError as exc:
            self._report(exc)
            return False
        return True

    async def get_generation(
        self, counter: str, prefix: str, digest: str
    ) -> tuple[int, bytes | None]:
        """``(generation, payload at f"{prefix}{generation}:{digest}")`` in one round trip;
        ``(0, None)`` while Redis is unreachable."""
        client = self._require()
        # On a cluster the result key shares the counter's hash tag, hence its slot.
        keys, args = [self._key(counter)], [self._key(prefix), digest]
        try:
            raw, payload = await self._run(lambda: GENERATION(client, keys, args))
        except TierError as exc:
            self._report(exc)
            return 0, None
        return int(raw), payload

    async def shapes(self, key: str, shape: str, now: float, since: float) -> set[str]:
        """Note ``shape`` as seen ``now`` in the registry ``key`` and return every shape
        seen since ``since`` (unix seconds). Raises TierUnavailableError / TierError."""
        client = self._require()
        key = self._key(key)
        args = [shape, repr(now), repr(since)]
        members = await self.call(lambda: SHAPES(client, [key], args))
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members}

    async def get_raw(self, key: str) -> bytes | None:
        """A plain GET (generation counters); None while Redis is unreachable."""
        client = self._require()
        key = self._key(key)
        try:
            value = await self._run(lambda: client.get(key))
        except TierError as exc:
            self._report(exc)
            return None
        return value.encode() if isinstance(value, str) else value

    async def incr(self, key: str) -> int:
        """INCR. Raises TierUnavailableError / TierError: a counter cannot be faked."""
        client = self._require()
        key = self._key(key)
        value: int = await self._run(lambda: client.incr(key))
        return value

    async def delete_pattern(self, pattern: str) -> int:
        """SCAN + UNLINK every key matching ``pattern``, in batches (admin use, not the hot
        path). Returns how many keys were removed. Raises TierUnavailableError / TierError,
        so an admin knows the keys may still be there."""
        client = self._require()
        pattern = self._key(pattern)

        async def run() -> int:
            if isinstance(client, RedisCluster):
                # SCAN is per node: every primary, each with its own cursor.
                removed = 0
                for node in client.get_primaries():
                    removed += await scan_unlink(client, pattern, node)
                return removed
            return await scan_unlink(client, pattern, None)

        return await self._run(run)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` (which uses ``client``) through the circuit breaker and its error
        translation, for components built on this tier (the keyed cache). Raises
        TierUnavailableError / TierError, after ``on_error``."""
        self._require()
        try:
            return await self._run(fn)
        except TierError as exc:
            self._report(exc)
            raise

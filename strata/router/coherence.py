"""Keeping every instance's caches in agreement with L3.

    a write of ids ─► forget readers (negative cache, single flight) ─► L2 + L1 ─► publish
    a message from another instance ─► drop those ids from L1 (version-checked); a writer
                                       caching another shape ─► drop our L2 copies too
    the bus reconnects / misses heartbeats ─► clear every L1 (messages may be lost)
    an L2 write fails ─► remember the key; Redis recovers ─► drop the remembered keys, new
                         search generation for every schema, clear every L1, and publish
                         the repaired ids, so every instance drops what it read meanwhile
    a write of ids ─► other model shapes' L2 copies of those ids dropped too (shapes seen
                      within the L2 TTL, from the registry in Redis): no rollback reads
                      a value older than the write
    the bus is down ─► no L1 fill (``Core.l1_fillable``): nothing filled during an outage
                       outlives it

Publishing goes through the L2 tier (``L2Tier.publish``), behind its circuit breaker: while
Redis is known to be down a write does not wait on a publish that cannot arrive; the keys it
wrote are repaired, and every L1 cleared, on recovery.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from strata.config import seconds
from strata.errors import TierError
from strata.invalidation import Invalidation, InvalidationBus
from strata.invalidation.transport import BusCarrier
from strata.router.core import Core, Route
from strata.tiers.base import L2Tier
from strata.tiers.redis_topology import glob_escape

__all__ = ["Coherence", "invalidation_channel"]

DEFAULT_CHANNEL = "strata:invalidation"  # Config.invalidation_channel's default

# The keyed cache's messages name "cache:<namespace>" (strata.cache): one bus channel.
KEYED = "cache"
_MISSED_MAX = 100_000
_SHAPES_REFRESH = 60.0  # seconds between refreshes of the shape registry


class Coherence:
    def __init__(self, core: Core) -> None:
        self.core = core
        self._l2_missed: set[str] = set()  # keys written while L2 was down: dropped on recovery
        self._l2_missed_overflow = False
        self._l2_dirty_schemas: set[str] = set()  # L2 must be cleared for these on recovery
        # What the repair under way (drop_l2_missed) took on: still pending until every
        # instance has been told, so "no repair pending" means the repair is over.
        self._l2_repairing = 0
        self.skipped_publishes = 0  # publishes not attempted while L2 was known to be down
        # Per schema: the other model shapes whose L2 copies may still be live (from the
        # shape registry in Redis, and from other instances' messages).
        self._other_shapes: dict[str, set[str]] = {}
        self._shapes_at = float("-inf")  # monotonic time of the last registry refresh
        # The items of the last write whose invalidation went out with its L2 write.
        self._announced: Sequence[Any] | None = None

    # -- the bus, and L1 upkeep ---------------------------------------------------------------

    async def start_bus(self, l2: L2Tier) -> None:
        """Subscribe to the invalidation channel, when the L2 tier can carry it."""
        core, cfg = self.core, self.core.config
        _hear_from(l2, core.count_error, self.on_l2_recover)
        if not l2.subscribes:
            return
        channel = invalidation_channel(cfg.invalidation_channel, cfg.key_prefix)
        bus = core.bus = InvalidationBus(
            None,
            channel,
            core.instance_id,
            on_message=self.on_invalidation,
            on_reset=self.clear_l1,
            heartbeat_interval=seconds(cfg.heartbeat_interval, "interval") or 0.0,
            logger=core.log,
            on_error=core.count_error,
            publisher=self.publish_via_l2,
            # cluster: one sharded channel per schema, and one for the keyed cache
            transport=cast(BusCarrier, l2).transport(channel, lambda: [*core.routes, KEYED]),
            prefix=cfg.key_prefix,
        )
        await bus.start()
        await self.refresh_shapes()
        if l2.available:
            # Until the subscription is confirmed other instances' messages cannot arrive:
            # start coherent rather than fill L1 and then drop it.
            await bus.wait_connected(max(1.0, 4 * cfg.redis_timeout))

    async def sweep_forever(self) -> None:
        """Reclaim expired L1 entries and negative-cache marks, a slice at a time so a
        large cache never holds up the event loop."""
        interval = seconds(self.core.config.sweep_interval, "interval") or 0.0
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if now - self._shapes_at >= _SHAPES_REFRESH:
                await self.refresh_shapes()
            for rt in list(self.core.routes.values()):
                if rt.l1 is not None:
                    while rt.l1.sweep(limit=1000) >= 1000:  # noqa: ASYNC110 - yields, not polls
                        await asyncio.sleep(0)
                if rt.negative:
                    rt.negative = {k: v for k, v in rt.negative.items() if v > now}

    # -- publish -----------------------------------------------------------------------

    async def write_l2(
        self,
        rt: Route,
        payloads: list[tuple[str, bytes, float | None]],
        items: Sequence[tuple[Any, Any, int | None]],
    ) -> None:
        """A write's L2 step (with the schema's generation bump). Where the tier can, the
        write's invalidation rides the same round trip, published once the values are in
        place; the ``publish`` of these ``items`` that follows then sends nothing more."""
        core, b = self.core, rt.b
        assert core.l2 is not None
        combined = getattr(core.l2, "set_many_and_publish", None)
        announcement = None if combined is None else self.announcement(rt, items)
        if combined is None or announcement is None:
            await core.l2.set_many(payloads, bump=b.gen_key)
            return
        _, sent = await combined(payloads, bump=b.gen_key, publish=announcement)
        if sent:
            self.announced(items)

    def announcement(
        self, rt: Route, items: Sequence[tuple[Any, Any, int | None]]
    ) -> tuple[str, bytes] | None:
        """The channel and message of the invalidation of a set of these ``items``, as
        ``publish`` sends it, for a tier that publishes it with the write itself (the L2
        write, the journal's script); None when it must go out on its own (no bus; other
        shapes' L2 copies to drop first)."""
        core, bus = self.core, self.core.bus
        if bus is None or self._other_shapes.get(rt.name):
            return None
        msg = self._message(rt, "set", items, prefix=core.config.key_prefix)
        return bus.channel_for(rt.name), msg.encode()

    def announced(self, items: Sequence[tuple[Any, Any, int | None]]) -> None:
        """The write's tier published the ``announcement`` of these ``items``: the
        ``publish`` of them that follows sends nothing more."""
        self._announced = items
        if self.core.bus is not None:
            self.core.bus.sent += 1
        self.core.c.invalidations_sent += 1

    async def publish(
        self, rt: Route, op: str, items: Sequence[tuple[Any, Any, int | None]]
    ) -> None:
        core = self.core
        if core.bus is None or (not rt.b.l2_on and rt.l1 is None):
            return
        if items is self._announced:  # published with the L2 write (write_l2)
            self._announced = None
            return
        msg = self._message(rt, op, items)
        if rt.b.l2_on and self._other_shapes.get(rt.name):
            await self._drop_other_shapes(rt, op, items)
        await self.publish_raw(msg)

    def _message(
        self,
        rt: Route,
        op: str,
        items: Sequence[tuple[Any, Any, int | None]],
        prefix: str | None = None,  # None: the bus stamps its own
    ) -> Invalidation:
        core = self.core
        shape = rt.b.cs.shape
        if len(items) == 1:
            i, _, ver = items[0]
            msg = Invalidation(
                schema=rt.name,
                op=op,  # type: ignore[arg-type]
                origin=core.instance_id,
                id=_wire_id(i),
                version=ver,
                shape=shape,
                prefix=prefix,
            )
        else:
            msg = Invalidation(
                schema=rt.name,
                op=op,  # type: ignore[arg-type]
                origin=core.instance_id,
                ids=tuple(_wire_id(i) for i, _, _ in items),
                versions=tuple(ver for _, _, ver in items),
                shape=shape,
                prefix=prefix,
            )
        return msg

    # -- other model shapes ------------------------------------------------------------

    async def refresh_shapes(self) -> None:
        """Note this instance's shape of each schema in the Redis shape registry, and learn
        the others still of interest: any whose L2 copies may outlive this instance's
        writes (an instance of another shape ran within the L2 TTL). A write drops those
        copies of its ids, so a rollback to an older shape cannot read a value older than
        the write (running instances of other shapes also drop theirs on the message)."""
        l2 = self.core.l2
        shapes = getattr(l2, "shapes", None)
        if shapes is None or l2 is None or not l2.available:
            return
        self._shapes_at = time.monotonic()
        now = time.time()
        for rt in list(self.core.routes.values()):
            if not rt.b.l2_on:
                continue
            ttl = rt.b.l2_ttl
            since = 0.0 if ttl is None else now - ttl - 2 * _SHAPES_REFRESH
            try:
                seen = await shapes(_shapes_key(rt), rt.b.cs.shape, now, since)
            except TierError as exc:
                self.core.count_error(exc)
                self._shapes_at = float("-inf")  # try again on the next sweep
                return
            self._other_shapes[rt.name] = set(seen) - {rt.b.cs.shape}

    async def _drop_other_shapes(
        self, rt: Route, op: str, items: Sequence[tuple[Any, Any, int | None]]
    ) -> None:
        """Before the write is acknowledged: other shapes' copies of these ids go (a delete
        leaves versioned tombstones there, as in ours)."""
        l2, b = self.core.l2, rt.b
        assert l2 is not None and b.codec is not None
        own = b.key_prefix
        base = own[: len(own) - len(b.cs.shape) - 1]
        tombs: list[tuple[str, bytes, float | None]] = []
        gone: list[str] = []
        for shape in sorted(self._other_shapes.get(rt.name, ())):
            for i, _, version in items:
                key = f"{base}{shape}:{i}"
                if op == "delete" and version:
                    tombs.append(
                        (key, b.codec.tombstone(version), self.core.config.tombstone_seconds)
                    )
                else:
                    gone.append(key)
        if tombs:
            await l2.set_many(tombs)
        if gone:
            await l2.delete_many(gone)
        if not l2.available:
            self.remember_l2_missed([k for k, _, _ in tombs] + gone)

    async def publish_raw(self, msg: Invalidation) -> bool:
        """Send ``msg`` on the bus; False if it could not be sent (no bus: nobody to tell)."""
        bus = self.core.bus
        if bus is None:
            return True
        if not await bus.publish(msg):
            return False
        self.core.c.invalidations_sent += 1
        return True

    async def publish_via_l2(self, channel: str, payload: bytes) -> bool:
        """The bus's publisher. While the L2 tier knows it is down (circuit open) the
        message is skipped, not waited on: the keys the write touched are recorded for
        repair, and on recovery every instance's L1 is cleared (their subscriptions were
        lost too) and those keys dropped from L2."""
        l2 = self.core.l2
        if l2 is None:
            return False
        if not l2.available:
            self.skipped_publishes += 1
            return False
        await l2.publish(channel, payload)
        return l2.available

    # -- what other instances tell us ------------------------------------------------------

    def on_invalidation(self, msg: Invalidation) -> None:
        core = self.core
        rt = core.routes.get(msg.schema)
        if rt is None:
            # Schema names are identifiers; the keyed cache's messages name "cache:...".
            for attachment in core.attachments:
                if attachment.on_message(msg):
                    return
            return
        core.c.invalidations_received += 1
        rt.epoch += 1
        if msg.op == "invalidate_all":
            rt.negative.clear()
            if rt.l1 is not None:
                rt.l1.clear()
            return
        foreign: list[tuple[Any, int | None]] = []
        coerce, negative, inflight, l1 = rt.b.coerce, rt.negative, core.inflight, rt.l1
        pairs = ((msg.id, msg.version),) if msg.id is not None else msg.keys()
        for raw_id, version in pairs:
            try:
                id = coerce(raw_id)
            except (TypeError, ValueError):
                continue
            if negative:
                negative.pop(id, None)
            if inflight:
                inflight.pop((rt.name, id), None)
            if l1 is not None:
                l1.delete(id, version)
            foreign.append((id, version))
        if msg.shape is not None and msg.shape != rt.b.cs.shape:
            self._other_shapes.setdefault(rt.name, set()).add(msg.shape)
        if rt.b.l2_on and msg.shape is not None and msg.shape != rt.b.cs.shape and foreign:
            # The writer caches this schema under another shape (other code, or a rolling
            # deploy): our own L2 copies of these rows are stale now.
            core.spawn(self._drop_foreign_l2(rt, foreign, deleted=msg.op == "delete"))

    async def _drop_foreign_l2(
        self, rt: Route, keys: list[tuple[Any, int | None]], *, deleted: bool
    ) -> None:
        """A delete leaves our versioned tombstone (a tombstone means "deleted"); a set
        just removes our copy so the next read takes the row from L3."""
        l2, b = self.core.l2, rt.b
        assert l2 is not None and b.codec is not None
        if deleted:
            life = self.core.config.tombstone_seconds  # outlives an l3_timeout-bounded reader
            tombs = [(b.key(i), b.codec.tombstone(v), life) for i, v in keys if v]
            await l2.set_many(tombs)
        await l2.delete_many([b.key(i) for i, v in keys if not (deleted and v)])

    def clear_l1(self) -> None:
        """Messages may have been lost: nothing in L1 can be trusted any more."""
        for attachment in self.core.attachments:
            attachment.clear_memory()
        for rt in self.core.routes.values():
            rt.epoch += 1
            rt.negative.clear()
            if rt.l1 is not None:
                rt.l1.clear()

    # -- cache control -----------------------------------------------------------------

    async def forget_cached(
        self, rt: Route, ids: list[Any], values: Mapping[Any, bytes] | None = None
    ) -> None:
        """Drop ids from L1 and L2 here, and from every other instance's L1. ``values``:
        L2 envelopes written instead of the deletes (unless Redis holds newer ones), so a
        fill of an older row still in flight is refused rather than landing in a hole."""
        core = self.core
        core.forget_readers(rt, ids)
        if rt.l1 is not None:
            rt.l1.delete_many(ids)
        if rt.b.l2_on:
            assert core.l2 is not None
            values = values or {}
            keys = [rt.b.key(i) for i in ids if i not in values]
            if values:
                ttl = rt.b.l2_ttl
                await core.l2.set_many([(rt.b.key(i), p, ttl) for i, p in values.items()])
            await core.l2.delete_many(keys)
            keys += [rt.b.key(i) for i in values]  # repaired as a whole if Redis is away
            await self.bump_generation(rt)
            if not core.l2.available:
                self.remember_l2_missed(keys)
        await self.publish(rt, "set", [(i, None, None) for i in ids])

    async def forget_rescued(
        self, rt: Route, sets: list[tuple[Any, bytes | None]], deletes: list[tuple[Any, int]]
    ) -> None:
        """Writes Redis lost reached L3 directly: drop every cached copy of their keys; L2
        gets the rescued value (a delete its versioned tombstone), so an older fill in
        flight is refused."""
        core = self.core
        if sets:
            values = {i: p for i, p in sets if p is not None}
            await self.forget_cached(rt, [i for i, _ in sets], values)
        if not deletes:
            return
        ids = [i for i, _ in deletes]
        core.forget_readers(rt, ids)
        if rt.l1 is not None:
            rt.l1.delete_many(ids)
        if rt.b.l2_on:
            assert core.l2 is not None
            await self._drop_foreign_l2(rt, list(deletes), deleted=True)
            if not core.l2.available:
                self.remember_l2_missed([rt.b.key(i) for i in ids])
        await self.publish(rt, "delete", [(i, None, v) for i, v in deletes])

    async def invalidate_all(self, rt: Route) -> None:
        core = self.core
        rt.epoch += 1
        rt.negative.clear()
        if rt.l1 is not None:
            rt.l1.clear()
        if rt.b.l2_on:
            await self.drop_l2_schema(rt)
        await self.publish_raw(
            Invalidation(schema=rt.name, op="invalidate_all", origin=core.instance_id)
        )

    async def drop_l2_schema(self, rt: Route) -> None:
        """Every L2 key of the schema, and its cached search results (new generation).
        If Redis is unreachable this is redone when it comes back."""
        core = self.core
        assert core.l2 is not None
        try:
            await core.l2.delete_pattern(glob_escape(rt.b.key_prefix) + "*")
            await core.l2.incr(rt.b.gen_key)
        except TierError as exc:
            core.count_error(exc)
            core.log.warning(
                "%s: could not clear L2 now, will when Redis is back: %s", rt.name, exc
            )
            self._l2_dirty_schemas.add(rt.name)

    async def bump_generation(self, rt: Route) -> None:
        core = self.core
        assert core.l2 is not None
        try:
            await core.l2.incr(rt.b.gen_key)
        except TierError as exc:
            core.count_error(exc)
            self._l2_dirty_schemas.add(rt.name)

    # -- L2 repair -----------------------------------------------------------------------

    def on_l2_recover(self) -> None:
        # Sentinel/Cluster: a promoted replica may lack acknowledged writes, so all of L2
        # this instance wrote is dropped (a capability of replicated Redis tiers).
        l2 = self.core.l2
        if l2 is not None and l2.take_possible_loss():
            self._l2_missed_overflow = True
        self.clear_l1()
        self.core.spawn(self.drop_l2_missed())

    def remember_l2_missed(self, keys: Iterable[str]) -> None:
        for k in keys:
            if len(self._l2_missed) >= _MISSED_MAX:
                self._l2_missed_overflow = True
                return
            self._l2_missed.add(k)

    @property
    def l2_repairs_pending(self) -> int:
        """Keys (and whole schemas) waiting for Redis to come back, and those of a repair
        under way until its invalidations are out: 0 means other instances were told."""
        overflow = 1 if self._l2_missed_overflow else 0
        return len(self._l2_missed) + len(self._l2_dirty_schemas) + overflow + self._l2_repairing

    async def drop_l2_missed(self) -> None:
        """Keys written while Redis was unreachable may hold older values there: drop them,
        and start a new search-result generation for every schema (bumps were lost too)."""
        core = self.core
        assert core.l2 is not None
        keys, self._l2_missed = list(self._l2_missed), set()
        overflow, self._l2_missed_overflow = self._l2_missed_overflow, False
        dirty, self._l2_dirty_schemas = self._l2_dirty_schemas, set()
        taken = len(keys) + len(dirty) + 1  # pending until the invalidations are out
        self._l2_repairing += taken
        try:
            for start in range(0, len(keys), 1000):
                await core.l2.delete_many(keys[start : start + 1000])
            for rt in core.routes.values():
                if not rt.b.l2_on:
                    continue
                if overflow or rt.name in dirty:
                    await core.l2.delete_pattern(glob_escape(rt.b.key_prefix) + "*")
                await core.l2.incr(rt.b.gen_key)
            # A read between the recovery and this repair may have filled L1 from a value
            # dropped just now (our own repair messages do not reach us): clear it again.
            self.clear_l1()
            told = await self._publish_repair(keys, dirty if not overflow else set(core.routes))
        except TierError as exc:  # down again: the next recovery redoes all of it
            core.count_error(exc)
            told = False
        finally:
            self._l2_repairing -= taken
        if not told:  # still pending: the next recovery redoes all of it
            self._l2_missed.update(keys)
            self._l2_missed_overflow |= overflow
            self._l2_dirty_schemas |= dirty | {rt.name for rt in core.routes.values()}

    async def _publish_repair(self, keys: list[str], whole: Iterable[str]) -> bool:
        """Other instances may have re-read the repaired rows (from Redis or PostgreSQL)
        while this one could neither write Redis nor publish: tell them to drop them.
        False if a message could not be sent (the repair stays pending)."""
        core = self.core
        whole = set(whole)
        told = True
        for rt in list(core.routes.values()):
            if rt.name in whole:
                told &= await self.publish_raw(
                    Invalidation(schema=rt.name, op="invalidate_all", origin=core.instance_id)
                )
                continue
            prefix = rt.b.key_prefix
            if not prefix:
                continue
            ids = [k[len(prefix) :] for k in keys if k.startswith(prefix)]
            for start in range(0, len(ids), 1000):
                chunk = tuple(ids[start : start + 1000])
                told &= await self.publish_raw(
                    Invalidation(
                        schema=rt.name,
                        op="set",
                        origin=core.instance_id,
                        ids=chunk,
                        versions=(None,) * len(chunk),
                        shape=rt.b.cs.shape,
                    )
                )
        return told


def _hear_from(
    l2: L2Tier, on_error: Callable[[BaseException], None], on_recover: Callable[[], None]
) -> None:
    """An injected tier built without callbacks (``DataStore(config, l2=RedisTier(url))``,
    ``MemoryL2(server)``) reports its errors and its recovery to this store, so what was
    written while it was away is repaired as for the tier the store builds itself."""
    if getattr(l2, "on_error", False) is None:
        l2.on_error = on_error  # type: ignore[attr-defined]
    if getattr(l2, "on_recover", False) is None:
        l2.on_recover = on_recover  # type: ignore[attr-defined]


def _shapes_key(rt: Route) -> str:
    """``{prefix}:_shapes:{schema}``: outside the schema's own ``{prefix}:{schema}:*`` keys
    (a sorted set among its payloads would trip whoever scans them)."""
    prefix = rt.b.gen_key.removesuffix(f":{rt.name}:gen")
    return f"{prefix}:_shapes:{rt.name}"


def _wire_id(id: Any) -> str | int:
    return id if isinstance(id, str | int) else str(id)


def invalidation_channel(configured: str, key_prefix: str) -> str:
    """The channel the bus uses. Left at its default, it is scoped by the app's key prefix
    (``{key_prefix}:invalidation``; the default prefix keeps the historic name), so two apps
    sharing one Redis do not share a channel by accident. A channel set by hand is used as
    given; the messages on it still carry their prefix, and other prefixes' are ignored."""
    if configured == DEFAULT_CHANNEL:
        return f"{key_prefix}:invalidation"
    return configured

"""What every part of the router shares: the tiers, the counters, and per-schema state.

``Core`` is owned by one DataStore. ``Route`` is one registered schema as the router sees
it: its ``Binding`` (settings, immutable), its L1 tier, its mutable read state (negative
cache, epoch) and its ``WritePath`` (chosen once at register).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from strata.clock import HybridClock
from strata.config import Config
from strata.crypto import FieldCipher
from strata.hooks import HookRunner
from strata.observability import Counters
from strata.router.binding import Binding
from strata.tiers.base import L1Tier, L2Tier, L3Tier
from strata.tiers.redis import RedisTier

if TYPE_CHECKING:
    from strata.cache.lease import Lease
    from strata.invalidation import Invalidation, InvalidationBus
    from strata.journal.flusher import Journal
    from strata.router.writes import WritePath
    from strata.writebehind import WriteBehindQueue

__all__ = ["Attachment", "Core", "Route"]


class Attachment(Protocol):
    """A component that rides the router's tiers and bus (the keyed cache): it sees every
    bus message first and is cleared with L1 when messages may have been lost."""

    def on_message(self, msg: Invalidation) -> bool:
        """True when the message was the attachment's own (the router ignores it)."""

    def clear_memory(self) -> None: ...


class Route:
    """One registered schema: settings, L1, read state, write path."""

    __slots__ = ("b", "epoch", "l1", "name", "negative", "path")

    def __init__(self, binding: Binding, l1: L1Tier | None, path: WritePath) -> None:
        self.b = binding
        self.name = binding.name
        self.l1 = l1
        self.path = path
        # id -> monotonic deadline: ids L3 did not have, remembered briefly.
        self.negative: dict[Any, float] = {}
        # Bumped by every write and invalidation: a load that began before it must not
        # record a negative-cache entry.
        self.epoch = 0


class Core:
    """The shared state of one DataStore's router."""

    def __init__(
        self,
        config: Config,
        logger: logging.Logger,
        l3: L3Tier,
        l2: L2Tier | None,
        counters: Counters,
        hooks: HookRunner,
        cipher: FieldCipher | None,
    ) -> None:
        self.config = config
        self.log = logger
        self.l3 = l3
        self.l2 = l2
        self.c = counters
        self.hooks = hooks
        self.cipher = cipher
        self.instance_id = config.instance_id
        self.routes: dict[str, Route] = {}
        self.bus: InvalidationBus | None = None
        self.wb: WriteBehindQueue | None = None
        # With Redis as L2: the crash-safe write-behind journal (strata/journal), from connect.
        self.journal: Journal | None = None
        self.journaling = isinstance(l2, RedisTier)
        # (schema, id) -> the one load in flight (single flight).
        self.inflight: dict[tuple[str, Any], asyncio.Future[tuple[BaseModel | None, str]]] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.attachments: list[Attachment] = []
        # The cross-instance lease for cold misses (strata.cache.lease), when L2 is Redis.
        self.lease: Lease | None = None
        # Every version this instance mints; advanced past every version it observes.
        self.clock = HybridClock()

    def count_error(self, exc: BaseException) -> None:
        """An error a component absorbed (and logged: outages are logged once, not per
        call): counted in ``Stats.errors`` and handed to ``Config.on_error``."""
        self.c.errors += 1
        on_error = self.config.on_error
        if on_error is not None:
            try:
                on_error(exc)
            except Exception:
                self.log.exception("Config.on_error failed")

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def l1_fillable(self) -> bool:
        """False while the invalidation bus is down: other instances' messages cannot reach
        this one, so an L1 copy taken now could outlive the outage stale (DESIGN section 4)."""
        return self.bus is None or self.bus.connected

    def next_version(self) -> int:
        """A new version from the hybrid clock (strata.clock): write-behind and l3=None
        writes carry it; L3 takes GREATEST(it, old version + 1)."""
        return self.clock.now()

    def forget_readers(self, rt: Route, ids: list[Any] | dict[Any, Any]) -> None:
        """A write happened: forget what a concurrent reader may have learnt before it."""
        rt.epoch += 1
        negative = rt.negative
        inflight = self.inflight
        for i in ids:
            negative.pop(i, None)
            inflight.pop((rt.name, i), None)

"""What ``DataStore.connect()`` / ``close()`` start and stop, in order, and the default tiers.

connect:  L3 ─► replicas ─► L2 ─► bus (subscribed before any fill) ─► write-behind queue
          ─► journal (Redis) ─► keyed cache ─► sweeper
close:    journal ─► queue (flushed) ─► background tasks ─► hooks ─► bus ─► L2 ─► replicas ─► L3
rebind:   the event loop ``connect()`` ran on has ended (``asyncio.run()`` called again):
          every tier ``abandon()``s what belonged to it, the store connects again, and the
          write-behind writes left in the old queue move to the new one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from strata.cache import KeyedCache
from strata.config import Config, hide_password, seconds
from strata.errors import ConfigError, TierUnavailableError
from strata.hooks import HookRunner
from strata.journal.host import JournalHost, start_journal
from strata.journal.pending import close_within
from strata.router.coherence import Coherence
from strata.router.core import Core
from strata.router.queries import Queries
from strata.router.writes import Writes
from strata.tasks import stop_tasks
from strata.tiers.base import L2Tier, L3Tier
from strata.tiers.postgres import PostgresTier
from strata.tiers.redis import RedisTier
from strata.tiers.sqlite import SqliteTier
from strata.writebehind import WriteBehindQueue

__all__ = ["Lifecycle", "default_l2", "default_l3"]


def default_l3(config: Config, log: logging.Logger) -> L3Tier:
    if config.dialect == "postgresql":
        return PostgresTier(config, logger=log)
    return SqliteTier(config, logger=log)


def default_l2(
    config: Config,
    log: logging.Logger,
    on_error: Callable[[BaseException], None],
    on_recover: Callable[[], None],
) -> L2Tier | None:
    if config.redis_url is None:
        return None
    return RedisTier(
        config.redis_url,
        timeout=config.redis_timeout,
        max_connections=config.redis_max_connections,
        logger=log,
        on_error=on_error,
        on_recover=on_recover,
    )


def _secs(value: Any) -> float:
    return seconds(value, "interval") or 0.0


class Lifecycle:
    def __init__(
        self,
        core: Core,
        coherence: Coherence,
        writes: Writes,
        queries: Queries,
        hooks: HookRunner,
        cache: KeyedCache,
        journal_host: JournalHost,
        on_error: Callable[[BaseException], None],
    ) -> None:
        self.core, self.coherence, self.writes, self.queries = core, coherence, writes, queries
        self.hooks, self.cache, self.journal_host, self.on_error = (
            hooks,
            cache,
            journal_host,
            on_error,
        )

    async def start(self) -> None:
        """Connect every tier and start the background work; on failure, stop what started."""
        core, cfg = self.core, self.core.config
        await core.l3.connect()
        await self.queries.connect_replicas()
        try:
            await self._start_l2(cfg)
            core.wb = WriteBehindQueue(
                self.writes.apply_queued,
                flush_interval=_secs(cfg.write_behind_flush_interval),
                flush_threshold=cfg.write_behind_flush_threshold,
                max_retry=cfg.write_behind_max_retry,
                retry_base_delay=_secs(cfg.write_behind_retry_base),
                retry_max_delay=_secs(cfg.write_behind_retry_max),
                max_pending=cfg.write_behind_max_pending,
                on_dead_letter=self.writes.on_dead_letter,
                on_error=self.on_error,
                logger=core.log,
            )
            await core.wb.start()
            core.journal = start_journal(core, self.journal_host)
            redis = core.l2 if isinstance(core.l2, RedisTier) else None
            await self.cache.attach(redis, core.bus, core.spawn)
            core.lease = self.cache.lease if redis is not None else None
        except BaseException:
            await self.shutdown()
            raise
        core.spawn(self.coherence.sweep_forever())

    async def _start_l2(self, cfg: Config) -> None:
        l2 = self.core.l2
        if l2 is None:
            if cfg.require_redis:
                raise ConfigError("Config.require_redis is set but no redis_url is configured")
            return
        await l2.connect()
        if cfg.require_redis and not l2.available:
            raise TierUnavailableError(
                f"Redis at {hide_password(cfg.redis_url or '')} is unreachable and "
                "Config.require_redis is set: refusing to start without L2",
                tier="l2",
            )
        await self.coherence.start_bus(l2)

    async def rebind(self, connect: Callable[[], Awaitable[None]]) -> None:
        """Forget what the ended loop held, ``connect()`` again, re-queue the leftovers."""
        core = self.core
        leftover = core.wb.leftover() if core.wb is not None else []
        for tier in (core.l3, core.l2, *self.queries.replicas.values()):
            if tier is not None:
                tier.abandon()
        self.hooks.abandon()
        core.tasks.clear()
        core.inflight.clear()
        core.bus = core.wb = core.journal = None
        if core.l2 is not None:
            self.coherence.clear_l1()
        await connect()
        assert core.wb is not None
        for write in leftover:
            await core.wb.put(write)

    async def shutdown(self) -> None:
        core = self.core
        try:
            if core.journal is not None:
                await core.journal.close()
            if core.wb is not None:
                await close_within(core.wb, core.config.close_timeout_seconds, core.log)
        finally:
            await stop_tasks(list(core.tasks))
            await self.hooks.close()
            if core.bus is not None:
                await core.bus.stop()
            if core.l2 is not None:
                await core.l2.close()
            await self.queries.close_replicas()
            await core.l3.close()

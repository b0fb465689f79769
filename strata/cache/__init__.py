"""``ds.cache``: a keyed cache for computed values, on the DataStore's own tiers and bus.

    get ──► memory ──hit──────────────────────────────────────────────────► value
              └ miss ─► Redis (one script: generations + GET + PTTL) ──hit─► fill memory
                          └ miss ─► _strata_cache (L3) ──hit─► fill Redis + memory
    set ──► durable (EXPENSIVE) ─► Redis (MODERATE+) ─► memory ─► publish on the bus
    remember ─► get ─► fresh: value (refresh-ahead near the end of its life)
                    ├► stale (within stale_ttl): value, and one background refresh
                    └► miss: lease (one loader per key across instances) ─► set ─► value

Values are anything orjson encodes, bytes, or pydantic models; every caller gets its own
decoded copy. ``Cost`` places a value: CHEAP memory only, MODERATE memory + Redis,
EXPENSIVE memory + Redis + the durable table; a missing tier is skipped, so the same code
runs embedded (memory + SQLite), where leases, locks, counters and rate limits are
process-local. Memory stays coherent across instances through the invalidation bus
(messages with schema ``cache:<namespace>``); wildcard invalidation bumps a generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import orjson
import pydantic
from pydantic import BaseModel

from strata.cache.durable import Durable, compile_table
from strata.cache.keys import Scope, split_key
from strata.cache.lease import Lease
from strata.cache.local import LocalKV, Memory
from strata.cache.lock import Lock, RateLimit
from strata.cache.ops import COUNTER as _COUNTER
from strata.cache.ops import SERVED, Computed
from strata.cache.remote import Remote
from strata.codec import KIND_BYTES, KIND_JSON, KIND_NONE, Entry, decode_entry, encode_entry
from strata.config import Config, seconds
from strata.errors import CodecError, InvalidValueError, StrataError, TierError
from strata.invalidation import Invalidation, InvalidationBus
from strata.observability import Counters
from strata.schema import CompiledSchema
from strata.tiers.base import L3Tier
from strata.tiers.redis import RedisTier

__all__ = ["Cost", "KeyedCache", "Lock", "Namespace", "RateLimit"]

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
_BUS_PREFIX = "cache:"  # schema names are identifiers: they never hold ':'


class Cost(enum.IntEnum):
    """Where a value lives: CHEAP memory; MODERATE memory + Redis; EXPENSIVE + durable."""

    CHEAP = 1
    MODERATE = 2
    EXPENSIVE = 3


def _secs(value: Any, what: str) -> float | None:
    return seconds(value, what)


class Namespace(Computed):
    """Keys under one namespace path. Made by ``ds.cache.namespace(name, version=...)``."""

    def __init__(self, host: KeyedCache, scope: Scope) -> None:
        self._host = host
        self.scope = scope
        self._remote_obj: Remote | None = None

    def __repr__(self) -> str:
        return f"<Namespace {self.scope.name!r}>"

    @property
    def name(self) -> str:
        return self.scope.name

    def namespace(self, name: str, version: str | None = None) -> Namespace:
        """A nested namespace (same hash tag as its top-level namespace)."""
        return Namespace(self._host, self.scope.child(self._host.config.key_prefix, name, version))

    # -- plumbing ----------------------------------------------------------------------

    def _remote(self) -> Remote | None:
        tier = self._host.tier
        if tier is None:
            return None
        if self._remote_obj is None or self._remote_obj.tier is not tier:
            self._remote_obj = Remote(tier, self.scope.tag)
        return self._remote_obj

    def _key(self, key: object) -> tuple[str, tuple[str, ...]]:
        segs, _ = split_key(key)
        return self.scope.path(segs), self.scope.prefixes(segs)

    def _dkey(self, path: str) -> str:
        return self.scope.durable_key(path)

    async def _op(self, op: str, work: Awaitable[T]) -> T:
        host = self._host
        try:
            host.check_open()
        except BaseException:
            if isinstance(work, Coroutine):
                work.close()  # never started: no "never awaited" warning
            raise
        observer = host.observer
        if observer is None:
            return await work
        t0 = time.perf_counter()
        served = SERVED.set(None)
        error: BaseException | None = None
        try:
            return await work
        except BaseException as exc:
            error = exc
            raise
        finally:
            host.observe(op, self.scope.name, time.perf_counter() - t0, error, SERVED.get())
            SERVED.reset(served)

    # -- reads -------------------------------------------------------------------------

    async def _lookup(
        self, path: str, prefixes: tuple[str, ...], *, fill: bool = True
    ) -> tuple[Entry | None, str | None]:
        """The stored entry (fresh or not) and the tier that had it."""
        host = self._host
        tag = self.scope.tag
        mem = host.memory
        entry = mem.get((tag, path), prefixes)
        if entry is not None:
            return entry, "l1"
        epoch = mem.epochs.get(tag, 0)
        remote = self._remote()
        if remote is not None:
            try:
                ((payload, remaining),) = await remote.get_many([(path, prefixes)])
            except TierError:
                payload = remaining = None
            if payload is not None:
                decoded = self._decode(path, payload)
                if decoded is not None:
                    if fill and decoded.kind != _COUNTER and mem.epochs.get(tag, 0) == epoch:
                        mem.set((tag, path), prefixes, decoded, host.l1_ttl(remaining))
                    return decoded, "l2"
        durable = host.durable
        if durable is not None:
            dkey = self._dkey(path)
            found = (await durable.get_many([dkey], host.clock())).get(dkey)
            if found is not None:
                decoded = self._decode(path, found[0])
                if decoded is not None:
                    remaining = None if found[1] is None else found[1] - host.clock()
                    if remote is not None and fill:
                        await self._remote_set([(path, prefixes, found[0], remaining)])
                    if fill and mem.epochs.get(tag, 0) == epoch:
                        mem.set((tag, path), prefixes, decoded, host.l1_ttl(remaining))
                    return decoded, "l3"
        return None, None

    def _decode(self, path: str, payload: bytes) -> Entry | None:
        if payload[:2] != b"K1" and payload.lstrip(b"-").isdigit():  # a counter (incr/decr)
            return Entry(_COUNTER, payload, 0.0, 0.0)
        try:
            return decode_entry(self._dkey(path), payload)
        except CodecError as exc:
            self._host.error(exc, f"keyed cache {self.scope.name}:{path}: unreadable entry")
            return None

    def _out(self, entry: Entry, model: type[M] | None) -> Any:
        if entry.kind == _COUNTER:
            return int(entry.body)
        if model is not None and entry.kind == KIND_JSON:
            try:
                return model.model_validate_json(entry.body)
            except pydantic.ValidationError as exc:
                raise InvalidValueError(
                    f"cached value does not validate as {model.__name__}: {exc.errors()[0]['msg']}"
                ) from None
        return entry.value()

    def _fresh(self, entry: Entry) -> bool:
        return entry.fresh_until == 0.0 or entry.fresh_until > self._host.clock()

    def _count_hit(self, tier: str | None) -> None:
        c = self._host.counters
        if tier == "l1":
            c.cache_l1_hits += 1
        elif tier == "l2":
            c.cache_l2_hits += 1
        elif tier == "l3":
            c.cache_l3_hits += 1
        SERVED.set(tier)

    async def get(self, key: object, default: Any = None, *, model: type[M] | None = None) -> Any:
        """The value, or ``default`` (also for a cached "no value"); ``model=`` validates."""
        return await self._op("cache.get", self._get(key, default, model))

    async def _get(self, key: object, default: Any, model: type[M] | None) -> Any:
        path, prefixes = self._key(key)
        entry, tier = await self._lookup(path, prefixes)
        if entry is None or not self._fresh(entry):
            self._host.counters.cache_misses += 1
            return default
        self._count_hit(tier)
        return default if entry.negative else self._out(entry, model)

    async def get_many(
        self, keys: Iterable[object], *, model: type[M] | None = None
    ) -> dict[str, Any]:
        """``{key path: value}`` for the keys found (missing ones omitted)."""
        return await self._op("cache.get_many", self._get_many(list(keys), model))

    async def _get_many(self, keys: list[object], model: type[M] | None) -> dict[str, Any]:
        wanted = [(self._key(k), ":".join(split_key(k)[0])) for k in keys]
        out: dict[str, Any] = {}
        misses = []
        mem, tag = self._host.memory, self.scope.tag
        for (path, prefixes), name in wanted:
            entry = mem.get((tag, path), prefixes)
            if entry is not None and self._fresh(entry):
                self._count_hit("l1")
                if not entry.negative:
                    out[name] = self._out(entry, model)
            else:
                misses.append(((path, prefixes), name))
        remote = self._remote()
        if misses and remote is not None:
            epoch = mem.epochs.get(tag, 0)
            try:
                answers = await remote.get_many([item for item, _ in misses])
            except TierError:
                answers = [(None, None)] * len(misses)
            rest = []
            for ((path, prefixes), name), (payload, remaining) in zip(misses, answers, strict=True):
                entry = self._decode(path, payload) if payload is not None else None
                if entry is None or not self._fresh(entry):
                    rest.append(((path, prefixes), name))
                    continue
                self._count_hit("l2")
                if entry.kind != _COUNTER and mem.epochs.get(tag, 0) == epoch:
                    mem.set((tag, path), prefixes, entry, self._host.l1_ttl(remaining))
                if not entry.negative:
                    out[name] = self._out(entry, model)
            misses = rest
        for (path, prefixes), name in misses:  # the durable tier, one key at a time
            if self._host.durable is None:
                self._host.counters.cache_misses += 1
                continue
            entry, tier = await self._lookup(path, prefixes)
            if entry is None or not self._fresh(entry):
                self._host.counters.cache_misses += 1
                continue
            self._count_hit(tier)
            if not entry.negative:
                out[name] = self._out(entry, model)
        return out

    # -- writes ------------------------------------------------------------------------

    def _entry(
        self, path: str, value: Any, ttl: float | None, stale: float | None = None
    ) -> tuple[bytes, Entry]:
        if value is None:
            kind, body = KIND_NONE, b""
        elif isinstance(value, bytes | bytearray | memoryview):
            kind, body = KIND_BYTES, bytes(value)
        elif isinstance(value, BaseModel):
            kind, body = KIND_JSON, value.__pydantic_serializer__.to_json(value)
        else:
            try:
                kind, body = KIND_JSON, orjson.dumps(value)
            except TypeError as exc:
                raise InvalidValueError(f"cannot cache {type(value).__name__}: {exc}") from exc
        fresh_until = 0.0 if ttl is None else self._host.clock() + ttl
        cfg = self._host.config
        payload = encode_entry(
            self._dkey(path),
            kind,
            body,
            fresh_until=fresh_until,
            ttl=ttl or 0.0,
            compress_min=cfg.compress_min_bytes,
            max_bytes=cfg.max_value_bytes,
        )
        return payload, Entry(kind, body, fresh_until, ttl or 0.0)

    async def _remote_set(
        self, items: Sequence[tuple[str, tuple[str, ...], bytes, float | None]], nx: bool = False
    ) -> list[bool] | None:
        remote = self._remote()
        if remote is None:
            return None
        try:
            return await remote.set_many(items, nx=nx)
        except TierError:
            return None

    async def _store(
        self,
        items: Sequence[tuple[str, tuple[str, ...], bytes, Entry]],
        life: float | None,
        cost: Cost,
    ) -> None:
        """Write entries into the tiers their cost places them in, then tell the others."""
        host = self._host
        if cost >= Cost.EXPENSIVE and host.durable is not None:
            expires = None if life is None else host.clock() + life
            await host.durable.set_many([(self._dkey(p), pl, expires) for p, _, pl, _ in items])
        if cost >= Cost.MODERATE:
            await self._remote_set([(p, pre, pl, life) for p, pre, pl, _ in items])
        for path, prefixes, _, entry in items:
            host.memory.set((self.scope.tag, path), prefixes, entry, host.l1_ttl(life))
        await host.publish(self.scope.top, [p for p, _, _, _ in items])

    async def set(
        self, key: object, value: Any, ttl: Any = None, *, cost: Cost = Cost.MODERATE
    ) -> None:
        """Store ``value`` for ``ttl`` seconds (None: no expiry) in the tiers of ``cost``."""
        return await self._op("cache.set", self._set(key, value, ttl, cost))

    async def _set(self, key: object, value: Any, ttl: Any, cost: Cost) -> None:
        path, prefixes = self._key(key)
        life = _secs(ttl, "ttl")
        payload, entry = self._entry(path, value, life)
        await self._store([(path, prefixes, payload, entry)], life, cost)

    async def set_many(
        self, values: Mapping[Any, Any], ttl: Any = None, *, cost: Cost = Cost.MODERATE
    ) -> None:
        """Store several values (one round trip per tier, one bus message)."""
        return await self._op("cache.set_many", self._set_many(values, ttl, cost))

    async def _set_many(self, values: Mapping[Any, Any], ttl: Any, cost: Cost) -> None:
        life = _secs(ttl, "ttl")
        items = []
        for key, value in values.items():
            path, prefixes = self._key(key)
            payload, entry = self._entry(path, value, life)
            items.append((path, prefixes, payload, entry))
        if items:
            await self._store(items, life, cost)

    async def add(
        self, key: object, value: Any, ttl: Any = None, *, cost: Cost = Cost.MODERATE
    ) -> bool:
        """Store only if the key holds nothing; True if this call stored it. Atomic across
        instances with Redis (SET NX); without Redis, within this process."""
        return bool(await self._op("cache.add", self._add(key, value, ttl, cost)))

    async def _add(self, key: object, value: Any, ttl: Any, cost: Cost) -> bool:
        host = self._host
        path, prefixes = self._key(key)
        life = _secs(ttl, "ttl")
        payload, entry = self._entry(path, value, life)
        remote = self._remote() if cost >= Cost.MODERATE else None
        if remote is not None:
            won = await self._remote_set([(path, prefixes, payload, life)], nx=True)
            if won is None or not won[0]:
                return False
        elif cost >= Cost.EXPENSIVE and host.durable is not None:
            expires = None if life is None else host.clock() + life
            if not await host.durable.add(self._dkey(path), payload, expires, host.clock()):
                return False
        else:
            current = host.memory.get((self.scope.tag, path), prefixes)
            if current is not None and self._fresh(current):
                return False
        if remote is not None and cost >= Cost.EXPENSIVE and host.durable is not None:
            expires = None if life is None else host.clock() + life
            await host.durable.set_many([(self._dkey(path), payload, expires)])
        host.memory.set((self.scope.tag, path), prefixes, entry, host.l1_ttl(life))
        await host.publish(self.scope.top, [path])
        return True

    async def pull(self, key: object, default: Any = None, *, model: type[M] | None = None) -> Any:
        """Get and delete: with Redis only one of several concurrent pulls gets the value."""
        return await self._op("cache.pull", self._pull(key, default, model))

    async def _pull(self, key: object, default: Any, model: type[M] | None) -> Any:
        host = self._host
        path, prefixes = self._key(key)
        entry = host.memory.get((self.scope.tag, path), prefixes)
        remote = self._remote()
        if remote is not None:
            entry = None  # Redis decides who pulled it
            try:
                (payload,) = await remote.delete_many([(path, prefixes)], pull=True)
            except TierError:
                payload = None
            if payload is not None:
                entry = self._decode(path, payload)
        if entry is None and host.durable is not None:
            entry, _ = await self._lookup(path, prefixes, fill=False)
        await self._forget([path])
        if entry is None or not self._fresh(entry) or entry.negative:
            return default
        return self._out(entry, model)

    async def delete(self, key: object) -> None:
        """Remove the key from every tier and every instance's memory."""
        return await self._op("cache.delete", self._delete([key]))

    async def delete_many(self, keys: Iterable[object]) -> None:
        return await self._op("cache.delete_many", self._delete(list(keys)))

    async def _delete(self, keys: Sequence[object]) -> None:
        items = [self._key(k) for k in keys]
        remote = self._remote()
        if remote is not None and items:
            with contextlib.suppress(TierError):  # counted by the tier
                await remote.delete_many(items)
        await self._forget([p for p, _ in items])

    async def _forget(self, paths: list[str]) -> None:
        host = self._host
        if host.durable is not None and paths:
            await host.durable.delete_many([self._dkey(p) for p in paths])
        for path in paths:
            host.memory.delete((self.scope.tag, path))
        await host.publish(self.scope.top, paths)

    async def invalidate(self, key: object) -> None:
        """Delete a key, or with ``*`` as the last segment every key under the prefix
        (``["42", "*"]``, or ``"*"`` for the whole namespace): O(1), every tier and every
        instance."""
        return await self._op("cache.invalidate", self._invalidate(key))

    async def _invalidate(self, key: object) -> None:
        segs, star = split_key(key, wildcard=True)
        if not star:
            await self._delete([list(segs)])
            return
        host = self._host
        prefix = self.scope.path(segs)
        remote = self._remote()
        if remote is not None:
            try:
                await remote.bump(prefix)
            except TierError as exc:  # the same class (unavailable / refused), with context
                raise type(exc)(
                    f"keyed cache {self.scope.name}: wildcard invalidation did not reach "
                    f"Redis: {exc}",
                    tier="l2",
                ) from exc
        host.memory.bump(self.scope.tag, prefix)
        if host.durable is not None:
            await host.durable.delete_prefix(self._dkey(prefix) + ":" if prefix else self._dkey(""))
        await host.publish(self.scope.top, [f"{prefix}:*" if prefix else "*"])


class KeyedCache(Namespace):
    """The root of the keyed cache (``ds.cache``); see the module docstring."""

    def __init__(
        self,
        config: Config,
        counters: Counters,
        check_open: Callable[[], None],
        logger: Any,
        l3: L3Tier,
        metadata: Any,
    ) -> None:
        self.config = config
        self.counters = counters
        self.check_open = check_open
        self.log = logger
        self.observer = config.observer
        self.clock: Callable[[], float] = time.time
        self.memory = Memory(config.cache_max_entries, lambda: self.clock())
        self.local = LocalKV(lambda: self.clock())
        self.lease = Lease(_secs(config.cache_lease_ttl, "cache_lease_ttl") or 10.0, counters)
        self.tier: RedisTier | None = None
        self.bus: InvalidationBus | None = None
        self.table: CompiledSchema = compile_table(config, metadata)
        l3.register(self.table)
        self._durable = Durable(l3, self.table)
        self.durable: Durable | None = None  # set once the table is known to exist
        self._l1_ttl = _secs(config.cache_l1_ttl, "cache_l1_ttl")
        self._spawn: Callable[[Awaitable[Any]], None] | None = None
        self._refreshing: set[tuple[str, str]] = set()
        super().__init__(self, Scope.root(config.key_prefix))

    async def attach(
        self,
        tier: RedisTier | None,
        bus: InvalidationBus | None,
        spawn: Callable[[Awaitable[Any]], None],
    ) -> None:
        """Called by ``DataStore.connect``: the L2 tier, the bus, and the task owner. The
        durable tier is used once its table exists (checked here, and after ``migrate()``);
        until then EXPENSIVE values live in the tiers that are present."""
        self.tier = tier
        self.lease.tier = tier
        self.bus = bus
        self._spawn = spawn
        if await self._durable.exists():
            self.durable = self._durable
        spawn(self._purge_forever())

    def enable_durable(self) -> None:
        self.durable = self._durable

    def spawn(self, coro: Awaitable[Any]) -> None:
        if self._spawn is None:
            asyncio.ensure_future(coro).cancel()
            return
        self._spawn(coro)

    def l1_ttl(self, remaining: float | None) -> float | None:
        if remaining is None:
            return self._l1_ttl
        return remaining if self._l1_ttl is None else min(remaining, self._l1_ttl)

    def observe(
        self, op: str, name: str, secs: float, error: BaseException | None, tier: str | None
    ) -> None:
        observer = self.observer
        if observer is None:
            return
        try:
            observer.on_operation(op, name, secs, error, tier)
        except Exception:
            self.counters.errors += 1
            self.log.exception("observer failed for %s", op)

    def error(self, exc: BaseException, what: str) -> None:
        self.counters.errors += 1
        self.log.warning("%s: %s", what, exc)

    async def publish(self, top: str, paths: list[str]) -> None:
        bus = self.bus
        if bus is None or not paths:
            return
        schema = _BUS_PREFIX + top
        origin = bus.instance_id
        if len(paths) == 1:
            msg = Invalidation(schema=schema, op="delete", origin=origin, id=paths[0])
        else:
            msg = Invalidation(schema=schema, op="delete", origin=origin, ids=tuple(paths))
        if await bus.publish(msg):
            self.counters.invalidations_sent += 1

    def on_message(self, msg: Invalidation) -> bool:
        """A bus message for the keyed cache (True), applied to memory; else False."""
        if not msg.schema.startswith(_BUS_PREFIX):
            return False
        top = msg.schema[len(_BUS_PREFIX) :]
        prefix = self.config.key_prefix
        tag = "{" + (f"{prefix}:cache:{top}" if top else f"{prefix}:cache") + "}"
        self.counters.invalidations_received += 1
        self.memory.touch(tag)
        for raw, _ in msg.keys():  # noqa: SIM118 - a method
            path = str(raw)
            if path == "*":
                self.memory.bump(tag, "")
            elif path.endswith(":*"):
                self.memory.bump(tag, path[:-2])
            else:
                self.memory.delete((tag, path))
        return True

    def clear_memory(self) -> None:
        """The bus may have lost messages: memory cannot be trusted any more."""
        self.memory.clear()

    async def _purge_forever(self) -> None:
        interval = _secs(self.config.cache_purge_interval, "cache_purge_interval") or 60.0
        while True:
            await asyncio.sleep(interval)
            self.memory.sweep()
            if self.durable is None:
                continue
            try:
                await self.durable.purge(self.clock())
            except StrataError as exc:
                self.error(exc, "keyed cache: purging expired _strata_cache rows failed")

    async def purge(self) -> int:
        """Delete the expired rows of ``_strata_cache`` now (the DataStore also does it
        every ``Config.cache_purge_interval``). Returns how many were removed."""
        self.check_open()
        self.memory.sweep()
        return 0 if self.durable is None else await self.durable.purge(self.clock())

    def cached(self, ttl: Any = None, key: str | None = None, **options: Any) -> Callable[[F], F]:
        """Decorator over async functions; see ``strata.cache.decorator``."""
        from strata.cache.decorator import cached

        return cached(self, ttl=ttl, key=key, **options)

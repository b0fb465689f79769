"""DataStore: the router, and the only place that knows the tier order L1 -> L2 -> L3.

Read path (``get``)::

    L1 hit ─────────────────────────────────────────────► copy ─► caller
    L1 miss ─► negative cache hit ─► NotFoundError
            └► L2 hit ─► fill L1 (min(remaining, L1 ttl), version-checked) ─► copy ─► caller
               L2 miss ─► single flight: one L3 load per key per process
                          ├► row ─► fill L2 (Lua: only if newer) and L1 ─► copy ─► caller
                          └► none ─► remember briefly (negative cache) ─► NotFoundError

Write path (``set``)::

    WRITE_THROUGH            L3 upsert (new row version) ─► L2 ─► L1 ─► publish
    WRITE_THROUGH_L1_ASYNC   L3 upsert ─► L2 ─► L1 tombstone (filled on next read) ─► publish
    WRITE_BEHIND             L2 ─► L1 ─► queue L3 write (coalesced, flushed in batches) ─► publish

Every cached value carries its row version, and fills only replace older versions, so a
reader that loaded a row before a concurrent write cannot put the old value back. Codec,
encryption, TTLs, hooks, stats and error mapping are done here once, not in each tier.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

import msgpack
import orjson
import sqlalchemy as sa
from pydantic import BaseModel

from strata import wbjournal
from strata.codec import Tombstone
from strata.config import Config, WriteMode, hide_password, seconds
from strata.crypto import FieldCipher
from strata.errors import (
    CacheMissError,
    CodecError,
    InvalidQueryError,
    InvalidValueError,
    LifecycleError,
    MissingPrimaryKeyError,
    NotFoundError,
    SchemaDuplicateError,
    SchemaNotRegisteredError,
    SerializationError,
    StrataError,
    TierError,
    TierUnavailableError,
    UnsupportedOperationError,
)
from strata.invalidation import Invalidation, InvalidationBus
from strata.journal import DeadLetterEntry, Journal, JournalWrite
from strata.observability import Counters, Stats, default_logger
from strata.query import CompiledQuery, Q, Query, as_query, compile_count, compile_select
from strata.runtime import TOMBSTONE_TTL, SchemaRuntime, call_hook
from strata.schema import (
    VERSION_COLUMN,
    ColumnSpec,
    CompiledSchema,
    Schema,
    compile_schema,
    json_default,
    ttl_min,
)
from strata.tiers.base import L3Tier
from strata.tiers.postgres import PostgresTier
from strata.tiers.redis import RedisTier
from strata.tiers.sqlite import SqliteTier, to_sqlite
from strata.tx import Tx, TxContext
from strata.writebehind import DeadLetter, PendingWrite, WriteBehindQueue

if TYPE_CHECKING:
    from strata import migrations

__all__ = ["DataStore"]

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
SchemaRef = str | type[BaseModel]

_NEW, _OPEN, _CLOSED = "new", "open", "closed"
_REPLICA_RETRY = 5.0
_RESULT_MODELS = b"SQm"  # cached search result: msgpack list of codec envelopes
_RESULT_DICTS = b"SQd"  # cached projection: JSON list of dicts
_WARM_BATCH = 1000


class DataStore:
    """An async three-tier data store. Use ``async with DataStore(config) as ds:``."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config = config or Config()
        self._log = config.logger or default_logger()
        self._observer = config.observer
        self._cipher: FieldCipher | None = None
        if config.encryption_key is not None:
            self._cipher = FieldCipher(config.encryption_key, config.encryption_key_id)
        self._metadata = sa.MetaData()
        self._schemas: dict[str, SchemaRuntime] = {}
        self._by_model: dict[type[BaseModel], SchemaRuntime] = {}
        self._l3: L3Tier
        if config.dialect == "postgresql":
            self._l3 = PostgresTier(config, logger=self._log)
        else:
            self._l3 = SqliteTier(config, logger=self._log)
        self._l2: RedisTier | None = None
        self._bus: InvalidationBus | None = None
        if config.redis_url is not None:
            self._l2 = RedisTier(
                config.redis_url,
                timeout=config.redis_timeout,
                max_connections=config.redis_max_connections,
                logger=self._log,
                on_error=self._count_error,
                on_recover=self._on_l2_recover,
            )
        self._wb: WriteBehindQueue | None = None
        self._journal: Journal | None = None
        self._state = _NEW
        self._c = Counters()
        self._inflight: dict[tuple[str, Any], asyncio.Future[tuple[BaseModel | None, str]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._l2_missed: set[str] = set()  # keys written while L2 was down: dropped on recovery
        self._l2_missed_overflow = False
        self._l2_dirty_schemas: set[str] = set()  # L2 must be cleared for these on recovery
        self._last_version = 0
        self._replicas: dict[str, PostgresTier] = {}
        # Write-behind writes not yet in L3, so this instance reads its own writes.
        self._wb_shadow: dict[tuple[str, Any], tuple[BaseModel | None, int]] = {}
        self._replica_retry_at: dict[str, float] = {}
        self.instance_id = config.instance_id
        self._negative_ttl = _secs(config.negative_ttl)

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> DataStore:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        if self._state == _OPEN:
            return
        if self._state == _CLOSED:
            raise LifecycleError("this DataStore is closed; create a new one")
        await self._l3.connect()
        for url, replica in self._replicas.items():
            try:
                await replica.connect()
            except TierUnavailableError as exc:
                self._log.warning(
                    "read replica %s unavailable at connect, reading from the primary: %s",
                    hide_password(url),
                    exc,
                )
                self._count_error(exc)
                self._replica_retry_at[url] = time.monotonic() + _REPLICA_RETRY
        cfg = self.config
        try:
            if self._l2 is not None:
                await self._l2.connect()
                self._bus = InvalidationBus(
                    self._l2.client,
                    cfg.invalidation_channel,
                    self.instance_id,
                    on_message=self._on_invalidation,
                    on_reset=self._clear_l1,
                    heartbeat_interval=_secs(cfg.heartbeat_interval),
                    logger=self._log,
                    on_error=self._count_error,
                )
                await self._bus.start()
                if self._l2.available:
                    # Until the subscription is confirmed other instances' messages cannot
                    # arrive: start coherent rather than fill L1 and then drop it.
                    await self._bus.wait_connected(max(1.0, 4 * cfg.redis_timeout))
            self._wb = WriteBehindQueue(
                self._apply_write_behind,
                flush_interval=_secs(cfg.write_behind_flush_interval),
                flush_threshold=cfg.write_behind_flush_threshold,
                max_retry=cfg.write_behind_max_retry,
                retry_base_delay=_secs(cfg.write_behind_retry_base),
                retry_max_delay=_secs(cfg.write_behind_retry_max),
                max_pending=cfg.write_behind_max_pending,
                on_dead_letter=self._on_dead_letter,
                on_error=self._count_error,
                logger=self._log,
            )
            await self._wb.start()
            self._journal = wbjournal.start(self)
        except BaseException:
            await self._shutdown()
            raise
        self._state = _OPEN
        self._spawn(self._sweeper())

    async def close(self) -> None:
        """Flush write-behind, end background tasks, close connections. Idempotent."""
        if self._state != _OPEN:
            self._state = _CLOSED
            return
        self._state = _CLOSED
        await self._shutdown()

    async def _shutdown(self) -> None:
        try:
            if self._journal is not None:
                await self._journal.close(_secs(self.config.write_behind_claim_after))
            if self._wb is not None:
                await self._wb.close()
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._bus is not None:
                await self._bus.stop()
            if self._l2 is not None:
                await self._l2.close()
            for replica in self._replicas.values():
                await replica.close()
            await self._l3.close()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweeper(self) -> None:
        """Reclaim expired L1 entries and negative-cache marks, a slice at a time so a
        large cache never holds up the event loop."""
        interval = _secs(self.config.sweep_interval)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for rt in list(self._schemas.values()):
                if rt.l1 is not None:
                    while rt.l1.sweep(limit=1000) >= 1000:  # noqa: ASYNC110 - yields, not polls
                        await asyncio.sleep(0)
                if rt.negative:
                    rt.negative = {k: v for k, v in rt.negative.items() if v > now}

    def _check_open(self) -> None:
        if self._state != _OPEN:
            if self._state == _NEW:
                raise LifecycleError(
                    "DataStore is not connected: use `async with DataStore(...)` "
                    "or `await ds.connect()` first"
                )
            raise LifecycleError("DataStore is closed")

    # -- schemas -----------------------------------------------------------------------

    def register(self, schema: Schema) -> CompiledSchema:
        """Compile and add a schema. Raises a SchemaError subclass naming model and field."""
        if not isinstance(schema, Schema):
            from strata.errors import InvalidModelError

            raise InvalidModelError(f"register() takes a strata.Schema, got {schema!r}")
        model = schema.model
        if isinstance(model, type) and model in self._by_model:
            raise SchemaDuplicateError(
                f"model {model.__name__} is already registered as {self._by_model[model].name!r}",
                model=model.__name__,
            )
        probe_name = schema.name
        if probe_name is not None and probe_name in self._schemas:
            raise SchemaDuplicateError(f"a schema named {probe_name!r} is already registered")
        metadata = sa.MetaData()
        cs = compile_schema(
            schema, self.config, has_cipher=self._cipher is not None, metadata=metadata
        )
        if cs.name in self._schemas:
            raise SchemaDuplicateError(
                f"a schema named {cs.name!r} is already registered", model=cs.model.__name__
            )
        tables = {(t.schema, t.name) for t in self._metadata.tables.values()}
        if cs.has_l3 and (cs.table.schema, cs.table.name) in tables:
            raise SchemaDuplicateError(
                f"table {cs.qualified_table!r} already belongs to another schema",
                model=cs.model.__name__,
            )
        if cs.has_l3:
            cs.table.to_metadata(self._metadata)
            self._l3.register(cs)
            replica = cs.source.l3.read_replica if cs.source.l3 is not None else None
            if replica is not None and self._l3.dialect == "postgresql":
                tier = self._replicas.get(replica)
                if tier is None:
                    tier = self._replicas[replica] = PostgresTier(
                        self.config, url=replica, logger=self._log
                    )
                tier.register(cs)
        rt = SchemaRuntime(cs, self.config, self._cipher, self._on_hook_error)
        self._schemas[cs.name] = rt
        wbjournal.warn_if_embedded(self, rt)
        self._by_model[cs.model] = rt
        return cs

    @property
    def metadata(self) -> sa.MetaData:
        """The SQLAlchemy tables of every registered schema with an L3 tier (for Alembic)."""
        return self._metadata

    @property
    def schemas(self) -> Mapping[str, CompiledSchema]:
        return {name: rt.cs for name, rt in self._schemas.items()}

    def _rt(self, schema: SchemaRef) -> SchemaRuntime:
        try:
            if isinstance(schema, str):
                return self._schemas[schema]
            return self._by_model[schema]
        except (KeyError, TypeError):
            name = schema if isinstance(schema, str) else getattr(schema, "__name__", schema)
            raise SchemaNotRegisteredError(
                f"schema {name!r} is not registered (registered: {', '.join(self._schemas)})"
            ) from None

    def _next_version(self) -> int:
        """Versions for writes that do not go through L3 first (write-behind, l3=None):
        a hybrid clock in microseconds, strictly increasing within this process."""
        v = max(time.time_ns() // 1000, self._last_version + 1)
        self._last_version = v
        return v

    # -- reads -------------------------------------------------------------------------

    @overload
    async def get(self, schema: type[M], id: Any, *, force_l3: bool = False) -> M: ...
    @overload
    async def get(self, schema: str, id: Any, *, force_l3: bool = False) -> BaseModel: ...
    async def get(self, schema: SchemaRef, id: Any, *, force_l3: bool = False) -> BaseModel:
        """The value with this id: L1, then L2, then L3. Raises NotFoundError."""
        rt = self._rt(schema)
        if self._state is not _OPEN:
            self._check_open()
        c = self._c
        c.gets += 1
        id = rt.check_id(id)
        hooks = rt.hooks
        if hooks.before_get is not None:
            await call_hook(hooks.before_get, id)
        if not force_l3:
            l1 = rt.l1
            if l1 is not None:
                hit = l1.get(id)
                if hit is not None:
                    c.l1_hits += 1
                    out = hit.model_copy(deep=rt.mutable)
                    return out if hooks.after_get is None else await self._deliver(rt, out)
            if rt.negative:
                expires = rt.negative.get(id)
                if expires is not None:
                    if expires > time.monotonic():
                        c.negative_hits += 1
                        c.misses += 1
                        raise NotFoundError(rt.name, id)
                    del rt.negative[id]
        loaded, tier = await self._load(rt, id, force_l3)
        if loaded is None:
            c.misses += 1
            raise NotFoundError(rt.name, id)
        if tier == "l3":
            c.l3_hits += 1
        elif tier == "l2":
            c.l2_hits += 1
        else:
            c.l1_hits += 1
        return await self._deliver(rt, loaded)

    async def _deliver(self, rt: SchemaRuntime, value: BaseModel) -> BaseModel:
        if rt.hooks.after_get is not None:
            replaced = await call_hook(rt.hooks.after_get, value)
            if replaced is not None:
                return cast(BaseModel, replaced)
        return value

    async def _l2_get(
        self, rt: SchemaRuntime, ids: Sequence[Any]
    ) -> tuple[dict[Any, BaseModel], set[Any]]:
        """L2 lookups for ids (one round trip); hits fill L1. Returns caller copies, and the
        ids L2 holds a tombstone for (recently deleted: not to be loaded from L3)."""
        assert self._l2 is not None and rt.codec is not None
        answers = await self._l2.get_many([rt.key(i) for i in ids])
        out: dict[Any, BaseModel] = {}
        gone: set[Any] = set()
        for id, (payload, remaining) in zip(ids, answers, strict=True):
            if payload is None:
                continue
            try:
                decoded = rt.codec.decode(payload)
            except (CodecError, StrataError) as exc:
                self._count_error(exc)
                self._log.warning(
                    "%s: unreadable L2 payload for %r, refetching: %s", rt.name, id, exc
                )
                continue
            if isinstance(decoded, Tombstone):
                gone.add(id)
                continue
            value, version = decoded
            if rt.l1 is not None:
                rt.l1.set(id, rt.l1_copy(value), version, ttl=ttl_min(remaining, rt.l1_ttl))
            out[id] = value  # freshly decoded: owned by nobody else
        return out, gone

    async def _load(
        self, rt: SchemaRuntime, id: Any, force_l3: bool
    ) -> tuple[BaseModel | None, str]:
        """A miss in L1: L2, then L3, once per key per process at a time (single flight):
        concurrent misses of one key share one L2 lookup and at most one L3 query. Fills
        the faster tiers. Returns the caller's copy (or None) and the tier that had it."""
        key = (rt.name, id)
        if rt.mode is WriteMode.WRITE_BEHIND and rt.l3_on:
            queued = self._wb_shadow.get(key)
            if queued is not None:  # not in L3 yet: the queued write is the truth
                return (None if queued[0] is None else rt.out(queued[0])), "l1"
        if not force_l3:
            pending = self._inflight.get(key)
            if pending is not None:
                await asyncio.wait([pending])
                if not pending.cancelled():
                    shared, tier = pending.result()
                    return (None if shared is None else rt.out(shared)), tier
                # the loader was cancelled: load for ourselves
            else:
                # A load of this key may have finished while this caller was on its way:
                # its result is in L1 (or the negative cache) now; do not load it again.
                hit = rt.l1.get(id) if rt.l1 is not None else None
                if hit is not None:
                    return rt.out(hit), "l1"
                if rt.negative.get(id, 0.0) > time.monotonic():
                    return None, "miss"
        fut: asyncio.Future[tuple[BaseModel | None, str]] = (
            asyncio.get_running_loop().create_future()
        )
        if not force_l3:
            self._inflight[key] = fut
        epoch = rt.epoch
        value: BaseModel | None = None
        tier = "miss"
        try:
            if rt.l2_on and not force_l3:
                found, gone = await self._l2_get(rt, [id])
                if id in found:
                    value, tier = found[id], "l2"
                elif gone:  # a versioned tombstone: deleted after any row L3 may still hold
                    tier = "gone"
            if value is None and tier != "gone" and rt.l3_on:
                self._c.l3_queries += 1
                rows = await self._l3.get_many(rt.cs, [id])
                if rows:
                    sealed = rt.sealed(rows[0])
                    value, version = rt.from_row(rows[0])
                    tier = "l3"
                    if not force_l3:
                        await self._fill(rt, [(id, value, version)], {id: sealed})
                elif rt.epoch == epoch and not force_l3:
                    rt.negative[id] = time.monotonic() + self._negative_ttl
            fut.set_result((value, tier))
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: joiners get it through their own await
            raise
        finally:
            if self._inflight.get(key) is fut:
                del self._inflight[key]
        return (None if value is None else rt.out(value)), tier

    async def _fill(
        self,
        rt: SchemaRuntime,
        items: Sequence[tuple[Any, BaseModel, int]],
        sealed: Mapping[Any, dict[str, bytes]] | None = None,
    ) -> None:
        """Promote L3 values into L2 and L1; both refuse to replace a newer version.
        ``sealed`` holds the ciphertexts L3 returned, reused in L2 rather than re-encrypted."""
        if rt.l2_on and self._l2 is not None and rt.codec is not None:
            codec = rt.codec
            cts = sealed or {}
            await self._l2.set_many(
                [(rt.key(i), codec.encode(v, ver, cts.get(i)), rt.l2_ttl) for i, v, ver in items]
            )
        l1 = rt.l1
        if l1 is not None:
            ttl = ttl_min(rt.l2_ttl if rt.l2_on else None, rt.l1_ttl)
            for i, v, ver in items:
                l1.set(i, rt.l1_copy(v), ver, ttl=ttl)

    async def get_many(self, schema: SchemaRef, ids: Iterable[Any]) -> dict[Any, BaseModel]:
        """``{id: value}`` for the ids found (missing ids omitted); one round trip per tier."""
        rt = self._rt(schema)
        self._check_open()
        c = self._c
        wanted = list(dict.fromkeys(rt.check_id(i) for i in ids))
        c.gets += len(wanted)
        found: dict[Any, BaseModel] = {}
        missing = wanted
        if rt.l1 is not None:
            hits = rt.l1.get_many(missing)
            for i, v in hits.items():
                found[i] = v.model_copy(deep=rt.mutable)
            c.l1_hits += len(hits)
            missing = [i for i in missing if i not in hits]
        if missing and rt.l2_on:
            hits2, gone = await self._l2_get(rt, missing)
            found.update(hits2)
            c.l2_hits += len(hits2)
            missing = [i for i in missing if i not in hits2 and i not in gone]
        if missing and rt.l3_on and rt.mode is WriteMode.WRITE_BEHIND:
            for i in missing:
                queued = self._wb_shadow.get((rt.name, i))
                if queued is not None and queued[0] is not None:
                    found[i] = rt.out(queued[0])
            missing = [i for i in missing if (rt.name, i) not in self._wb_shadow]
        if missing and rt.l3_on:
            c.l3_queries += 1
            rows = await self._l3.get_many(rt.cs, missing)
            sealed = {r[rt.pk_column]: rt.sealed(r) for r in rows} if rt.encrypted else None
            loaded = [rt.from_row(r) for r in rows]
            items = [(getattr(v, rt.pk_field), v, ver) for v, ver in loaded]
            await self._fill(rt, items, sealed)
            for i, v, _ in items:
                found[i] = v
            c.l3_hits += len(items)
        c.misses += len(wanted) - len(found)
        if rt.hooks.after_get is not None:
            for i in list(found):
                found[i] = await self._deliver(rt, found[i])
        return {i: found[i] for i in wanted if i in found}

    async def exists(self, schema: SchemaRef, id: Any) -> bool:
        """Whether a row with this id exists (L1, then L2, then L3; fills nothing)."""
        rt = self._rt(schema)
        self._check_open()
        id = rt.check_id(id)
        if rt.l1 is not None and id in rt.l1:
            return True
        if rt.l2_on:
            assert self._l2 is not None and rt.codec is not None
            ((payload, _),) = await self._l2.get_many([rt.key(id)])
            if payload is not None:
                try:
                    decoded = rt.codec.decode(payload)
                except (CodecError, StrataError) as exc:
                    self._count_error(exc)
                else:
                    return not isinstance(decoded, Tombstone)
        if rt.mode is WriteMode.WRITE_BEHIND and (rt.name, id) in self._wb_shadow:
            return self._wb_shadow[(rt.name, id)][0] is not None
        if not rt.l3_on:
            return False
        self._c.l3_queries += 1
        return bool(await self._l3.exists_many(rt.cs, [id]))

    # -- writes ------------------------------------------------------------------------

    @overload
    async def set(self, schema: type[M], value: M | Mapping[str, Any]) -> M: ...
    @overload
    async def set(self, schema: str, value: BaseModel | Mapping[str, Any]) -> BaseModel: ...
    async def set(self, schema: SchemaRef, value: Any) -> BaseModel:
        """Store a value (its id is its primary key field). Returns the value as stored,
        with auto timestamps filled in."""
        rt = self._rt(schema)
        self._check_open()
        self._c.sets += 1
        stored = await self._write(rt, [value])
        return stored[0]

    async def set_many(self, schema: SchemaRef, values: Iterable[Any]) -> list[BaseModel]:
        """Store many values: one L3 statement (COPY on PostgreSQL), one L2 round trip and
        one invalidation message. A repeated id keeps its last value."""
        rt = self._rt(schema)
        self._check_open()
        values = list(values)
        self._c.sets += len(values)
        if not values:
            return []
        return await self._write(rt, values)

    async def _prepare(self, rt: SchemaRuntime, values: Sequence[Any]) -> dict[Any, BaseModel]:
        """Validate, run before_set, check the key and stamp timestamps: a private copy of
        each value by id (a repeated id keeps its last value)."""
        cs = rt.cs
        prepared: dict[Any, BaseModel] = {}
        for raw in values:
            value = rt.check_value(raw)
            if rt.hooks.before_set is not None:
                replaced = await call_hook(rt.hooks.before_set, value)
                if replaced is not None:
                    value = rt.check_value(replaced)
            id = getattr(value, rt.pk_field, None)
            if id is None:
                raise MissingPrimaryKeyError(
                    f"{rt.name}: {cs.model.__name__}.{rt.pk_field} (the primary key) is not set",
                    schema=rt.name,
                )
            id = rt.check_id(id)
            prepared[id] = rt.stamp(value)
        return prepared

    async def _write(self, rt: SchemaRuntime, values: Sequence[Any]) -> list[BaseModel]:
        cs = rt.cs
        prepared = await self._prepare(rt, values)
        ids = list(prepared)
        if cs.auto_now_add and (rt.mode is WriteMode.WRITE_BEHIND or not rt.l3_on):
            await self._carry_created(rt, prepared)
        behind = rt.mode is WriteMode.WRITE_BEHIND and rt.l3_on
        # Write-behind builds its L3 rows at flush time: a coalesced write never pays for one.
        rows = {i: rt.to_row(v, i) for i, v in prepared.items()} if rt.l3_on and not behind else {}
        sealed = {i: rt.sealed(row) for i, row in rows.items()} if rt.encrypted else None
        if behind:
            items = await self._write_behind(rt, prepared)
        elif rt.l3_on:
            items = await self._write_through(rt, prepared, rows)
        else:
            items = [(i, v, self._next_version()) for i, v in prepared.items()]
        self._after_write(rt, ids)
        await self._cache_writes(rt, items, sealed)
        await self._publish(rt, "set", items)
        if rt.hooks.after_set is not None:
            for _, v, _ in items:
                await call_hook(rt.hooks.after_set, rt.out(v))
        # Each v is this call's private stamped copy (the caches keep copies of their own);
        # only write-behind's queue still holds it, so only then does the caller get a copy.
        return [rt.out(v) if behind else v for _, v, _ in items]

    async def _write_through(
        self,
        rt: SchemaRuntime,
        prepared: dict[Any, BaseModel],
        rows: dict[Any, dict[str, Any]],
        *,
        tx: Any = None,
        versioned: bool = False,
    ) -> list[tuple[Any, BaseModel, int]]:
        """The L3 upsert; returns (id, value as stored, row version). With ``versioned``
        the rows carry their own version and a newer stored row wins (it is left out)."""
        self._c.l3_queries += 1
        returned = await self._l3.upsert_many(
            rt.cs, list(rows.values()), tx=tx, versioned=versioned
        )
        items = []
        keep = rt.cs.auto_now_add
        for i, v in prepared.items():
            ret = returned.get(i)
            if ret is None:  # versioned: L3 already holds a newer write of this row
                continue
            if keep:  # an existing row keeps its own auto_now_add values
                kept = {f: ret[rt.cs.by_field[f].name] for f in keep}
                if any(getattr(v, f) != kv for f, kv in kept.items()):
                    v = v.model_copy(update=kept)
            items.append((i, v, int(ret[VERSION_COLUMN])))
        return items

    async def _write_behind(
        self, rt: SchemaRuntime, prepared: dict[Any, BaseModel]
    ) -> list[tuple[Any, BaseModel, int]]:
        if self._journaled(rt):
            return await wbjournal.write(self, rt, prepared)
        assert self._wb is not None
        items = []
        for i, v in prepared.items():
            version = self._next_version()
            self._wb_shadow[(rt.name, i)] = (v, version)
            await self._wb.put(PendingWrite(schema=rt.name, id=i, op="set", row=v, version=version))
            items.append((i, v, version))
        return items

    async def _carry_created(self, rt: SchemaRuntime, prepared: dict[Any, BaseModel]) -> None:
        """Write-behind and L3-less schemas cannot ask L3 for stored ``auto_now_add``
        values: the cached copy of the row (L1, the write-behind queue, then L2) has them."""
        fields = rt.cs.auto_now_add
        known: dict[Any, BaseModel] = {}
        for i in prepared:
            cached = rt.l1.get(i) if rt.l1 is not None else None
            if cached is None:
                queued = self._wb_shadow.get((rt.name, i))
                cached = queued[0] if queued is not None else None
            if cached is not None:
                known[i] = cached
        rest = [i for i in prepared if i not in known]
        if rest and rt.l2_on:
            found, _ = await self._l2_get(rt, rest)
            known.update(found)
        for i, cached in known.items():
            prepared[i] = prepared[i].model_copy(update={f: getattr(cached, f) for f in fields})

    def _after_write(self, rt: SchemaRuntime, ids: Iterable[Any]) -> None:
        """Forget what a concurrent reader may have learnt before this write."""
        rt.epoch += 1
        for i in ids:
            rt.negative.pop(i, None)
            self._inflight.pop((rt.name, i), None)

    async def _cache_writes(
        self,
        rt: SchemaRuntime,
        items: Sequence[tuple[Any, BaseModel, int]],
        sealed: Mapping[Any, dict[str, bytes]] | None = None,
    ) -> None:
        if rt.l2_on and not self._journaled(rt):  # the journal script wrote L2 already
            assert self._l2 is not None and rt.codec is not None
            codec = rt.codec
            cts = sealed or {}
            payloads = [
                (rt.key(i), codec.encode(v, ver, cts.get(i)), rt.l2_ttl) for i, v, ver in items
            ]
            await self._l2.set_many(payloads, bump=rt.gen_key)
            if not self._l2.available:
                self._remember_l2_missed(k for k, _, _ in payloads)
        l1 = rt.l1
        if l1 is not None:
            if rt.mode is WriteMode.WRITE_THROUGH_L1_ASYNC:
                for i, _, ver in items:
                    l1.delete(i, ver)  # refuse older fills; the next read fills it
            else:
                for i, v, ver in items:
                    l1.set(i, rt.l1_copy(v), ver)

    async def delete(self, schema: SchemaRef, id: Any) -> None:
        """Delete from every tier. Idempotent: deleting a missing id is not an error."""
        rt = self._rt(schema)
        self._check_open()
        self._c.deletes += 1
        await self._delete(rt, [rt.check_id(id)])

    async def delete_many(self, schema: SchemaRef, ids: Iterable[Any]) -> None:
        rt = self._rt(schema)
        self._check_open()
        wanted = list(dict.fromkeys(rt.check_id(i) for i in ids))
        self._c.deletes += len(wanted)
        if wanted:
            await self._delete(rt, wanted)

    async def _delete(self, rt: SchemaRuntime, ids: list[Any]) -> None:
        if self._journaled(rt):
            version = await wbjournal.delete(self, rt, ids)
        elif rt.mode is WriteMode.WRITE_BEHIND and rt.l3_on:
            assert self._wb is not None
            version = self._next_version()
            for i in ids:
                self._wb_shadow[(rt.name, i)] = (None, version)
                await self._wb.put(
                    PendingWrite(schema=rt.name, id=i, op="delete", row=None, version=version)
                )
        elif rt.l3_on:
            self._c.l3_queries += 1
            version = await self._l3.delete_many(rt.cs, ids)
        else:
            version = self._next_version()
        await self._cache_deletes(rt, ids, version)

    async def _cache_deletes(self, rt: SchemaRuntime, ids: list[Any], version: int) -> None:
        """Versioned tombstones in L2 and L1, then tell the other instances."""
        self._after_write(rt, ids)
        if rt.l2_on and not self._journaled(rt):
            assert self._l2 is not None and rt.codec is not None
            tomb = rt.codec.tombstone(version)
            keys = [rt.key(i) for i in ids]
            await self._l2.set_many([(k, tomb, TOMBSTONE_TTL) for k in keys], bump=rt.gen_key)
            if not self._l2.available:
                self._remember_l2_missed(keys)
        if rt.l1 is not None:
            for i in ids:
                rt.l1.delete(i, version)
        await self._publish(rt, "delete", [(i, None, version) for i in ids])

    # -- queries -----------------------------------------------------------------------

    def _compile(
        self, rt: SchemaRuntime, q: Q | Query | None, *, count: bool = False
    ) -> CompiledQuery:
        if not rt.l3_on:
            raise UnsupportedOperationError(
                f"{rt.name} has no L3 tier (l3=None): search and count need a database; "
                "use get / get_many by id"
            )
        dialect = self._l3.dialect
        to_db = _sqlite_arg if dialect == "sqlite" else None
        if count:
            return compile_count(q, rt.cs, dialect, to_db=to_db)  # type: ignore[arg-type]
        return compile_select(
            q,
            rt.cs,
            dialect,  # type: ignore[arg-type]
            default_limit=self.config.default_query_limit,
            to_db=to_db,
        )

    async def _query_rows(
        self, rt: SchemaRuntime, cq: CompiledQuery, *, replica: bool = True
    ) -> list[dict[str, Any]]:
        self._c.l3_queries += 1
        tier = self._replica_for(rt) if replica else None
        if tier is not None:
            try:
                await tier.ensure_connected()  # down at connect(): retried once it is due
                return await tier.fetch(cq.sql, cq.args, schema=rt.cs)
            except TierUnavailableError as exc:
                self._replica_down(rt, exc)
        return await self._l3.fetch(cq.sql, cq.args, schema=rt.cs)

    def _projection(
        self, rt: SchemaRuntime, cq: CompiledQuery, rows: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Projected rows as dicts keyed by field name (encrypted fields decrypted)."""
        by_column = rt.cs.by_column
        enc = [by_column[c] for c in cq.columns if by_column[c].meta.encrypted]
        if enc and rt.pk_column not in cq.columns:
            raise InvalidQueryError(
                f"{rt.name}: fields() with an encrypted field must include the primary key "
                f"{rt.pk_field!r} (it is part of the decryption context)",
                identifier=enc[0].field,
            )
        out = []
        for row in rows:
            for spec in enc:
                blob = row.get(spec.name)
                if blob is not None:
                    assert self._cipher is not None
                    aad = FieldCipher.aad(rt.aad_table, row[rt.pk_column], spec.name)
                    row[spec.name] = orjson.loads(self._cipher.decrypt(blob, aad))
            out.append({by_column[c].field: row[c] for c in cq.columns})
        return out

    @overload
    async def search(self, schema: type[M], q: Q | Query | None = None) -> list[M]: ...
    @overload
    async def search(self, schema: str, q: Q | Query | None = None) -> list[BaseModel]: ...
    async def search(self, schema: SchemaRef, q: Q | Query | None = None) -> list[Any]:
        """Rows matching the query, from L3 (the read replica when configured). Whole rows
        come back as models and fill L1 and L2 (unless ``force_l3()``); a ``fields(...)``
        projection comes back as dicts keyed by field name and never touches the caches.
        ``force_l2()`` serves only a cached result (see ``search_cached``)."""
        rt = self._rt(schema)
        self._check_open()
        query = as_query(q)
        if query.tier == "l2":
            return await self.search_cached(schema, q)
        cq = self._compile(rt, query)
        rows = await self._query_rows(rt, cq)
        if cq.projection:
            return self._projection(rt, cq, rows)
        loaded = [rt.from_row(r) for r in rows]
        if query.tier != "l3" and loaded:
            await self._fill(rt, [(getattr(v, rt.pk_field), v, ver) for v, ver in loaded])
        return [v for v, _ in loaded]

    async def search_cached(self, schema: SchemaRef, q: Q | Query | None = None) -> list[Any]:
        """``search``, with the whole result list kept in L2. Any write to the schema, from
        any instance, makes every cached result of the schema unreachable at once (a
        per-schema generation number is part of the key). Without L2 it is ``search``."""
        rt = self._rt(schema)
        self._check_open()
        query = as_query(q)
        if not rt.l2_on or query.tier == "l3":
            if query.tier == "l2":
                raise CacheMissError(f"{rt.name}: force_l2() needs an L2 (Redis) tier")
            return await self.search(schema, query)
        assert self._l2 is not None and rt.codec is not None
        cq = self._compile(rt, query)
        gen_key = rt.gen_key
        generation, payload = await self._l2.get_generation(gen_key, rt.query_prefix, cq.digest())
        if payload is not None:
            try:
                return self._decode_result(rt, cq, payload)
            except (CodecError, StrataError, ValueError) as exc:
                self._count_error(exc)
                self._log.warning(
                    "%s: unreadable cached search result, refetching: %s", rt.name, exc
                )
        if query.tier == "l2":
            raise CacheMissError(f"{rt.name}: no cached result for this query (force_l2)")
        rows = await self._query_rows(rt, cq)
        if cq.projection:
            result: list[Any] = self._projection(rt, cq, rows)
            encoded = _RESULT_DICTS + orjson.dumps(result, default=json_default)
            if any(rt.cs.by_column[c].meta.encrypted for c in cq.columns):
                return result  # plaintext of an encrypted field never goes to Redis
        else:
            loaded = [rt.from_row(r) for r in rows]
            if loaded:
                await self._fill(rt, [(getattr(v, rt.pk_field), v, ver) for v, ver in loaded])
            result = [v for v, _ in loaded]
            codec = rt.codec
            encoded = _RESULT_MODELS + msgpack.packb([codec.encode(v, ver) for v, ver in loaded])
        key = f"{rt.query_prefix}{generation}:{cq.digest()}"
        await self._l2.set_raw(key, encoded, rt.l2_ttl)
        return result

    def _decode_result(self, rt: SchemaRuntime, cq: CompiledQuery, payload: bytes) -> list[Any]:
        assert rt.codec is not None
        if payload.startswith(_RESULT_DICTS):
            return cast(list[Any], orjson.loads(payload[len(_RESULT_DICTS) :]))
        if not payload.startswith(_RESULT_MODELS):
            raise CodecError("not a cached search result")
        out = []
        for item in msgpack.unpackb(payload[len(_RESULT_MODELS) :]):
            decoded = rt.codec.decode(item)
            if isinstance(decoded, Tombstone):
                raise CodecError("tombstone inside a cached search result")
            out.append(decoded[0])
        return out

    async def count(self, schema: SchemaRef, q: Q | Query | None = None) -> int:
        """How many rows match (order, limit, offset and fields are ignored)."""
        rt = self._rt(schema)
        self._check_open()
        cq = self._compile(rt, q, count=True)
        rows = await self._query_rows(rt, cq)
        return int(next(iter(rows[0].values()))) if rows else 0

    def _replica_for(self, rt: SchemaRuntime) -> PostgresTier | None:
        url = rt.replica_url
        if url is None:
            return None
        tier = self._replicas.get(url)
        if tier is None or self._replica_retry_at.get(url, 0.0) > time.monotonic():
            return None
        return tier

    def _replica_down(self, rt: SchemaRuntime, exc: BaseException) -> None:
        url = rt.replica_url
        assert url is not None
        if self._replica_retry_at.get(url, 0.0) == 0.0:
            self._log.warning(
                "read replica %s unavailable, reading from the primary: %s", hide_password(url), exc
            )
        self._count_error(exc)
        self._replica_retry_at[url] = time.monotonic() + _REPLICA_RETRY

    # -- transactions ------------------------------------------------------------------

    def tx(self, *, isolation: str | None = None, timeout: float | None = None) -> TxContext:
        """``async with ds.tx() as tx:``: one L3 transaction; caches and other instances
        see its writes only after it commits. ``isolation``: ``"read_committed"``
        (PostgreSQL's default), ``"repeatable_read"`` or ``"serializable"``; ``timeout``
        (seconds) bounds the whole block (``TxTimeoutError``). Nested, it is a savepoint."""
        return TxContext(self, isolation=isolation, timeout=timeout)

    async def retry_tx(
        self,
        fn: Callable[[Tx], Awaitable[T]],
        *,
        attempts: int = 3,
        isolation: str | None = None,
        timeout: float | None = None,
        backoff: float = 0.01,
    ) -> T:
        """Run ``fn(tx)`` in a transaction, again (up to ``attempts`` times in all) when it
        fails with a retryable ``SerializationError``; the last one is raised."""
        if attempts < 1:
            raise InvalidValueError("retry_tx needs attempts >= 1")
        for attempt in range(attempts):
            try:
                async with self.tx(isolation=isolation, timeout=timeout) as tx:
                    return await fn(tx)
            except SerializationError:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(backoff * (2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")  # pragma: no cover

    # -- cache control -----------------------------------------------------------------

    async def invalidate(self, schema: SchemaRef, id: Any) -> None:
        """Drop one id from L1 and L2 on every instance (L3 is untouched)."""
        rt = self._rt(schema)
        self._check_open()
        await self._forget_cached(rt, [rt.check_id(id)])

    async def _forget_cached(self, rt: SchemaRuntime, ids: list[Any]) -> None:
        self._after_write(rt, ids)
        if rt.l1 is not None:
            rt.l1.delete_many(ids)
        if rt.l2_on:
            assert self._l2 is not None
            keys = [rt.key(i) for i in ids]
            await self._l2.delete_many(keys)
            await self._bump_generation(rt)
            if not self._l2.available:
                self._remember_l2_missed(keys)
        await self._publish(rt, "set", [(i, None, None) for i in ids])

    async def invalidate_all(self, schema: SchemaRef) -> None:
        """Drop every cached value of the schema from L1 and L2 on every instance."""
        rt = self._rt(schema)
        self._check_open()
        rt.epoch += 1
        rt.negative.clear()
        if rt.l1 is not None:
            rt.l1.clear()
        if rt.l2_on:
            await self._drop_l2_schema(rt)
        await self._publish_raw(
            Invalidation(schema=rt.name, op="invalidate_all", origin=self.instance_id)
        )

    async def _drop_l2_schema(self, rt: SchemaRuntime) -> None:
        """Every L2 key of the schema, and its cached search results (new generation).
        If Redis is unreachable this is redone when it comes back."""
        assert self._l2 is not None
        try:
            await self._l2.delete_pattern(f"{rt.key_prefix}*")
            await self._l2.incr(rt.gen_key)
        except TierError as exc:
            self._count_error(exc)
            self._log.warning(
                "%s: could not clear L2 now, will when Redis is back: %s", rt.name, exc
            )
            self._l2_dirty_schemas.add(rt.name)

    async def _bump_generation(self, rt: SchemaRuntime) -> None:
        assert self._l2 is not None
        try:
            await self._l2.incr(rt.gen_key)
        except TierError as exc:
            self._count_error(exc)
            self._l2_dirty_schemas.add(rt.name)

    async def warm_cache(
        self,
        schema: SchemaRef,
        limit: int = 0,
        *,
        progress: Callable[[int], Any] | None = None,
    ) -> int:
        """Load rows from L3 into L2 and L1 in batches; ``limit=0`` loads every row.
        ``progress(loaded_so_far)`` is called after each batch. Returns the count."""
        rt = self._rt(schema)
        self._check_open()
        if not rt.l3_on:
            raise UnsupportedOperationError(f"{rt.name} has no L3 tier to warm from")
        if limit < 0:
            raise InvalidValueError("warm_cache limit must be 0 (all) or positive")
        loaded = 0
        batch = _WARM_BATCH if not limit else min(limit, _WARM_BATCH)
        async for rows in self._l3.iterate(rt.cs, batch):
            if limit:
                rows = rows[: limit - loaded]
            self._c.l3_queries += 1
            items = []
            for row in rows:
                v, ver = rt.from_row(row)
                items.append((getattr(v, rt.pk_field), v, ver))
            await self._fill(rt, items)
            loaded += len(items)
            if progress is not None:
                progress(loaded)
            if limit and loaded >= limit:
                break
        return loaded

    async def flush_dirty(self, timeout: float | None = None) -> None:
        """Wait until every queued write-behind write is in L3 (or dead-lettered)."""
        self._check_open()
        if self._wb is not None:
            await self._wb.flush(timeout)
        if self._journal is not None:
            await self._journal.flush(timeout)

    def dead_letters(self) -> list[DeadLetter]:
        """Write-behind writes that failed ``write_behind_max_retry`` times."""
        return self._wb.dead_letters() if self._wb is not None else []

    async def list_dead_letters(self, schema: SchemaRef | None = None) -> list[DeadLetterEntry]:
        """Write-behind writes L3 refused, from Redis (every instance sees them) and from
        this process's in-process queue."""
        self._check_open()
        return await wbjournal.dead_letters(self, schema)

    async def retry_dead_letters(
        self, schema: SchemaRef | None = None, ids: Iterable[Any] | None = None
    ) -> int:
        """Journal the dead letters again (after the cause is fixed); returns how many."""
        self._check_open()
        return await wbjournal.retry(self, schema, ids)

    async def drop_dead_letters(
        self, schema: SchemaRef | None = None, ids: Iterable[Any] | None = None
    ) -> int:
        """Forget dead letters for good; returns how many."""
        self._check_open()
        return await wbjournal.drop(self, schema, ids)

    # -- write-behind ------------------------------------------------------------------

    def _journaled(self, rt: SchemaRuntime) -> bool:
        return self._journal is not None and wbjournal.journaled(self._journal, rt)

    async def _apply_journal(self, schema: str, writes: list[JournalWrite]) -> None:
        await wbjournal.apply(self, self._schemas[schema], writes)

    async def _on_journal_refused(self, letter: DeadLetterEntry) -> None:
        await wbjournal.refused(self, letter)

    async def _apply_write_behind(self, schema: str, writes: list[PendingWrite]) -> None:
        rt = self._schemas[schema]
        sets = []
        for w in writes:
            if w.op == "set":  # the queued model becomes its L3 row only now
                row = rt.to_row(w.row, w.id)
                row[VERSION_COLUMN] = w.version
                sets.append(row)
        deletes = [w.id for w in writes if w.op == "delete"]
        if sets:
            self._c.l3_queries += 1
            await self._l3.upsert_many(rt.cs, sets, versioned=True, returning=False)
        if deletes:
            self._c.l3_queries += 1
            await self._l3.delete_many(rt.cs, deletes)
        self._forget_shadow(writes)
        if rt.l2_on:  # a search cached before the flush did not see these rows
            await self._bump_generation(rt)

    def _forget_shadow(self, writes: Iterable[PendingWrite]) -> None:
        """These writes reached L3 (or were given up): reads may go to L3 for them again,
        unless a newer write of the same key is still queued."""
        for w in writes:
            key = (w.schema, w.id)
            queued = self._wb_shadow.get(key)
            if queued is not None and queued[1] <= w.version:
                del self._wb_shadow[key]

    async def _on_dead_letter(self, letter: DeadLetter) -> None:
        self._c.dead_letters += 1
        self._forget_shadow([letter.write])
        rt = self._schemas.get(letter.write.schema)
        self._log.error(
            "write-behind gave up on %s %r after %d attempts: %s",
            letter.write.schema,
            letter.write.id,
            letter.write.attempts,
            letter.error,
        )
        if rt is not None:
            # The caches hold a value L3 never got: drop it so reads show what is durable.
            await self._forget_cached(rt, [letter.write.id])
        if rt is not None and rt.hooks.on_write_error is not None:
            await call_hook(
                rt.hooks.on_write_error, letter.write.id, letter.write.row, letter.error
            )

    # -- invalidation ------------------------------------------------------------------

    async def _publish(
        self, rt: SchemaRuntime, op: str, items: Sequence[tuple[Any, Any, int | None]]
    ) -> None:
        if self._bus is None or (not rt.l2_on and rt.l1 is None):
            return
        if len(items) == 1:
            i, _, ver = items[0]
            msg = Invalidation(
                schema=rt.name,
                op=op,  # type: ignore[arg-type]
                origin=self.instance_id,
                id=_wire_id(i),
                version=ver,
                shape=rt.cs.shape,
            )
        else:
            msg = Invalidation(
                schema=rt.name,
                op=op,  # type: ignore[arg-type]
                origin=self.instance_id,
                ids=tuple(_wire_id(i) for i, _, _ in items),
                versions=tuple(ver for _, _, ver in items),
                shape=rt.cs.shape,
            )
        await self._publish_raw(msg)

    async def _publish_raw(self, msg: Invalidation) -> None:
        if self._bus is not None and await self._bus.publish(msg):
            self._c.invalidations_sent += 1

    def _on_invalidation(self, msg: Invalidation) -> None:
        rt = self._schemas.get(msg.schema)
        if rt is None:
            return
        self._c.invalidations_received += 1
        rt.epoch += 1
        if msg.op == "invalidate_all":
            rt.negative.clear()
            if rt.l1 is not None:
                rt.l1.clear()
            return
        foreign: list[tuple[Any, int | None]] = []
        for raw_id, version in msg.keys():  # noqa: SIM118 - a method, not dict.keys
            try:
                id = rt.coerce(raw_id)
            except (TypeError, ValueError):
                continue
            rt.negative.pop(id, None)
            self._inflight.pop((rt.name, id), None)
            if rt.l1 is not None:
                rt.l1.delete(id, version)
            foreign.append((id, version))
        if rt.l2_on and msg.shape is not None and msg.shape != rt.cs.shape and foreign:
            # The writer caches this schema under another shape (other code, or a rolling
            # deploy): our own L2 copies of these rows are stale now.
            self._spawn(self._drop_foreign_l2(rt, foreign, deleted=msg.op == "delete"))

    async def _drop_foreign_l2(
        self, rt: SchemaRuntime, keys: list[tuple[Any, int | None]], *, deleted: bool
    ) -> None:
        """A delete leaves our versioned tombstone (a tombstone means "deleted"); a set
        just removes our copy so the next read takes the row from L3."""
        assert self._l2 is not None and rt.codec is not None
        if deleted:
            tombs = [(rt.key(i), rt.codec.tombstone(v), TOMBSTONE_TTL) for i, v in keys if v]
            await self._l2.set_many(tombs)
        await self._l2.delete_many([rt.key(i) for i, v in keys if not (deleted and v)])

    def _clear_l1(self) -> None:
        """Messages may have been lost: nothing in L1 can be trusted any more."""
        for rt in self._schemas.values():
            rt.epoch += 1
            rt.negative.clear()
            if rt.l1 is not None:
                rt.l1.clear()

    def _on_l2_recover(self) -> None:
        self._clear_l1()
        self._spawn(self._drop_l2_missed())

    def _remember_l2_missed(self, keys: Iterable[str]) -> None:
        for k in keys:
            if len(self._l2_missed) >= 100_000:
                self._l2_missed_overflow = True
                return
            self._l2_missed.add(k)

    async def _drop_l2_missed(self) -> None:
        """Keys written while Redis was unreachable may hold older values there: drop them,
        and start a new search-result generation for every schema (bumps were lost too)."""
        assert self._l2 is not None
        keys, self._l2_missed = list(self._l2_missed), set()
        overflow, self._l2_missed_overflow = self._l2_missed_overflow, False
        dirty, self._l2_dirty_schemas = self._l2_dirty_schemas, set()
        try:
            for start in range(0, len(keys), 1000):
                await self._l2.delete_many(keys[start : start + 1000])
            for rt in self._schemas.values():
                if not rt.l2_on:
                    continue
                if overflow or rt.name in dirty:
                    await self._l2.delete_pattern(f"{rt.key_prefix}*")
                await self._l2.incr(rt.gen_key)
        except TierError as exc:  # down again: the next recovery redoes all of it
            self._count_error(exc)
            self._l2_missed.update(keys)
            self._l2_missed_overflow = overflow
            self._l2_dirty_schemas |= dirty | {rt.name for rt in self._schemas.values()}

    def _count_error(self, exc: BaseException) -> None:
        """Errors a component has already logged (it logs outages once, not per call)."""
        self._c.errors += 1

    def _on_hook_error(self, exc: BaseException) -> None:
        self._c.errors += 1
        self._log.warning("strata: on_evict hook failed: %r", exc)

    # -- migrations, stats -------------------------------------------------------------

    async def migrate(self, *, dry_run: bool = False) -> migrations.MigrationReport:
        """Create missing tables, columns and indexes (additive only; idempotent; safe when
        several instances start at once). Drift is reported, never applied."""
        self._check_open()
        l3 = [rt.cs for rt in self._schemas.values() if rt.l3_on]
        from strata import migrations  # Alembic is heavy: imported when needed

        return await migrations.migrate(self.config, l3, dry_run=dry_run)

    async def migrate_from(self, directory: str) -> list[migrations.MigrationRecord]:
        self._check_open()
        from strata import migrations

        return await migrations.migrate_from(self.config, directory)

    async def migration_status(self) -> list[migrations.MigrationRecord]:
        self._check_open()
        from strata import migrations

        return await migrations.migration_status(self.config)

    def stats(self) -> Stats:
        l1 = sum(len(rt.l1) for rt in self._schemas.values() if rt.l1 is not None)
        evictions = sum(rt.l1.evictions for rt in self._schemas.values() if rt.l1 is not None)
        return self._c.snapshot(
            l1_entries=l1,
            l1_evictions=evictions,
            dirty_count=(self._wb.pending if self._wb is not None else 0)
            + (self._journal.approx_pending if self._journal is not None else 0),
        )

    def __repr__(self) -> str:
        l3 = getattr(self._l3, "url", None) or getattr(self._l3, "path", "")
        return (
            f"<DataStore {self._state} l3={hide_password(str(l3))} schemas={list(self._schemas)}>"
        )


def _sqlite_arg(spec: ColumnSpec, value: Any) -> Any:
    return to_sqlite(spec.value_kind, value)


def _secs(value: Any) -> float:
    return seconds(value, "interval") or 0.0


def _wire_id(id: Any) -> str | int:
    return id if isinstance(id, str | int) else str(id)

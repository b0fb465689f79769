"""DataStore: the public face of Strata. Lifecycle, register, and the public verbs.

Every verb is one line: ``self._run(op, schema, work, *args)``, the operation template of
``router/template.py`` (lifecycle, schema resolution, counting, the Observer, error
mapping), over the router's work: reads (``router/reads.py``), the write path of each
write mode (``router/writes.py``), version-checked writes (``router/update.py``), queries
(``router/queries.py``), coherence (``router/coherence.py``). Transactions are ``strata.tx``,
on ``router/txhost.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

import sqlalchemy as sa
from pydantic import BaseModel

from strata import oplog
from strata.cache import KeyedCache
from strata.config import Config, hide_password
from strata.crypto import FieldCipher
from strata.errors import (
    InvalidModelError,
    LifecycleError,
    SchemaDuplicateError,
)
from strata.hooks import HookRunner
from strata.journal.host import JournalHost
from strata.observability import Counters, Stats, default_logger
from strata.query import Projection, Q, Query
from strata.router.binding import Binding
from strata.router.coherence import Coherence
from strata.router.core import Core, Route
from strata.router.lifecycle import Lifecycle, default_l2, default_l3
from strata.router.queries import Queries
from strata.router.reads import Reads
from strata.router.template import CLOSED, NEW, OPEN, OperationTemplate
from strata.router.txhost import RouterTxHost
from strata.router.update import UpdateFn, VersionedWrites
from strata.router.writes import Writes, choose_path
from strata.schema import CompiledSchema, Schema, compile_schema
from strata.tiers.base import Id, L1Factory, L1Tier, L2Tier, L3Tier
from strata.tiers.memory import MemoryTier
from strata.tx import Tx, TxContext, retry
from strata.writebehind import DeadLetter

if TYPE_CHECKING:
    from strata import migrations

__all__ = ["DataStore", "SchemaRef"]

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
SchemaRef = str | type[BaseModel]


class DataStore:
    """An async three-tier data store. Use ``async with DataStore(config) as ds:``.

    Tiers may be injected (``strata.tiers.base`` has their protocols):

    - ``l3``: an ``L3Tier`` instance, the source of truth (default: PostgreSQL or SQLite
      from ``config.database_url``);
    - ``l2``: an ``L2Tier`` instance shared by every schema with an L2 policy (default:
      Redis from ``config.redis_url``; without either, no L2). The invalidation bus runs on
      it when it ``subscribes``;
    - ``l1``: a *factory*, called once per registered schema with an L1 policy with its
      ``CompiledSchema``, returning that schema's own ``L1Tier`` (L1 is per schema: its
      bounds and eviction are the schema's). Default: ``MemoryTier`` from the MemPolicy.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        l1: L1Factory | None = None,
        l2: L2Tier | None = None,
        l3: L3Tier | None = None,
    ) -> None:
        self.config = config = config or Config()
        self._log = config.logger or default_logger()
        self._cipher: FieldCipher | None = None
        if config.encryption_key is not None:
            self._cipher = FieldCipher(config.encryption_key, config.encryption_key_id)
        self._metadata = sa.MetaData()
        self._c = Counters()
        self._hooks = HookRunner(self._log, self._absorbed)
        l3 = l3 if l3 is not None else default_l3(config, self._log)
        if l2 is None:
            l2 = default_l2(config, self._log, self._absorbed, self._on_l2_recover)
        self._l1_factory = l1
        self._core = core = Core(config, self._log, l3, l2, self._c, self._hooks, self._cipher)
        self._coherence = Coherence(core)
        self._reads = Reads(core)
        self._writes = Writes(core, self._coherence, self._reads)
        self._queries = Queries(core, self._reads)
        self._versioned = VersionedWrites(core, self._coherence, self._writes)
        self._ops = ops = OperationTemplate(self._c, config.observer, self._log)
        self._run = ops.run
        ops.rebind = self._rebind
        self._get, self._l1_hit = self._reads.get, self._reads.l1_hit
        self._routes = ops.routes
        self._tx_host = RouterTxHost(ops, core, self._reads, self._writes, self._queries)
        self.instance_id = config.instance_id
        # The keyed cache (strata/cache) rides the same tiers and bus; its durable table
        # `_strata_cache` joins the L3 metadata.
        self.cache = KeyedCache(config, self._c, self._check_open, self._log, l3, self._metadata)
        core.attachments.append(self.cache)
        self._life = Lifecycle(
            core,
            self._coherence,
            self._writes,
            self._queries,
            self._hooks,
            self.cache,
            JournalHost(core, self._coherence),
            self._absorbed,
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> DataStore:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        if self._ops.state is OPEN:
            return
        if self._ops.state is CLOSED:
            raise LifecycleError("this DataStore is closed; create a new one")
        await self._life.start()
        self._ops.state = OPEN
        self._ops.loop = asyncio.get_running_loop()
        oplog.log_connect(self, self._core.l2, self._core.bus is not None)

    async def close(self) -> None:
        """Flush write-behind, end background tasks, close connections. Idempotent."""
        if self._ops.state is not OPEN:
            self._ops.state = CLOSED
            return
        await self._ensure_loop()
        self._ops.state = CLOSED
        self._ops.loop = None
        await self._shutdown()
        oplog.log_close(self)

    # -- a DataStore used on a new event loop (asyncio.run() called again) ---------------

    async def _ensure_loop(self) -> None:
        if self._ops.state is OPEN and self._ops.loop is not asyncio.get_running_loop():
            await self._rebind()

    async def _rebind(self) -> None:
        """The loop ``connect()`` ran on has ended: see router/lifecycle.py."""
        self._ops.state, self._ops.loop = NEW, None
        await self._life.rebind(self.connect)

    async def _shutdown(self) -> None:
        await self._life.shutdown()

    def _check_open(self) -> None:
        self._ops.check_open()

    # -- schemas -----------------------------------------------------------------------

    def register(self, schema: Schema) -> CompiledSchema:
        """Compile and add a schema. Raises a SchemaError subclass naming model and field."""
        if not isinstance(schema, Schema):
            raise InvalidModelError(f"register() takes a strata.Schema, got {schema!r}")
        routes = self._core.routes
        model = schema.model
        if isinstance(model, type) and model in self._routes:
            raise SchemaDuplicateError(
                f"model {model.__name__} is already registered as {self._routes[model].name!r}",
                model=model.__name__,
            )
        if schema.name is not None and schema.name in routes:
            raise SchemaDuplicateError(f"a schema named {schema.name!r} is already registered")
        cs = compile_schema(
            schema, self.config, has_cipher=self._cipher is not None, metadata=sa.MetaData()
        )
        if cs.name in routes:
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
            self._core.l3.register(cs)
            replica = cs.source.l3.read_replica if cs.source.l3 is not None else None
            if replica is not None and self._core.l3.dialect == "postgresql":
                self._queries.add_replica(cs, replica)
        binding = Binding(cs, self.config, self._cipher, l2=self._core.l2 is not None)
        rt = Route(binding, self._make_l1(cs), choose_path(binding, self._core, self._coherence))
        routes[cs.name] = rt
        self._routes[cs.name] = self._routes[cs.model] = rt
        return cs

    def _make_l1(self, cs: CompiledSchema) -> L1Tier | None:
        policy = cs.source.l1
        if policy is None:
            return None
        if self._l1_factory is not None:
            return self._l1_factory(cs)
        on_evict = cs.hooks.on_evict
        fire = self._hooks.fire
        return MemoryTier(
            ttl=cs.l1_ttl,
            max_entries=policy.max_entries,
            max_bytes=policy.max_bytes,
            eviction=policy.eviction,
            # A copy: held values share their fields set (tiers/memory_copy.py).
            on_evict=(lambda k, v: fire("on_evict", on_evict, k, v.model_copy()))
            if on_evict
            else None,
            on_error=lambda exc: self._hooks.failed("on_evict", exc),
            tombstone_ttl=self.config.tombstone_seconds,
        )

    @property
    def metadata(self) -> sa.MetaData:
        """The SQLAlchemy tables of every registered schema with an L3 tier (for Alembic)."""
        return self._metadata

    @property
    def schemas(self) -> Mapping[str, CompiledSchema]:
        return {name: rt.b.cs for name, rt in self._core.routes.items()}

    def _absorbed(self, exc: BaseException) -> None:
        self._core.count_error(exc)

    # -- reads -------------------------------------------------------------------------

    @overload
    def get(self, schema: type[M], id: Id, *, force_l3: bool = False) -> Coroutine[Any, Any, M]: ...
    @overload
    def get(
        self, schema: str, id: Id, *, force_l3: bool = False
    ) -> Coroutine[Any, Any, BaseModel]: ...
    def get(
        self, schema: SchemaRef, id: Id, *, force_l3: bool = False
    ) -> Coroutine[Any, Any, BaseModel]:
        """``await ds.get(schema, id)``: the value with this id, from L1, then L2, then L3.
        Raises NotFoundError. (A plain method returning the template's coroutine: the L1
        hit, the hottest path, then costs one coroutine, not two.)"""
        return self._run("get", schema, self._get, id, force_l3, fast=self._l1_hit)

    @overload
    async def get_many(self, schema: type[M], ids: Iterable[Id]) -> dict[Id, M]: ...
    @overload
    async def get_many(self, schema: str, ids: Iterable[Id]) -> dict[Id, BaseModel]: ...
    async def get_many(self, schema: SchemaRef, ids: Iterable[Id]) -> dict[Id, Any]:
        """``{id: value}`` for the ids found (missing ids omitted); one round trip per tier."""
        return await self._run("get_many", schema, self._reads.get_many, ids)

    async def exists(self, schema: SchemaRef, id: Id) -> bool:
        """Whether a row with this id exists (L1, then L2, then L3; fills nothing)."""
        return await self._run("exists", schema, self._reads.exists, id)

    # -- writes ------------------------------------------------------------------------

    @overload
    async def set(self, schema: type[M], value: M | Mapping[str, Any]) -> M: ...
    @overload
    async def set(self, schema: str, value: BaseModel | Mapping[str, Any]) -> BaseModel: ...
    async def set(self, schema: SchemaRef, value: Any) -> BaseModel:
        """Store a value (its id is its primary key field). Returns the value as stored,
        with auto timestamps filled in."""
        return await self._run("set", schema, self._set_one, value)

    async def _set_one(self, rt: Route, value: Any) -> tuple[BaseModel, None]:
        self._c.sets += 1
        return (await self._writes.set_many(rt, [value]))[0], None

    @overload
    async def set_many(
        self, schema: type[M], values: Iterable[M | Mapping[str, Any]]
    ) -> list[M]: ...
    @overload
    async def set_many(
        self, schema: str, values: Iterable[BaseModel | Mapping[str, Any]]
    ) -> list[BaseModel]: ...
    async def set_many(self, schema: SchemaRef, values: Iterable[Any]) -> list[Any]:
        """Store many values: one L3 statement (COPY on PostgreSQL), one L2 round trip and
        one invalidation message. A repeated id keeps its last value."""
        return await self._run("set_many", schema, self._set_many, values)

    async def _set_many(self, rt: Route, values: Iterable[Any]) -> tuple[list[BaseModel], None]:
        values = list(values)
        self._c.sets += len(values)
        return (await self._writes.set_many(rt, values) if values else []), None

    async def delete(self, schema: SchemaRef, id: Id) -> None:
        """Delete from every tier. Idempotent: deleting a missing id is not an error."""
        await self._run("delete", schema, self._delete, [id])

    async def delete_many(self, schema: SchemaRef, ids: Iterable[Id]) -> None:
        await self._run("delete_many", schema, self._delete, ids)

    async def _delete(self, rt: Route, ids: Iterable[Any]) -> tuple[None, None]:
        wanted = list(dict.fromkeys(rt.b.check_id(i) for i in ids))
        self._c.deletes += len(wanted)
        if wanted:
            await self._writes.delete_many(rt, wanted)
        return None, None

    # -- queries -----------------------------------------------------------------------

    # A Projection is a Q: the first overload that matches wins (so the ignore).
    @overload
    async def search(self, schema: SchemaRef, q: Projection) -> list[dict[str, Any]]: ...  # type: ignore[overload-overlap]
    @overload
    async def search(self, schema: type[M], q: Q | Query | None = None) -> list[M]: ...
    @overload
    async def search(self, schema: str, q: Q | Query | None = None) -> list[BaseModel]: ...
    async def search(self, schema: SchemaRef, q: Q | Query | None = None) -> list[Any]:
        """Rows matching the query, from L3 (the read replica when configured). Whole rows
        come back as models and fill L1 and L2 (unless ``force_l3()``); a ``fields(...)``
        projection comes back as dicts keyed by field name and never touches the caches.
        ``force_l2()`` serves only a cached result (see ``search_cached``)."""
        return await self._run("search", schema, self._queries.search, q)

    @overload
    async def search_cached(self, schema: SchemaRef, q: Projection) -> list[dict[str, Any]]: ...  # type: ignore[overload-overlap]
    @overload
    async def search_cached(self, schema: type[M], q: Q | Query | None = None) -> list[M]: ...
    @overload
    async def search_cached(self, schema: str, q: Q | Query | None = None) -> list[BaseModel]: ...
    async def search_cached(self, schema: SchemaRef, q: Q | Query | None = None) -> list[Any]:
        """``search``, with the whole result list kept in L2. Any write to the schema, from
        any instance, makes every cached result of the schema unreachable at once (a
        per-schema generation number is part of the key). Without L2 it is ``search``."""
        return await self._run("search_cached", schema, self._queries.search_cached, q)

    async def count(self, schema: SchemaRef, q: Q | Query | None = None) -> int:
        """How many rows match (order, limit, offset and fields are ignored)."""
        return await self._run("count", schema, self._queries.count, q)

    # -- transactions ------------------------------------------------------------------

    def tx(self, *, isolation: str | None = None, timeout: float | None = None) -> TxContext:
        """``async with ds.tx() as tx:``: one L3 transaction; caches and other instances
        see its writes only after it commits. ``isolation``: ``"read_committed"``
        (PostgreSQL's default), ``"repeatable_read"`` or ``"serializable"``; ``timeout``
        (seconds) bounds the whole block (``TxTimeoutError``). Nested, it is a savepoint."""
        return TxContext(self._tx_host, isolation=isolation, timeout=timeout)

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
        return await retry(
            lambda: self.tx(isolation=isolation, timeout=timeout), fn, attempts, backoff
        )

    # -- version-checked writes (router/update.py) -------------------------------------

    @overload
    async def update(
        self, schema: type[M], id: Id, fn: UpdateFn[M], *, attempts: int = ...
    ) -> M: ...
    @overload
    async def update(
        self, schema: str, id: Id, fn: UpdateFn[Any], *, attempts: int = ...
    ) -> BaseModel: ...
    async def update(self, schema: SchemaRef, id: Id, fn: Any, *, attempts: int = 10) -> Any:
        """Read from L3, ``fn(value)``, write only if the row's version is unchanged; else
        again (``attempts`` in all), then ``ConflictError``. See ``strata.router.update``."""
        return await self._run("update", schema, self._versioned.update, id, fn, attempts)

    @overload
    async def patch(self, schema: type[M], id: Id, /, **fields: Any) -> M: ...
    @overload
    async def patch(self, schema: str, id: Id, /, **fields: Any) -> BaseModel: ...
    async def patch(self, schema: SchemaRef, id: Id, /, **fields: Any) -> Any:
        """Write only the named fields of an existing row, in L3, with a new version."""
        return await self._run("patch", schema, self._versioned.patch, id, fields)

    # -- cache control -----------------------------------------------------------------

    async def invalidate(self, schema: SchemaRef, id: Id) -> None:
        """Drop one id from L1 and L2 on every instance (L3 is untouched)."""
        await self._run("invalidate", schema, self._invalidate, id)

    async def _invalidate(self, rt: Route, id: Any) -> tuple[None, None]:
        await self._coherence.forget_cached(rt, [rt.b.check_id(id)])
        return None, None

    async def invalidate_all(self, schema: SchemaRef) -> None:
        """Drop every cached value of the schema from L1 and L2 on every instance."""
        await self._run("invalidate_all", schema, self._invalidate_all)

    async def _invalidate_all(self, rt: Route) -> tuple[None, None]:
        await self._coherence.invalidate_all(rt)
        return None, None

    async def warm_cache(
        self,
        schema: SchemaRef,
        limit: int = 0,
        *,
        progress: Callable[[int], Any] | None = None,
    ) -> int:
        """Load rows from L3 into L2 and L1 in batches; ``limit=0`` loads every row.
        ``progress(loaded_so_far)`` is called after each batch. Returns the count."""
        return await self._run("warm_cache", schema, self._queries.warm, limit, progress)

    async def flush_dirty(self, timeout: float | None = None) -> None:
        """Wait until every queued write-behind write is in L3 (or dead-lettered)."""
        await self._run("flush_dirty", None, self._flush, timeout)

    async def _flush(self, _: None, timeout: float | None) -> tuple[None, None]:
        if self._core.wb is not None:
            await self._core.wb.flush(timeout)
        if self._core.journal is not None:
            await self._core.journal.flush(timeout)
        return None, None

    # Dead letters: write-behind writes L3 refused (with Redis kept there, seen by every
    # instance); of one schema, of some ids. Retry writes them again (a new version).
    async def dead_letters(
        self, schema: SchemaRef | None = None, ids: Any = None
    ) -> list[DeadLetter]:
        return await self._run("dead_letters", None, self._dead, "dead_letters", schema, ids)

    async def retry_dead_letters(self, schema: SchemaRef | None = None, ids: Any = None) -> int:
        return await self._run("retry_dead_letters", None, self._dead, "retry", schema, ids)

    async def drop_dead_letters(self, schema: SchemaRef | None = None, ids: Any = None) -> int:
        return await self._run("drop_dead_letters", None, self._dead, "drop", schema, ids)

    async def _dead(self, _: None, verb: str, schema: Any, ids: Any) -> tuple[Any, None]:
        return await getattr(self._life.journal_host, verb)(schema, ids), None

    def _on_l2_recover(self) -> None:
        self._coherence.on_l2_recover()

    # -- migrations, stats -------------------------------------------------------------

    async def migrate(self, *, dry_run: bool = False) -> migrations.MigrationReport:
        """Create missing tables, columns and indexes (additive only; idempotent; safe when
        several instances start at once). Drift is reported, never applied."""
        self._check_open()
        await self._ensure_loop()
        l3 = [rt.b.cs for rt in self._core.routes.values() if rt.b.l3_on]
        l3.append(self.cache.table)  # the keyed cache's durable table, created additively
        from strata import migrations  # Alembic is heavy: imported when needed

        oplog.quiet_alembic()
        report = await migrations.migrate(self.config, l3, dry_run=dry_run)
        oplog.log_migrate(self._log, report)
        if not dry_run:
            self.cache.enable_durable()  # the keyed cache's table exists now
        return report

    async def migrate_from(self, directory: str) -> list[migrations.MigrationRecord]:
        self._check_open()
        from strata import migrations

        return await migrations.migrate_from(self.config, directory)

    async def migration_status(self) -> list[migrations.MigrationRecord]:
        self._check_open()
        from strata import migrations

        return await migrations.migration_status(self.config)

    def stats(self) -> Stats:
        l1s = [rt.l1 for rt in self._core.routes.values() if rt.l1 is not None]
        wb = self._core.wb
        return self._c.snapshot(
            l1_entries=sum(len(l1) for l1 in l1s),
            l1_evictions=sum(l1.evictions for l1 in l1s),
            dirty_count=(wb.pending if wb is not None else 0)
            + (self._core.journal.pending if self._core.journal is not None else 0),
        )

    def __repr__(self) -> str:
        l3 = self._core.l3
        where = getattr(l3, "url", None) or getattr(l3, "path", "")
        return (
            f"<DataStore {self._ops.state} l3={hide_password(str(where))} "
            f"schemas={list(self._core.routes)}>"
        )

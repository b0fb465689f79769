"""The write path: one ``WritePath`` object per write mode, chosen once at ``register``.

    WriteThrough          L3 upsert (new row version) ─► L2 ─► L1 ─► publish
    WriteThroughL1Async   L3 upsert ─► L2 ─► L1 tombstone (filled on next read) ─► publish
    WriteBehind           queue (coalesced, flushed in batches) ─► L2 ─► L1 ─► publish
    JournaledWriteBehind  (Redis) L2 value + Redis Stream journal entry + publish, one
                          script (strata/journal) ─► L1; peers flush what it left
                          (its own module: router/journaled.py)
    CacheOnly             (l3=None) hybrid-clock version ─► L2 ─► L1 ─► publish

``Writes`` does what every mode shares (validate, hooks, stamp, the cache step, publish);
the mode-specific steps are the path's. Adding a mode is adding a class here and a line in
``choose_path``: nothing else in strata/ looks at ``WriteMode``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel

from strata.config import WriteMode
from strata.errors import MissingPrimaryKeyError
from strata.journal.host import delete_older
from strata.router.binding import Binding
from strata.router.coherence import Coherence
from strata.router.core import Core, Route
from strata.router.created import carry_created
from strata.router.reads import Reads
from strata.router.upserts import Item, upsert
from strata.schema import VERSION_COLUMN
from strata.tiers.base import L1Tier
from strata.writebehind import DeadLetter, PendingWrite

__all__ = [
    "CacheOnly",
    "Item",
    "WriteBehind",
    "WritePath",
    "WriteThrough",
    "WriteThroughL1Async",
    "Writes",
    "choose_path",
    "upsert",
]

Sealed = Mapping[Any, dict[str, bytes]]
Queued = tuple[BaseModel | None, int]
"""(value, or None for a delete; version) of a write L3 may not have yet"""


class WritePath(Protocol):
    """How one schema's writes reach L3 (or not), and what L1 keeps of them."""

    carries_created: bool
    """Stored ``auto_now_add`` values come from the caches (L3 is not asked first)."""
    shares_values: bool
    """The path keeps the written objects (a queue): callers get copies."""
    writes_l2: bool
    """The path writes L2 itself (with the journal entry): the cache step leaves L2 be."""
    lags: bool
    """L3 may be older than an acknowledged write (write-behind): see ``journaled``."""

    async def write(self, rt: Route, prepared: dict[Any, BaseModel]) -> tuple[list[Item], Sealed]:
        """Make the values durable (or queue them); ``sealed``: ciphertexts L2 reuses."""

    async def delete(self, rt: Route, ids: list[Any]) -> int:
        """Delete the ids; returns the tombstone version."""

    def fill_l1(self, rt: Route, l1: L1Tier, items: Sequence[Item]) -> None: ...

    def pending(self, id: Any) -> tuple[BaseModel | None, int] | None:
        """A queued write of this id not in L3 yet: (value or None for a delete, version)."""

    async def journaled(self, rt: Route, ids: Sequence[Any]) -> dict[Any, Queued]:
        """The newest write of each id the Redis journal holds (not in L3 yet, or not yet
        released): one round trip; empty when there is no journal or Redis fails."""

    def saw(self, id: Any, version: int) -> None:
        """A read of this instance served this version of the id from Redis."""

    def own_write(self, id: Any) -> Queued | None:
        """This instance's acknowledged write of the id L3 may not have (write-behind),
        unless it read a newer one since: what a read serves when L3 cannot be asked."""

    async def settle(self, timeout: float) -> None:
        """Before a search (which reads L3): wait until this instance's acknowledged writes
        of the schema are in L3; WriteBehindError after ``timeout``."""

    def unsure(self, id: Any) -> bool:
        """L3 has no row of the id, and ``check_l3`` needs its delete version to tell a
        later delete from a newer write Redis lost (asked only then)."""

    def check_l3(
        self, rt: Route, id: Any, version: int | None, deleted: int | None = None
    ) -> Queued | None:
        """An L3 row of the id at ``version`` (None: no row; ``deleted``: the version of
        its newest delete L3 remembers, when ``unsure``) is about to be served: this
        instance's own newer acknowledged write of it, not known to be in L3, instead; or
        TierUnavailableError if it served a newer write that only Redis, unreachable now
        or since restarted without its data, held (reads never go back in time); None:
        serve the row."""

    def tx_version(self) -> int | None:
        """In a transaction: the version rows carry themselves (None: L3 assigns one)."""

    def superseded(self, ids: Iterable[Any]) -> None:
        """A transaction committed these ids: queued writes of them must never apply."""

    def forget(self, writes: Iterable[PendingWrite]) -> None:
        """Queued writes reached L3 or were given up (the queue's callbacks)."""


class WriteThrough:
    carries_created = False
    shares_values = False
    writes_l2 = False
    lags = False

    def __init__(self, core: Core) -> None:
        self.core = core

    async def write(self, rt: Route, prepared: dict[Any, BaseModel]) -> tuple[list[Item], Sealed]:
        mapper = rt.b.rows
        rows = mapper.to_rows(prepared)
        sealed = {i: mapper.sealed(row) for i, row in rows.items()} if mapper.encrypted else {}
        return await upsert(self.core, rt.b, prepared, rows), sealed

    async def delete(self, rt: Route, ids: list[Any]) -> int:
        self.core.c.l3_queries += 1
        return await self.core.l3.delete_many(rt.b.cs, ids)

    def fill_l1(self, rt: Route, l1: L1Tier, items: Sequence[Item]) -> None:
        l1_copy = rt.b.l1_copy
        for i, v, ver in items:
            l1.set(i, l1_copy(v), ver)

    def pending(self, id: Any) -> tuple[BaseModel | None, int] | None:
        return None

    async def journaled(self, rt: Route, ids: Sequence[Any]) -> dict[Any, Queued]:
        return {}

    def saw(self, id: Any, version: int) -> None:
        return None

    def own_write(self, id: Any) -> Queued | None:
        return None

    async def settle(self, timeout: float) -> None:
        return None

    def unsure(self, id: Any) -> bool:
        return False

    def check_l3(
        self, rt: Route, id: Any, version: int | None, deleted: int | None = None
    ) -> Queued | None:
        return None

    def tx_version(self) -> int | None:
        return None

    def superseded(self, ids: Iterable[Any]) -> None:
        return None

    def forget(self, writes: Iterable[PendingWrite]) -> None:
        return None


class WriteThroughL1Async(WriteThrough):
    def fill_l1(self, rt: Route, l1: L1Tier, items: Sequence[Item]) -> None:
        for i, _, ver in items:
            l1.delete(i, ver)  # refuse older fills; the next read fills it


class CacheOnly(WriteThrough):
    """No L3 (``l3=None``): versions come from the hybrid clock."""

    carries_created = True

    def __init__(self, core: Core, inner: WriteThrough) -> None:
        super().__init__(core)
        self._inner = inner

    async def write(self, rt: Route, prepared: dict[Any, BaseModel]) -> tuple[list[Item], Sealed]:
        return [(i, v, self.core.next_version()) for i, v in prepared.items()], {}

    async def delete(self, rt: Route, ids: list[Any]) -> int:
        return self.core.next_version()

    def fill_l1(self, rt: Route, l1: L1Tier, items: Sequence[Item]) -> None:
        self._inner.fill_l1(rt, l1, items)


class WriteBehind(WriteThrough):
    """L3 later: the queue coalesces per key and flushes in batches. Queued writes are kept
    in a shadow so this instance reads its own writes even after L1 eviction."""

    carries_created = True
    shares_values = True
    lags = True

    def __init__(self, core: Core, schema: str) -> None:
        super().__init__(core)
        self.schema = schema
        self.shadow: dict[Any, tuple[BaseModel | None, int]] = {}

    async def write(self, rt: Route, prepared: dict[Any, BaseModel]) -> tuple[list[Item], Sealed]:
        # Rows are built at flush time: a coalesced write never pays for one.
        wb, core = self.core.wb, self.core
        assert wb is not None
        items = []
        for i, v in prepared.items():
            version = core.next_version()
            self.shadow[i] = (v, version)
            await wb.put(PendingWrite(schema=self.schema, id=i, op="set", row=v, version=version))
            items.append((i, v, version))
        return items, {}

    async def delete(self, rt: Route, ids: list[Any]) -> int:
        wb = self.core.wb
        assert wb is not None
        version = self.core.next_version()
        for i in ids:
            self.shadow[i] = (None, version)
            await wb.put(
                PendingWrite(schema=self.schema, id=i, op="delete", row=None, version=version)
            )
        return version

    def fill_l1(self, rt: Route, l1: L1Tier, items: Sequence[Item]) -> None:
        share = rt.b.l1_share  # the queue's (or journal's) private copy: callers get copies
        for i, v, ver in items:
            l1.set(i, share(v), ver)

    def pending(self, id: Any) -> tuple[BaseModel | None, int] | None:
        return self.shadow.get(id) if self.shadow else None

    def own_write(self, id: Any) -> Queued | None:
        return self.pending(id)

    async def settle(self, timeout: float) -> None:
        if self.shadow and self.core.wb is not None:
            await self.core.wb.flush(timeout)

    def tx_version(self) -> int | None:
        # The schema's versions are write-behind clock values: a transaction keeps to them.
        return self.core.next_version()

    def superseded(self, ids: Iterable[Any]) -> None:
        ids = list(ids)
        if self.core.wb is not None and ids:
            self.core.wb.cancel(self.schema, ids)
        for i in ids:
            self.shadow.pop(i, None)

    def forget(self, writes: Iterable[PendingWrite]) -> None:
        """These writes reached L3 (or were given up): reads may go to L3 for them again,
        unless a newer write of the same key is still queued."""
        for w in writes:
            queued = self.shadow.get(w.id)
            if queued is not None and queued[1] <= w.version:
                del self.shadow[w.id]


def choose_path(binding: Binding, core: Core, coherence: Coherence) -> WritePath:
    """The one place that maps a schema's write mode to its path."""
    mode = binding.mode
    through = WriteThroughL1Async(core) if mode is WriteMode.WRITE_THROUGH_L1_ASYNC else None
    if not binding.l3_on:
        return CacheOnly(core, through or WriteThrough(core))
    if mode is WriteMode.WRITE_BEHIND:
        hidden = sorted(binding.cs.omit_cache_fields)
        if binding.l2_on and core.journaling and hidden:
            # The journal carries the whole row to L3; omit_cache fields never go to Redis.
            core.log.getChild("write_behind").warning(
                "%s: write-behind keeps its queue in this process, not in the Redis journal, "
                "because %s never go to Redis (omit_cache): a crash loses the acknowledged "
                "writes not yet flushed",
                binding.name,
                ", ".join(hidden),
            )
            return WriteBehind(core, binding.name)
        if binding.l2_on and core.journaling:
            if core.journal is not None:  # registered after connect
                core.journal.add(binding.name, binding.gen_key.removesuffix(":gen"), binding.l2_ttl)
            from strata.router.journaled import JournaledWriteBehind  # it builds on these

            return JournaledWriteBehind(core, binding.name, coherence)
        core.log.getChild("write_behind").warning(
            "%s: write-behind without Redis keeps its queue in this process: a crash loses "
            "the acknowledged writes not yet flushed (up to write_behind_flush_interval, or "
            "write_behind_flush_threshold writes, plus any retrying); configure redis_url "
            "(and an L2 policy) for the crash-safe journal",
            binding.name,
        )
        return WriteBehind(core, binding.name)
    return through or WriteThrough(core)


class Writes:
    """What every write shares, whatever its path."""

    def __init__(self, core: Core, coherence: Coherence, reads: Reads) -> None:
        self.core = core
        self.coh = coherence
        self.reads = reads

    async def set_many(self, rt: Route, values: Sequence[Any]) -> list[BaseModel]:
        core, b, path = self.core, rt.b, rt.path
        prepared = await self.prepare(rt, values)
        if b.cs.auto_now_add and path.carries_created:
            await carry_created(rt, prepared, self.reads)
        items, sealed = await path.write(rt, prepared)
        core.forget_readers(rt, prepared)
        if b.l2_on:
            await self.cache_writes(rt, items, sealed, l2_done=path.writes_l2)
        elif rt.l1 is not None:  # what cache_writes does without L2
            path.fill_l1(rt, rt.l1, items)
        if core.bus is not None:  # no bus: nobody to tell
            await self.coh.publish(rt, "set", items)
        after_set = b.hooks.after_set
        if after_set is not None:
            for _, v, _ in items:
                await core.hooks.call(after_set, b.out(v))
        # Each v is this call's private stamped copy (the caches keep copies of their own);
        # only a path that keeps the objects (a queue) makes the caller take a copy.
        if path.shares_values:
            return [b.out(v) for _, v, _ in items]
        return [v for _, v, _ in items]

    async def prepare(self, rt: Route, values: Sequence[Any]) -> dict[Any, BaseModel]:
        """Validate, run before_set, check the key and stamp timestamps: a private copy of
        each value by id (a repeated id keeps its last value)."""
        b = rt.b
        before_set = b.hooks.before_set
        prepared: dict[Any, BaseModel] = {}
        now = datetime.now(UTC)  # one time for the batch's auto timestamps
        model, sized = b.model, b.codec is not None and b.codec.max_bytes is not None
        for raw in values:
            value = raw if type(raw) is model else b.check_value(raw)
            if before_set is not None:
                replaced = await self.core.hooks.call(before_set, value)
                if replaced is not None:
                    value = b.check_value(replaced)
            id = getattr(value, b.pk_field, None)
            if id is None:
                raise MissingPrimaryKeyError(
                    f"{rt.name}: {b.model.__name__}.{b.pk_field} (the primary key) is not set",
                    schema=rt.name,
                )
            id = b.check_id(id)
            prepared[id] = stamped = b.stamp(value, now)
            if sized:
                b.check_size(stamped)  # refused before any tier is written
        return prepared

    async def cache_writes(
        self,
        rt: Route,
        items: Sequence[Item],
        sealed: Sealed | None = None,
        *,
        l2_done: bool = False,
    ) -> None:
        """``l2_done``: the path wrote L2 itself (the journal), unless Redis was away."""
        core, b = self.core, rt.b
        if b.l2_on and l2_done:
            assert core.l2 is not None
            if not core.l2.available:
                self.coh.remember_l2_missed(b.key(i) for i, _, _ in items)
        elif b.l2_on:
            assert core.l2 is not None and b.codec is not None
            codec = b.codec
            cts = sealed or {}
            payloads = [
                (b.key(i), codec.encode(v, ver, cts.get(i)), b.l2_ttl) for i, v, ver in items
            ]
            await self.coh.write_l2(rt, payloads, items)
            if not core.l2.available:
                self.coh.remember_l2_missed(k for k, _, _ in payloads)
        if rt.l1 is not None:
            rt.path.fill_l1(rt, rt.l1, items)

    async def delete_many(self, rt: Route, ids: list[Any]) -> None:
        version = await rt.path.delete(rt, ids)
        await self.cache_deletes(rt, ids, version, l2_done=rt.path.writes_l2)

    async def cache_deletes(
        self, rt: Route, ids: list[Any], version: int, *, l2_done: bool = False
    ) -> None:
        """Versioned tombstones in L2 and L1, then tell the other instances."""
        core, b = self.core, rt.b
        core.forget_readers(rt, ids)
        if b.l2_on and l2_done:
            assert core.l2 is not None
            if not core.l2.available:
                self.coh.remember_l2_missed(b.key(i) for i in ids)
        elif b.l2_on:
            assert core.l2 is not None and b.codec is not None
            tomb = b.codec.tombstone(version)
            keys = [b.key(i) for i in ids]
            life = core.config.tombstone_seconds  # outlives an l3_timeout-bounded reader
            await core.l2.set_many([(k, tomb, life) for k in keys], bump=b.gen_key)
            if not core.l2.available:
                self.coh.remember_l2_missed(keys)
        if rt.l1 is not None:
            for i in ids:
                rt.l1.delete(i, version)
        await self.coh.publish(rt, "delete", [(i, None, version) for i in ids])

    # -- the write-behind queue's callbacks ----------------------------------------------

    async def apply_queued(self, schema: str, writes: list[PendingWrite]) -> None:
        """A flushed batch of one schema: into L3 (versioned: never over a newer row)."""
        core = self.core
        rt = core.routes[schema]
        b = rt.b
        sets: dict[frozenset[str], list[dict[str, Any]]] = {}
        queued = {w.id: w for w in writes if w.op == "set"}  # coalesced: one write per id
        # the queued models become their L3 rows only now
        rows = b.rows.to_rows({i: w.row for i, w in queued.items()})
        for i, w in queued.items():
            row = rows[i]
            row[VERSION_COLUMN] = w.version
            sets.setdefault(b.kept(w.row), []).append(row)
        deletes = [(w.id, w.version) for w in writes if w.op == "delete"]
        for kept, group in sets.items():
            core.c.l3_queries += 1
            if kept:  # columns the writer did not assign: the stored row keeps them
                await core.l3.upsert_many(b.cs, group, versioned=True, returning=False, kept=kept)
            else:
                await core.l3.upsert_many(b.cs, group, versioned=True, returning=False)
        if deletes:  # version-guarded, as the journal's: never over a newer row
            await delete_older(core, b, deletes)
        rt.path.forget(writes)
        if b.l2_on:  # a search cached before the flush did not see these rows
            await self.coh.bump_generation(rt)

    async def on_dead_letter(self, letter: DeadLetter) -> None:
        core = self.core
        core.c.dead_letters += 1
        w = letter.write
        rt = core.routes.get(w.schema)
        core.log.error(
            "write-behind gave up on %s %r after %d attempts: %s",
            w.schema,
            w.id,
            w.attempts,
            letter.error,
        )
        if rt is None:
            return
        rt.path.forget([w])
        # The caches hold a value L3 never got: drop it so reads show what is durable.
        await self.coh.forget_cached(rt, [w.id])
        if rt.b.hooks.on_write_error is not None:
            await core.hooks.absorb(
                "on_write_error", rt.b.hooks.on_write_error, w.id, w.row, letter.error
            )

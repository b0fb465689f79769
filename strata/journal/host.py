"""The router's side of the journal: how entries reach L3, what a refusal does, and the
dead letters (kept in Redis, so every instance lists, retries and drops the same ones).

    JournalHost.apply(schema, entries)   versioned upserts (``WHERE version < EXCLUDED``)
                                         and version-guarded deletes: a replay is a no-op
    JournalHost.refused(entry, error)    a dead letter in Redis; the cached copies dropped
                                         (reads show what L3 holds); on_write_error called
    dead_letters / retry / drop          the public API (``ds.dead_letters()`` ...)

Without a journal (no Redis) the same calls serve the in-process queue's dead letters.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from strata import errors
from strata.errors import StrataError, WriteBehindError
from strata.journal.entry import JournalEntry, encode_row, pack, unpack
from strata.journal.flusher import Appended, Journal
from strata.schema import VERSION_COLUMN
from strata.writebehind import DeadLetter, PendingWrite

if TYPE_CHECKING:
    from strata.router.binding import Binding
    from strata.router.coherence import Coherence
    from strata.router.core import Core, Route

__all__ = ["JournalHost", "StoredDeadLetter", "delete_older", "start_journal"]


@dataclass(frozen=True, slots=True)
class StoredDeadLetter(DeadLetter):
    """A dead letter kept in Redis (journaled write-behind); ``record`` is what is stored."""

    record: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def start_journal(core: Core, host: JournalHost) -> Journal | None:
    """The journal of a store whose L2 is Redis (None otherwise: the in-process queue)."""
    from strata.config import seconds
    from strata.tiers.redis import RedisTier

    if not isinstance(core.l2, RedisTier):
        return None
    cfg = core.config

    def secs(name: str) -> float:
        return seconds(getattr(cfg, name), name) or 0.0

    journal = Journal(
        core.l2,
        consumer=cfg.instance_id,
        apply=host.apply,
        on_refused=host.refused,
        on_rescued=host.rescued,
        claim_after=secs("write_behind_claim_after"),
        interval=secs("write_behind_flush_interval"),
        threshold=cfg.write_behind_flush_threshold,
        batch=min(cfg.write_behind_flush_threshold, 5_000),
        retry_base=secs("write_behind_retry_base"),
        retry_max=secs("write_behind_retry_max"),
        max_pending=cfg.write_behind_max_pending,
        wait_timeout=secs("write_behind_wait_timeout"),
        tombstone_ttl=cfg.tombstone_seconds,
        logger=core.log,
        on_error=core.count_error,
        last=host.appended,
        close_timeout=cfg.close_timeout_seconds,
    )
    for rt in core.routes.values():
        if getattr(rt.path, "writes_l2", False):
            journal.add(rt.name, rt.b.gen_key.removesuffix(":gen"), rt.b.l2_ttl)
    journal.start()
    return journal


async def delete_older(core: Core, b: Binding, deletes: list[tuple[Any, int]]) -> None:
    """Write-behind deletes (id, version) into L3: a row is deleted only if it is older
    than the delete, so a delete applied late never removes a newer write (replay-safe)."""
    core.c.l3_queries += 1
    await core.l3.delete_if_older(b.cs, deletes)


class JournalHost:
    """What the journal asks of the router, and the dead-letter API over both queues."""

    def __init__(self, core: Core, coherence: Coherence) -> None:
        self.core = core
        self.coh = coherence
        # What this DataStore journaled last, per schema: flush_dirty() waits for it, also
        # after a new event loop gave the store a new Journal.
        self.appended: dict[str, tuple[int, int]] = {}

    # -- the flusher's callbacks ---------------------------------------------------------

    async def apply(self, schema: str, entries: list[JournalEntry]) -> None:
        core = self.core
        b = core.routes[schema].b
        sets: dict[frozenset[str], list[dict[str, Any]]] = {}
        for e in entries:
            if e.op == "set" and e.row is not None:
                row = dict(e.row)
                row[VERSION_COLUMN] = e.version
                sets.setdefault(e.kept, []).append(row)
        for kept, group in sets.items():
            core.c.l3_queries += 1
            if kept:
                await core.l3.upsert_many(b.cs, group, versioned=True, returning=False, kept=kept)
            else:
                await core.l3.upsert_many(b.cs, group, versioned=True, returning=False)
        deletes = [(e.id, e.version) for e in entries if e.op == "delete"]
        if deletes:
            await delete_older(core, b, deletes)

    async def rescued(self, schema: str, entries: list[JournalEntry]) -> None:
        """Held writes went to L3 directly (Redis lost or could not be reached for them):
        what Redis and every L1 got of those keys meanwhile may be older."""
        rt = self.core.routes[schema]
        ids = [e.id for e in entries if e.op == "set"]
        payloads = await self._current(rt, ids) if ids else {}
        deletes = [(e.id, e.version) for e in entries if e.op == "delete"]
        await self.coh.forget_rescued(rt, [(i, payloads.get(i)) for i in ids], deletes)

    async def _current(self, rt: Route, ids: list[Any]) -> dict[Any, bytes]:
        """L2 envelopes of what L3 holds of these ids now, after the rescue: written to L2
        (only if newer), they make a fill of an older row still in flight a refused one.
        An id L3 has no row of (a newer delete won) is dropped from L2 instead."""
        b, core = rt.b, self.core
        if b.codec is None or not b.l2_on:
            return {}
        out: dict[Any, bytes] = {}
        try:
            core.c.l3_queries += 1
            for row in await core.l3.get_many(b.cs, ids):
                value, version = b.rows.from_row(row)
                out[getattr(value, b.pk_field)] = b.codec.encode(value, version, b.rows.sealed(row))
        except StrataError as exc:  # the keys are dropped instead, as before
            core.count_error(exc)
            return {}
        return out

    async def refused(self, entry: JournalEntry, error: BaseException) -> None:
        core = self.core
        journal = core.journal
        assert journal is not None
        st = journal.streams[entry.schema]
        record = {
            "schema": entry.schema,
            "id": entry.id,
            "version": entry.version,
            "op": entry.op,
            "row": entry.row,
            "kept": sorted(entry.kept),
            "error": str(error),
            "etype": type(error).__name__,
            "at": time.time(),
        }
        client = journal.tier.client
        await journal.tier.call(lambda: client.hset(st.dead, pack(entry.id), pack(record)))
        core.c.dead_letters += 1
        core.log.error(
            "write-behind: L3 refused %s %r (version %d), kept as a dead letter: %s",
            entry.schema,
            entry.id,
            entry.version,
            error,
        )
        rt = core.routes.get(entry.schema)
        if rt is None:
            return
        await self.coh.forget_cached(rt, [entry.id])  # reads show what L3 holds
        hook = rt.b.hooks.on_write_error
        if hook is not None:
            await core.hooks.absorb("on_write_error", hook, entry.id, _model(rt, entry), error)

    # -- the dead-letter API ----------------------------------------------------------------

    async def dead_letters(
        self, schema: Any = None, ids: Iterable[Any] | None = None
    ) -> list[DeadLetter]:
        """Every dead letter (of ``schema``, a name or model; of ``ids``), oldest first."""
        if ids is not None:
            return await self._chosen(schema, ids)
        journal = self.core.journal
        wb = self.core.wb
        name = self._name(schema)
        letters = [
            d for d in (wb.dead_letters() if wb else []) if name is None or d.write.schema == name
        ]
        if journal is not None:
            for st in journal.streams.values():
                if name is not None and st.schema != name:
                    continue
                raw = await journal.tier.call(
                    lambda c=journal.tier.client, k=st.dead: c.hgetall(k)  # type: ignore[misc]
                )
                letters += [self._letter(unpack(bytes(body))) for body in raw.values()]
        return sorted(letters, key=lambda d: d.failed_at)

    async def retry(self, schema: Any = None, ids: Iterable[Any] | None = None) -> int:
        """Write the chosen dead letters again (a new version each); returns how many."""
        chosen = await self._chosen(schema, ids)
        journal, wb = self.core.journal, self.core.wb
        done = 0
        for d in chosen:
            rt = self.core.routes.get(d.write.schema)
            if rt is None:
                continue
            if isinstance(d, StoredDeadLetter) and journal is not None and journal.has(rt.name):
                await self._rejournal(rt, journal, d)
            elif wb is not None:
                await wb.put(
                    PendingWrite(
                        d.write.schema, d.write.id, d.write.op, d.write.row, d.write.version
                    )
                )
            await self._forget([d])
            done += 1
        return done

    async def drop(self, schema: Any = None, ids: Iterable[Any] | None = None) -> int:
        """Forget the chosen dead letters; returns how many."""
        chosen = await self._chosen(schema, ids)
        await self._forget(chosen)
        return len(chosen)

    # -- helpers -----------------------------------------------------------------------------

    def _name(self, schema: Any) -> str | None:
        if schema is None:
            return None
        for name, rt in self.core.routes.items():
            if schema == name or schema is rt.b.model:
                return name
        raise errors.SchemaNotRegisteredError(f"schema {schema!r} is not registered")

    async def _chosen(self, schema: Any, ids: Iterable[Any] | None) -> list[DeadLetter]:
        letters = await self.dead_letters(schema)
        if ids is None:
            return letters
        wanted = {str(i) for i in ids}
        return [d for d in letters if str(d.write.id) in wanted]

    def _letter(self, rec: dict[str, Any]) -> DeadLetter:
        schema, op = rec["schema"], rec["op"]
        rt = self.core.routes.get(schema)
        entry = JournalEntry(
            schema, rec["id"], int(rec["version"]), op, rec["row"], frozenset(rec["kept"])
        )
        value: Any = _model(rt, entry) if rt is not None else rec["row"]
        write = PendingWrite(schema, rec["id"], op, value, int(rec["version"]))
        error = _rebuilt(str(rec.get("etype")), str(rec["error"]))
        return StoredDeadLetter(write, error, float(rec["at"]), rec)

    async def _rejournal(self, rt: Route, journal: Journal, d: StoredDeadLetter) -> None:
        rec = d.record
        b, core = rt.b, self.core
        assert b.codec is not None
        version = core.next_version()
        row = rec.get("row")
        if d.write.op == "set" and row is not None and isinstance(d.write.row, BaseModel):
            value = d.write.row
            payload = b.codec.encode(value, version, b.rows.sealed(row))
            item: Appended = (
                b.key(d.write.id),
                payload,
                pack(d.write.id),
                version,
                "set",
                encode_row(row, frozenset(rec.get("kept", ()))),
            )
            await journal.append(rt.name, [item])
            await self.coh.publish(rt, "set", [(d.write.id, value, version)])
        else:
            tomb = b.codec.tombstone(version)
            await journal.append(
                rt.name, [(b.key(d.write.id), tomb, pack(d.write.id), version, "delete", b"")]
            )
            await self.coh.publish(rt, "delete", [(d.write.id, None, version)])

    async def _forget(self, letters: list[DeadLetter]) -> None:
        journal, wb = self.core.journal, self.core.wb
        local = [d for d in letters if not isinstance(d, StoredDeadLetter)]
        if wb is not None and local:
            wb.forget_dead_letters(local)
        if journal is None:
            return
        client = journal.tier.client
        for d in letters:
            if isinstance(d, StoredDeadLetter) and journal.has(d.write.schema):
                key = journal.streams[d.write.schema].dead
                field = pack(d.write.id)
                await journal.tier.call(lambda k=key, f=field: client.hdel(k, f))  # type: ignore[misc]


def _rebuilt(name: str, message: str) -> BaseException:
    """The refusal as the StrataError it was (by class name), for ``DeadLetter.error``."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.StrataError):
        try:
            if issubclass(cls, errors.TierError):
                return cls(message, tier="l3")
            return cls(message)
        except TypeError:
            pass
    return WriteBehindError(message)


def _model(rt: Route | None, entry: JournalEntry) -> Any:
    """The written value as a model (decrypted), for hooks and listings; the row itself
    when it no longer fits the model."""
    if rt is None or entry.row is None:
        return entry.row
    try:
        value, _ = rt.b.rows.from_row(dict(entry.row))
    except errors.StrataError:
        return entry.row
    return value

"""The write path of a write-behind schema with Redis: the journal (strata/journal).

set / delete ─► one script: L2 value (no TTL) + journal entry (+ the invalidation)
                ─► held by this instance until L3 has it (journal/held.py)
Redis unreachable ─► the in-process queue of ``WriteBehind`` (logged once)
read of an L3 row older than a write read from Redis (``check_l3``):
  this instance's held write ─► served (read your writes)
  Redis unreachable, or restarted without its data (the journal's epoch changed)
    ─► TierUnavailableError, not the older row (a later delete, L3 knows, is fine)
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel

from strata.config import seconds
from strata.errors import StrataError, TierError, TierUnavailableError, WriteBehindError
from strata.journal import held
from strata.journal.entry import JournalEntry, encode_row, pack
from strata.journal.flusher import Appended, Journal
from strata.router.coherence import Coherence
from strata.router.core import Core, Route
from strata.router.upserts import Item
from strata.router.writes import Queued, Sealed, WriteBehind
from strata.schema import VERSION_COLUMN

__all__ = ["JournaledWriteBehind"]


class JournaledWriteBehind(WriteBehind):
    """With Redis: a write is acknowledged once its L2 value and its journal entry are in
    Redis, written by one script, so a crash of this process loses nothing acknowledged
    (strata/journal). L2 keeps the value without TTL until L3 has it. While Redis is
    unreachable the in-process queue takes the writes (and a crash would lose those)."""

    writes_l2 = True
    unjournaled = False  # in the in-process queue since Redis went away (logged once)
    SEEN_MAX = 100_000  # ids whose last served version is remembered (oldest forgotten)

    def __init__(self, core: Core, schema: str, coherence: Coherence) -> None:
        super().__init__(core, schema)
        self.coh = coherence
        # id -> (newest version served from Redis, the journal's losses then): no older L3
        # row while Redis is away, or after it lost its data (strata/journal/held.py)
        self.seen: OrderedDict[Any, tuple[int, int]] = OrderedDict()
        # id -> when to stop refusing an L3 row older than ``seen`` with Redis reachable
        self.refusing: dict[Any, float] = {}

    def saw(self, id: Any, version: int) -> None:
        seen = self.seen
        if seen.get(id, (-1, 0))[0] < version:
            journal = self.core.journal
            losses = journal.losses(self.schema) if journal is not None else 0  # -1: unknown
            seen[id] = (version, losses)
            seen.move_to_end(id)
            if len(seen) > self.SEEN_MAX:
                seen.popitem(last=False)

    def _lost_since(self, losses: int) -> bool:
        """Redis lost its data (the journal's epoch changed) since ``losses`` was read;
        also when that read came before this instance knew the epoch (-1: cannot tell)."""
        journal = self.core.journal
        return (
            journal is not None
            and journal.has(self.schema)
            and (losses < 0 or journal.losses(self.schema) != losses)
        )

    def unsure(self, id: Any) -> bool:
        seen = self.seen.get(id)
        l2 = self.core.l2
        return seen is not None and l2 is not None and l2.available and self._lost_since(seen[1])

    def check_l3(
        self, rt: Route, id: Any, version: int | None, deleted: int | None = None
    ) -> Queued | None:
        journal, l2 = self.core.journal, self.core.l2
        if journal is not None and journal.has(self.schema):
            # Held until L3 has it: also while Redis, back without its data, no longer holds
            # it and the rescue has not written it to L3 yet (read your writes).
            own = journal.own(self.schema, [rt.b.key(id)])
            for e in own.values():  # not when a newer one was read since (another's)
                if e.version > (-1 if version is None else version) and e.version >= self._seen(id):
                    return self._model(rt, e)
        seen = self.seen.get(id)
        if seen is None:
            return None
        newest, losses = seen
        if (
            (version is not None and version >= newest)
            or (deleted is not None and deleted >= newest)
            or l2 is None
        ):
            self._unsee(id)  # L3 has it, or a later delete of it
            return None
        if l2.available:
            if not self._lost_since(losses):
                # Redis kept its data since (the journal was just read): the journal no
                # longer holds the write because L3 does, or did (a later delete reached
                # it and its tombstone is gone)
                self._unsee(id)
                return None
            # Redis answers, holds neither the newer write nor its journal entry, and went
            # away since: it came back without its data before the writer's rescue reached
            # L3. Refuse the older row for a bounded time (the writer may be gone too).
            now = time.monotonic()
            bound = seconds(self.core.config.write_behind_claim_after, "claim_after") or 0.0
            until = self.refusing.setdefault(id, now + bound)
            if now >= until:
                self._unsee(id)
                self.core.log.warning(
                    "%s %r: a write read from Redis before Redis lost its data did not reach "
                    "PostgreSQL; serving PostgreSQL's older row",
                    self.schema,
                    id,
                )
                return None
        raise TierUnavailableError(
            f"{self.schema} {id!r}: a newer write than PostgreSQL holds was read from Redis, "
            "which is unreachable or lost it: not serving the older row",
            tier="l2",
        )

    def _seen(self, id: Any) -> int:
        seen = self.seen.get(id)
        return -1 if seen is None else seen[0]

    def _unsee(self, id: Any) -> None:
        self.seen.pop(id, None)
        self.refusing.pop(id, None)

    async def write(self, rt: Route, prepared: dict[Any, BaseModel]) -> tuple[list[Item], Sealed]:
        b, core, journal = rt.b, self.core, self.core.journal
        assert b.codec is not None and journal is not None
        items: list[Item] = []
        appended: list[Appended] = []
        rows = b.rows.to_rows(prepared)  # encrypted columns sealed: never plaintext in Redis
        for i, v in prepared.items():
            version = core.next_version()
            row = rows[i]
            payload = b.codec.encode(v, version, b.rows.sealed(row))
            appended.append(
                (b.key(i), payload, pack(i), version, "set", encode_row(row, b.kept(v)))
            )
            items.append((i, v, version))
        try:  # the invalidation rides the journal's round trip where it can
            if await journal.append(self.schema, appended, self.coh.announcement(rt, items)):
                self.coh.announced(items)
        except TierUnavailableError:
            self._unjournaled()
            journal.drop_held(self.schema, [b.key(i) for i in prepared])
            return await super().write(rt, prepared)
        self.unjournaled = False
        self._journaled_over_queue(prepared)
        return items, {}

    def _journaled_over_queue(self, ids: Iterable[Any]) -> None:
        """A write queued in process (while Redis was away) is older than the one just
        journaled: it must neither be read nor reach L3 after it."""
        if self.shadow:
            self.superseded([i for i in ids if i in self.shadow])

    async def delete(self, rt: Route, ids: list[Any]) -> int:
        b, core, journal = rt.b, self.core, self.core.journal
        assert b.codec is not None and journal is not None
        version = core.next_version()
        tomb = b.codec.tombstone(version)
        try:
            await journal.append(
                self.schema, [(b.key(i), tomb, pack(i), version, "delete", b"") for i in ids]
            )
        except TierUnavailableError:
            self._unjournaled()
            journal.drop_held(self.schema, [b.key(i) for i in ids])
            return await super().delete(rt, ids)
        self._journaled_over_queue(ids)
        return version

    async def journaled(self, rt: Route, ids: Sequence[Any]) -> dict[Any, Queued]:
        journal, b = self.core.journal, rt.b
        if journal is None or not journal.has(self.schema) or not ids:
            return {}
        keys = {b.key(i): i for i in ids}
        try:
            entries = await journal.peek(self.schema, list(keys))
        except TierError:  # Redis away: L3 is compared with the writes held here
            return {}  # (check_l3): another instance's newer one may be there
        out: dict[Any, Queued] = {}
        for key, e in entries.items():
            q = self._model(rt, e)
            if q is not None:
                out[keys[key]] = q
                self.saw(keys[key], q[1])
        return out

    async def settle(self, timeout: float) -> None:
        """Every journaled write of the schema (this instance's and the others', which it
        may have read from Redis) reaches L3 through the journal's flush; with Redis away,
        this instance's held writes through their rescue (after ``RESCUE_AFTER``)."""
        deadline = time.monotonic() + timeout
        await super().settle(timeout)
        journal = self.core.journal
        if journal is None or not journal.has(self.schema):
            return
        if journal.tier.available:
            try:
                await self._flush_all(journal, deadline)
                return
            except TierUnavailableError:
                pass  # Redis went away: what this instance holds is rescued
        delay = 0.005
        while journal.holds(self.schema) and not journal.tier.available:
            if time.monotonic() >= deadline:
                raise WriteBehindError(
                    f"{self.schema}: Redis is unreachable and this instance's journaled "
                    f"writes did not reach L3 within {timeout:g} s"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
        if journal.holds(self.schema):  # Redis back meanwhile: the journal's flush
            await self._flush_all(journal, deadline)

    async def _flush_all(self, journal: Journal, deadline: float) -> None:
        left = max(deadline - time.monotonic(), 0.0)
        await journal.flush(left, schema=self.schema, everyone=True)

    def pending(self, id: Any) -> Queued | None:
        """The in-process queue's write of the id, or this instance's own journaled write
        not known to be in L3 yet, the newer: a read never prefers an older copy Redis
        got after it lost the journal (another instance's fill) to the writer's own."""
        queued = super().pending(id)
        journal = self.core.journal
        if journal is None or not journal.holds(self.schema):
            return queued
        if not held.trusted(journal.tier, journal.streams[self.schema]):
            return queued  # L3 is compared with the held writes instead (check_l3)
        rt = self.core.routes[self.schema]
        for e in journal.own(self.schema, [rt.b.key(id)]).values():
            if queued is None or queued[1] < e.version:
                return self._model(rt, e)
        return queued

    def own_write(self, id: Any) -> Queued | None:
        queued = WriteBehind.pending(self, id)
        journal = self.core.journal
        if journal is None or not journal.holds(self.schema):
            return queued
        rt = self.core.routes[self.schema]
        for e in journal.own(self.schema, [rt.b.key(id)]).values():
            if e.version >= self._seen(id) and (queued is None or queued[1] < e.version):
                return self._model(rt, e)
        return queued

    def _model(self, rt: Route, e: JournalEntry) -> Queued | None:
        if e.op == "delete" or e.row is None:
            return None, e.version
        try:
            value, _ = rt.b.rows.from_row({**e.row, VERSION_COLUMN: e.version})
        except StrataError as exc:
            self.core.count_error(exc)
            return None
        return value, e.version

    def _unjournaled(self) -> None:
        if self.unjournaled:
            return
        self.unjournaled = True
        self.core.log.warning(
            "%s: Redis is unreachable; write-behind writes wait in this process's queue "
            "until it returns (a crash meanwhile loses them)",
            self.schema,
        )

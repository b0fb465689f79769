"""The journal of one DataStore's write-behind schemas and the flusher that empties it.

    append ── one Lua script (scripts.APPEND): L2 value + XADD ──► acknowledged
              (APPEND_PUBLISH: + PUBLISH of the write's invalidation, same round trip)
                                                                    │
    flusher (each instance, consumer group "strata", consumer = instance_id)
      at start: this consumer's own pending entries (a restart: XREADGROUP 0)
      every claim_after / 2: XAUTOCLAIM entries idle > claim_after (a dead instance's)
      every flush_interval, at flush_threshold, on flush(): XREADGROUP ">"
                                                                    ▼
      coalesce per id (newest version) ─► apply to L3, version-guarded (replay-safe)
        L3 unreachable (or anything but a refusal): back off, try again, forever; the
          entries stay claimed by this instance (their idle time is reset) meanwhile
        L3 refuses (constraint, type): bisect; a refused single write is a dead letter
      ─► XACK + XDEL ─► scripts.RELEASE (the L2 value gets its TTL back)
    Redis failing for RESCUE_AFTER s, or restarted without its data (epoch key gone): the
      writes this instance acknowledged and still holds go to L3 directly (journal/held.py)

Nothing acknowledged leaves the journal until L3 has it or it is a dead letter (kept in
Redis, every instance sees it). ``close()`` flushes for at most ``Config.close_timeout`` and
leaves the rest journaled for a peer or the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions as rexc
from redis.asyncio.cluster import RedisCluster

from strata.codec import FMT_TOMBSTONE, peek_version
from strata.errors import CodecError, TierError, WriteBehindError
from strata.journal import held
from strata.journal.entry import JournalEntry, decode_entry, is_refusal
from strata.journal.scripts import APPEND, APPEND_PUBLISH, PEEK, RELEASE
from strata.tasks import raise_if_cancelled, stop_tasks
from strata.tiers.redis import RedisTier
from strata.tiers.redis_scripts import bind, unbind

__all__ = ["GROUP", "Appended", "Journal", "Stream", "is_refusal"]

GROUP = "strata"
RESCUE_AFTER = 1.0  # seconds of failing Redis before held writes go to L3 directly

Appended = tuple[str, bytes, bytes, int, str, bytes]
"""(logical L2 key, L2 payload, packed id, version, op, packed row) of one write"""

Apply = Callable[[str, list[JournalEntry]], Awaitable[None]]
OnRefused = Callable[[JournalEntry, BaseException], Awaitable[None]]


@dataclass(slots=True)
class Stream:
    """The journal keys of one schema (physical: hash-tagged on a cluster)."""

    schema: str
    stream: str
    latest: str
    gen: str
    dead: str
    ttl_ms: int  # the L2 TTL a flushed value gets back (0: none)
    epoch: str = ""  # a token that disappears with Redis's data (strata/journal/held.py)
    length: int = 0  # entries last seen
    token: bytes | None = None  # the epoch as this instance last knew it
    seen_epoch: bytes | None = None  # the epoch in Redis as last read (peek, establish)
    losses: int = 0  # times the epoch was seen to change: Redis lost its data
    # physical L2 key -> this instance's acknowledged write not known to be in L3 yet
    held: dict[str, held.HeldWrite] = field(default_factory=dict)


def _sid(stream_id: bytes | str) -> tuple[int, int]:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class Journal:
    """The journals of every journaled write-behind schema of one DataStore."""

    def __init__(
        self,
        tier: RedisTier,
        *,
        consumer: str,
        apply: Apply,
        on_refused: OnRefused,
        claim_after: float,
        interval: float,
        threshold: int,
        batch: int,
        retry_base: float,
        retry_max: float,
        max_pending: int,
        wait_timeout: float,
        tombstone_ttl: float,
        logger: logging.Logger,
        on_error: Callable[[BaseException], None],
        last: dict[str, tuple[int, int]] | None = None,
        close_timeout: float | None = None,
        on_rescued: Apply | None = None,
    ) -> None:
        self.tier = tier
        self._consumer = consumer
        self._apply = apply
        self._on_refused = on_refused
        self._on_rescued = on_rescued
        self._claim_after = claim_after
        self._interval = interval
        self._threshold = threshold
        self._batch = max(1, batch)
        self._retry_base = max(retry_base, 0.001)
        self._retry_max = max(retry_max, self._retry_base)
        self._max_pending = max_pending
        self.wait_timeout = wait_timeout
        self._close_timeout = wait_timeout if close_timeout is None else close_timeout
        self._tomb_ms = int(max(tombstone_ttl, 2 * claim_after) * 1000)
        self._log = logger
        self._on_error = on_error
        self.streams: dict[str, Stream] = {}
        # schema -> this instance's last append (kept across event loops by the caller)
        self._last: dict[str, tuple[int, int]] = {} if last is None else last
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._next_claim = 0.0
        self._grouped: set[str] = set()
        self._stopping = False
        self._rescue_at = 0.0  # Redis failing: when held writes are next written to L3
        self._failing_since: float | None = None  # Redis has failed every loop since
        self._next_check = 0.0

    # -- registry ----------------------------------------------------------------------

    def add(self, schema: str, base: str, ttl: float | None) -> None:
        """Journal a schema; ``base`` is its logical key base (``{prefix}:{schema}``)."""
        key = self.tier.physical_key
        self.streams[schema] = Stream(
            schema,
            key(f"{base}:journal"),
            key(f"{base}:journal:latest"),
            key(f"{base}:gen"),
            key(f"{base}:deadletters"),
            int(ttl * 1000) if ttl else 0,
            key(f"{base}:journal:epoch"),
        )

    def has(self, schema: str) -> bool:
        return schema in self.streams

    def holds(self, schema: str) -> bool:
        """This instance holds writes of the schema not known to be in L3 yet."""
        st = self.streams.get(schema)
        return st is not None and bool(st.held)

    def losses(self, schema: str) -> int:
        """How often this instance saw Redis lose the schema's journal (its epoch change);
        -1 while it knows no epoch (none yet, or Redis lost it and none was made since)."""
        st = self.streams[schema]
        return -1 if st.seen_epoch is None else st.losses

    def drop_held(self, schema: str, keys: Sequence[str]) -> None:
        """A newer write of these logical keys went elsewhere (the in-process queue)."""
        st = self.streams[schema]
        for k in keys:
            st.held.pop(self.tier.physical_key(k), None)

    def own(self, schema: str, keys: Sequence[str]) -> dict[str, JournalEntry]:
        """This instance's acknowledged writes of these logical keys not known to be in L3
        (what it reads while Redis is away)."""
        st = self.streams[schema]
        if not st.held:
            return {}
        physical = {self.tier.physical_key(k): k for k in keys}
        return {physical[k]: e for k, e in held.own(st, list(physical)).items()}

    @property
    def pending(self) -> int:
        """Journal entries not yet in L3, as last seen by this instance (for Stats)."""
        return sum(s.length for s in self.streams.values())

    # -- writers -----------------------------------------------------------------------

    async def append(
        self, schema: str, items: Sequence[Appended], publish: tuple[str, bytes] | None = None
    ) -> bool:
        """Journal writes with their L2 values; returns once Redis holds both. Waits while
        the journal is full; WriteBehindError after ``wait_timeout``. TierError (and
        TierUnavailableError) when Redis fails: nothing was acknowledged. ``publish``
        (channel, message): the writes' invalidation, published by the same script once they
        are in place (not on a cluster: its sharded channel lives in another slot). Returns
        whether it went out (False: the caller publishes it)."""
        st = self.streams[schema]
        physical = [self.tier.physical_key(k) for k, *_ in items]
        keys = [st.stream, st.latest, st.gen, *physical]
        args: list[bytes | str | int] = [schema, self._max_pending]
        for where, (_, payload, id, version, op, row) in zip(physical, items, strict=True):
            # Bound to its key as every L2 payload is (tiers/redis_scripts.py), or readers
            # would take it for a planted or corrupt value and drop it.
            args += [bind(where, payload), id, str(version), op, row]
        client = self.tier.client
        script = APPEND
        if publish is not None and not isinstance(client, RedisCluster):
            script = APPEND_PUBLISH
            args += publish
        else:
            publish = None
        if st.token is None:
            await held.establish_epoch(self.tier, st)
        deadline = time.monotonic() + self.wait_timeout
        delay = 0.005
        while True:
            res = await self.tier.call(lambda: script(client, keys, args))
            st.length = int(res[1])
            if int(res[0]) == 1:
                ids = res[2:]
                if ids:
                    self._last[schema] = _sid(ids[-1])
                for where, sid, (_, _, id, version, op, row) in zip(
                    physical, ids, items, strict=True
                ):
                    st.held[where] = (sid, id, version, op, row)
                if st.length >= self._threshold:
                    self._wake.set()
                return publish is not None
            self._wake.set()  # a full journal is flushed now
            if time.monotonic() >= deadline:
                raise WriteBehindError(
                    f"{schema}: the write-behind journal holds {st.length} unflushed writes "
                    f"(write_behind_max_pending={self._max_pending}) and did not drain within "
                    f"{self.wait_timeout} s; is the database reachable?"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def peek(self, schema: str, keys: Sequence[str]) -> dict[str, JournalEntry]:
        """The newest journaled write of each logical L2 key the journal still holds (one
        round trip): newer than any L3 row of it. TierError when Redis fails. If Redis
        lost the journal (its epoch changed), this instance's own held writes stand in."""
        st = self.streams[schema]
        physical = [self.tier.physical_key(k) for k in keys]
        client = self.tier.client
        res = await self.tier.call(
            lambda: PEEK(client, [st.stream, st.latest, st.epoch, *physical], [])
        )
        out: dict[str, JournalEntry] = {}
        held.note_epoch(st, res[0])
        lost = bool(st.held) and (st.token is None or res[0] != st.token)
        if lost:  # Redis lost its data: rescue what is held now; readers compare it with
            self._next_check = 0.0  # L3 (another instance's newer write may be there)
            self._wake.set()
        for key, where, found in zip(keys, physical, res[1:], strict=True):
            if not found:
                if not lost:
                    st.held.pop(where, None)  # flushed or superseded: nothing to rescue
                continue
            stream_id, flat = found[0]
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            try:
                e = decode_entry(schema, stream_id, fields)
            except CodecError as exc:  # the flusher drops it too
                self._on_error(exc)
                continue
            if key not in out or out[key].version < e.version:
                out[key] = e
        return out

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="strata-write-behind-journal"
        )

    async def close(self) -> None:
        """Flush for at most ``close_timeout``; what is left stays journaled (a peer or
        this instance's next start flushes it): nothing acknowledged is lost by stopping."""
        if self._task is None:
            return
        try:
            await self.flush(self._close_timeout)
        except WriteBehindError as exc:
            self._log.warning("write-behind: left in the Redis journal for later: %s", exc)
        finally:
            self._stopping = True
            await stop_tasks([self._task])
            self._task = None

    async def flush(
        self, timeout: float | None, schema: str | None = None, *, everyone: bool = False
    ) -> None:
        """Wait until every entry this instance journaled so far (and every older entry)
        is in L3 or a dead letter; of one schema when given, and with ``everyone`` up to
        the newest entry of any instance (what a search must find in L3)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        targets = {k: v for k, v in self._last.items() if schema in (None, k)}
        if everyone and schema is not None:
            st, client = self.streams[schema], self.tier.client
            tail: Any = await self.tier.call(lambda: client.xrevrange(st.stream, count=1))
            if tail:
                targets[schema] = max(targets.get(schema, (0, 0)), _sid(tail[0][0]))
        delay = 0.002
        while True:
            if self._task is None or self._task.done():
                raise WriteBehindError("the write-behind journal flusher is not running")
            self._wake.set()
            left = 0
            for st in self.streams.values():
                target = targets.get(st.schema)
                if target is None:
                    continue  # nothing journaled here: nothing to wait for
                if st.held and not held.trusted(self.tier, st):
                    self._next_check = 0.0  # Redis lost them or is away: the rescue's
                    left += len(st.held)  # writes to L3 are what this flush waits for
                    continue
                try:
                    left += await self._left(st, target)
                except TierError:  # Redis away: the entries wait there; so does this flush
                    left += max(st.length, 1)
            if left == 0:
                return
            if deadline is not None and loop.time() >= deadline:
                raise WriteBehindError(
                    f"write-behind flush timed out after {timeout} s; {left} writes journaled"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _left(self, st: Stream, target: tuple[int, int]) -> int:
        client = self.tier.client
        length = int(await self.tier.call(lambda: client.xlen(st.stream)))
        st.length = length
        if length == 0:
            return 0
        first = await self.tier.call(lambda: client.xrange(st.stream, "-", "+", count=1))
        oldest = first[0][0] if first else None
        return length if oldest is not None and _sid(oldest) <= target else 0

    # -- the flusher -------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        own = True  # first: what this consumer had read before a restart
        fresh = False  # new entries wait for the interval, the threshold or a flush()
        next_tick = loop.time() + self._interval
        while not self._stopping:
            try:
                claim = loop.time() >= self._next_claim
                if claim:
                    self._next_claim = loop.time() + max(self._claim_after / 2, 0.01)
                for st in list(self.streams.values()):
                    if st.token is None or (st.seen_epoch is None and not st.held):
                        await held.establish_epoch(self.tier, st)  # readers too: see losses
                    await self._drain(st, own=own, fresh=fresh, claim=claim)
                own = False
                await self._check_held(loop.time())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: the journal waits there
                raise_if_cancelled()
                self._on_error(exc)
                self._log.warning("write-behind journal: %s", exc)
                if "NOGROUP" in str(exc):  # Redis lost the group (restarted empty)
                    self._grouped.clear()
                own = True  # what it read before the failure is pending for it: again
                await self._redis_failing(loop.time())
                await asyncio.sleep(self._retry_base)
                continue
            await self._redis_failing(loop.time())
            if fresh:
                next_tick = loop.time() + self._interval
            wait = min(next_tick, self._next_claim) - loop.time()
            raise_if_cancelled()  # a cancellation a library swallowed (strata/tasks.py)
            if wait > 0 and not self._wake.is_set() and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
            fresh = self._wake.is_set() or loop.time() >= next_tick
            self._wake.clear()

    async def _redis_failing(self, now: float) -> None:
        """Redis is unreachable: once it has been for RESCUE_AFTER seconds (not a blip),
        write what this instance holds to L3 directly, then again every retry_max."""
        if self.tier.available or not any(st.held for st in self.streams.values()):
            self._rescue_at, self._failing_since = 0.0, None
            return
        if self._failing_since is None:
            self._failing_since = now
        if now - self._failing_since >= RESCUE_AFTER and now >= self._rescue_at:
            self._rescue_at = now + self._retry_max
            await self._rescue_all("Redis is unreachable")

    async def _rescue_all(self, why: str) -> None:
        """Write what this instance holds to L3 directly (strata/journal/held.py)."""
        for st in list(self.streams.values()):
            if st.held:
                try:
                    await self._rescue(st, why)
                except Exception as exc:  # L3 away too: tried again later
                    raise_if_cancelled()
                    self._on_error(exc)

    async def _rescue(self, st: Stream, why: str) -> int:
        return await held.rescue(st, self._apply, self._log, why, self._on_rescued)

    async def _check_held(self, now: float) -> None:
        """Forget held writes a peer flushed; rescue them all if Redis lost its data."""
        if now < self._next_check:
            return
        self._next_check = now + max(min(self._interval, self._claim_after / 2, 1.0), 0.05)
        for st in list(self.streams.values()):
            if st.held and await held.check(self.tier, st):
                self._grouped.discard(st.stream)
                await self._rescue(st, "Redis lost the journal")
                await held.establish_epoch(self.tier, st)

    async def _drain(self, st: Stream, *, own: bool, fresh: bool, claim: bool) -> None:
        client = self.tier.client
        if st.stream not in self._grouped:
            try:
                await client.xgroup_create(st.stream, GROUP, id="0", mkstream=True)
            except rexc.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._grouped.add(st.stream)
        after = "0"
        while own:  # entries delivered to this consumer before a restart, not acknowledged
            read: Any = await self.tier.call(
                lambda a=after: client.xreadgroup(  # type: ignore[misc]
                    GROUP, self._consumer, {st.stream: a}, count=self._batch
                )
            )
            entries = list(read[0][1]) if read else []
            if not entries:
                break
            after = entries[-1][0]
            await self._flush_batch(st, entries)
        if claim:
            await self._claim(st)
        while fresh and not self._stopping:
            read = await self.tier.call(
                lambda: client.xreadgroup(
                    GROUP, self._consumer, {st.stream: ">"}, count=self._batch
                )
            )
            entries = list(read[0][1]) if read else []
            if not entries:
                break
            await self._flush_batch(st, entries)

    async def _claim(self, st: Stream) -> bool:
        client = self.tier.client
        idle = int(self._claim_after * 1000)
        start: Any = "0-0"
        worked = False
        while True:
            res = await self.tier.call(
                lambda s=start: client.xautoclaim(  # type: ignore[misc]
                    st.stream, GROUP, self._consumer, idle, s, count=self._batch
                )
            )
            start, entries = res[0], list(res[1])
            if entries:
                self._log.info(
                    "write-behind: claimed %d journal entries of %s left by another instance",
                    len(entries),
                    st.schema,
                )
                await self._flush_batch(st, entries)
                worked = True
            if _sid(start) == (0, 0):
                return worked

    async def _flush_batch(self, st: Stream, raw: list[Any]) -> None:
        newest: dict[Any, JournalEntry] = {}
        bad: list[bytes] = []
        for stream_id, fields in raw:
            if not fields:  # superseded by a newer entry of its key (XDEL) meanwhile
                continue
            try:
                e = decode_entry(st.schema, stream_id, fields)
            except CodecError as exc:
                self._log.error("write-behind: dropping an unreadable journal entry: %s", exc)
                self._on_error(exc)
                bad.append(stream_id)
                continue
            key = e.key or repr(e.id)
            held = newest.get(key)
            if held is None or held.version <= e.version:
                if held is not None:
                    e.stream_ids = held.stream_ids + e.stream_ids
                newest[key] = e
            else:
                held.stream_ids.append(stream_id)
        writes = await self._not_deleted_since(list(newest.values()))
        if writes:
            await self._apply_until_done(st, writes)
        ids = [sid for sid, _ in raw]
        client = self.tier.client
        # Released (TTL back, search generation bumped) before the entries leave the stream:
        # flush() returns once the stream is empty, so its caller sees the release done. A
        # crash in between redelivers entries whose replay changes nothing.
        await self._release(st, writes)
        await self.tier.call(lambda: client.xack(st.stream, GROUP, *ids))
        await self.tier.call(lambda: client.xdel(st.stream, *ids))
        st.length = max(0, st.length - len(ids))
        for w in writes:  # in L3 (or a dead letter): nothing left to rescue
            h = st.held.get(w.key)
            if h is not None and h[2] <= w.version:
                del st.held[w.key]

    async def _not_deleted_since(self, writes: list[JournalEntry]) -> list[JournalEntry]:
        """Drop sets that a newer delete's L2 tombstone outranks: a set delivered again
        (claimed twice) after its key was deleted must not bring the row back."""
        keys = [w.key for w in writes if w.op == "set" and w.key]
        if not keys:
            return writes
        client = self.tier.client
        current = await self.tier.call(lambda: client.mget(keys))
        envelopes = [
            unbind(k, v) if isinstance(v, bytes) else None
            for k, v in zip(keys, current, strict=True)
        ]
        tomb = {
            k: peek_version(v) or 0
            for k, v in zip(keys, envelopes, strict=True)
            if v is not None and v[1:2] == FMT_TOMBSTONE  # only a tombstone bound to its key
        }
        return [w for w in writes if w.op != "set" or tomb.get(w.key, -1) <= w.version]

    async def _apply_until_done(self, st: Stream, writes: list[JournalEntry]) -> None:
        """Apply, backing off while L3 fails; isolate the rows L3 refuses."""
        delay = self._retry_base
        attempt = 0
        while True:
            try:
                await self._apply(st.schema, writes)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise_if_cancelled()
                if is_refusal(exc):
                    await self._isolate(st, writes, exc)
                    return
                attempt += 1
                self._on_error(exc)
                self._log.log(
                    logging.WARNING if attempt == 1 or attempt % 20 == 0 else logging.DEBUG,
                    "write-behind %s: %d journaled writes wait for L3 (attempt %d: %s); "
                    "retrying in %.2f s",
                    st.schema,
                    len(writes),
                    attempt,
                    exc,
                    delay,
                )
            await self._keep_claimed(st, writes)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, self._retry_max)

    async def _keep_claimed(self, st: Stream, writes: list[JournalEntry]) -> None:
        """Reset the entries' idle time: this live instance still works on them."""
        ids: list[int | bytes | str | memoryview[int]] = [
            sid for w in writes for sid in w.stream_ids
        ]
        client = self.tier.client
        with contextlib.suppress(TierError):
            await self.tier.call(
                lambda: client.xclaim(st.stream, GROUP, self._consumer, 0, ids, justid=True)
            )

    async def _isolate(self, st: Stream, writes: list[JournalEntry], exc: BaseException) -> None:
        if len(writes) == 1:
            await self._on_refused(writes[0], exc)
            return
        half = len(writes) // 2
        for part in (writes[:half], writes[half:]):
            await self._apply_until_done(st, part)

    async def _release(self, st: Stream, writes: list[JournalEntry]) -> None:
        if not writes:
            return
        keys = [st.latest, st.gen]
        args: list[bytes | str | int] = []
        for w in writes:
            if not w.key:
                continue
            keys.append(w.key)
            ttl = st.ttl_ms if w.op == "set" else self._tomb_ms
            args += [max(w.stream_ids, key=_sid), f"{w.version:016x}", ttl]
        client = self.tier.client
        await self.tier.call(lambda: RELEASE(client, keys, args))

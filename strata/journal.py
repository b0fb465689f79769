"""Crash-safe write-behind: a Redis Stream journal per schema, flushed by a consumer group.

    set / delete ──► one Lua script: SET L2 value (no TTL) + XADD journal ──► acknowledged
                                                                   │
    flusher (every instance, one consumer group "strata")          ▼
      XAUTOCLAIM entries idle > claim_after (a dead instance's) ─┐  XREADGROUP ">"
                                                                 ▼
      coalesce per id (newest version wins) ──► apply to L3, version-guarded (idempotent)
        unreachable L3: back off and retry forever (nothing is dropped)
        refused rows (constraint / type): dead letters, a Redis hash every instance sees
      ──► XACK + XDEL ──► give the L2 value its normal TTL back (if still the same write)

A journaled key's L2 value has no TTL until its entry reached L3, so an expiry cannot expose
an older L3 row. Keys: ``{prefix}:{schema}:journal`` and ``{prefix}:{schema}:deadletters``
next to the schema's L2 keys; a hash tag on the prefix keeps them in one cluster slot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from strata.errors import IntegrityError, TierError, WriteBehindError
from strata.tiers.redis import RedisTier

GROUP = "strata"

# KEYS[1] = journal stream, KEYS[2..] = L2 keys; ARGV per key: payload, version, op, id, row.
# The L2 value and its journal entry are written together or not at all; the stream order is
# the order the writes reached Redis.
_APPEND_LUA = """
local stream = KEYS[1]
for j = 2, #KEYS do
  local b = (j - 2) * 5
  redis.call('SET', KEYS[j], ARGV[b + 1])
  redis.call('XADD', stream, '*', 'k', KEYS[j], 'h', string.sub(ARGV[b + 1], 1, 32),
    'v', ARGV[b + 2], 'o', ARGV[b + 3], 'i', ARGV[b + 4], 'r', ARGV[b + 5])
end
return redis.call('XLEN', stream)
"""

# KEYS = L2 keys; ARGV = per key: payload head, ttl ms. The TTL comes back only when the value
# is still the write that was flushed (a newer journaled write keeps it persistent).
_RELEASE_LUA = """
for j = 1, #KEYS do
  local cur = redis.call('GET', KEYS[j])
  local ttl = tonumber(ARGV[2 * j])
  if cur and ttl > 0 and string.sub(cur, 1, 32) == ARGV[2 * j - 1] then
    redis.call('PEXPIRE', KEYS[j], ttl)
  end
end
return 1
"""


@dataclass(frozen=True, slots=True)
class JournalWrite:
    """One journal entry: ``row`` is the model as JSON for a set, None for a delete."""

    schema: str
    id: Any
    version: int
    op: str
    row: str | None
    key: str = ""
    head: bytes = b""


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """A write L3 refused, kept in Redis until retried or dropped."""

    schema: str
    id: Any
    version: int
    op: str
    row: str | None
    error: str
    at: float


def is_refusal(exc: BaseException) -> bool:
    """The one place that decides: did L3 refuse the data (dead letter) or fail (retry)?"""
    if isinstance(exc, IntegrityError):
        return True
    cause = exc.__cause__
    return isinstance(exc, TierError) and any(
        c.__name__ == "DataError" for c in type(cause).__mro__ if cause is not None
    )


Apply = Callable[[str, list[JournalWrite]], Awaitable[None]]
OnRefused = Callable[[DeadLetterEntry], Awaitable[None]]


class Journal:
    """The journals of every write-behind schema of one DataStore, and their flusher."""

    def __init__(
        self,
        tier: RedisTier,
        *,
        consumer: str,
        apply: Apply,
        on_refused: OnRefused,
        claim_after: float,
        interval: float,
        batch: int,
        retry_base: float,
        retry_max: float,
        max_pending: int,
        wait_timeout: float,
        tombstone_ttl: float,
        logger: logging.Logger,
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._tier = tier
        self._consumer = consumer
        self._apply = apply
        self._on_refused = on_refused
        self._claim_after = claim_after
        self._interval = interval
        self._batch = max(1, batch)
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._max_pending = max_pending
        self._wait_timeout = wait_timeout
        self._tomb_ms = int(tombstone_ttl * 1000)
        self._log = logger
        self._on_error = on_error
        self._streams: dict[str, str] = {}  # schema -> stream key
        self._lengths: dict[str, int] = {}  # schema -> journal length last seen
        self._ttls: dict[str, int] = {}  # schema -> L2 ttl in ms (0: none)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._last_claim = 0.0

    # -- registry -----------------------------------------------------------------------

    def add(self, schema: str, prefix: str, l2_ttl: float | None) -> None:
        self._streams[schema] = f"{prefix}:{schema}:journal"
        self._ttls[schema] = int(l2_ttl * 1000) if l2_ttl else 0

    def has(self, schema: str) -> bool:
        return schema in self._streams

    def dead_key(self, schema: str) -> str:
        return self._streams[schema].removesuffix(":journal") + ":deadletters"

    # -- writers ------------------------------------------------------------------------

    async def append(
        self, schema: str, items: Sequence[tuple[str, bytes, int, str, Any, str | None]]
    ) -> None:
        """Write (L2 key, payload, version, op, id, row JSON) items: value and entry at once.
        Returns once Redis has both; waits while the journal is at ``max_pending``."""
        stream = self._streams[schema]
        await self._wait_for_room(schema, stream)
        keys = [stream]
        args: list[Any] = []
        for key, payload, version, op, id, row in items:
            keys.append(key)
            args += [payload, str(version), op, json.dumps(id, default=str), row or ""]
        client = self._tier.client
        length = await self._tier._run(lambda: client.eval(_APPEND_LUA, len(keys), *keys, *args))
        self._lengths[schema] = int(length)
        if len(items) >= self._batch:
            self._wake.set()

    async def _wait_for_room(self, schema: str, stream: str) -> None:
        client = self._tier.client
        deadline = time.monotonic() + self._wait_timeout
        delay = 0.01
        while True:
            length = int(await self._tier._run(lambda: client.xlen(stream)))
            if length < self._max_pending:
                return
            self._wake.set()
            if time.monotonic() >= deadline:
                raise WriteBehindError(
                    f"{schema}: write-behind journal holds {length} unflushed writes "
                    f"(write_behind_max_pending={self._max_pending}) and did not drain within "
                    f"{self._wait_timeout}s; is PostgreSQL reachable?"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    # -- flusher ------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="strata-journal")

    async def close(self, timeout: float | None) -> None:
        """Drain what L3 accepts within ``timeout``; whatever is left stays journaled for a
        peer (or this instance's next start) to claim."""
        if self._task is None:
            return
        try:
            await self.flush(timeout)
        except WriteBehindError as exc:
            self._log.warning("write-behind left in the journal for a peer: %s", exc)
        finally:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    @property
    def approx_pending(self) -> int:
        """Unflushed journal entries as last seen by this instance (for Stats)."""
        return sum(self._lengths.values())

    async def pending(self) -> int:
        client = self._tier.client
        total = 0
        for name, stream in self._streams.items():
            n = int(await self._tier._run(lambda s=stream: client.xlen(s)))  # type: ignore[misc]
            self._lengths[name] = n
            total += n
        return total

    async def flush(self, timeout: float | None) -> None:
        """Wait until every journal of this store is empty (in L3 or dead-lettered)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while True:
            if self._task is None or self._task.done():
                raise WriteBehindError("write-behind journal flusher is not running")
            self._wake.set()
            left = await self.pending()
            if left == 0:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise WriteBehindError(f"write-behind flush timed out; {left} writes journaled")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def _run(self) -> None:
        groups: set[str] = set()
        while True:
            worked = False
            try:
                for schema, stream in self._streams.items():
                    if stream not in groups:
                        await self._create_group(stream)
                        groups.add(stream)
                    worked |= await self._drain(schema, stream)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: the journal waits there, retry later
                self._on_error(exc)
                self._log.warning("write-behind journal: %s", exc)
                await asyncio.sleep(self._retry_base)
                continue
            if not worked:
                self._wake.clear()
                try:
                    async with asyncio.timeout(self._interval):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def _create_group(self, stream: str) -> None:
        client = self._tier.client
        try:
            await self._tier._run(
                lambda: client.xgroup_create(stream, GROUP, id="0", mkstream=True)
            )
        except TierError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _drain(self, schema: str, stream: str) -> bool:
        client = self._tier.client
        entries: list[Any] = []
        now = time.monotonic()
        if now - self._last_claim >= min(self._claim_after / 2, 1.0) or not self._last_claim:
            self._last_claim = now
            idle = int(self._claim_after * 1000)
            res = await self._tier._run(
                lambda: client.xautoclaim(
                    stream, GROUP, self._consumer, idle, "0-0", count=self._batch
                )
            )
            entries = list(res[1])
        if not entries:
            read: Any = await self._tier._run(
                lambda: client.xreadgroup(GROUP, self._consumer, {stream: ">"}, count=self._batch)
            )
            entries = list(read[0][1]) if read else []
        if not entries:
            return False
        await self._flush_batch(schema, stream, entries)
        return True

    async def _flush_batch(self, schema: str, stream: str, entries: list[Any]) -> None:
        newest: dict[Any, JournalWrite] = {}
        for _, f in entries:
            if not f:  # deleted by a peer's XDEL after it was claimed here
                continue
            w = _decode(schema, f)
            key = _hashable(w.id)
            if key not in newest or newest[key].version < w.version:
                newest[key] = w
        writes = list(newest.values())
        if writes:
            await self._apply_forever(schema, writes)
        ids = [eid for eid, _ in entries]
        client = self._tier.client
        await self._tier._run(lambda: client.xack(stream, GROUP, *ids))
        await self._tier._run(lambda: client.xdel(stream, *ids))
        self._lengths[schema] = max(0, self._lengths.get(schema, 0) - len(ids))
        await self._give_back_ttl(schema, writes)

    async def _apply_forever(self, schema: str, writes: list[JournalWrite]) -> None:
        """Apply, backing off while L3 is unreachable; isolate rows L3 refuses."""
        delay = self._retry_base
        while True:
            try:
                await self._apply(schema, writes)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_refusal(exc):
                    await self._isolate(schema, writes)
                    return
                self._on_error(exc)
                self._log.warning(
                    "write-behind %s: %d writes wait for L3 (%s); retrying in %.1fs",
                    schema,
                    len(writes),
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)

    async def _isolate(self, schema: str, writes: list[JournalWrite]) -> None:
        if len(writes) == 1:
            w = writes[0]
            try:
                await self._apply(schema, writes)
            except Exception as exc:
                if not is_refusal(exc):
                    await self._apply_forever(schema, writes)
                    return
                await self._dead_letter(w, exc)
            return
        half = len(writes) // 2
        for part in (writes[:half], writes[half:]):
            await self._apply_forever(schema, part)

    async def _dead_letter(self, w: JournalWrite, exc: BaseException) -> None:
        letter = DeadLetterEntry(w.schema, w.id, w.version, w.op, w.row, str(exc), time.time())
        client = self._tier.client
        field = json.dumps(w.id, default=str)
        body = json.dumps(_as_dict(letter))
        await self._tier._run(lambda: client.hset(self.dead_key(w.schema), field, body))
        await self._on_refused(letter)

    async def _give_back_ttl(self, schema: str, writes: list[JournalWrite]) -> None:
        ttl = self._ttls.get(schema, 0)
        keys = [w.key for w in writes if w.key]
        if not keys:
            return
        args: list[Any] = []
        for w in writes:
            if w.key:
                args += [w.head, str(ttl if w.op == "set" else self._tomb_ms)]
        client = self._tier.client
        await self._tier._run(lambda: client.eval(_RELEASE_LUA, len(keys), *keys, *args))

    # -- dead letters -------------------------------------------------------------------

    async def dead_letters(self, schema: str | None = None) -> list[DeadLetterEntry]:
        client = self._tier.client
        out = []
        for name in self._streams if schema is None else [schema]:
            key = self.dead_key(name)
            raw = await self._tier._run(lambda k=key: client.hgetall(k))  # type: ignore[misc]
            for body in raw.values():
                out.append(DeadLetterEntry(**json.loads(body)))
        return sorted(out, key=lambda d: (d.schema, d.at))

    async def forget_dead_letters(self, letters: Sequence[DeadLetterEntry]) -> int:
        client = self._tier.client
        n = 0
        for d in letters:
            key, field = self.dead_key(d.schema), json.dumps(d.id, default=str)
            n += int(await self._tier._run(lambda k=key, f=field: client.hdel(k, f)))  # type: ignore[misc]
        return n


def _as_dict(letter: DeadLetterEntry) -> dict[str, Any]:
    return {s: getattr(letter, s) for s in DeadLetterEntry.__slots__}


def _hashable(id: Any) -> Any:
    return id if not isinstance(id, list) else tuple(id)


def _decode(schema: str, f: dict[bytes, bytes]) -> JournalWrite:
    row = f.get(b"r", b"").decode()
    return JournalWrite(
        schema=schema,
        id=json.loads(f[b"i"]),
        version=int(f[b"v"]),
        op=f[b"o"].decode(),
        row=row or None,
        key=f[b"k"].decode(),
        head=f[b"h"],
    )

"""What a writer keeps of its own journaled writes until L3 has them, and the rescue that
writes them to L3 directly when Redis loses them (issue 12; README: write modes).

    append ─► held[L2 key] = (entry id, id, version, op, row)      (per schema: Stream.held)
    this instance flushed it, or HELD says the key's latest entry is not this one any more
      (a peer flushed it, or a newer write superseded it)  ─► dropped
    Redis unreachable, or its epoch key is gone / changed (restarted without its data)
      ─► rescue: written to L3 directly, version-guarded like every flush (a later replay
         of the journal changes nothing) ─► dropped once L3 has it

So a Redis crash (or restart without persistence) while this process lives loses nothing
it acknowledged; readers of this process keep reading its own writes meanwhile (``own``).
A crash of this process *and* of Redis without persistence loses what Redis lost.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from strata.errors import CodecError, StrataError, TierUnavailableError
from strata.journal.entry import JournalEntry, decode_entry
from strata.journal.scripts import HELD

if TYPE_CHECKING:
    from strata.journal.flusher import Stream
    from strata.tiers.redis import RedisTier

__all__ = ["HeldWrite", "check", "establish_epoch", "note_epoch", "own", "rescue", "trusted"]

HeldWrite = tuple[bytes, bytes, int, str, bytes]
"""(stream entry id, packed id, version, op, packed row) of one acknowledged write"""

Apply = Callable[[str, list[JournalEntry]], Awaitable[None]]


def _entry(st: Stream, key: str, held: HeldWrite) -> JournalEntry | None:
    sid, pid, version, op, row = held
    fields = {b"o": op.encode(), b"v": str(version).encode(), b"i": pid, b"r": row}
    try:
        e = decode_entry(st.schema, sid, fields)
    except CodecError:
        return None
    e.key = key
    return e


def own(st: Stream, keys: Sequence[str]) -> dict[str, JournalEntry]:
    """This instance's held writes of these (physical) keys: what it reads while Redis is
    away, so it keeps reading its own writes."""
    out = {}
    for key in keys:
        held = st.held.get(key)
        if held is not None:
            e = _entry(st, key, held)
            if e is not None:
                out[key] = e
    return out


def trusted(tier: RedisTier, st: Stream) -> bool:
    """Redis answers and holds the journal this instance wrote to: its held writes are
    the newest of their keys it knows of. Otherwise (Redis away, or back without its
    data) a held write is only served where L3 holds an older row (router/journaled.py)."""
    return tier.available and st.token is not None and st.seen_epoch == st.token


async def establish_epoch(tier: RedisTier, st: Stream) -> None:
    """The journal's epoch: a token in Redis that disappears with Redis's data."""
    client = tier.client
    token = uuid.uuid4().hex.encode()
    created = await tier.call(lambda: client.set(st.epoch, token, nx=True))
    current: Any = await tier.call(lambda: client.get(st.epoch))
    st.token = current if isinstance(current, bytes) else None
    if created and st.seen_epoch is None:
        # no epoch before ours: a fresh Redis, or one that lost its data after this
        # instance read journaled writes from it (their writers had made an epoch)
        st.losses += 1
    note_epoch(st, st.token)


def note_epoch(st: Stream, epoch: Any) -> None:
    """The epoch Redis holds now: a change from a known one means Redis lost its data
    (readers refuse older L3 rows of what they read before it: router/journaled.py)."""
    epoch = epoch if isinstance(epoch, bytes) and epoch else None  # PEEK: b"" for none
    if epoch != st.seen_epoch:
        if st.seen_epoch is not None:
            st.losses += 1
        st.seen_epoch = epoch


async def check(tier: RedisTier, st: Stream) -> bool:
    """Drop the held writes Redis no longer needs us for; True when Redis lost its data
    (the epoch changed): everything held must be rescued."""
    keys = list(st.held)
    client = tier.client
    res = await tier.call(lambda: HELD(client, [st.latest, st.epoch, *keys], []))
    epoch, latest = res[0], res[1:]
    if st.token is None or epoch != st.token:
        return True
    for key, sid in zip(keys, latest, strict=True):
        held = st.held.get(key)
        if held is not None and held[0] != sid:
            del st.held[key]  # flushed by a peer, or superseded by a newer write
    return False


async def rescue(
    st: Stream, apply: Apply, log: logging.Logger, why: str, after: Apply | None = None
) -> int:
    """Write every held write of the stream to L3 directly; returns how many reached it.
    ``after``: told which did, so the caches drop what they read of those keys meanwhile
    (Redis lost these writes: another instance may have filled it with the older row)."""
    held = dict(st.held)
    entries = [e for k, h in held.items() if (e := _entry(st, k, h)) is not None]
    if not entries:
        return 0
    try:
        await apply(st.schema, entries)
        done = entries
    except TierUnavailableError:
        raise  # L3 away too: tried again later
    except StrataError:
        done = []
        for e in entries:  # one refused row must not keep the others out
            try:
                await apply(st.schema, [e])
                done.append(e)
            except StrataError as exc:
                log.debug("write-behind rescue of %s %r failed: %s", st.schema, e.id, exc)
    for e in done:
        if st.held.get(e.key) == held[e.key]:
            del st.held[e.key]
    if done and after is not None:
        try:
            await after(st.schema, done)
        except StrataError as exc:  # L2 repairs what it missed when Redis is back
            log.warning(
                "write-behind %s: after the rescue, cache clean-up failed: %s", st.schema, exc
            )
    if done:
        log.warning(
            "write-behind %s: %s; wrote %d acknowledged writes this instance journaled "
            "straight to L3 (version-guarded: a later flush of the journal changes nothing)",
            st.schema,
            why,
            len(done),
        )
    return len(done)

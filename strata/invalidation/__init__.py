"""The invalidation bus: keeps every instance's L1 coherent through Redis pub/sub.

    instance A (writer)              Redis channel               instance B, C, ...
    ───────────────────              ─────────────               ──────────────────
    write L3 ── commit ──► L2 ──► L1
                                │
                                ▼
    publish(Invalidation) ─ PUBLISH ─► {"schema","id","op", ──► listener task
                                        "origin","version"}       │
                                                                  ├─ own origin ──► ignored
                                                                  ├─ other prefix ──► ignored
                                                                  ├─ malformed ──► log, on_error
                                                                  └─ else ──► on_message(msg):
                                                                              drop L1 key(s)

Messages carry the writer's ``key_prefix`` (its app): two apps sharing one Redis (and even
one channel) ignore each other's. Left at its default, the channel itself is
``{key_prefix}:invalidation``.

Publish only after the L3 commit (write-behind: after the L2 write), so that a reader woken by
the message cannot fetch the old row again. A batch write publishes one message carrying
``ids``/``versions``, not one message per row.

Redis pub/sub is fire-and-forget: a subscriber that is not connected misses messages for
good. So whenever the subscription may have missed something, the whole L1 is dropped:

    subscription confirmed ──► on_reset() ──► connected = True ──► deliver messages
          ▲                                                             │
          │                              connection error, or no own heartbeat
          │                              for 2 x heartbeat_interval (blackholed link)
          │                                                             │
          │                                                             ▼
    backoff 0.1 s .. 5 s ◄── close pubsub ◄── on_reset() ◄── connected = False (one warning)

``on_reset`` also runs on the very first subscription: between ``start()`` and the moment
Redis confirms the subscription, this instance may have filled L1 while other instances'
messages could not reach it; clearing an L1 that young costs next to nothing. It also runs
when redis-py re-establishes a dropped pubsub connection by itself (it resubscribes
silently; the second subscribe confirmation on one connection gives it away).

Heartbeats: every ``heartbeat_interval`` the bus publishes ``{"op":"heartbeat","origin",
"seq"}`` on the same channel, through the shared client. Hearing its own heartbeat proves the
subscription delivers; heartbeats are never passed to ``on_message``.

The bus owns two tasks (listener, heartbeat) and one pubsub connection, all ended by
``stop()``. The shared ``redis.asyncio.Redis`` client belongs to the caller.
"""

from __future__ import annotations

from strata.invalidation.bus import InvalidationBus
from strata.invalidation.messages import Heartbeat, Invalidation, InvalidationOp, decode_message
from strata.invalidation.transport import Transport

__all__ = [
    "Heartbeat",
    "Invalidation",
    "InvalidationBus",
    "InvalidationOp",
    "Transport",
    "decode_message",
]

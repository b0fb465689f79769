"""The L2 tier's server-side pieces: its Lua scripts (the conditional set, the batch get,
the search-result generation) and the pipelined single-key GET.

Keys and arguments are physical (already hash-tagged on a cluster); ``strata.tiers.redis``
runs these through its circuit breaker.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.cluster import RedisCluster

__all__ = [
    "ENVELOPE_LUA",
    "DELETE_IF",
    "DROP_REFUSED",
    "GENERATION",
    "SET",
    "SET_PUBLISH",
    "SHAPES",
    "Script",
    "bind",
    "get_one",
    "ttl_ms",
    "unbind",
    "unbind_entry",
]

# Every stored row payload is ``envelope + b"#" + 16 hex digits of sha1(key + envelope)``
# (``key`` the physical key): a payload copied or planted under another key, or whose
# version digits were corrupted, does not verify and is a miss (and deleted), never trusted.
# The L2 tier's own writes carry their expiry too, so a read needs no PTTL:
# ``envelope + b"!" + 12 hex digits (expiry, unix ms) + b"@" + 16 hex digits of sha1(key +
# envelope + b"!" + expiry)``. Both forms hash everything before the trailer's mark, which
# is what the Lua ``bound`` checks; the mark says which form it is.
_TRAILER = 17
_EXPIRY = 13  # b"!" + 12 hex digits


def ttl_ms(ttl: float | None) -> int:
    """A TTL in seconds as the scripts' milliseconds (0: no expiry, else at least 1)."""
    if ttl is None:
        return 0
    return max(1, round(ttl * 1000))


def bind(key: str, envelope: bytes, *, expires_ms: int | None = None) -> bytes:
    """``envelope`` bound to the physical ``key`` (see above), with its expiry (unix
    milliseconds, 0 for none) when given."""
    if expires_ms is None:
        return envelope + b"#" + _tag(key, envelope)
    body = envelope + b"!%012x" % expires_ms
    return body + b"@" + _tag(key, body)


def unbind(key: str, value: bytes) -> bytes | None:
    """The envelope stored under ``key``, or None when ``value`` is not bound to it."""
    entry = unbind_entry(key, value)
    return None if entry is None else entry[0]


def unbind_entry(key: str, value: bytes) -> tuple[bytes, int | None] | None:
    """``(envelope, expiry)`` stored under ``key``, or None when ``value`` is not bound to
    it. The expiry is in unix ms, 0 for none, None when the trailer does not carry it (a
    payload bound by the journal: its TTL is set apart, ask PTTL)."""
    if len(value) < 18 + _TRAILER:
        return None
    mark = value[-_TRAILER]
    if mark != 0x23 and mark != 0x40:  # b"#", b"@"
        return None
    body = value[:-_TRAILER]
    if value[-16:] != _tag(key, body):
        return None
    if mark == 0x23:
        return body, None
    if len(body) < 18 + _EXPIRY or body[-_EXPIRY] != 0x21:  # b"!"
        return None
    try:
        expires = int(body[-12:], 16)
    except ValueError:
        return None
    return body[:-_EXPIRY], expires


def _tag(key: str, envelope: bytes) -> bytes:
    return hashlib.sha1(key.encode() + envelope, usedforsecurity=False).hexdigest()[:16].encode()


Client = aioredis.Redis | RedisCluster

# KEYS = keys [+ a generation counter to INCR], ARGV = bound payload, ttl ms (0 = no expiry),
# ... Returns 1 (written) or 0 (kept: the key holds a newer envelope bound to it) per key; a
# value not bound to its key (planted, corrupt) is never trusted for its version. Versions are
# compared as two 32-bit halves, which is exact in Lua's doubles and does not depend on the
# server's collation locale the way string comparison does.
# The helpers every script that writes row payloads starts with (the journal's too):
# ENVELOPE (a header pattern), bound(key, value) (the trailer check), newer(current, new).
ENVELOPE_LUA = """
local ENVELOPE = '^S[jmt]' .. string.rep('[0-9a-f]', 16)
-- A stored value is ours only if its trailer is the hash of its key and what precedes it.
local function bound(key, value)
  local n = #value
  local mark = string.sub(value, n - 16, n - 16)
  if n < 35 or (mark ~= '#' and mark ~= '@') then return false end
  local envelope = string.sub(value, 1, n - 17)
  return string.sub(redis.sha1hex(key .. envelope), 1, 16) == string.sub(value, n - 15)
end
local function newer(current, new)
  local ch = tonumber(string.sub(current, 3, 10), 16)
  local nh = tonumber(string.sub(new, 3, 10), 16)
  if ch ~= nh then return ch > nh end
  return tonumber(string.sub(current, 11, 18), 16) > tonumber(string.sub(new, 11, 18), 16)
end
"""

_SET_BODY = """
local n = (#ARGV - {o}) / 2
local applied = {{}}
for i = 1, n do
  local key = KEYS[i]
  local new = ARGV[{o} + 2 * i - 1]
  local ttl = tonumber(ARGV[{o} + 2 * i])
  local current = redis.pcall('GET', key)
  if type(current) == 'string' and string.find(current, ENVELOPE) and bound(key, current)
      and newer(current, new) then
    applied[i] = 0
  else
    if ttl > 0 then
      redis.call('SET', key, new, 'PX', ttl)
    else
      redis.call('SET', key, new)
    end
    applied[i] = 1
  end
end
if #KEYS > n then
  redis.call('INCR', KEYS[n + 1])
end
{publish}return applied
"""

_SET_LUA = ENVELOPE_LUA + _SET_BODY.format(o=0, publish="")

# The same, ARGV[1] = channel, ARGV[2] = message first: the write's invalidation goes out in
# the same round trip, after the values are in place (standalone and Sentinel; a cluster's
# sharded channel lives in another slot than the keys).
_SET_PUBLISH_LUA = ENVELOPE_LUA + _SET_BODY.format(
    o=2, publish="redis.call('PUBLISH', ARGV[1], ARGV[2])\n"
)

# KEYS[1] = generation counter, ARGV = result key prefix, digest. Returns the generation
# (as its decimal text, "0" when unset) and the payload at prefix .. generation .. ":" .. digest
# (the result key is derived here, so it is not declared in KEYS: standalone Redis only).
_GENERATION_LUA = """
local gen = redis.pcall('GET', KEYS[1])
if type(gen) ~= 'string' or not string.find(gen, '^%d+$') then
  gen = '0'
end
local payload = redis.pcall('GET', ARGV[1] .. gen .. ':' .. ARGV[2])
if type(payload) ~= 'string' then
  payload = false
end
return {gen, payload}
"""


class Script:
    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(
        self, client: Client, keys: Sequence[str], args: Sequence[bytes | int | str]
    ) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except rexc.NoScriptError:
            # First use, or the server restarted: EVAL runs it and caches it again.
            return await client.eval(self.source, len(keys), *keys, *args)


SET = Script(_SET_LUA)
SET_PUBLISH = Script(_SET_PUBLISH_LUA)
GENERATION = Script(_GENERATION_LUA)


async def get_one(client: aioredis.Redis, key: str) -> bytes | None:
    """GET on one pooled connection: the single-key hot path, one round trip and no Lua
    (the payload carries its own expiry, see ``bind``). A key of another type is a miss.

    Cheaper than ``client.get``: no per-call command lookup, retry wrapper nor response
    callback, only the pool's connection and its parser.
    """
    pool = client.connection_pool
    command = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(encoded := key.encode()), encoded)
    for attempt in (1, 2):
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await _send(conn, command)
            try:
                value = await conn.read_response()
            except rexc.ResponseError:  # WRONGTYPE: a key of another type is a miss
                return None
            return value if isinstance(value, bytes) else None
        except (rexc.ConnectionError, ConnectionError):
            # A pooled socket that died with a restarted server: one retry on a fresh one.
            await conn.disconnect(nowait=True)
            if attempt == 2:
                raise
        except BaseException:
            await conn.disconnect(nowait=True)  # the reply may still be in flight
            raise
        finally:
            await pool.release(conn)
    raise AssertionError("unreachable")  # pragma: no cover


async def _send(conn: Any, command: bytes) -> None:
    """Write ``command`` on a connected socket. redis-py's ``send_packed_command`` wraps
    every write in ``asyncio.wait_for`` when a socket timeout is set (a Task per command,
    on Python 3.11); a write of a few bytes is buffered at once, and only its ``drain``
    can wait, so the timeout bounds that alone. Falls back to redis-py where its private
    writer is not there."""
    writer = getattr(conn, "_writer", None)
    if writer is None or not conn.is_connected:
        await conn.send_packed_command(command)
        return
    writer.write(command)
    if writer.transport.get_write_buffer_size():  # the kernel did not take it all
        async with asyncio.timeout(conn.socket_timeout):
            await writer.drain()


# KEYS[1] = key, ARGV[1] = value: DEL only if the key still holds that value (an unbound
# value found by a read is dropped without racing a good write that replaced it meanwhile).
_DELETE_IF_LUA = """
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

DELETE_IF = Script(_DELETE_IF_LUA)

# KEYS[1] = a schema's shape registry (a sorted set: shape -> last seen, unix seconds),
# ARGV = our shape, now, oldest score still of interest. Notes our shape, forgets shapes
# not seen since, returns those left.
_SHAPES_LUA = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
return redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[3], '+inf')
"""

SHAPES = Script(_SHAPES_LUA)

# KEYS = keys a refused write left holding their old values [+ a generation counter],
# ARGV[1] = "1" when the last key is the counter. DEL each key, INCR the counter. Flagged
# allow-oom: a write refused for memory (noeviction) must still start a new search-result
# generation, or a result cached before the write would be served after it. DEL frees
# memory and INCR of an existing counter takes none to speak of.
_DROP_REFUSED_LUA = """#!lua flags=allow-oom
local n = #KEYS
if ARGV[1] == '1' then
  redis.call('INCR', KEYS[n])
  n = n - 1
end
for i = 1, n do
  redis.call('DEL', KEYS[i])
end
return 1
"""

DROP_REFUSED = Script(_DROP_REFUSED_LUA)

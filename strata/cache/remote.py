"""The keyed cache's Redis side, on the L2 tier's client and circuit breaker.

Every script takes ``KEYS[1]`` = the namespace's generation hash ``{tag}:g`` and derives the
data keys it touches from the same ``{tag}``, so one script never leaves one namespace (one
Redis Cluster slot). A data key is ``{tag}:d:{path}#{g0}.{g1}...``: the path under the
current generation of each of its prefixes, read in the same round trip (see ``keys``).

    get_many   HMGET generations, GET + PTTL         -> payload, pttl per key
    set_many   HMGET generations, SET [NX] PX        -> written? per key
    delete     HMGET generations, DEL | GETDEL
    incr       HMGET generations, INCRBY [+ PEXPIRE]
    bump       HINCRBY {tag}:g prefix                -> the prefix's new generation

Locks, leases and rate limits use ``{tag}:k:``, ``{tag}:l:`` and ``{tag}:r:`` keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis.exceptions as rexc

from strata.errors import TierError
from strata.tiers.redis import RedisTier

__all__ = ["Remote", "Script"]

_RESOLVE = """
local G = KEYS[1]
local T = ARGV[1]
local function resolve(i)
  local path = ARGV[i]
  local n = tonumber(ARGV[i + 1])
  local parts = {}
  if n > 0 then
    local fields = {}
    for j = 1, n do fields[j] = ARGV[i + 1 + j] end
    local gens = redis.call('HMGET', G, unpack(fields))
    for j = 1, n do parts[j] = gens[j] or '0' end
  end
  return T .. ':d:' .. path .. '#' .. table.concat(parts, '.'), i + 2 + n
end
"""

# ARGV = tag, count, then per key: path, n, prefixes...
_GET = (
    _RESOLVE
    + """
local out = {}
local i = 3
for k = 1, tonumber(ARGV[2]) do
  local key
  key, i = resolve(i)
  local v = redis.pcall('GET', key)
  if type(v) == 'string' then
    out[2 * k - 1] = v
    out[2 * k] = redis.call('PTTL', key)
  else
    out[2 * k - 1] = false
    out[2 * k] = -2
  end
end
return out
"""
)

# ARGV = tag, count, nx (0/1), then per key: path, n, prefixes..., payload, ttl ms (0: none)
_SET = (
    _RESOLVE
    + """
local out = {}
local i = 4
local nx = ARGV[3] == '1'
for k = 1, tonumber(ARGV[2]) do
  local key
  key, i = resolve(i)
  local payload = ARGV[i]
  local ttl = tonumber(ARGV[i + 1])
  i = i + 2
  local ok
  if nx and ttl > 0 then
    ok = redis.call('SET', key, payload, 'NX', 'PX', ttl)
  elseif nx then
    ok = redis.call('SET', key, payload, 'NX')
  elseif ttl > 0 then
    ok = redis.call('SET', key, payload, 'PX', ttl)
  else
    ok = redis.call('SET', key, payload)
  end
  out[k] = ok and 1 or 0
end
return out
"""
)

# ARGV = tag, count, pull (0/1), then per key: path, n, prefixes...
_DELETE = (
    _RESOLVE
    + """
local i = 4
local pull = ARGV[3] == '1'
local out = {}
for k = 1, tonumber(ARGV[2]) do
  local key
  key, i = resolve(i)
  if pull then
    local v = redis.pcall('GET', key)
    out[k] = type(v) == 'string' and v or false
  else
    out[k] = false
  end
  redis.call('DEL', key)
end
return out
"""
)

# ARGV = tag, path, n, prefixes..., by, ttl ms (0: keep)
_INCR = (
    _RESOLVE
    + """
local key, i = resolve(2)
local by = tonumber(ARGV[i])
local ttl = tonumber(ARGV[i + 1])
local v = redis.call('INCRBY', key, by)
if ttl > 0 and redis.call('PTTL', key) < 0 then
  redis.call('PEXPIRE', key, ttl)
end
return v
"""
)

# KEYS[1] = gens hash, ARGV = prefix
_BUMP = "return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)"

# KEYS[1] = lock / lease key, ARGV = token: delete only if we still hold it
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] = counter key, ARGV = limit, window ms. Fixed window.
_FIXED = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {n, ttl}
"""

# KEYS[1] = sorted set, ARGV = limit, window ms, member. Sliding window on the server clock.
_SLIDING = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
local allowed = 0
if n < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  n = n + 1
  allowed = 1
end
redis.call('PEXPIRE', KEYS[1], window)
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local reset = window
if oldest[2] then reset = tonumber(oldest[2]) + window - now end
return {allowed, n, reset}
"""


class Script:
    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, tier: RedisTier, keys: Sequence[str], args: Sequence[Any]) -> Any:
        client = tier.client

        async def run() -> Any:
            try:
                return await client.evalsha(self.sha, len(keys), *keys, *args)
            except rexc.NoScriptError:
                return await client.eval(self.source, len(keys), *keys, *args)

        return await tier.call(run)


GET, SET, DELETE, INCR = Script(_GET), Script(_SET), Script(_DELETE), Script(_INCR)
BUMP, RELEASE, FIXED, SLIDING = Script(_BUMP), Script(_RELEASE), Script(_FIXED), Script(_SLIDING)

Item = tuple[str, tuple[str, ...]]  # (path, prefixes)


def _flat(items: Sequence[Item]) -> list[Any]:
    out: list[Any] = []
    for path, prefixes in items:
        out.append(path)
        out.append(len(prefixes))
        out.extend(prefixes)
    return out


def _ms(ttl: float | None) -> int:
    return 0 if ttl is None else max(1, round(ttl * 1000))


class Remote:
    """One namespace tag's Redis operations. Raise TierError (the breaker's translation);
    the caller decides whether a failure is a miss or an error."""

    __slots__ = ("gens", "tag", "tier")

    def __init__(self, tier: RedisTier, tag: str) -> None:
        self.tier = tier
        self.tag = tag
        self.gens = f"{tag}:g"

    async def get_many(self, items: Sequence[Item]) -> list[tuple[bytes | None, float | None]]:
        flat = await GET(self.tier, [self.gens], [self.tag, len(items), *_flat(items)])
        out: list[tuple[bytes | None, float | None]] = []
        for i in range(0, len(flat), 2):
            payload, pttl = flat[i], flat[i + 1]
            out.append((payload or None, pttl / 1000 if payload and pttl >= 0 else None))
        return out

    async def set_many(
        self, items: Sequence[tuple[str, tuple[str, ...], bytes, float | None]], *, nx: bool
    ) -> list[bool]:
        args: list[Any] = [self.tag, len(items), 1 if nx else 0]
        for path, prefixes, payload, ttl in items:
            args += [path, len(prefixes), *prefixes, payload, _ms(ttl)]
        return [bool(x) for x in await SET(self.tier, [self.gens], args)]

    async def delete_many(self, items: Sequence[Item], *, pull: bool = False) -> list[bytes | None]:
        args = [self.tag, len(items), 1 if pull else 0, *_flat(items)]
        return [x or None for x in await DELETE(self.tier, [self.gens], args)]

    async def incr(self, item: Item, by: int, ttl: float | None) -> int:
        args = [self.tag, *_flat([item]), by, _ms(ttl)]
        try:
            return int(await INCR(self.tier, [self.gens], args))
        except TierError as exc:
            if "not an integer" in str(exc):
                from strata.errors import InvalidValueError

                raise InvalidValueError(f"{item[0]!r} does not hold a counter") from exc
            raise

    async def bump(self, prefix: str) -> int:
        return int(await BUMP(self.tier, [self.gens], [prefix]))

    # locks and leases: plain keys of the same tag
    async def set_nx(self, key: str, token: str, ttl: float) -> bool:
        client = self.tier.client
        return bool(await self.tier.call(lambda: client.set(key, token, nx=True, px=_ms(ttl))))

    async def release(self, key: str, token: str) -> bool:
        return bool(await RELEASE(self.tier, [key], [token]))

    async def exists(self, key: str) -> bool:
        client = self.tier.client
        return bool(await self.tier.call(lambda: client.exists(key)))

    async def fixed_window(self, key: str, limit: int, per: float) -> tuple[int, float]:
        n, ttl = await FIXED(self.tier, [key], [limit, _ms(per)])
        return int(n), int(ttl) / 1000

    async def sliding_window(
        self, key: str, limit: int, per: float, member: str
    ) -> tuple[bool, int, float]:
        allowed, n, reset = await SLIDING(self.tier, [key], [limit, _ms(per), member])
        return bool(allowed), int(n), max(0, int(reset)) / 1000

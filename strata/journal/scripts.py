"""The journal's Lua scripts: what makes a write-behind write and its journal entry atomic.

APPEND  KEYS = stream, latest-entry hash, generation counter, L2 key 1..n
        ARGV = schema, max pending, then per key: payload, id, version, op, row
  full journal (XLEN >= max pending, counting only keys not already journaled) -> {-1, len}
  else, per key:
    L2 key := payload (bound to its key), no TTL, unless it holds a newer envelope bound to
    it (the "only if newer" rule; a planted or corrupt value is never trusted)
    XADD stream * s schema i id v version o op r row k key
    an older entry of the same key still in the stream: XDEL (the new one supersedes it:
      it carries the whole row, and its version)
    latest[key] := the new entry id
  INCR generation (cached searches did not see these writes)      -> {1, XLEN, entry ids...}

APPEND_PUBLISH  the same, ARGV + channel, message: once the values and entries are in place,
  PUBLISH the write's invalidation in the same round trip (standalone and Sentinel; a
  cluster's sharded channel lives in another slot than the journal)

RELEASE KEYS = latest-entry hash, generation counter, L2 key 1..n
        ARGV = per key: entry id, version (16 hex digits), ttl ms (0: keep no TTL)
  after the entries reached L3: a key whose latest entry is this one is journaled no more
  (HDEL); its L2 value gets its TTL back if it is still the flushed version (a newer
  journaled value keeps none); INCR generation (a search cached before the flush missed it)

PEEK    KEYS = stream, latest-entry hash, epoch key, L2 key 1..n
  {epoch (or ""), then per key: its latest journal entry (XRANGE of the id the latest hash
  names), or an empty list when the journal holds no write of it}: what readers take
  instead of an older L3 row

HELD    KEYS = latest-entry hash, epoch key, L2 key 1..n   ARGV = this instance's epoch
  {epoch (or ""), then per key its latest entry id (or "")}: which writes this instance
  still holds for rescue are journaled yet (an empty or new epoch: Redis lost its data)

A journaled key's L2 value has no TTL until its entry is in L3, so an expiry cannot expose
an older L3 row to a reader of another instance.
"""

from __future__ import annotations

from strata.tiers.redis_scripts import ENVELOPE_LUA, Script

__all__ = [
    "APPEND",
    "APPEND_LUA",
    "APPEND_PUBLISH",
    "APPEND_PUBLISH_LUA",
    "HELD",
    "HELD_LUA",
    "PEEK",
    "PEEK_LUA",
    "RELEASE",
    "RELEASE_LUA",
    "Script",
]


APPEND_LUA = (
    ENVELOPE_LUA
    + """
local stream, latest, gen = KEYS[1], KEYS[2], KEYS[3]
local schema, limit = ARGV[1], tonumber(ARGV[2])
local len = redis.call('XLEN', stream)
if len >= limit then
  local fresh = 0
  for j = 4, #KEYS do
    if redis.call('HEXISTS', latest, KEYS[j]) == 0 then fresh = fresh + 1 end
  end
  if fresh > 0 then return {-1, len} end
end
local ids = {}
for j = 4, #KEYS do
  local key = KEYS[j]
  local b = 2 + (j - 4) * 5
  local payload = ARGV[b + 1]
  local current = redis.pcall('GET', key)
  if not (type(current) == 'string' and string.find(current, ENVELOPE)
          and bound(key, current) and newer(current, payload)) then
    redis.call('SET', key, payload)
  end
  local id = redis.call('XADD', stream, '*', 's', schema, 'i', ARGV[b + 2],
    'v', ARGV[b + 3], 'o', ARGV[b + 4], 'r', ARGV[b + 5], 'k', key)
  local older = redis.call('HGET', latest, key)
  if older then redis.call('XDEL', stream, older) end
  redis.call('HSET', latest, key, id)
  ids[#ids + 1] = id
end
redis.call('INCR', gen)
-- publish
local out = {1, redis.call('XLEN', stream)}
for _, id in ipairs(ids) do out[#out + 1] = id end
return out
"""
)

# The channel and message follow the per-key arguments (the loop above counts by KEYS).
APPEND_PUBLISH_LUA = APPEND_LUA.replace(
    "-- publish\n", "redis.call('PUBLISH', ARGV[#ARGV - 1], ARGV[#ARGV])\n"
)

RELEASE_LUA = """
local latest, gen = KEYS[1], KEYS[2]
for j = 3, #KEYS do
  local key = KEYS[j]
  local b = (j - 3) * 3
  if redis.call('HGET', latest, key) == ARGV[b + 1] then
    redis.call('HDEL', latest, key)
    local ttl = tonumber(ARGV[b + 3])
    local current = redis.pcall('GET', key)
    if ttl > 0 and type(current) == 'string' and string.sub(current, 3, 18) == ARGV[b + 2] then
      redis.call('PEXPIRE', key, ttl)
    end
  end
end
redis.call('INCR', gen)
return 1
"""

PEEK_LUA = """
local stream, latest = KEYS[1], KEYS[2]
local out = {redis.call('GET', KEYS[3]) or ''}
for j = 4, #KEYS do
  local id = redis.call('HGET', latest, KEYS[j])
  if id then out[j - 2] = redis.call('XRANGE', stream, id, id) else out[j - 2] = {} end
end
return out
"""

HELD_LUA = """
local latest, epoch = KEYS[1], KEYS[2]
local out = {redis.call('GET', epoch) or ''}
for j = 3, #KEYS do out[#out + 1] = redis.call('HGET', latest, KEYS[j]) or '' end
return out
"""


APPEND = Script(APPEND_LUA)
APPEND_PUBLISH = Script(APPEND_PUBLISH_LUA)
PEEK = Script(PEEK_LUA)
HELD = Script(HELD_LUA)
RELEASE = Script(RELEASE_LUA)

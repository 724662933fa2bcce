# -*- test-case-name: tests.cluster.test_store -*-
"""
The Lua scripts run inside Redis: each is one atomic step on shared state, timed
by the Redis server's clock (C{TIME}), so hosts whose clocks differ still share
one bucket. A bucket is a hash of C{tokens} (a number) and C{stamp}
(milliseconds), refilled at C{rate} per second up to C{burst}; a missing key is
a full bucket, and a key expires once its bucket would be full again.
"""

from __future__ import annotations

import attrs

__all__ = ["BLOCKED", "FAILURE", "LEASE", "Script"]


@attrs.frozen
class Script:
    """A Lua script and the name logs give it."""

    name: str
    source: str


# Defines now (ms), and refill/store for the bucket of KEYS[1] with rate (per
# second) and burst from ARGV[1], ARGV[2].
_BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local function refill()
  local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
  local tokens, stamp = tonumber(state[1]), tonumber(state[2])
  if tokens == nil or stamp == nil then return burst end
  if now > stamp then tokens = tokens + (now - stamp) * rate / 1000 end
  return math.min(burst, tokens)
end
local function store(tokens)
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', now)
  redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
end
"""

#: Take a lease: ARGV rate, burst, want, need. Grants min(want, whole tokens)
#: when at least need tokens are there, else nothing; returns {granted, ms until
#: need tokens are there (0 when granted)}.
LEASE = Script(
    "lease",
    _BUCKET
    + """
local want, need = tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens = refill()
if tokens < need then
  store(tokens)
  return {0, math.ceil((need - tokens) * 1000 / rate)}
end
local granted = math.min(want, math.floor(tokens))
store(tokens - granted)
return {granted, 0}
""",
)

#: Count one failed login: KEYS bucket, blocked set; ARGV rate, burst, address.
#: Takes a token when there is one; returns the ms until the address may try
#: again (0: it may now), and while it may not, keeps it in the blocked set
#: (scored with the time it may again).
FAILURE = Script(
    "failure",
    _BUCKET
    + """
local tokens = refill()
if tokens >= 1 then tokens = tokens - 1 end
store(tokens)
if tokens >= 1 then return 0 end
local wait = math.ceil((1 - tokens) * 1000 / rate)
redis.call('ZADD', KEYS[2], now + wait, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('PEXPIRE', KEYS[2], math.ceil(1000 / rate) + 1000)
return wait
""",
)

#: The blocked addresses: KEYS blocked set; ARGV the most to return. Returns
#: {address, ms it stays blocked, ...}.
BLOCKED = Script(
    "blocked",
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf',
  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for i = 1, #items, 2 do
  out[#out + 1] = items[i]
  out[#out + 1] = tonumber(items[i + 1]) - now
end
return out
""",
)

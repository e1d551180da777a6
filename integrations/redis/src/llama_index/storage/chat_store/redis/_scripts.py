"""The Lua scripts behind every chat store operation (shared by the redis and upstash stores).

Each operation is ONE script call: one round trip (one HTTP request on Upstash), atomic on the
server. Conversation scripts take ``KEYS = [conversation, index, expiry]`` and
``ARGV = [member, ttl_ms, ...]`` where ``member`` is the key as the caller wrote it and
``ttl_ms`` says what to do with the expiry:

* ``> 0``: the conversation and its registry entry expire ``ttl_ms`` from now (sliding);
* ``0``: they never expire (a store without ``ttl``);
* ``-1``: leave the expiry alone (reads without ``refresh_on_read``).

The registry is two sorted sets beside the conversations:

* the index: every member with score 0, so it is ordered by member and pages with
  ZRANGEBYLEX from a cursor that writes never move (a listing is stable while the
  conversations it lists keep changing);
* the expiry set: members of expiring conversations scored by their expiry in epoch
  milliseconds, so entries of expired conversations are found and removed by score
  (a few on every write, all on every listing) instead of piling up.

Scripts that change a conversation (the mutations) take a fourth key, the conversation's
record, and two more arguments, ``ARGV[3]`` an operation id (random, one per store call)
and ``ARGV[4]`` how long in milliseconds the record outlives the conversation's last
change; their own arguments start at ``ARGV[5]``. Every mutation adds its op id to the
record. One whose op id comes with a ``?`` in front (a resend, or a call a client may
resend on its own) looks for it first: found, the call was applied already, so it changes
nothing and returns what it returned then. A first attempt skips the search (its op id is
new), which saves the scan on the common path. The record remembers the last
:data:`RECORD_SIZE` mutations of its conversation.

A member is listed only while its conversation exists, which Redis's own key expiry
decides exactly; the index and the expiry set themselves expire with their longest-lived
conversation.

In Redis Cluster every key a script names must share one hash slot. A hash-tagged namespace
(``"{app1}:"``) puts all of them there. A namespace without one is spread over buckets
(:mod:`._buckets`, the format): the scripts run unchanged with the bucket's home
``namespace + "{tag}"`` as their namespace, where ``tag`` (three digits) names one of 128
buckets chosen by ``crc32(member) % 128``; the conversation, its catalog entry, its record and
its bucket's index and expiry set then share the tag's slot, and listings call a script per
bucket.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

__all__ = [
    "ADOPT",
    "APPEND",
    "CATALOG_PAGE",
    "CLEAR_PAGE",
    "COUNT",
    "DELETE_ALL",
    "DELETE_AT",
    "INFO",
    "INSERT",
    "KEYS_PAGE",
    "METADATA",
    "POP_FIRST",
    "POP_LAST",
    "REPLACE",
    "WINDOW",
    "Script",
]


@dataclass(frozen=True)
class Script:
    """A Lua script, called by its SHA1 (EVALSHA) and loaded with EVAL when the server lacks it."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())  # noqa: S324


# An element no message can equal: message JSON never holds a raw NUL byte. Removing or
# inserting at an index marks the spot with it, so LREM/LINSERT act on exactly that spot.
_TOMBSTONE = r"'\0chat-store-tombstone\0'"

_CONVERSATION = r"""
local conv, idx, exp, member, ttl = KEYS[1], KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[2])
local ns = string.sub(conv, 1, #conv - #member)
local info = conv .. __INFO__
local TOMBSTONE = __TOMBSTONE__

local clock
local function now_ms()
  if not clock then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return clock
end

-- Forget up to `limit` members whose expiry has passed (unless their conversation lives on).
local function purge(now, limit)
  local due = redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, limit)
  for _, m in ipairs(due) do
    redis.call('ZREM', exp, m)
    if redis.call('EXISTS', ns .. m) == 0 then redis.call('ZREM', idx, m) end
  end
end

-- List the member; with an expiry, the registry lives as long as its longest-lived entry.
-- (Each redis.call costs about a microsecond: the common paths make as few as they can.)
-- `was_expiring`: a permanent member that had an expiry until now. `listed`: the member is
-- known to be in the index already (its catalog entry was stamped before), so no ZADD.
local function register(ms, was_expiring, listed)
  local added = 0
  if not listed then added = redis.call('ZADD', idx, 0, member) end
  if ms > 0 then
    local now = now_ms()
    redis.call('ZADD', exp, string.format('%d', now + ms), member)
    purge(now, 8)
    local left = redis.call('PTTL', idx)
    local fresh = left == -1 and added == 1 and redis.call('ZCARD', idx) == 1
    if fresh or (left >= 0 and left < ms) then
      redis.call('PEXPIRE', idx, ms)
      redis.call('PEXPIRE', exp, ms)
    end
  elseif added == 1 or was_expiring then
    -- A registry holding a permanent member never expires: only a member new or newly
    -- permanent can find it expiring (made by an expiring store), and no store adds an
    -- expiry to a registry without one unless it created it (then it held no member).
    redis.call('PERSIST', idx)
  end
end

local function unregister()
  redis.call('ZREM', idx, member)
  redis.call('ZREM', exp, member)
  redis.call('DEL', info)
end

-- After a change that left `n` messages: an emptied conversation leaves the registry;
-- otherwise its expiry slides (or is removed, for a store without ttl). A change (`created`
-- given: whether it began the conversation) also stamps its catalog entry, which expires
-- with it: a new conversation's entry starts over (times, no metadata). An entry that had
-- its 'u' already was stamped by an earlier touch, which registered the member; the index
-- loses a member only with its entry (unregister, clear, or an expiry they share), so the
-- member is still listed and the change skips the ZADD.
local function touch(n, created)
  if ttl < 0 then return end
  if n == 0 then return unregister() end
  local was_expiring, listed = false, false
  if ttl > 0 then
    redis.call('PEXPIRE', conv, ttl)
  elseif redis.call('PERSIST', conv) == 1 then
    redis.call('ZREM', exp, member)  -- it had an expiry until now
    was_expiring = true
  end
  if created then
    redis.call('DEL', info)
    redis.call('HSET', info, 'c', now_ms(), 'u', now_ms())
  elseif created ~= nil then
    listed = redis.call('HSET', info, 'u', now_ms()) == 0
  end
  if ttl > 0 then
    redis.call('PEXPIRE', info, ttl)
  elseif was_expiring then
    redis.call('PERSIST', info)
  end
  register(ttl, was_expiring, listed)
end

-- RPUSH ARGV[first..] in chunks (unpack() of thousands of values overflows Lua's C stack);
-- returns the new length.
local function push(first)
  local n = 0
  for i = first, #ARGV, 1000 do
    n = redis.call('RPUSH', conv, unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  return n
end
""".replace("__TOMBSTONE__", _TOMBSTONE).replace("__INFO__", r"'\0info'")


def _conversation(name: str, body: str) -> Script:
    return Script(name, _CONVERSATION + body)


RECORD_SIZE = 32
"""How many of a conversation's latest changes its record remembers, at least."""

# A change applied once, whatever happens to its reply: the record is a LIST of
# ``op id, packed reply`` pairs, newest first, next to the conversation (its slot in a
# cluster). A replay finds its op id, applies nothing and returns the first reply (msgpack
# keeps a removal's messages byte for byte). A packed reply never equals an op id, which is
# hex text: msgpack's false and arrays start with a byte above 0x7f. The record is trimmed
# only once it holds half as many again as it keeps: every redis.call costs.
_MUTATION = r"""
local rec, op = KEYS[4], ARGV[3]
if string.byte(op) == 63 then  -- '?': this call may have been applied already
  op = string.sub(op, 2)
  local seen = redis.call('LPOS', rec, op)
  if seen then return cmsgpack.unpack(redis.call('LINDEX', rec, seen + 1)) end
end
local reply = apply()
local packed = '\194'  -- msgpack's false: the reply of a change that returns nothing
if reply then packed = cmsgpack.pack(reply) else reply = false end
if redis.call('LPUSH', rec, packed, op) > __TRIM_AT__ then
  redis.call('LTRIM', rec, 0, __LAST__)
end
redis.call('PEXPIRE', rec, ARGV[4])
return reply
""".replace("__TRIM_AT__", str(3 * RECORD_SIZE)).replace("__LAST__", str(2 * RECORD_SIZE - 1))


def _mutation(name: str, body: str) -> Script:
    return Script(name, _CONVERSATION + "local function apply()\n" + body + "end\n" + _MUTATION)


APPEND = _mutation(
    "append",
    r"""
local n = push(5)
touch(n, n == #ARGV - 4)
""",
)
"""ARGV[5..]: messages to append."""

INSERT = _mutation(
    "insert",
    r"""
local n = redis.call('LLEN', conv)
local i = tonumber(ARGV[5])
if i < 0 then i = math.max(n + i, 0) end
if i >= n then
  redis.call('RPUSH', conv, ARGV[6])
elseif i == 0 then
  redis.call('LPUSH', conv, ARGV[6])
else
  local kept = redis.call('LINDEX', conv, i)
  redis.call('LSET', conv, i, TOMBSTONE)
  redis.call('LINSERT', conv, 'BEFORE', TOMBSTONE, ARGV[6])
  redis.call('LSET', conv, i + 1, kept)
end
touch(n + 1, n == 0)
""",
)
"""ARGV[5]: index (``list.insert`` semantics), ARGV[6]: the message."""

REPLACE = _mutation(
    "replace",
    r"""
-- LLEN: WRONGTYPE instead of destroying a value that is not a conversation
local had = redis.call('LLEN', conv)
redis.call('DEL', conv)
touch(push(5), had == 0)
""",
)
"""ARGV[5..]: the new messages (none: the conversation is removed)."""

DELETE_ALL = _mutation(
    "delete_all",
    r"""
local items = redis.call('LRANGE', conv, 0, -1)
redis.call('DEL', conv)
unregister()
return items
""",
)
"""Returns every message, oldest first."""

DELETE_AT = _mutation(
    "delete_at",
    r"""
local n = redis.call('LLEN', conv)
local i = tonumber(ARGV[5])
if i < 0 then i = n + i end
if i < 0 or i >= n then return false end
local item
if i == n - 1 then
  item = redis.call('RPOP', conv)
elseif i == 0 then
  item = redis.call('LPOP', conv)
else
  item = redis.call('LINDEX', conv, i)
  redis.call('LSET', conv, i, TOMBSTONE)
  redis.call('LREM', conv, 1, TOMBSTONE)
end
touch(n - 1, false)
return {item, i}
""",
)
"""ARGV[5]: index (negative from the end). Returns ``[message, position]`` or nil."""

POP_LAST = _mutation(
    "pop_last",
    r"""
local item = redis.call('RPOP', conv)
if not item then return false end
local position = redis.call('LLEN', conv)
touch(position, false)
return {item, position}
""",
)
"""Returns ``[message, position]`` or nil."""

POP_FIRST = _mutation(
    "pop_first",
    r"""
local n = tonumber(ARGV[5])
if ARGV[6] == '1' then
  -- Tool-safe: also take the tool results that would lead what is left (role 'tool' or
  -- 'function', as core.tools.is_tool_result_json reads stored JSON; unreadable: not one).
  local pad = 4
  while true do
    local next_ones = redis.call('LRANGE', conv, n, n + pad - 1)
    local taken = 0
    for _, raw in ipairs(next_ones) do
      local ok, m = pcall(cjson.decode, raw)
      if not (ok and type(m) == 'table' and (m.role == 'tool' or m.role == 'function')) then
        break
      end
      taken = taken + 1
    end
    n = n + taken
    if taken < pad then break end
    pad = pad * 8
  end
end
local items = redis.call('LPOP', conv, n)
if not items then return {} end
touch(redis.call('LLEN', conv), false)
return items
""",
)
"""ARGV[5]: how many (> 0); ARGV[6]: ``1`` to take the tool results after them too. Returns the
messages removed, oldest first."""

WINDOW = _conversation(
    "window",
    r"""
local n = redis.call('LLEN', conv)
local start, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
if start < 0 then start = math.max(n + start, 0) end
if n > 0 then touch(n) end
if start >= n or limit == 0 then return {start, {}} end
local stop = n - 1
if limit > 0 then stop = math.min(start + limit - 1, stop) end
return {start, redis.call('LRANGE', conv, start, stop)}
""",
)
"""ARGV[3]: offset (negative from the end), ARGV[4]: limit (-1: none).

Returns ``[start, messages]``: only the window travels, never the whole conversation.
"""

COUNT = _conversation(
    "count",
    r"""
local n = redis.call('LLEN', conv)
if n > 0 then touch(n) end
return n
""",
)

ADOPT = _conversation(
    "adopt",
    r"""
local kind = redis.call('TYPE', conv)['ok']
if kind ~= 'list' then return 0 end
local left = redis.call('PTTL', conv)
if left > 0 then register(left, false) else register(0, true) end
return 1
""",
)
"""Register an existing list (written by LlamaIndex) with the expiry it already has."""

# A listing first forgets every registry member whose expiry has passed.
_LISTING = r"""
local idx, exp, ns = KEYS[1], KEYS[2], ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, m in ipairs(redis.call('ZRANGEBYSCORE', exp, '-inf', now)) do
  redis.call('ZREM', exp, m)
  if redis.call('EXISTS', ns .. m) == 0 then redis.call('ZREM', idx, m) end
end
"""

KEYS_PAGE = Script(
    "keys_page",
    _LISTING
    + r"""
local cursor, count = ARGV[2], tonumber(ARGV[3])
local low = '-'
if cursor ~= '' then low = '(' .. cursor end
local page = redis.call('ZRANGEBYLEX', idx, low, '+', 'LIMIT', 0, count)
local out = {''}
for _, m in ipairs(page) do
  -- A conversation emptied or deleted behind our back (e.g. by LlamaIndex) leaves the registry.
  if redis.call('EXISTS', ns .. m) == 1 then
    out[#out + 1] = m
  else
    redis.call('ZREM', idx, m)
    redis.call('ZREM', exp, m)
  end
end
if #page == count then out[1] = page[#page] end
return out
""",
)
"""KEYS: index, expiry set; ARGV: namespace, cursor (last member listed, "" to start), size.

Returns ``[cursor, live members...]`` (an empty cursor: the last page). Members come in
byte order; each one present for the whole iteration is listed exactly once.
"""

CLEAR_PAGE = Script(
    "clear_page",
    r"""
local idx, exp, ns, count = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
local members = redis.call('ZRANGE', idx, 0, count - 1)
for _, m in ipairs(members) do
  if redis.call('TYPE', ns .. m)['ok'] == 'list' then redis.call('DEL', ns .. m) end
  redis.call('DEL', ns .. m .. '\0info')
end
if #members > 0 then redis.call('ZREM', idx, unpack(members)) end
local left = redis.call('ZCARD', idx)
if left == 0 then redis.call('DEL', exp) end
return left
""",
)
"""KEYS: index, expiry set; ARGV: namespace, page size. Returns how many entries are left."""

# The catalog entry of a conversation: a HASH at ``conversation + "\0info"`` holding ``c`` and
# ``u`` (when it began and last changed, server milliseconds) and ``m:<name>`` (each metadata
# value as JSON), kept by every change's touch() and gone with the conversation.

INFO = _conversation(
    "info",
    r"""
local n = redis.call('LLEN', conv)
if n == 0 then return false end
return {n, redis.call('HGETALL', info)}
""",
)
"""ARGV[3] is unused. Returns ``[count, entry fields]`` or nil (no messages)."""

METADATA = _mutation(
    "metadata",
    r"""
local n = redis.call('LLEN', conv)
if n == 0 then return false end
local kept, size = {}, 0
local fields = redis.call('HGETALL', info)
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 2) == 'm:' then kept[string.sub(fields[i], 3)] = fields[i + 1] end
end
for i = 6, #ARGV, 2 do
  if ARGV[i + 1] == '' then kept[ARGV[i]] = nil else kept[ARGV[i]] = ARGV[i + 1] end
end
for name, value in pairs(kept) do size = size + #name + #value end
if size > tonumber(ARGV[5]) then return {-1, size} end
for i = 6, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', info, 'm:' .. ARGV[i])
  else
    redis.call('HSET', info, 'm:' .. ARGV[i], ARGV[i + 1])
  end
end
touch(n, false)
return {n, redis.call('HGETALL', info)}
""",
)
"""ARGV[5]: the most bytes of names and values; ARGV[6..]: name, JSON value ('' removes) pairs.

Returns ``[count, entry fields]``, ``[-1, size]`` when the merge would be too large (nothing
changed), or nil (no messages).
"""

CATALOG_PAGE = Script(
    "catalog_page",
    _LISTING
    + r"""
local low, prefix, count = ARGV[2], ARGV[3], tonumber(ARGV[4])
local high = '+'
if prefix ~= '' then high = '(' .. prefix .. '\255' end  -- no UTF-8 key holds byte 255
local page = redis.call('ZRANGEBYLEX', idx, low, high, 'LIMIT', 0, count + 1)
local out = {''}
if #page > count then
  out[1] = page[count]  -- more follow: the cursor is the last member of this page
  page[count + 1] = nil
end
for _, m in ipairs(page) do
  local n = 0
  if redis.call('TYPE', ns .. m)['ok'] == 'list' then n = redis.call('LLEN', ns .. m) end
  if n > 0 then
    out[#out + 1] = {m, n, redis.call('HGETALL', ns .. m .. '\0info')}
  else
    redis.call('ZREM', idx, m)
    redis.call('ZREM', exp, m)
  end
end
return out
""",
)
"""KEYS: index, expiry set; ARGV: namespace, low bound (ZRANGEBYLEX syntax), prefix, size.

Returns ``[cursor, [member, count, entry fields]...]`` (an empty cursor: the last page).
"""

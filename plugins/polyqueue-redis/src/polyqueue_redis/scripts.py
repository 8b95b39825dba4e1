"""The Lua scripts: every state change of a queue is one script, atomic in the queue's slot, on the server's clock.

Each script reads the time with ``TIME`` (microseconds), is routed by the
queue's meta key (``KEYS[1]``) and builds the queue's other key names from
``ARGV[1]`` (the key base ``{PREFIX:TAG}``: same hash tag, same slot).
``ARGV[2]`` is ``1`` when the call is a resend after its reply was lost, so
scripts that must not act twice (enqueue, claim, settle, cancel, fire) can
recognise their own earlier run. A script finding no meta hash answers
``NOQUEUE``: the queue has no jobs yet, or the schema is missing. The one
script of the database as a whole (``DECLARE``, periodic schedules) is
routed by its key instead, with ``ARGV[1]`` the database's base ``{PREFIX}``.

The rules the policy owns are not restated here: the claim order, the
lease-expiry rule and its error text, the attempt cap and the fence are
rendered from :mod:`polyqueue.policy`'s ``*_lua`` forms into the sources
below. The scripts only store what they are given.
"""

from __future__ import annotations

from polyqueue import policy
from polyqueue.job import JobStatus

from .layout import FIELDS

__all__ = [
    "CANCEL",
    "CLAIM",
    "DEAD",
    "DECLARE",
    "DELETE",
    "DUE",
    "ENQUEUE",
    "EXPORT",
    "EXTEND",
    "FIRE",
    "FIRES",
    "IMPORT",
    "INIT",
    "PEEK",
    "PURGE",
    "PURGE_FIRES",
    "READY",
    "REPLAY",
    "RESCUE",
    "SCRIPTS",
    "SETTLE",
    "STATS",
    "WITHDRAW",
]

_PRELUDE = """
local FIELDS = {@FIELDS@}
local F = {}
for i, name in ipairs(FIELDS) do F[name] = i end
local BASE = ARGV[1]
local RESENT = ARGV[2] == '1'
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function fmt(x) return string.format('%d', x) end
-- A TIME reading (microseconds) as an error entry's `at`: ISO 8601 UTC to the millisecond, as the
-- policy's error_time writes it (the date from the day number by Hinnant's civil_from_days).
local function entry_time(us)
  local ms = math.floor(us / 1000)
  local s = math.floor(ms / 1000)
  local z = math.floor(s / 86400)
  local secs = s - z * 86400
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', y, m, d, math.floor(secs / 3600),
    math.floor((secs % 3600) / 60), secs % 60, ms % 1000)
end
-- An error history (JSON text, or false/'' for none) with `entry` appended, the newest @HISTORY_LIMIT@ kept.
local function history_appended(h, entry)
  local list = {}
  if h and h ~= '' then list = cjson.decode(h) end
  list[#list + 1] = entry
  while #list > @HISTORY_LIMIT@ do table.remove(list, 1) end
  return cjson.encode(list)
end
-- A failure's history, as the policy built it, with the server's time on its newest entry.
local function history_stamped(h, now)
  local list = cjson.decode(h)
  if #list == 0 then return h end
  list[#list]['at'] = entry_time(now)
  return cjson.encode(list)
end
-- A ready set's member: run_at (17 digits) then the job number (19): byte order is run_at, then number.
local function member(ra, ns) return string.format('%017d%019d', ra, tonumber(ns)) end
local function jkey(ns) return BASE .. ':j:' .. ns end
local function read(ns)
  local f = redis.call('HMGET', jkey(ns), unpack(FIELDS))
  table.insert(f, 1, ns)
  return f
end
-- The job types a call names (ARGV from `first` on), or every type the queue has had.
local function types_from(first)
  if #ARGV < first then return redis.call('SMEMBERS', BASE .. ':types') end
  local types = {}
  for i = first, #ARGV do types[#types + 1] = ARGV[i] end
  return types
end
-- Make a pending job findable: ready when due, else delayed.
local function index_pending(ns, t, pr, ra, now)
  if ra <= now then
    redis.call('ZADD', BASE .. ':r:' .. t, -pr, member(ra, ns))
  else
    redis.call('ZADD', BASE .. ':d:' .. t, fmt(ra), ns)
  end
end
local function unindex_pending(ns, t, ra)
  redis.call('ZREM', BASE .. ':r:' .. t, member(ra, ns))
  redis.call('ZREM', BASE .. ':d:' .. t, ns)
end
local function unindex_lease(ns, t)
  redis.call('ZREM', BASE .. ':l', ns)
  redis.call('ZREM', BASE .. ':l:' .. t, ns)
end
-- The endings after which a job keeps its dedupe key held for its dedupe_for seconds (the policy's).
local HELD_AFTER = {@HELD_AFTER@}
-- A job lets go of its dedupe key (if it still holds it).
local function release_key(dk, ns)
  if dk and redis.call('GET', BASE .. ':u:' .. dk) == ns then redis.call('DEL', BASE .. ':u:' .. dk) end
end
-- The number of the job holding dedupe key `dk` at `now`: a live job, or a done or dead one whose hold (field hu)
-- has not ended. A key whose hold has ended (or that outlived its job) is let go here, so the caller may take it.
local function holder_of(dk, now)
  local key = BASE .. ':u:' .. dk
  local h = redis.call('GET', key)
  if not h then return nil end
  local f = redis.call('HMGET', jkey(h), 's', 'hu')
  if f[1] == 'pending' or f[1] == 'processing' then return h end
  if f[1] and f[2] and tonumber(f[2]) > now then return h end
  redis.call('DEL', key)
  return nil
end
-- Job `ns` takes dedupe key `dk` unless another job holds it; returns that holder (nil when `ns` has the key).
-- A job's own hold carries over (a replayed dead job).
local function take_key(dk, ns, now)
  local h = holder_of(dk, now)
  if h and h ~= ns then return h end
  redis.call('SET', BASE .. ':u:' .. dk, ns)
  return nil
end
local function count_finished(status, t, delta)
  redis.call('HINCRBY', BASE .. ':ct', status .. '|' .. t, delta)
end
-- The bookkeeping of a job that just finished (its status and finished_at are written by the caller). With
-- `hold`, a job that has a dedupe_for keeps its dedupe key held until now + dedupe_for; else it lets it go.
local function finished(ns, status, t, dk, now, hold)
  redis.call('ZADD', BASE .. ':f:' .. status, fmt(now), ns)
  count_finished(status, t, 1)
  if not dk then return end
  local df = hold and redis.call('HGET', jkey(ns), 'df')
  if df and redis.call('GET', BASE .. ':u:' .. dk) == ns then
    redis.call('HSET', jkey(ns), 'hu', fmt(now + math.floor(tonumber(df) * 1000000 + 0.5)))
  else
    release_key(dk, ns)
  end
end
-- Store one new job as an enqueue does, from its 8 values in ARGV from `i` on (type, payload, priority,
-- max_attempts, delay (us), run_at (us, '' for none), dedupe key ('' for none), dedupe_for (s, '' for none)), in the
-- queue `name` whose meta hash is KEYS[1]. Returns its number and true; or, when another job holds its dedupe key
-- (live, or done or dead within its dedupe_for), that job's number and false (nothing stored). The caller adds the
-- types it stored to the queue's types (`note_types`) and publishes them.
local function store_job(name, i, now)
  local t, pr, dk = ARGV[i], tonumber(ARGV[i + 2]), ARGV[i + 6]
  if dk ~= '' then
    local h = holder_of(dk, now)
    if h then return h, false end
  end
  local ns = fmt(redis.call('HINCRBY', KEYS[1], 'seq', 1))
  local ra = now + tonumber(ARGV[i + 4])
  if ARGV[i + 5] ~= '' then ra = tonumber(ARGV[i + 5]) end
  local values = {'q', name, 't', t, 'p', ARGV[i + 1], 'pr', ARGV[i + 2], 's', 'pending', 'a', '0',
    'ma', ARGV[i + 3], 'ra', fmt(ra), 'ca', fmt(now), 'tk', '0'}
  if dk ~= '' then
    redis.call('SET', BASE .. ':u:' .. dk, ns)
    values[#values + 1] = 'dk'
    values[#values + 1] = dk
    if ARGV[i + 7] ~= '' then
      values[#values + 1] = 'df'
      values[#values + 1] = ARGV[i + 7]
    end
  end
  redis.call('HSET', jkey(ns), unpack(values))
  index_pending(ns, t, pr, ra, now)
  return ns, true
end
-- Remember the job types just stored (a set: {type = true}) among the queue's types.
local function note_types(types)
  local known = {}
  for t in pairs(types) do known[#known + 1] = t end
  if #known > 0 then redis.call('SADD', BASE .. ':types', unpack(known)) end
end
local function publish(types)
  local list = {}
  for t in pairs(types) do list[#list + 1] = t end
  if #list > 0 then redis.call('SPUBLISH', BASE .. ':w', cjson.encode(list)) end
end
-- Expired leases back to pending, or dead on the final attempt, as the policy says; returns the dead jobs.
local function rescue(now, limit)
  local dead = {}
  local expired = redis.call('ZRANGEBYSCORE', BASE .. ':l', '-inf', fmt(now), 'LIMIT', 0, limit)
  for _, ns in ipairs(expired) do
    local f = redis.call('HMGET', jkey(ns), 's', 't', 'a', 'ma', 'lb', 'pr', 'ra', 'dk', 'eh')
    redis.call('ZREM', BASE .. ':l', ns)
    if f[2] then redis.call('ZREM', BASE .. ':l:' .. f[2], ns) end
    if f[1] == 'processing' then
      local t, a, ma, lb = f[2], tonumber(f[3]), tonumber(f[4]), f[5]
      local status = @EXPIRED_STATUS@
      local eh = history_appended(f[9], @EXPIRED_ENTRY@)
      redis.call('HSET', jkey(ns), 'er', @EXPIRED_ERROR@, 'eh', eh, 's', status)
      redis.call('HDEL', jkey(ns), 'lb', 'le')
      if status == 'pending' then
        index_pending(ns, t, tonumber(f[6]), tonumber(f[7]), now)
      else
        redis.call('HSET', jkey(ns), 'fa', fmt(now))
        finished(ns, status, t, f[8], now, HELD_AFTER[status])
        dead[#dead + 1] = read(ns)
      end
    end
  end
  return dead
end
-- Delayed jobs of these types that are due move to their ready sets.
local function promote(types, now, limit)
  for _, t in ipairs(types) do
    local due = redis.call('ZRANGEBYSCORE', BASE .. ':d:' .. t, '-inf', fmt(now), 'LIMIT', 0, limit)
    for _, ns in ipairs(due) do
      local f = redis.call('HMGET', jkey(ns), 'pr', 'ra', 's')
      redis.call('ZREM', BASE .. ':d:' .. t, ns)
      if f[3] == 'pending' then index_pending(ns, t, tonumber(f[1]), tonumber(f[2]), now) end
    end
  end
end
-- The first `limit` ready members of these types in claim order: {member, score, ...}, and the type of each
-- (nil when there is one type). One type is one range read; several are merged by the policy's claim order.
local function best(types, limit)
  if #types == 1 then return redis.call('ZRANGE', BASE .. ':r:' .. types[1], 0, limit - 1, 'WITHSCORES'), nil end
  local rows = {}
  for _, t in ipairs(types) do
    local got = redis.call('ZRANGE', BASE .. ':r:' .. t, 0, limit - 1, 'WITHSCORES')
    for i = 1, #got, 2 do
      local m, score = got[i], got[i + 1]
      rows[#rows + 1] = {-tonumber(score), tonumber(string.sub(m, 1, 17)), tonumber(string.sub(m, 18)), m, score, t}
    end
  end
  table.sort(rows, function(a, b) return @CLAIM_BEFORE@ end)
  local out, kinds = {}, {}
  for i = 1, math.min(limit, #rows) do
    out[#out + 1] = rows[i][4]
    out[#out + 1] = rows[i][5]
    kinds[i] = rows[i][6]
  end
  return out, kinds
end
local function earliest_lease()
  local m = redis.call('ZRANGE', BASE .. ':l', 0, 0, 'WITHSCORES')
  return m[2] or ''
end
"""

# KEYS[1] meta. ARGV: base, resent, queue name, batch id, batch ttl (s), then per job 8 values: type, payload,
# priority, max_attempts, delay (us), run_at (us, '' for none), dedupe key ('' for none), dedupe_for (s, '' for none).
# Returns {'OK', ids joined by ',', one '1' (stored) or '0' (the id of the job holding its dedupe key) per job}.
ENQUEUE = """
local name = redis.call('HGET', KEYS[1], 'name')
if not name then return {'NOQUEUE'} end
if name ~= ARGV[3] then return {'COLLISION', name} end
local record = BASE .. ':b:' .. ARGV[4]
if ARGV[4] ~= '' then
  local done = redis.call('HMGET', record, 'ids', 'fresh')
  if done[1] then return {'OK', done[1], done[2]} end
end
local now = now_us()
local ids, fresh, types = {}, {}, {}
for i = 6, #ARGV, 8 do
  local ns, stored = store_job(name, i, now)
  ids[#ids + 1] = ns
  fresh[#fresh + 1] = stored and '1' or '0'
  if stored then types[ARGV[i]] = true end
end
note_types(types)
local joined, flags = table.concat(ids, ','), table.concat(fresh)
if ARGV[4] ~= '' then
  redis.call('HSET', record, 'ids', joined, 'fresh', flags)
  redis.call('EXPIRE', record, ARGV[5])
end
publish(types)
return {'OK', joined, flags}
"""

# KEYS[1] meta. ARGV: base, resent, batch id, then the numbers an interrupted enqueue stored. Takes them back
# while untouched (pending, never claimed); returns the numbers it could not take back.
WITHDRAW = """
if ARGV[3] ~= '' then redis.call('DEL', BASE .. ':b:' .. ARGV[3]) end
local kept = {}
for i = 4, #ARGV do
  local ns = ARGV[i]
  local f = redis.call('HMGET', jkey(ns), 's', 'a', 't', 'ra', 'dk')
  if f[1] == 'pending' and f[2] == '0' then
    unindex_pending(ns, f[3], tonumber(f[4]))
    release_key(f[5], ns)
    redis.call('DEL', jkey(ns))
  elseif f[1] then
    kept[#kept + 1] = ns
  end
end
return kept
"""

# KEYS[1] meta. ARGV: base, resent, limit, lease (us), worker id, token, attempt cap ('' for none), rescue batch,
# promote batch, then the job types (none: every type).
# Returns {'OK', now, jobs, dead, lowered ('1' when a lease now expires before every earlier one), earliest lease}.
CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NOQUEUE'} end
local now = now_us()
local token = ARGV[6]
local record = BASE .. ':k:' .. token
if RESENT then
  local taken = redis.call('GET', record)
  if taken then
    local jobs = {}
    for ns in string.gmatch(taken, '[^,]+') do
      if redis.call('HGET', jkey(ns), 'tk') == token then jobs[#jobs + 1] = read(ns) end
    end
    return {'OK', fmt(now), jobs, {}, '1', earliest_lease()}
  end
end
local dead = rescue(now, tonumber(ARGV[8]))
local types = types_from(10)
promote(types, now, tonumber(ARGV[9]))
local picked, kinds = best(types, tonumber(ARGV[3]))
local expires = now + tonumber(ARGV[4])
local first = earliest_lease()
local lowered = #picked > 0 and (first == '' or expires < tonumber(first))
local cap = tonumber(ARGV[7])
local jobs, numbers = {}, {}
local until_ = fmt(expires)
for i = 1, #picked, 2 do
  local m, t = picked[i], types[1]
  if kinds then t = kinds[(i + 1) / 2] end
  local ns = fmt(tonumber(string.sub(m, 18)))
  local row = read(ns)
  redis.call('ZREM', BASE .. ':r:' .. t, m)
  if row[F.s + 1] == 'pending' then  -- always, unless an entry outlived its job
    local stored = tonumber(row[F.ma + 1])
    local attempts = fmt(tonumber(row[F.a + 1]) + 1)
    local limit = fmt(@CAPPED@)
    redis.call('HSET', jkey(ns), 's', 'processing', 'a', attempts, 'ma', limit, 'tk', token, 'lb', ARGV[5],
      'le', until_)
    redis.call('ZADD', BASE .. ':l', until_, ns)
    redis.call('ZADD', BASE .. ':l:' .. t, until_, ns)
    row[F.s + 1], row[F.a + 1], row[F.ma + 1], row[F.tk + 1], row[F.lb + 1], row[F.le + 1] =
      'processing', attempts, limit, token, ARGV[5], until_
    jobs[#jobs + 1] = row
    numbers[#numbers + 1] = ns
  end
end
if #numbers > 0 then
  redis.call('SET', record, table.concat(numbers, ','), 'PX', math.ceil(tonumber(ARGV[4]) / 1000) + 1000)
end
return {'OK', fmt(now), jobs, dead, lowered and '1' or '0', earliest_lease()}
"""

# KEYS[1] meta. ARGV: base, resent, limit, rescue batch, promote batch, then the job types (none: every type).
# A multi-queue claim's first step: rescue and promote as a claim would, then show the best `limit` ready members.
# Returns {'OK', now, {member, score, ...}, dead}.
PEEK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NOQUEUE'} end
local now = now_us()
local dead = rescue(now, tonumber(ARGV[4]))
local types = types_from(6)
promote(types, now, tonumber(ARGV[5]))
local shown = best(types, tonumber(ARGV[3]))
return {'OK', fmt(now), shown, dead}
"""

# KEYS[1] meta. ARGV: base, resent, rescue batch. Another queue's claim rescuing this queue's expired leases.
# Returns {'OK', now, dead, earliest lease}.
RESCUE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NOQUEUE'} end
local now = now_us()
local dead = rescue(now, tonumber(ARGV[3]))
return {'OK', fmt(now), dead, earliest_lease()}
"""

# KEYS[1] meta. ARGV: base, resent, settle token, then per settlement 11 values: number, claim token, status,
# finished ('1'/'0'), run_in (us, '' for none), refund ('1'/'0'), which of result/error/history are given
# (letters r, e, h), result, last error, error history, hold the dedupe key for dedupe_for ('1'/'0').
# Returns the numbers whose claim no longer held them.
SETTLE = """
local now = now_us()
local settle_token = ARGV[3]
local lost, woken = {}, {}
for i = 4, #ARGV, 11 do
  local ns, claim_token, status = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local f = redis.call('HMGET', jkey(ns), 's', 'tk', 'le', 't', 'pr', 'ra', 'dk')
  local s, tk, le = f[1], f[2], tonumber(f[3])
  if @HOLDS@ then
    local t = f[4]
    unindex_lease(ns, t)
    redis.call('HDEL', jkey(ns), 'lb', 'le')
    local values = {'s', status, 'tk', settle_token}
    if ARGV[i + 3] == '1' then
      values[#values + 1] = 'fa'
      values[#values + 1] = fmt(now)
    else
      redis.call('HDEL', jkey(ns), 'fa')
    end
    local ra = tonumber(f[6])
    if ARGV[i + 4] ~= '' then
      ra = now + tonumber(ARGV[i + 4])
      values[#values + 1] = 'ra'
      values[#values + 1] = fmt(ra)
    end
    local given = ARGV[i + 6]
    if given ~= '' then
      if string.find(given, 'r', 1, true) then values[#values + 1] = 'rs'; values[#values + 1] = ARGV[i + 7] end
      if string.find(given, 'e', 1, true) then values[#values + 1] = 'er'; values[#values + 1] = ARGV[i + 8] end
      if string.find(given, 'h', 1, true) then
        values[#values + 1] = 'eh'
        values[#values + 1] = history_stamped(ARGV[i + 9], now)
      end
    end
    redis.call('HSET', jkey(ns), unpack(values))
    if ARGV[i + 5] == '1' then redis.call('HINCRBY', jkey(ns), 'a', -1) end
    if status == 'pending' then
      index_pending(ns, t, tonumber(f[5]), ra, now)
      woken[t] = true
    elseif ARGV[i + 3] == '1' then
      finished(ns, status, t, f[7], now, ARGV[i + 10] == '1')
    end
  elseif not (RESENT and tk == settle_token) then
    lost[#lost + 1] = ns
  end
end
publish(woken)
return lost
"""

# KEYS[1] meta. ARGV: base, resent, lease (us), then (number, claim token) pairs.
# Returns {lost numbers, lowered ('1'/'0'), earliest lease}.
EXTEND = """
local now = now_us()
local expires = now + tonumber(ARGV[3])
local first = earliest_lease()
local lost = {}
for i = 4, #ARGV, 2 do
  local ns, claim_token = ARGV[i], ARGV[i + 1]
  local f = redis.call('HMGET', jkey(ns), 's', 'tk', 'le', 't')
  local s, tk, le = f[1], f[2], tonumber(f[3])
  if @HOLDS@ then
    redis.call('HSET', jkey(ns), 'le', fmt(expires))
    redis.call('ZADD', BASE .. ':l', fmt(expires), ns)
    redis.call('ZADD', BASE .. ':l:' .. f[4], fmt(expires), ns)
  else
    lost[#lost + 1] = ns
  end
end
local lowered = first ~= '' and expires < tonumber(first)
return {lost, lowered and '1' or '0', earliest_lease()}
"""

# KEYS[1] meta. ARGV: base, resent, number, nonce. Returns 1 when the job was pending and is now cancelled.
CANCEL = """
local ns = ARGV[3]
local f = redis.call('HMGET', jkey(ns), 's', 't', 'ra', 'dk', 'cx')
if f[1] == 'pending' then
  local now = now_us()
  unindex_pending(ns, f[2], tonumber(f[3]))
  redis.call('HSET', jkey(ns), 's', 'cancelled', 'cx', ARGV[4], 'fa', fmt(now))
  finished(ns, 'cancelled', f[2], f[4], now, false)
  return 1
end
if RESENT and f[1] == 'cancelled' and f[5] == ARGV[4] then return 1 end
return 0
"""

# KEYS[1] meta. ARGV: base, resent, queue name ('' for any), then numbers. Dead jobs back to pending, attempts 0,
# due now, error history kept; a job whose dedupe key another job holds (live, or within its dedupe_for) is skipped,
# and a dead job's own hold carries over.
# Returns {replayed count, skipped (number, holder) pairs}.
REPLAY = """
local now = now_us()
local replayed, skipped, woken = 0, {}, {}
for i = 4, #ARGV do
  local ns = ARGV[i]
  local f = redis.call('HMGET', jkey(ns), 's', 'q', 't', 'pr', 'dk')
  if f[1] == 'dead' and (ARGV[3] == '' or f[2] == ARGV[3]) then
    local holder = nil
    if f[5] then holder = take_key(f[5], ns, now) end
    if holder then
      skipped[#skipped + 1] = ns
      skipped[#skipped + 1] = holder
    else
      redis.call('ZREM', BASE .. ':f:dead', ns)
      count_finished('dead', f[3], -1)
      redis.call('HSET', jkey(ns), 's', 'pending', 'a', '0', 'ra', fmt(now))
      redis.call('HDEL', jkey(ns), 'fa', 'lb', 'le', 'hu')
      index_pending(ns, f[3], tonumber(f[4]), now, now)
      woken[f[3]] = true
      replayed = replayed + 1
    end
  end
end
publish(woken)
return {replayed, skipped}
"""

# KEYS[1] meta. ARGV: base, resent, status, older than (us), batch size, offset. Deletes up to a batch of jobs of a
# finished status whose finished_at is before now - older, from the offset-th on; a job still holding its dedupe key
# (hu after now) is kept (the caller's next offset goes past the ones kept). Returns {deleted, looked at, kept}.
PURGE = """
local now = now_us()
local set = BASE .. ':f:' .. ARGV[3]
local cutoff = '(' .. fmt(now - tonumber(ARGV[4]))
local doomed = redis.call('ZRANGEBYSCORE', set, '-inf', cutoff, 'LIMIT', tonumber(ARGV[6]), tonumber(ARGV[5]))
local deleted, kept = 0, 0
for _, ns in ipairs(doomed) do
  local f = redis.call('HMGET', jkey(ns), 's', 't', 'hu', 'dk', 'ik')
  if f[1] == ARGV[3] and f[3] and tonumber(f[3]) > now then
    kept = kept + 1
  else
    redis.call('ZREM', set, ns)
    if f[1] == ARGV[3] then
      release_key(f[4], ns)
      if f[5] and redis.call('HGET', BASE .. ':ik', f[5]) == ns then redis.call('HDEL', BASE .. ':ik', f[5]) end
      redis.call('DEL', jkey(ns))
      count_finished(f[1], f[2], -1)
      deleted = deleted + 1
    end
  end
end
return {deleted, #doomed, kept}
"""

# KEYS[1] meta. ARGV: base, resent, queue name. Creates the queue's meta hash; returns the name it holds
# (another name means two queue names share a hash tag).
INIT = """
redis.call('HSETNX', KEYS[1], 'name', ARGV[3])
return redis.call('HGET', KEYS[1], 'name')
"""

# --- periodic jobs ------------------------------------------------------------------------------------
# KEYS[1] meta. ARGV: base, resent, queue name, schedule, slot, slot_at (us, 17 digits), nonce, then the job's 8
# values (as ENQUEUE's). Fires one slot of a schedule, once: the fire record (:sf:SCHEDULE, field SLOT) and the job
# are stored together or not at all. A resend finding the record its own first run wrote (same nonce) reports that
# fire; a record written by anyone else means the slot fired before.
# Returns {'OK', now, outcome, job number}: outcome 'fired' (with the job's number: the new job, or the live job
# holding its dedupe key), 'duplicate' (the slot fired before; nothing stored) or 'early' (now < slot_at; nothing
# stored).
FIRE = """
local name = redis.call('HGET', KEYS[1], 'name')
if not name then return {'NOQUEUE'} end
if name ~= ARGV[3] then return {'COLLISION', name} end
local schedule, slot, at, nonce = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local fires = BASE .. ':sf:' .. schedule
local now = now_us()
local known = redis.call('HGET', fires, slot)
if known and RESENT then
  local _, number, by = string.match(known, '^(%d+),(%d+),(.*)$')
  if by == nonce then return {'OK', fmt(now), 'fired', number} end
end
if now < tonumber(at) then return {'OK', fmt(now), 'early', ''} end
if known then return {'OK', fmt(now), 'duplicate', ''} end
local ns, stored = store_job(name, 8, now)
redis.call('HSET', fires, slot, fmt(now) .. ',' .. ns .. ',' .. nonce)
redis.call('ZADD', BASE .. ':ss:' .. schedule, 0, at .. slot)
redis.call('SADD', BASE .. ':sn', schedule)
if stored then
  local types = {[ARGV[8]] = true}
  note_types(types)
  publish(types)
end
return {'OK', fmt(now), 'fired', ns}
"""

# KEYS[1] meta. ARGV: base, resent, schedule, older than (us), batch size, the slot member to go on after ('' for
# the first call). Deletes the schedule's fires in this queue that fired before now - older, oldest slot first,
# never its newest slot; looks at up to a batch of slots due before that moment (a fire is never earlier than its
# slot). Returns {deleted, looked at, the last member looked at}.
PURGE_FIRES = """
local schedule = ARGV[3]
local slots, fires = BASE .. ':ss:' .. schedule, BASE .. ':sf:' .. schedule
local cutoff = now_us() - tonumber(ARGV[4])
if cutoff <= 0 then return {0, 0, ''} end
local newest = redis.call('ZREVRANGE', slots, 0, 0)[1]
local from = '-'
if ARGV[6] ~= '' then from = '(' .. ARGV[6] end
local looked = redis.call('ZRANGEBYLEX', slots, from, '(' .. string.format('%017d', cutoff), 'LIMIT', 0,
  tonumber(ARGV[5]))
local deleted = 0
for _, m in ipairs(looked) do
  if m ~= newest then
    local slot = string.sub(m, 18)
    local fired_at = tonumber(string.match(redis.call('HGET', fires, slot) or '', '^(%d+),'))
    if fired_at == nil or fired_at < cutoff then
      redis.call('HDEL', fires, slot)
      redis.call('ZREM', slots, m)
      deleted = deleted + 1
    end
  end
end
return {deleted, #looked, looked[#looked] or ''}
"""

# KEYS[1] the database's schedules hash. ARGV: base ({PREFIX}), resent, then (schedule name, declaration JSON)
# pairs. Records each as "declared_at (us),JSON" under its name (a later declaration replaces it); returns now.
DECLARE = """
local now = fmt(now_us())
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], now .. ',' .. ARGV[i + 1]) end
return now
"""

# --- moving jobs (export, import, delete: what `polyqueue transfer` uses) ------------------------------------
# KEYS[1] meta. ARGV: base, resent, after (a job number), limit, probes, then the statuses wanted. Looks at the job
# numbers after `after` in order, at most `probes` of them (a number whose job is gone costs a probe too), and
# returns the first `limit` jobs of those statuses: {rows, the last number looked at, the queue's last number}.
EXPORT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {{}, '0', '0'} end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local wanted = {}
for i = 6, #ARGV do wanted[ARGV[i]] = true end
local n, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local last = math.min(seq, n + tonumber(ARGV[5]))
local rows = {}
while n < last and #rows < limit do
  n = n + 1
  local row = read(fmt(n))
  local s = row[F.s + 1]
  if s and wanted[s] then rows[#rows + 1] = row end
end
return {rows, fmt(n), fmt(seq)}
"""

# KEYS[1] meta. ARGV: base, resent, queue name, then per record 18 values: import key, type, payload, priority,
# status (never processing), attempts, max_attempts, run_at (us), created_at (us), finished_at (us, '' for none),
# which of last error/error history/result are given (letters e, h, r), last error, error history, result,
# dedupe key ('' for none), dedupe_for (s, '' for none), dedupe_held_until (us, '' for none), lease token.
# Stores each record with every field as given, once per import key (:ik). A record whose dedupe key it would hold
# (it is live, or its hold has not ended) while another job here holds that key is not stored.
# Returns {'OK', {outcome, number, ...}}: outcome 'new' (stored as that number), 'existing' (the import key's job)
# or 'held' (the number of the job holding its dedupe key).
IMPORT = """
local name = redis.call('HGET', KEYS[1], 'name')
if not name then return {'NOQUEUE'} end
if name ~= ARGV[3] then return {'COLLISION', name} end
local now = now_us()
local out, types = {}, {}
for i = 4, #ARGV, 18 do
  local ik, t, status, given, dk = ARGV[i], ARGV[i + 1], ARGV[i + 4], ARGV[i + 10], ARGV[i + 14]
  local known = redis.call('HGET', BASE .. ':ik', ik)
  if known and redis.call('EXISTS', jkey(known)) == 1 then
    out[#out + 1] = 'existing'
    out[#out + 1] = known
  else
    local live = status == 'pending'
    local hu = tonumber(ARGV[i + 16])
    local holds = dk ~= '' and (live or (hu ~= nil and hu > now))
    local h = nil
    if holds then h = holder_of(dk, now) end
    if h then
      out[#out + 1] = 'held'
      out[#out + 1] = h
    else
      local ns = fmt(redis.call('HINCRBY', KEYS[1], 'seq', 1))
      local ra = tonumber(ARGV[i + 7])
      local values = {'q', name, 't', t, 'p', ARGV[i + 2], 'pr', ARGV[i + 3], 's', status, 'a', ARGV[i + 5],
        'ma', ARGV[i + 6], 'ra', ARGV[i + 7], 'ca', ARGV[i + 8], 'tk', ARGV[i + 17], 'ik', ik}
      local fa = ARGV[i + 9]
      if not live and fa == '' then fa = fmt(now) end
      if fa ~= '' then values[#values + 1] = 'fa'; values[#values + 1] = fa end
      if string.find(given, 'e', 1, true) then values[#values + 1] = 'er'; values[#values + 1] = ARGV[i + 11] end
      if string.find(given, 'h', 1, true) then values[#values + 1] = 'eh'; values[#values + 1] = ARGV[i + 12] end
      if string.find(given, 'r', 1, true) then values[#values + 1] = 'rs'; values[#values + 1] = ARGV[i + 13] end
      if dk ~= '' then values[#values + 1] = 'dk'; values[#values + 1] = dk end
      if ARGV[i + 15] ~= '' then values[#values + 1] = 'df'; values[#values + 1] = ARGV[i + 15] end
      if holds and not live then values[#values + 1] = 'hu'; values[#values + 1] = ARGV[i + 16] end
      redis.call('HSET', jkey(ns), unpack(values))
      redis.call('HSET', BASE .. ':ik', ik, ns)
      if holds then redis.call('SET', BASE .. ':u:' .. dk, ns) end
      if live then
        index_pending(ns, t, tonumber(ARGV[i + 3]), ra, now)
        types[t] = true
      else
        redis.call('ZADD', BASE .. ':f:' .. status, fa, ns)
        count_finished(status, t, 1)
        redis.call('SADD', BASE .. ':types', t)
      end
      out[#out + 1] = 'new'
      out[#out + 1] = ns
    end
  end
end
note_types(types)
publish(types)
return {'OK', out}
"""

# KEYS[1] meta. ARGV: base, resent, nonce, record ttl (s), then (number, status, lease token) triples. Deletes each
# job that still has that status and lease token (never a processing one), with everything pointing at it.
# Returns the numbers deleted; a resend finds the numbers its first run deleted (recorded under the nonce).
DELETE = """
local record = BASE .. ':x:' .. ARGV[3]
if RESENT then
  local done = redis.call('GET', record)
  if done then
    local numbers = {}
    for ns in string.gmatch(done, '[^,]+') do numbers[#numbers + 1] = ns end
    return numbers
  end
end
local deleted = {}
for i = 5, #ARGV, 3 do
  local ns = ARGV[i]
  local f = redis.call('HMGET', jkey(ns), 's', 'tk', 't', 'ra', 'dk', 'ik')
  if f[1] and f[1] ~= 'processing' and f[1] == ARGV[i + 1] and (f[2] or '0') == ARGV[i + 2] then
    if f[1] == 'pending' then
      unindex_pending(ns, f[3], tonumber(f[4]))
    else
      redis.call('ZREM', BASE .. ':f:' .. f[1], ns)
      count_finished(f[1], f[3], -1)
    end
    release_key(f[5], ns)
    if f[6] and redis.call('HGET', BASE .. ':ik', f[6]) == ns then redis.call('HDEL', BASE .. ':ik', f[6]) end
    redis.call('DEL', jkey(ns))
    deleted[#deleted + 1] = ns
  end
end
redis.call('SET', record, table.concat(deleted, ','), 'EX', ARGV[4])
return deleted
"""

# --- reads --------------------------------------------------------------------------------------------
# KEYS[1] meta. ARGV: base, resent. Counts from the sets' sizes (finished ones by type from :ct).
# Returns {'OK', now, {type, pending, scheduled, processing, ...}, {done, dead, cancelled}, finished by type}.
STATS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NOQUEUE'} end
local now = now_us()
local later = '(' .. fmt(now)
local live = {}
for _, t in ipairs(redis.call('SMEMBERS', BASE .. ':types')) do
  local delayed = redis.call('ZCARD', BASE .. ':d:' .. t)
  live[#live + 1] = t
  live[#live + 1] = redis.call('ZCARD', BASE .. ':r:' .. t) + delayed
  live[#live + 1] = redis.call('ZCOUNT', BASE .. ':d:' .. t, later, '+inf')
  live[#live + 1] = redis.call('ZCARD', BASE .. ':l:' .. t)
end
local done = {}
for i, status in ipairs({'done', 'dead', 'cancelled'}) do done[i] = redis.call('ZCARD', BASE .. ':f:' .. status) end
return {'OK', fmt(now), live, done, redis.call('HGETALL', BASE .. ':ct')}
"""

# KEYS[1] meta. ARGV: base, resent, then job types (none: every type). Ready = in a ready set, or delayed and due.
READY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local now = fmt(now_us())
local n = 0
for _, t in ipairs(types_from(3)) do
  n = n + redis.call('ZCARD', BASE .. ':r:' .. t) + redis.call('ZCOUNT', BASE .. ':d:' .. t, '-inf', now)
end
return n
"""

# KEYS[1] meta. ARGV: base, resent, then job types (none: every type). The earliest moment a job may be
# claimable: a ready job's run_at, a delayed job's run_at, or a processing job's lease expiry.
# Returns {now, moment or ''}.
DUE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'', ''} end
local now = now_us()
local earliest = nil
local function consider(x) if x and (earliest == nil or x < earliest) then earliest = x end end
local every = #ARGV < 3
for _, t in ipairs(types_from(3)) do
  local ready = redis.call('ZRANGE', BASE .. ':r:' .. t, 0, 0)
  if ready[1] then consider(tonumber(string.sub(ready[1], 1, 17))) end
  local delayed = redis.call('ZRANGE', BASE .. ':d:' .. t, 0, 0, 'WITHSCORES')
  consider(tonumber(delayed[2]))
  if not every then
    local leased = redis.call('ZRANGE', BASE .. ':l:' .. t, 0, 0, 'WITHSCORES')
    consider(tonumber(leased[2]))
  end
end
if every then
  local leased = redis.call('ZRANGE', BASE .. ':l', 0, 0, 'WITHSCORES')
  consider(tonumber(leased[2]))
end
return {fmt(now), earliest and fmt(earliest) or ''}
"""

# KEYS[1] meta. ARGV: base, resent, limit. The newest dead jobs (by finished_at).
DEAD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local newest = redis.call('ZREVRANGE', BASE .. ':f:dead', 0, tonumber(ARGV[3]) - 1)
local jobs = {}
for _, ns in ipairs(newest) do jobs[#jobs + 1] = read(ns) end
return jobs
"""

# KEYS[1] meta. ARGV: base, resent, limit, then schedule names. The newest `limit` fires of each of those schedules
# in this queue (by slot_at, then slot). Returns {name, {member, record, ...}, ...} for the names with fires here;
# a member is slot_at (17 digits) then the slot, a record "fired_at,job number,nonce".
FIRES = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local limit = tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV do
  local schedule = ARGV[i]
  if redis.call('SISMEMBER', BASE .. ':sn', schedule) == 1 then
    local rows = {}
    for _, m in ipairs(redis.call('ZREVRANGE', BASE .. ':ss:' .. schedule, 0, limit - 1)) do
      rows[#rows + 1] = m
      rows[#rows + 1] = redis.call('HGET', BASE .. ':sf:' .. schedule, string.sub(m, 18)) or ''
    end
    out[#out + 1] = schedule
    out[#out + 1] = rows
  end
end
return out
"""


def _render(body: str) -> str:
    """The script: the prelude, then ``body``, with the policy's Lua forms in place of their markers."""
    source = _PRELUDE + body
    rules = {
        "@FIELDS@": ", ".join(policy.lua_literal(name) for name in FIELDS),
        "@HELD_AFTER@": ", ".join(f"[{policy.lua_literal(status)}] = true" for status in policy.DEDUPE_HELD_AFTER),
        "@EXPIRED_STATUS@": policy.expired_lease_status_lua("a", "ma"),
        "@EXPIRED_ERROR@": policy.expired_lease_error_lua("lb"),
        "@EXPIRED_ENTRY@": policy.expired_lease_entry_lua("a", "lb", "entry_time(now)"),
        "@HISTORY_LIMIT@": str(policy.ERROR_HISTORY_LIMIT),
        "@CAPPED@": policy.capped_max_attempts_lua("stored", "cap"),
        "@HOLDS@": policy.holds_claim_lua("s", "tk", "le", "claim_token", "now"),
        "@CLAIM_BEFORE@": policy.claim_order_lua(
            {"priority": "a[1]", "run_at": "a[2]", "id": "a[3]"}, {"priority": "b[1]", "run_at": "b[2]", "id": "b[3]"}
        ),
    }
    for marker, lua in rules.items():
        source = source.replace(marker, lua)
    assert "@" not in source.replace("'@'", ""), "an unrendered marker is left in a script"
    return source


(
    ENQUEUE, WITHDRAW, CLAIM, PEEK, RESCUE, SETTLE, EXTEND, CANCEL, REPLAY, PURGE, INIT, FIRE, PURGE_FIRES, DECLARE,
    EXPORT, IMPORT, DELETE, STATS, READY, DUE, DEAD, FIRES,
) = (
    _render(body)
    for body in (
        ENQUEUE, WITHDRAW, CLAIM, PEEK, RESCUE, SETTLE, EXTEND, CANCEL, REPLAY, PURGE, INIT, FIRE, PURGE_FIRES, DECLARE,
        EXPORT, IMPORT, DELETE, STATS, READY, DUE, DEAD, FIRES,
    )
)  # fmt: skip

#: Every script by name (loaded on each node before first use).
SCRIPTS = {
    "enqueue": ENQUEUE,
    "withdraw": WITHDRAW,
    "claim": CLAIM,
    "peek": PEEK,
    "rescue": RESCUE,
    "settle": SETTLE,
    "extend": EXTEND,
    "cancel": CANCEL,
    "replay": REPLAY,
    "purge": PURGE,
    "init": INIT,
    "fire": FIRE,
    "purge_fires": PURGE_FIRES,
    "declare": DECLARE,
    "export": EXPORT,
    "import": IMPORT,
    "delete": DELETE,
    "stats": STATS,
    "ready": READY,
    "due": DUE,
    "dead": DEAD,
    "fires": FIRES,
}

assert JobStatus.PROCESSING == "processing" and JobStatus.PENDING == "pending"  # the literals the scripts use

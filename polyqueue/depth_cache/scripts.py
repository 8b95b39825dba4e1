"""The depth cache's Lua scripts: every change to a queue's counts is one atomic script on Redis's clock.

Per queue the cache keeps a counts hash (``ready``), a sorted set of the
scheduled jobs it saw (and a marker for when the database said a job may
next become claimable), a generation counter bumped by every change, and,
per queue database, the ids of live jobs enqueued with a dedupe key.
"""

__all__ = ["ADD", "READ", "RECONCILE", "SNAPSHOT", "TAKE"]

# KEYS: counts hash, scheduled zset, generation, dedupe memory, queue set.
# ARGV: seconds the change took, channel, queue name, KEEP, then (id, delay, has-dedupe-key) per job.
# New jobs that are due count as ready; delayed ones go to the scheduled set, dated from when the change
# began, so they look due no later than they are but for this call's own trip (LATE). A job id the dedupe
# memory has seen is not counted twice.
ADD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local began = now - tonumber(ARGV[1])
local keep = tonumber(ARGV[4])
local ready, latest = 0, nil
for i = 5, #ARGV, 3 do
  local fresh = 1
  if ARGV[i + 2] == '1' then
    fresh = redis.call('ZADD', KEYS[4], 'NX', now, ARGV[i])
  end
  if fresh == 1 then
    local delay = tonumber(ARGV[i + 1])
    if delay <= 0 then
      ready = ready + 1
    else
      local due = began + delay
      redis.call('ZADD', KEYS[2], due, ARGV[i])
      if latest == nil or due > latest then latest = due end
    end
  end
end
if ready > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'ready', ready)
end
if latest ~= nil then
  local want = math.ceil(latest - now) + keep
  if redis.call('TTL', KEYS[2]) < want then redis.call('EXPIRE', KEYS[2], want) end
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - keep)
  redis.call('EXPIRE', KEYS[4], keep)
end
redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], keep)
redis.call('SADD', KEYS[5], ARGV[3])
redis.call('EXPIRE', KEYS[5], keep)
if ready > 0 and ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[2], '') end
return ready
"""

# KEYS: counts hash, scheduled zset, generation. ARGV: '1' to count ids absent from the scheduled set as
# ready ones that left, KEEP, then the ids. Returns the ready count left ('' when unknown).
# A count rebuilt while jobs were ready could not learn when unseen scheduled jobs fall due, so when it
# drains to zero it is dropped: the next reader's rebuild asks the database, and a cached zero hides nothing.
TAKE = """
local gone = 0
for i = 3, #ARGV do
  if redis.call('ZREM', KEYS[2], ARGV[i]) == 0 then gone = gone + 1 end
end
if ARGV[1] == '1' and gone > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  local left = redis.call('HINCRBY', KEYS[1], 'ready', -gone)
  if left <= 0 and redis.call('HGET', KEYS[1], 'recheck') == '1' then redis.call('DEL', KEYS[1]) end
end
redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], ARGV[2])
return redis.call('HGET', KEYS[1], 'ready') or ''
"""

# KEYS: (counts hash, scheduled zset, generation) per queue. ARGV: KEEP, MARKER.
# Scheduled jobs that have fallen due move into the ready count; a due marker means jobs the cache never saw
# are due, so the count is dropped to be rebuilt. Returns per queue: ready ('' unknown), seconds until the
# next scheduled job or marker ('' none), scheduled jobs known, and the generation (every change bumps it).
READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for i = 1, #KEYS, 3 do
  local counts, sched = KEYS[i], KEYS[i + 1]
  local due = redis.call('ZCOUNT', sched, '-inf', now)
  if due > 0 then
    local mark = redis.call('ZSCORE', sched, ARGV[2])
    local stale = mark and tonumber(mark) <= now
    redis.call('ZREMRANGEBYSCORE', sched, '-inf', now)
    if stale then
      redis.call('DEL', counts)
    elseif redis.call('EXISTS', counts) == 1 then
      redis.call('HINCRBY', counts, 'ready', due)
    end
    redis.call('INCR', KEYS[i + 2])
    redis.call('EXPIRE', KEYS[i + 2], ARGV[1])
  end
  local first = redis.call('ZRANGE', sched, 0, 0, 'WITHSCORES')
  local known = redis.call('ZCARD', sched)
  if redis.call('ZSCORE', sched, ARGV[2]) then known = known - 1 end
  out[#out + 1] = redis.call('HGET', counts, 'ready') or ''
  out[#out + 1] = first[2] and tostring(tonumber(first[2]) - now) or ''
  out[#out + 1] = known
  out[#out + 1] = redis.call('GET', KEYS[i + 2]) or '0'
end
return out
"""

# KEYS: generation. Returns the generation and Redis's clock, read before the database is asked.
SNAPSHOT = """
local t = redis.call('TIME')
return {redis.call('GET', KEYS[1]) or '0', tostring(tonumber(t[1]) + tonumber(t[2]) / 1000000)}
"""

# KEYS: counts hash, scheduled zset, generation. ARGV: generation seen before asking the database, ready
# count, Redis clock then, seconds until the next due job per the database ('' none), '1' when nothing is
# pending at all, TTL in ms, MARKER, KEEP, LATE. Writes only if nothing changed meanwhile; returns 1 if written.
# Scheduled jobs due before the database was asked are in its count, so they leave the set. When it counted
# ready jobs, jobs falling due while it was asked may be in that count too: they leave as well, and a marker
# at the latest of their times has the count rebuilt once they are surely due, so none is counted twice.
RECONCILE = """
if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local asked, now = tonumber(ARGV[3]), tonumber(t[1]) + tonumber(t[2]) / 1000000
local ready = tonumber(ARGV[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'ready', ready)
if ready > 0 then redis.call('HSET', KEYS[1], 'recheck', '1') end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
if ARGV[5] == '1' then
  redis.call('DEL', KEYS[2])
  return 1
end
redis.call('ZREM', KEYS[2], ARGV[7])
local mark = nil
if ARGV[4] ~= '' then mark = asked + tonumber(ARGV[4]) end
if ready > 0 then
  local cut = now + tonumber(ARGV[9])
  local unsure = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[3], cut, 'WITHSCORES')
  if #unsure > 0 then
    local latest = tonumber(unsure[#unsure])
    if mark == nil or latest < mark then mark = latest end
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cut)
else
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
end
if mark ~= nil then
  redis.call('ZADD', KEYS[2], mark, ARGV[7])
  local want = math.ceil(mark - now) + tonumber(ARGV[8])
  if redis.call('TTL', KEYS[2]) < want then redis.call('EXPIRE', KEYS[2], want) end
end
return 1
"""

//! The Lua scripts the provider runs on the server (each atomic there).

use std::sync::LazyLock;

/// `KEYS[1]` the stream, `ARGV[1]` the bound, `ARGV[2..]` the fields: adds the
/// entry unless the stream holds `maxlen` entries already (then `nil`, and nothing
/// is written). Returns the new entry's id and the stream's length with it, from
/// which the sender takes its lease of plain `XADD`s (see `Inner::append`).
pub(crate) static PUBLISH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local length = redis.call('XLEN', KEYS[1])
if length >= tonumber(ARGV[1]) then return false end
return {redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2)), length + 1}
",
    )
});

/// `KEYS[1]` the stream, `KEYS[2]` the set of its per-process groups, `ARGV[1]`
/// the prefix of their liveness keys. Destroys the per-process groups whose
/// liveness key expired (their server is gone), then trims the stream to the
/// oldest entry some group still needs: the first entry pending in any group, or
/// the last delivered one of any group (everything after it is undelivered).
/// Entries older than every group's need were acknowledged by all of them. With no
/// group at all the newest entry is kept (nobody is bound: the rest goes nowhere,
/// as on a fanout exchange without queues). Returns `{trimmed, groups destroyed}`.
pub(crate) static TRIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local gone = 0
for _, g in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('EXISTS', ARGV[1] .. g) == 0 then
    redis.pcall('XGROUP', 'DESTROY', KEYS[1], g)
    redis.call('SREM', KEYS[2], g)
    gone = gone + 1
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, gone} end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function older(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local floor = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  local need = info['last-delivered-id']
  if tonumber(info['pending']) > 0 then
    local first = redis.call('XPENDING', KEYS[1], info['name'], '-', '+', 1)
    if first[1] and older(first[1][1], need) then need = first[1][1] end
  end
  if floor == nil or older(need, floor) then floor = need end
end
if floor == nil then
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if not last[1] then return {0, gone} end
  floor = last[1][1]
end
return {redis.call('XTRIM', KEYS[1], 'MINID', floor), gone}
",
    )
});

/// `KEYS[1]` the stream, `ARGV[1]` the group, `ARGV[2]` a consumer: deletes the
/// consumer if it holds no pending entry (a consumer's pending entries would be
/// dropped with it). Returns 1 if it was deleted.
pub(crate) static RETIRE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if not ok or pending[1] then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
",
    )
});

/// The server's clock in milliseconds, as Lua (scripts replicate their effects,
/// so reading `TIME` is allowed).
const NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// `KEYS[1]` a delay queue's sorted set, `KEYS[2]` the event's stream;
/// `ARGV[1]` the delay in ms, `ARGV[2]` the group, `ARGV[3]` the entry id,
/// `ARGV[4]` the waiting copy ([`pack_waiting`](crate::fields::pack_waiting)).
/// Adds the copy, due at the server's now + delay, and acknowledges the
/// original, atomically. Returns the due time.
pub(crate) static DELAY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r"{NOW}
local due = now + tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], due, ARGV[4])
redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
return due
"
    ))
});

/// `KEYS[1]` an event's schedule; `ARGV[1]` the delay in ms, `ARGV[2]` the
/// waiting send. Adds it, due at the server's now + delay. Returns the due time.
pub(crate) static SCHEDULE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r"{NOW}
local due = now + tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], due, ARGV[2])
return due
"
    ))
});

/// `KEYS[1]` an event's stream, `KEYS[2..]` sorted sets of waiting messages for
/// it (a queue's delay queues, the event's schedule); `ARGV[1]` the stream bound,
/// `ARGV[2]` at most how many to move per set. Moves what is due by the
/// server's clock, oldest first, into the stream (`XADD` of the packed fields,
/// then `ZREM`), all in one atomic step: a crash moves each one once or not at
/// all. Stops at the bound (the rest stays for later). Returns `{moved, full,
/// ms until the next one is due or -1}`.
pub(crate) static MOVE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r"{NOW}
local maxlen = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local moved, full, next_due = 0, 0, -1
for i = 2, #KEYS do
  local due = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now, 'LIMIT', 0, limit)
  for _, member in ipairs(due) do
    if redis.call('XLEN', KEYS[1]) >= maxlen then
      full = 1
      break
    end
    local ok, fields = pcall(cmsgpack.unpack, member)
    if ok and type(fields) == 'table' and #fields >= 3 and #fields % 2 == 1 then
      redis.call('XADD', KEYS[1], '*', unpack(fields, 2))
      redis.call('ZREM', KEYS[i], member)
      moved = moved + 1
    else
      -- Not a packed message (written by someone else): set aside, not lost.
      redis.call('ZREM', KEYS[i], member)
      redis.call('RPUSH', KEYS[i] .. '.unreadable', member)
    end
  end
  local head = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  if head[2] then
    local wait = math.max(0, tonumber(head[2]) - now)
    if next_due < 0 or wait < next_due then next_due = wait end
  end
end
return {{moved, full, next_due}}
"
    ))
});

//! The Lua scripts the provider runs on the server (each atomic there).

use std::sync::LazyLock;

/// `KEYS[1]` the stream, `ARGV[1]` the bound, `ARGV[2..]` the fields: adds the
/// entry unless the stream holds `maxlen` entries already (then `nil`, and nothing
/// is written). Returns the new entry's id.
pub(crate) static PUBLISH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
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

#!lua name=ticketd_floor
-- make bench's ledger floor (scripts/bench.sh): what Redis itself costs for the least a
-- ledger with a record per buyer must do in a Function call. Not ticketd's library, and
-- never loaded into a ledger a node uses.
--
-- floor_args(key) user value user value ... -> the pairs' count: the call and its
--   arguments alone, nothing written.
-- floor_hset(key) user value user value ... -> the pairs' count: every pair written as a
--   field of one hash (HSET, in chunks Lua's unpack can hold), and nothing else — no
--   read, no check, no outbox.

local CHUNK = 1000

redis.register_function('floor_args', function(keys, args)
  return #args / 2
end)

redis.register_function('floor_hset', function(keys, args)
  for first = 1, #args, 2 * CHUNK do
    redis.call('HSET', keys[1], unpack(args, first, math.min(first + 2 * CHUNK - 1, #args)))
  end
  return #args / 2
end)

#!lua name=ticketd
-- ticketd's global ledger, as a Redis Function library (FUNCTION LOAD survives restarts
-- and replication, unlike SCRIPT LOAD). Every key of an event carries the hash tag
-- {ev:ID}, so one call touches one cluster slot.
--
-- Keys of event ID:
--   {ev:ID}:meta       hash   total, sold, held, limit, hold_ttl_ms
--   {ev:ID}:users      hash   user -> tickets bought or held
--   {ev:ID}:holds      hash   hold_id -> "user qty expires_ms state order_id"
--   {ev:ID}:deadlines  zset   hold_id scored by expires_ms (live holds)
--   {ev:ID}:forget     zset   hold_id scored by when its record may go
--   {ev:ID}:orders     stream the outbox: one entry per call, its orders "order_id:user:qty,…"
--   {ev:ID}:user-orders hash  user -> "order_id:qty,order_id:qty" (for ORDERS)
--   {ev:ID}:call:<id>  string a call's results, kept for replay (exactly once)
--
-- Time is Redis's own clock (TIME), so every node agrees when a hold expires.

-- hold_id -> event id, so CONFIRM/CANCEL can arrive at any node with only the hold id.
-- (Outside every event's hash slot: on a Redis Cluster, hold ids would have to carry
-- their event instead.)
local HOLD_INDEX = 'ticketd:hold-events'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function meta(key)
  local m = redis.call('HMGET', key, 'total', 'sold', 'held', 'limit', 'hold_ttl_ms')
  if not m[1] then return nil end
  return { total = tonumber(m[1]), sold = tonumber(m[2]), held = tonumber(m[3]),
           limit = tonumber(m[4]), ttl = tonumber(m[5]) }
end

local function parse_hold(text)
  if not text then return nil end
  local user, qty, expires, state, order = string.match(text, '^(%S+) (%d+) (%d+) (%a) (%d+)$')
  return { user = user, qty = tonumber(qty), expires = tonumber(expires), state = state,
           order = order }
end

local function format_hold(h)
  return h.user .. ' ' .. h.qty .. ' ' .. h.expires .. ' ' .. h.state .. ' ' .. h.order
end

-- Ends a live hold without a sale: tickets and the user's room go back.
local function release(k, m, id, h, state, now)
  m.held = m.held - h.qty
  local left = redis.call('HINCRBY', k.users, h.user, -h.qty)
  if left <= 0 then redis.call('HDEL', k.users, h.user) end
  h.state = state
  redis.call('HSET', k.holds, id, format_hold(h))
  redis.call('ZREM', k.deadlines, id)
  redis.call('ZADD', k.forget, now + m.ttl, id)
end

-- Expires due holds (including those of nodes that died) and forgets finished ones.
local function sweep(k, m, now)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', k.deadlines, '-inf', now)) do
    local h = parse_hold(redis.call('HGET', k.holds, id))
    if h and h.state == 'A' then release(k, m, id, h, 'E', now) end
    redis.call('ZREM', k.deadlines, id)
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', k.forget, '-inf', now)) do
    redis.call('HDEL', k.holds, id)
    redis.call('HDEL', HOLD_INDEX, id)
    redis.call('ZREM', k.forget, id)
  end
end

-- Records an order: in the user's list at once, and in `made` (the call's orders of
-- this event) for the one outbox entry the call writes at its end (`publish`).
local function order(k, id, user, qty_text, made)
  made[#made + 1] = id .. ':' .. user .. ':' .. qty_text
  -- A user has at most the per-user limit of orders: the list stays short. Most have
  -- one (limit 1), and HSETNX records it in one command.
  local entry = id .. ':' .. qty_text
  if redis.call('HSETNX', k.uorders, user, entry) == 0 then
    redis.call('HSET', k.uorders, user, redis.call('HGET', k.uorders, user) .. ',' .. entry)
  end
end

-- One outbox entry for a call's orders of an event (one XADD per call, not per sale):
-- fields node, call, and orders = "order_id:user:qty,...".
local function publish(k, made, node, call)
  if #made > 0 then
    redis.call('XADD', k.orders, '*', 'node', node, 'call', call, 'orders', table.concat(made, ','))
  end
end

-- Takes room for qty more tickets for user and checks the stock: nil when both allow
-- it (the user's count already raised), or the refusal (the count as it was). One
-- HINCRBY for a sale, where a read and then a write took two; the limit is still
-- judged before the stock. `qty_text` is qty as the call sent it: a Lua number handed to
-- redis.call or joined to a string is formatted with sprintf, a cost per sale.
local function take(k, m, user, qty, qty_text)
  local has = redis.call('HINCRBY', k.users, user, qty_text)
  local no
  if has > m.limit then
    no = 'LIMIT_REACHED'
  elseif m.sold + m.held + qty > m.total then
    no = 'SOLD_OUT'
  else
    return nil
  end
  if has == qty then
    redis.call('HDEL', k.users, user)
  else
    redis.call('HINCRBY', k.users, user, -qty)
  end
  return no
end

-- CONFIRM (kind C, order_id used if it becomes an order) or CANCEL (kind X) of a hold
-- of event `event`. A CANCEL answers the event and the tickets it put back on sale (0 on
-- a repeat), so the node that settled it can let its gate sell them at once.
local function settle(k, m, event, kind, hold_id, order_id, made, now)
  local h = parse_hold(redis.call('HGET', k.holds, hold_id))
  if h and h.state == 'A' and h.expires <= now then
    release(k, m, hold_id, h, 'E', now)
  end
  if not h then return { 'NOT_FOUND', '0', '0' } end
  if h.state == 'E' then return { 'EXPIRED', '0', '0' } end
  if kind == 'C' then
    if h.state == 'C' then return { 'OK', h.order, '0' } end
    if h.state == 'X' then return { 'NOT_FOUND', '0', '0' } end
    m.held = m.held - h.qty
    m.sold = m.sold + h.qty
    h.state, h.order = 'C', order_id
    redis.call('HSET', k.holds, hold_id, format_hold(h))
    redis.call('ZREM', k.deadlines, hold_id)
    redis.call('ZADD', k.forget, now + m.ttl, hold_id)
    order(k, order_id, h.user, tostring(h.qty), made)
    return { 'OK', order_id, '0' }
  end
  if h.state == 'X' then return { 'OK', event, '0' } end
  if h.state == 'C' then return { 'NOT_FOUND', '0', '0' } end
  release(k, m, hold_id, h, 'X', now)
  return { 'OK', event, tostring(h.qty) }
end

local function keys_of(keys)
  return { meta = keys[1], users = keys[2], holds = keys[3], deadlines = keys[4],
           forget = keys[5], orders = keys[6], uorders = keys[7], call = keys[8] }
end

-- ticketd_define(meta) total limit hold_ttl_ms mode -> {'OK'} or {'ERR', why}
-- mode 'create': creates the event if absent (an existing one is left as it is);
-- mode 'update': sets total, limit and TTL keeping the sales, never below sold + held.
-- Only `ticketd create-events` calls it: a node joining never creates an event, so a
-- ledger that lost its data is never refilled behind the operator's back.
redis.register_function('ticketd_define', function(keys, args)
  local total, limit, ttl, mode = tonumber(args[1]), tonumber(args[2]), tonumber(args[3]), args[4]
  local m = meta(keys[1])
  if not m then
    redis.call('HSET', keys[1], 'total', total, 'sold', 0, 'held', 0,
               'limit', limit, 'hold_ttl_ms', ttl)
    return { 'OK' }
  end
  if mode ~= 'update' then return { 'OK' } end
  if total < m.sold + m.held then
    return { 'ERR', 'total ' .. total .. ' is below the ' .. (m.sold + m.held) ..
             ' tickets already sold or held' }
  end
  redis.call('HSET', keys[1], 'total', total, 'limit', limit, 'hold_ttl_ms', ttl)
  return { 'OK' }
end)

-- ticketd_decide(meta users holds deadlines forget orders user-orders call)
--   call_id node replay_ttl_ms n  then n × (kind user qty id)
--   kind: B buy, R reserve, C confirm (user/qty ignored, id = order id to use),
--         X cancel (id ignored). For R, id is the hold id; for B the order id; for C
--         and X the hold is named by `user` (the hold id).
-- -> n × {status, a, b}: OK with (order_id) / (hold_id, expires_ms), or a refusal.
-- A call id seen before returns the first attempt's results and changes nothing.
redis.register_function('ticketd_decide', function(keys, args)
  local k = keys_of(keys)
  local replay = redis.call('GET', k.call)
  if replay then return cjson.decode(replay) end
  local m = meta(k.meta)
  local call, node, replay_ttl, n = args[1], args[2], tonumber(args[3]), tonumber(args[4])
  local event = string.match(k.meta, '^{ev:(%d+)}')
  local results = {}
  if not m then
    for i = 1, n do results[i] = { 'NOT_FOUND', '0', '0' } end
    return results
  end
  local now = now_ms()
  sweep(k, m, now)
  local made = {}
  for i = 1, n do
    local base = 4 + (i - 1) * 4
    local kind, user, qty_text, id = args[base + 1], args[base + 2], args[base + 3], args[base + 4]
    local qty = tonumber(qty_text)
    local r
    if kind == 'B' or kind == 'R' then
      local no = take(k, m, user, qty, qty_text)
      if no then
        r = { no, '0', '0' }
      else
        if kind == 'B' then
          m.sold = m.sold + qty
          order(k, id, user, qty_text, made)
          r = { 'OK', id, '0' }
        else
          m.held = m.held + qty
          local expires = now + m.ttl
          redis.call('HSET', k.holds, id, format_hold({ user = user, qty = qty,
                     expires = expires, state = 'A', order = '0' }))
          redis.call('ZADD', k.deadlines, expires, id)
          redis.call('HSET', HOLD_INDEX, id, event)
          r = { 'OK', id, tostring(expires) }
        end
      end
    else
      r = settle(k, m, event, kind, user, id, made, now)
    end
    results[i] = r
  end
  publish(k, made, node, call)
  redis.call('HSET', k.meta, 'sold', m.sold, 'held', m.held)
  redis.call('SET', k.call, cjson.encode(results), 'PX', replay_ttl)
  return results
end)

-- ticketd_orders(meta user-orders) user -> {1, "id:qty,…"} ({1, ""} for none), or {0}
-- when the event does not exist: ORDERS, read from the global ledger.
redis.register_function('ticketd_orders', function(keys, args)
  if redis.call('EXISTS', keys[1]) == 0 then return { 0 } end
  return { 1, redis.call('HGET', keys[2], args[1]) or '' }
end)

-- ticketd_stock(meta users holds deadlines forget) -> {total, remaining, held}, after
-- expiring due holds; {-1, -1, -1} when the event does not exist. Nothing remaining and
-- nothing held means sold out for good: only holds ever give tickets back.
redis.register_function('ticketd_stock', function(keys, args)
  local k = keys_of(keys)
  local m = meta(k.meta)
  if not m then return { -1, -1, -1 } end
  sweep(k, m, now_ms())
  redis.call('HSET', k.meta, 'held', m.held)
  return { m.total, m.total - m.sold - m.held, m.held }
end)

-- ticketd_settle(call) call_id node replay_ttl_ms n  then n × (kind hold_id order_id)
--   kind: C confirm, X cancel. Each hold's event is found in the hold index, so the
--   caller needs to know only the hold id. Replies like ticketd_decide; replays alike.
redis.register_function('ticketd_settle', function(keys, args)
  local replay = redis.call('GET', keys[1])
  if replay then return cjson.decode(replay) end
  local call, node, replay_ttl, n = args[1], args[2], tonumber(args[3]), tonumber(args[4])
  local now = now_ms()
  local touched = {}
  local results = {}
  for i = 1, n do
    local base = 4 + (i - 1) * 3
    local kind, hold_id, order_id = args[base + 1], args[base + 2], args[base + 3]
    local event = redis.call('HGET', HOLD_INDEX, hold_id)
    if not event then
      results[i] = { 'NOT_FOUND', '0', '0' }
    else
      local state = touched[event]
      if not state then
        local tag = '{ev:' .. event .. '}'
        local k = { meta = tag .. ':meta', users = tag .. ':users', holds = tag .. ':holds',
                    deadlines = tag .. ':deadlines', forget = tag .. ':forget',
                    orders = tag .. ':orders', uorders = tag .. ':user-orders' }
        state = { k = k, m = meta(k.meta), made = {} }
        touched[event] = state
      end
      if not state.m then
        results[i] = { 'NOT_FOUND', '0', '0' }
      else
        results[i] = settle(state.k, state.m, event, kind, hold_id, order_id, state.made, now)
      end
    end
  end
  for _, state in pairs(touched) do
    if state.m then
      publish(state.k, state.made, node, call)
      redis.call('HSET', state.k.meta, 'sold', state.m.sold, 'held', state.m.held)
    end
  end
  redis.call('SET', keys[1], cjson.encode(results), 'PX', replay_ttl)
  return results
end)

#!lua name=ticketd
-- ticketd's global ledger, as a Redis Function library (FUNCTION LOAD survives restarts
-- and replication, unlike SCRIPT LOAD). Every key of an event carries the hash tag
-- {ev:ID}, so one call touches one cluster slot.
--
-- Keys of event ID:
--   {ev:ID}:meta       hash   total, sold, held, limit, hold_ttl_ms
--   {ev:ID}:buyers     hash   user -> their tickets and orders (see "Buyers" below)
--   {ev:ID}:holds      hash   hold_id -> "user qty expires_ms state order_id"
--   {ev:ID}:deadlines  zset   hold_id scored by expires_ms (live holds)
--   {ev:ID}:forget     zset   hold_id scored by when its record may go
--   {ev:ID}:orders     stream the outbox: one entry per call, its orders "order_id:user:qty,…"
--   {ev:ID}:users, {ev:ID}:user-orders   hashes of the layout before buyers: user ->
--                      tickets bought or held, and user -> "order_id:qty,…". Read, and
--                      moved into buyers as each user is next touched; never added to.
--   {ev:ID}:call:<id>  string a call's results, kept for replay (exactly once)
--
-- Answers of ticketd_decide and ticketd_settle: one string, a letter per step (O ok,
-- S sold out, L limit reached, N not found, E expired), then, space-separated, what the
-- OK steps that carry more than the caller sent tell: a RESERVE its expiry (Unix ms), a
-- CONFIRM its order id, a CANCEL "event:tickets released". A BUY's OK says all: its
-- order id is the one the caller sent.
--
-- Time is Redis's own clock (TIME), so every node agrees when a hold expires.
--
-- Versions. These answers and the buyers hash came with a new set of keys per call, and
-- each function checks it gets its count: a node of an earlier version (which sends
-- fewer) is refused before anything changes. The other way round, an earlier library
-- reads its replay key where this one's callers put a hash — the event's meta for
-- ticketd_decide, ticketd:layout (made by every node's handshake) for ticketd_settle —
-- so its first GET fails with WRONGTYPE, again before anything changes. Either way the
-- call fails and its requests answer UNAVAILABLE, which is true; no answer is misread.

-- hold_id -> event id, so CONFIRM/CANCEL can arrive at any node with only the hold id.
-- (Outside every event's hash slot: on a Redis Cluster, hold ids would have to carry
-- their event instead.)
local HOLD_INDEX = 'ticketd:hold-events'

-- How many users one HMGET/HSET/HDEL names: Lua's unpack() has to fit them on its stack.
local CHUNK = 1000

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

-- Buyers. A user's entry in {ev:ID}:buyers is "[held|]order,order,…": the tickets their
-- live holds keep (left out when none), then their orders, each "order_id" (one ticket)
-- or "order_id:qty". What they have — bought plus held — is what the per-user limit
-- judges. A first sale of one ticket writes the order id the caller sent as it is: a Lua
-- string made per sale (a join, or a number formatted with sprintf) costs about as much
-- as a hash lookup, so the selling path makes none.
--
-- The call's view of the entries (`b.entry[user]`: the entry, or false for none), read
-- once — a whole batch's buyers with one HMGET, others as they come — and changed as
-- strings: a new buyer's first one-ticket sale only stores the order id. At the end of
-- the call `save` writes back, with one HSET, each entry that is no longer the one read
-- (Lua strings are interned: comparing two is one pointer comparison).
-- Refuses a call with another number of keys than this library's callers send.
local function version_error(keys, wanted)
  if #keys == wanted then return nil end
  return redis.error_reply('ticketd: this ledger library wants ' .. wanted .. ' keys, got ' ..
    #keys .. ': a node of another ticketd version? Run one version on every node')
end

local function buyers(k)
  return { k = k, entry = {}, read = {}, was = {}, n = 0, moved = {}, legacy = nil }
end

local function split(entry)
  if not entry then return 0, '' end
  local held, list = string.match(entry, '^(%d+)|(.*)$')
  if held then return tonumber(held), list end
  return 0, entry
end

local function join(held, list)
  if held > 0 then return held .. '|' .. list end
  if list == '' then return false end
  return list
end

-- What an entry has: tickets held plus tickets of its orders.
local function has_in(entry)
  if not entry then return 0 end
  local held, list = split(entry)
  for order in string.gmatch(list, '[^,]+') do
    held = held + (tonumber(string.match(order, ':(%d+)$')) or 1)
  end
  return held
end

-- Users of an event sold under the layout before buyers: their count (bought + held) in users and
-- their orders in user-orders. Such a user's entry is made from both, and the old
-- fields go when it is saved.
local function from_legacy(b, users)
  if #users == 0 then return end
  local counts = redis.call('HMGET', b.k.users, unpack(users))
  local lists = redis.call('HMGET', b.k.uorders, unpack(users))
  for i, user in ipairs(users) do
    if counts[i] then
      local list = lists[i] or ''
      b.entry[user] = join(tonumber(counts[i]) - has_in(list ~= '' and list), list)
      b.moved[#b.moved + 1] = user
    end
  end
end

-- Reads the entries of `users` (none read yet), CHUNK at a time.
local function load(b, users)
  if b.legacy == nil then b.legacy = redis.call('EXISTS', b.k.users) == 1 end
  local entry_of, read, was = b.entry, b.read, b.was
  for first = 1, #users, CHUNK do
    local last = math.min(first + CHUNK - 1, #users)
    local entries = redis.call('HMGET', b.k.buyers, unpack(users, first, last))
    local missing = {}
    local n = b.n
    for i = first, last do
      local user, entry = users[i], entries[i - first + 1]
      entry_of[user] = entry
      n = n + 1
      read[n], was[n] = user, entry
      if not entry and b.legacy then missing[#missing + 1] = user end
    end
    b.n = n
    if b.legacy then from_legacy(b, missing) end
  end
end

-- The user's entry, read if the call has not yet.
local function entry_of(b, user)
  local entry = b.entry[user]
  if entry == nil then
    load(b, { user })
    entry = b.entry[user]
  end
  return entry
end

-- What the user has (bought + held).
local function has(b, user)
  return has_in(entry_of(b, user))
end

local function hold_more(b, user, qty)
  local held, list = split(entry_of(b, user))
  b.entry[user] = join(held + qty, list)
end

-- Adds an order (qty_text: its tickets as text) to the user's entry.
local function add_order(b, user, id, qty_text)
  local order = id
  if qty_text ~= '1' then order = id .. ':' .. qty_text end
  local held, list = split(entry_of(b, user))
  if list ~= '' then list = list .. ',' .. order else list = order end
  b.entry[user] = join(held, list)
end

-- Writes back the entries that changed: HSET of those left, HDEL of those gone, and
-- HDEL of the old-layout fields of users moved from there. (A user read twice is
-- compared twice, with the same result.)
local function save(b)
  local set, ns, gone, ng = {}, 0, {}, 0
  local entry_of, read, was = b.entry, b.read, b.was
  for i = 1, b.n do
    local user = read[i]
    local entry = entry_of[user]
    if entry ~= was[i] then
      if entry then
        set[ns + 1], set[ns + 2], ns = user, entry, ns + 2
      else
        ng = ng + 1
        gone[ng] = user
      end
    end
  end
  for first = 1, ns, 2 * CHUNK do
    redis.call('HSET', b.k.buyers, unpack(set, first, math.min(first + 2 * CHUNK - 1, ns)))
  end
  for first = 1, ng, CHUNK do
    redis.call('HDEL', b.k.buyers, unpack(gone, first, math.min(first + CHUNK - 1, ng)))
  end
  for first = 1, #b.moved, CHUNK do
    local last = math.min(first + CHUNK - 1, #b.moved)
    redis.call('HDEL', b.k.users, unpack(b.moved, first, last))
    redis.call('HDEL', b.k.uorders, unpack(b.moved, first, last))
  end
end

-- Ends a live hold without a sale: tickets and the user's room go back.
local function release(k, m, id, h, state, now)
  m.held = m.held - h.qty
  hold_more(k.view, h.user, -h.qty)
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

-- The call's orders of an event, for its one outbox entry (`publish`): pieces of
-- "order_id:user:qty,…", joined once at the end, so no string is made per sale.
local function order(k, id, user, qty_text, made)
  local n = made.n
  made[n + 1], made[n + 2], made[n + 3], made[n + 4], made[n + 5], made[n + 6] =
    id, ':', user, ':', qty_text, ','
  made.n = n + 6
  add_order(k.view, user, id, qty_text)
end

-- One outbox entry for a call's orders of an event (one XADD per call, not per sale):
-- fields node, call, and orders = "order_id:user:qty,...".
local function publish(k, made, node, call)
  if made.n > 0 then
    -- Without the last piece, the comma after the last order.
    local orders = table.concat(made, '', 1, made.n - 1)
    redis.call('XADD', k.orders, '*', 'node', node, 'call', call, 'orders', orders)
  end
end

local function outbox()
  return { n = 0 }
end

-- A call's answers (see the top of this file): codes[i] a letter per step, extras what
-- OK steps carry.
local function answers()
  return { codes = {}, n = 0, extras = {}, ne = 0 }
end

local function answer(a, code, extra)
  a.n = a.n + 1
  a.codes[a.n] = code
  if extra then
    a.ne = a.ne + 1
    a.extras[a.ne] = extra
  end
end

local function reply(a)
  local text = table.concat(a.codes, '', 1, a.n)
  if a.ne > 0 then text = text .. ' ' .. table.concat(a.extras, ' ', 1, a.ne) end
  return text
end

-- Takes room for qty more tickets for user and checks the stock: nil when both allow
-- it, or the refusal's code. The limit is judged before the stock.
local function refusal(k, m, user, qty)
  if has(k.view, user) + qty > m.limit then return 'L' end
  if m.sold + m.held + qty > m.total then return 'S' end
  return nil
end

-- CONFIRM (kind C, order_id used if it becomes an order) or CANCEL (kind X) of a hold
-- of event `event`. A CANCEL answers the event and the tickets it put back on sale (0 on
-- a repeat), so the node that settled it can let its gate sell them at once.
local function settle(k, m, event, kind, hold_id, order_id, made, now, a)
  local h = parse_hold(redis.call('HGET', k.holds, hold_id))
  if h and h.state == 'A' and h.expires <= now then
    release(k, m, hold_id, h, 'E', now)
  end
  if not h then return answer(a, 'N') end
  if h.state == 'E' then return answer(a, 'E') end
  if kind == 'C' then
    if h.state == 'C' then return answer(a, 'O', h.order) end
    if h.state == 'X' then return answer(a, 'N') end
    m.held = m.held - h.qty
    m.sold = m.sold + h.qty
    h.state, h.order = 'C', order_id
    redis.call('HSET', k.holds, hold_id, format_hold(h))
    redis.call('ZREM', k.deadlines, hold_id)
    redis.call('ZADD', k.forget, now + m.ttl, hold_id)
    hold_more(k.view, h.user, -h.qty)
    order(k, order_id, h.user, tostring(h.qty), made)
    return answer(a, 'O', order_id)
  end
  if h.state == 'X' then return answer(a, 'O', event .. ':0') end
  if h.state == 'C' then return answer(a, 'N') end
  release(k, m, hold_id, h, 'X', now)
  return answer(a, 'O', event .. ':' .. h.qty)
end

-- The keys of an event, from its tag "{ev:ID}".
local function event_keys(tag)
  local k = { meta = tag .. ':meta', users = tag .. ':users', holds = tag .. ':holds',
              deadlines = tag .. ':deadlines', forget = tag .. ':forget',
              orders = tag .. ':orders', uorders = tag .. ':user-orders',
              buyers = tag .. ':buyers' }
  k.view = buyers(k)
  return k
end

-- The keys of an event as ticketd_decide gets them (ticketd_stock: the same without the
-- call key); guard is the meta key again (see "Versions" above).
local function keys_of(keys)
  local k = { meta = keys[1], users = keys[2], holds = keys[3], deadlines = keys[4],
              forget = keys[5], orders = keys[6], uorders = keys[7], guard = keys[8],
              buyers = keys[9], call = keys[10] }
  k.view = buyers(k)
  return k
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

-- ticketd_decide(meta users holds deadlines forget orders user-orders meta buyers call)
--   call_id node replay_ttl_ms n  then n × (kind user qty id)
--   kind: B buy, R reserve, C confirm (user/qty ignored, id = order id to use),
--         X cancel (id ignored). For R, id is the hold id; for B the order id; for C
--         and X the hold is named by `user` (the hold id).
-- -> the answers, as the top of this file says.
-- A call id seen before returns the first attempt's answers and changes nothing.
redis.register_function('ticketd_decide', function(keys, args)
  local wrong = version_error(keys, 10)
  if wrong then return wrong end
  local k = keys_of(keys)
  local replay = redis.call('GET', k.call)
  if replay then return replay end
  local m = meta(k.meta)
  local call, node, replay_ttl, n = args[1], args[2], tonumber(args[3]), tonumber(args[4])
  local event = string.match(k.meta, '^{ev:(%d+)}')
  local a = answers()
  if not m then
    for _ = 1, n do answer(a, 'N') end
    return reply(a)
  end
  local now = now_ms()
  sweep(k, m, now)
  -- Every buyer's entry with one HMGET, before any decision reads one. (A user twice in
  -- the batch is read twice: the same entry, before anything changed it.)
  local b, unread, nu = k.view, {}, 0
  local entries = b.entry
  for i = 1, n do
    local base = 4 + (i - 1) * 4
    local kind, user = args[base + 1], args[base + 2]
    if (kind == 'B' or kind == 'R') and entries[user] == nil then
      nu = nu + 1
      unread[nu] = user
    end
  end
  load(b, unread)
  local made = outbox()
  local expires = now + m.ttl
  local expires_text = tostring(expires)
  local codes, limit, total = a.codes, m.limit, m.total
  for i = 1, n do
    local base = 4 + (i - 1) * 4
    local kind, user, qty_text, id = args[base + 1], args[base + 2], args[base + 3], args[base + 4]
    if kind == 'B' then
      -- The selling path, written out: no call, and for a new buyer's one-ticket sale
      -- no string made.
      local qty = 1
      if qty_text ~= '1' then qty = tonumber(qty_text) end
      local entry = entries[user]
      if entry == nil then entry = entry_of(b, user) end
      local code = 'O'
      if (entry and has_in(entry) or 0) + qty > limit then
        code = 'L'
      elseif m.sold + m.held + qty > total then
        code = 'S'
      else
        m.sold = m.sold + qty
        local mn = made.n
        made[mn + 1], made[mn + 2], made[mn + 3], made[mn + 4], made[mn + 5], made[mn + 6] =
          id, ':', user, ':', qty_text, ','
        made.n = mn + 6
        if not entry and qty == 1 then entries[user] = id else add_order(b, user, id, qty_text) end
      end
      a.n = a.n + 1
      codes[a.n] = code
    elseif kind == 'R' then
      local qty = tonumber(qty_text)
      local no = refusal(k, m, user, qty)
      if no then
        answer(a, no)
      else
        m.held = m.held + qty
        hold_more(b, user, qty)
        redis.call('HSET', k.holds, id, format_hold({ user = user, qty = qty,
                   expires = expires, state = 'A', order = '0' }))
        redis.call('ZADD', k.deadlines, expires, id)
        redis.call('HSET', HOLD_INDEX, id, event)
        answer(a, 'O', expires_text)
      end
    else
      settle(k, m, event, kind, user, id, made, now, a)
    end
  end
  save(b)
  publish(k, made, node, call)
  redis.call('HSET', k.meta, 'sold', m.sold, 'held', m.held)
  local text = reply(a)
  redis.call('SET', k.call, text, 'PX', replay_ttl)
  return text
end)

-- ticketd_orders(meta buyers user-orders) user -> {1, "order,…"} ({1, ""} for none;
-- each order "order_id" or "order_id:qty"), or {0} when the event does not exist:
-- ORDERS, read from the global ledger (a list an earlier version kept in user-orders
-- first).
redis.register_function('ticketd_orders', function(keys, args)
  local wrong = version_error(keys, 3)
  if wrong then return wrong end
  if redis.call('EXISTS', keys[1]) == 0 then return { 0 } end
  local lists = {}
  local before = redis.call('HGET', keys[3], args[1])
  if before and before ~= '' then lists[#lists + 1] = before end
  local entry = redis.call('HGET', keys[2], args[1])
  if entry then
    local list = string.match(entry, '^%d+|(.*)$') or entry
    if list ~= '' then lists[#lists + 1] = list end
  end
  return { 1, table.concat(lists, ',') }
end)

-- ticketd_stock(meta users holds deadlines forget orders user-orders meta buyers) ->
-- {total, remaining, held}, after expiring due holds; {-1, -1, -1} when the event does
-- not exist. Nothing remaining and nothing held means sold out for good: only holds ever
-- give tickets back.
redis.register_function('ticketd_stock', function(keys, args)
  local wrong = version_error(keys, 9)
  if wrong then return wrong end
  local k = keys_of(keys)
  local m = meta(k.meta)
  if not m then return { -1, -1, -1 } end
  sweep(k, m, now_ms())
  save(k.view)
  redis.call('HSET', k.meta, 'held', m.held)
  return { m.total, m.total - m.sold - m.held, m.held }
end)

-- ticketd_settle(ticketd:layout call) call_id node replay_ttl_ms n  then n × (kind hold_id order_id)
--   kind: C confirm, X cancel. Each hold's event is found in the hold index, so the
--   caller needs to know only the hold id. Answers like ticketd_decide; replays alike.
redis.register_function('ticketd_settle', function(keys, args)
  local wrong = version_error(keys, 2)
  if wrong then return wrong end
  local replay = redis.call('GET', keys[2])
  if replay then return replay end
  local call, node, replay_ttl, n = args[1], args[2], tonumber(args[3]), tonumber(args[4])
  local now = now_ms()
  local touched = {}
  local a = answers()
  for i = 1, n do
    local base = 4 + (i - 1) * 3
    local kind, hold_id, order_id = args[base + 1], args[base + 2], args[base + 3]
    local event = redis.call('HGET', HOLD_INDEX, hold_id)
    if not event then
      answer(a, 'N')
    else
      local state = touched[event]
      if not state then
        local k = event_keys('{ev:' .. event .. '}')
        state = { k = k, m = meta(k.meta), made = outbox() }
        touched[event] = state
      end
      if not state.m then
        answer(a, 'N')
      else
        settle(state.k, state.m, event, kind, hold_id, order_id, state.made, now, a)
      end
    end
  end
  for _, state in pairs(touched) do
    if state.m then
      save(state.k.view)
      publish(state.k, state.made, node, call)
      redis.call('HSET', state.k.meta, 'sold', state.m.sold, 'held', state.m.held)
    end
  end
  local text = reply(a)
  redis.call('SET', keys[2], text, 'PX', replay_ttl)
  return text
end)

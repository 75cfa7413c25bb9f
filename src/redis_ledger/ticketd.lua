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
-- order id is the one the caller sent. Or, from a call that found one of its steps
-- unanswered (a bug here), "!" and why, with no decision in it (see `unanswered`).
--
-- Time is Redis's own clock (TIME), so every node agrees when a hold expires.
--
-- Versions. These answers and the buyers hash came with a new set of keys per call, and
-- each function checks it gets its count: a node of an earlier version (which sends
-- fewer) is refused before anything changes. ticketd_decide's compact steps (a letter
-- per step, see there) came with an eleventh key, the meta key once more: a library of
-- the ten-key layout refuses this version's ticketd_decide the same way (ticketd_settle
-- and ticketd_stock did not change then). The other way round, an earlier library
-- reads its replay key where this one's callers put a hash — the event's meta for
-- ticketd_decide, ticketd:layout (made by every node's handshake) for ticketd_settle —
-- so its first GET fails with WRONGTYPE, again before anything changes. Either way the
-- call fails and its requests answer UNAVAILABLE, which is true; no answer is misread.

-- hold_id -> event id, so CONFIRM/CANCEL can arrive at any node with only the hold id.
-- (Outside every event's hash slot: on a Redis Cluster, hold ids would have to carry
-- their event instead.)
local HOLD_INDEX = 'ticketd:hold-events'

-- ticketd_decide's steps (see there): the letters of their kinds, how many operands
-- each kind has, and where the first user is among the arguments (after call_id node
-- replay_ttl_ms n distinct kinds bought).
-- (Byte values: a library's top level may not use the string module while it loads.)
local KIND_BUY_ONE, KIND_BUY, KIND_RESERVE = 66, 98, 82  -- B b R
local KIND_CONFIRM, KIND_CANCEL = 67, 88                -- C X
-- OPERANDS: a step's operands after its user (B/b/R steps have one, in the users).
local OPERANDS = { [KIND_BUY_ONE] = 1, [KIND_BUY] = 2, [KIND_RESERVE] = 2, [KIND_CONFIRM] = 2,
                   [KIND_CANCEL] = 1 }
local FIRST_USER_AT = 8

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

-- Refuses a call with another number of keys than this library's callers send.
local function version_error(keys, wanted)
  if #keys == wanted then return nil end
  return redis.error_reply('ticketd: this ledger library wants ' .. wanted .. ' keys, got ' ..
    #keys .. ': a node of another ticketd version? Run one version on every node')
end

-- Buyers. A user's entry in {ev:ID}:buyers is "[held|]order,order,…": the tickets their
-- live holds keep (left out when none), then their orders, each "order_id" (one ticket)
-- or "order_id:qty". What they have — bought plus held — is what the per-user limit
-- judges. A first sale of one ticket writes the order id the caller sent as it is: a Lua
-- string made per sale (a join, or a number formatted with sprintf) costs about as much
-- as a hash lookup, so the selling path makes none.
--
-- The call's view of the entries. Every Lua table keyed by user costs an insert per
-- sale, so the view keeps as few as it can (ticketd_decide also has `at`, the entries
-- of its BUY/RESERVE steps' users when the call began, by position: `read_steps`):
--   b.entry[user]  the entry of a user changed during the call (false: none left);
--   b.named[user]  entries read by name, for users who are not a step's (a hold's
--                  owner when it is confirmed, cancelled or expires);
--   b.changed      the users of b.entry, each once, in the order they first changed;
--   b.pairs        user, entry, user, entry, …: entries ticketd_decide changed by
--                  position (see there), written as they are.
-- A step's user reads b.entry first, then `at`; anyone else b.entry, then b.named
-- (read if missing). `save` writes back each changed user with one HSET.
local function buyers(k)
  return { k = k, entry = {}, named = {}, changed = {}, nc = 0, pairs = {}, np = 0,
           moved = {}, legacy = nil }
end

-- Sets the user's entry for the rest of the call (and for `save`).
local function set_entry(b, user, entry)
  if b.entry[user] == nil then
    b.nc = b.nc + 1
    b.changed[b.nc] = user
  end
  b.entry[user] = entry
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

local function has_legacy(b)
  if b.legacy == nil then b.legacy = redis.call('EXISTS', b.k.users) == 1 end
  return b.legacy
end

-- Users of an event sold under the layout before buyers: their count (bought + held) in
-- users and their orders in user-orders. Such a user's entry is made from both and
-- counts as changed, so `save` moves it, and the old fields go then. `users`: users with
-- no buyers entry and none made yet this call.
local function from_legacy(b, users)
  if #users == 0 then return end
  local counts = redis.call('HMGET', b.k.users, unpack(users))
  local lists = redis.call('HMGET', b.k.uorders, unpack(users))
  for i, user in ipairs(users) do
    if counts[i] and b.entry[user] == nil then
      local list = lists[i] or ''
      set_entry(b, user, join(tonumber(counts[i]) - has_in(list ~= '' and list), list))
      b.moved[#b.moved + 1] = user
    end
  end
end

-- The entries of the users args[first..last] (the call's step users), by position:
-- the HMGET's own reply when one is enough.
local function read_steps(b, args, first, last)
  if last < first then return {} end
  local at = redis.call('HMGET', b.k.buyers, unpack(args, first, math.min(last, first + CHUNK - 1)))
  for from = first + CHUNK, last, CHUNK do
    local more = redis.call('HMGET', b.k.buyers, unpack(args, from, math.min(last, from + CHUNK - 1)))
    local at_n = from - first
    for i = 1, #more do at[at_n + i] = more[i] end
  end
  if has_legacy(b) then
    local missing, nm = {}, 0
    for i = 1, last - first + 1 do
      if not at[i] then
        nm = nm + 1
        missing[nm] = args[first + i - 1]
      end
    end
    from_legacy(b, missing)
  end
  return at
end

-- Reads one user's entry by name into b.named.
local function read_named(b, user)
  local entry = redis.call('HGET', b.k.buyers, user)
  b.named[user] = entry
  if not entry and has_legacy(b) then from_legacy(b, { user }) end
end

-- The entry of a user who is not one of the call's BUY/RESERVE steps (or whose step is
-- not at hand), read by name if the call has not yet.
local function entry_of(b, user)
  local entry = b.entry[user]
  if entry ~= nil then return entry end
  entry = b.named[user]
  if entry == nil then
    read_named(b, user)
    entry = b.entry[user]
    if entry == nil then entry = b.named[user] end
  end
  return entry
end

-- An entry with qty more tickets held (fewer, for a negative qty).
local function with_held(entry, qty)
  local held, list = split(entry)
  return join(held + qty, list)
end

-- Changes the tickets a user holds, by name (a hold's owner: see entry_of).
local function hold_more(b, user, qty)
  set_entry(b, user, with_held(entry_of(b, user), qty))
end

-- An entry with one more order (qty_text: its tickets as text).
local function with_order(entry, id, qty_text)
  local order = id
  if qty_text ~= '1' then order = id .. ':' .. qty_text end
  local held, list = split(entry)
  if list ~= '' then list = list .. ',' .. order else list = order end
  return join(held, list)
end

-- Writes back the changed entries: HSET of those left (after b.pairs: no user is in
-- both), HDEL of those gone, and HDEL of the old-layout fields of users moved from there.
local function save(b)
  local set, ns, gone, ng = b.pairs, b.np, {}, 0
  local entry_of_user, changed = b.entry, b.changed
  for i = 1, b.nc do
    local user = changed[i]
    local entry = entry_of_user[user]
    if entry then
      set[ns + 1], set[ns + 2], ns = user, entry, ns + 2
    else
      ng = ng + 1
      gone[ng] = user
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

-- Redis cannot undo a call's writes when a command in it fails, so a key of the wrong
-- type (someone else wrote it) must fail the call before its first write. Most keys are
-- read before they are written; those a call may write first are checked up front: the
-- outbox stream (XADD at the end), the hold index (HSET for a RESERVE, HDEL when the
-- sweep forgets a hold), in ticketd_settle, which runs no sweep, the deadlines and
-- forget sets, and where a call ends or settles holds, what that touches after its first
-- write (`holds_wrong_type`). `checks`: key, type, key, type, …; nil when each is of its
-- type or absent, else the error to return.
local function wrong_type(...)
  local checks = { ... }
  for i = 1, #checks, 2 do
    local key, want = checks[i], checks[i + 1]
    local found = redis.call('TYPE', key)
    found = found.ok or found
    if found ~= want and found ~= 'none' then
      return redis.error_reply('ticketd: ' .. key .. ' is a ' .. tostring(found) .. ', not a ' ..
        want .. ': nothing was changed (a key of the ledger was written by someone else?)')
    end
  end
  return nil
end

-- Ending or settling a hold writes its record, the deadlines and the forget set, then
-- reads its owner's entry (in the buyers hash, or the layout before it): so a call that
-- will end or settle holds checks those first. Only such calls pay for it (the rush's
-- calls end none).
local function holds_wrong_type(k)
  return wrong_type(k.forget, 'zset', k.buyers, 'hash', k.users, 'hash', k.uorders, 'hash')
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
-- Returns the error to return instead when a key it would touch after its first write is
-- of another type (then it has changed nothing); `checked`: the caller has already made
-- `holds_wrong_type`'s checks.
local function sweep(k, m, now, checked)
  local due = redis.call('ZRANGEBYSCORE', k.deadlines, '-inf', now)
  if #due > 0 and not checked then
    local bad = holds_wrong_type(k)
    if bad then return bad end
  end
  for _, id in ipairs(due) do
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

-- One order's pieces ("order_id:user:qty,") put into `made` after its piece `mn`;
-- returns the pieces' count then.
local function piece(made, mn, id, user, qty_text)
  made[mn + 1], made[mn + 2], made[mn + 3], made[mn + 4], made[mn + 5], made[mn + 6] =
    id, ':', user, ':', qty_text, ','
  return mn + 6
end

-- The call's orders of an event, for its one outbox entry (`publish`): pieces of
-- "order_id:user:qty,…", joined once at the end, so no string is made per sale.
local function order(k, id, user, qty_text, made)
  made.n = piece(made, made.n, id, user, qty_text)
  set_entry(k.view, user, with_order(entry_of(k.view, user), id, qty_text))
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

-- The outbox pieces of ticketd_decide's B/b steps before step `upto` (every one of which
-- sold; `nu` users in the call) into `made` from its piece `mn` on; returns the pieces'
-- count then.
local function bought_pieces(args, kinds, nu, upto, made, mn)
  local u, p = FIRST_USER_AT, FIRST_USER_AT + nu
  for i = 1, upto - 1 do
    local kind = string.byte(kinds, i)
    if kind == KIND_BUY_ONE then
      mn = piece(made, mn, args[p], args[u], '1')
    elseif kind == KIND_BUY then
      mn = piece(made, mn, args[p + 1], args[u], args[p])
    end
    if kind == KIND_BUY_ONE or kind == KIND_BUY or kind == KIND_RESERVE then u = u + 1 end
    p = p + OPERANDS[kind]
  end
  return mn
end

-- A call's answers (see the top of this file): codes[i] a letter per step, extras what
-- OK steps carry. The selling path writes no code for a BUY that sold (a store per sale,
-- and a piece of the join): a step without one is 'O'.
local function answers(n)
  return { codes = {}, n = n, extras = {}, ne = 0, sold_buys = 0 }
end

local function answer(a, i, code, extra)
  a.codes[i] = code
  if extra then
    a.ne = a.ne + 1
    a.extras[a.ne] = extra
  end
end

-- Returns nil when the steps without a code are not exactly the BUYs that sold
-- (a.sold_buys): a path that forgot its answer must not become an OK.
local function reply(a)
  local codes, text, uncoded = a.codes, nil, 0
  if next(codes) == nil then
    text, uncoded = string.rep('O', a.n), a.n
  else
    for i = 1, a.n do
      if not codes[i] then
        codes[i] = 'O'
        uncoded = uncoded + 1
      end
    end
    text = table.concat(codes, '', 1, a.n)
  end
  if uncoded ~= a.sold_buys then return nil end
  if a.ne > 0 then text = text .. ' ' .. table.concat(a.extras, ' ', 1, a.ne) end
  return text
end

-- What a call answers when `reply` found a step unanswered: a bug in this library. By
-- then the call may have written holds and ended others (Redis undoes nothing), so it
-- does not stop there: it keeps its changes whole — every hold written is counted in
-- `held`, every sale in `sold`, the outbox and the buyers' entries — and answers this
-- text, which no node can read as decisions ('!' is no step's letter). The node then
-- answers none of the call's requests (their connections close), since neither OK nor
-- "nothing happened" would be known true; a replay of the call answers the same.
local function unanswered(a)
  return '!ticketd: ' .. a.n .. ' steps, ' .. a.sold_buys .. ' BUYs sold, and the steps ' ..
    'without an answer are not those: a bug in the ledger library; its changes are kept'
end

-- Whether qty more tickets for a user who has `entry` and the stock allow it: nil when
-- both do, or the refusal's code. The limit is judged before the stock.
local function refusal(m, entry, qty)
  if has_in(entry) + qty > m.limit then return 'L' end
  if m.sold + m.held + qty > m.total then return 'S' end
  return nil
end

-- CONFIRM (kind C, order_id used if it becomes an order) or CANCEL (kind X) of a hold
-- of event `event`. A CANCEL answers the event and the tickets it put back on sale (0 on
-- a repeat), so the node that settled it can let its gate sell them at once.
local function settle(k, m, event, kind, hold_id, order_id, made, now, a, i)
  local h = parse_hold(redis.call('HGET', k.holds, hold_id))
  if h and h.state == 'A' and h.expires <= now then
    release(k, m, hold_id, h, 'E', now)
  end
  if not h then return answer(a, i, 'N') end
  if h.state == 'E' then return answer(a, i, 'E') end
  if kind == 'C' then
    if h.state == 'C' then return answer(a, i, 'O', h.order) end
    if h.state == 'X' then return answer(a, i, 'N') end
    m.held = m.held - h.qty
    m.sold = m.sold + h.qty
    h.state, h.order = 'C', order_id
    redis.call('HSET', k.holds, hold_id, format_hold(h))
    redis.call('ZREM', k.deadlines, hold_id)
    redis.call('ZADD', k.forget, now + m.ttl, hold_id)
    hold_more(k.view, h.user, -h.qty)
    order(k, order_id, h.user, tostring(h.qty), made)
    return answer(a, i, 'O', order_id)
  end
  if h.state == 'X' then return answer(a, i, 'O', event .. ':0') end
  if h.state == 'C' then return answer(a, i, 'N') end
  release(k, m, hold_id, h, 'X', now)
  return answer(a, i, 'O', event .. ':' .. h.qty)
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
-- last two); guard and guard_distinct are the meta key again (see "Versions" above).
local function keys_of(keys)
  local k = { meta = keys[1], users = keys[2], holds = keys[3], deadlines = keys[4],
              forget = keys[5], orders = keys[6], uorders = keys[7], guard = keys[8],
              buyers = keys[9], call = keys[10], guard_distinct = keys[11] }
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

-- ticketd_decide(meta users holds deadlines forget orders user-orders meta buyers call meta)
--   call_id node replay_ttl_ms n distinct kinds bought  users…  operands…
--   kinds: a letter per step, in order, saying what it is and its operands:
--     B  buy one ticket        user | order_id
--     b  buy qty tickets       user | qty order_id
--     R  reserve               user | qty hold_id
--     C  confirm               hold_id order_id (the order id to use)
--     X  cancel                hold_id
--   distinct: 'D' when no user is in two B/b/R steps of the call (the caller checked),
--     '-' otherwise.
--   bought: the outbox text of the call's B/b steps, "order_id:user:qty,…" in step order:
--     published as it is when every one of them sells (see below).
--   users: the users of the B/b/R steps, in step order; then the other operands (after
--     the bar above) of every step, in step order.
-- -> the answers, as the top of this file says; a call whose kinds and arguments do not
--    agree is refused before anything changes.
-- A call id seen before returns the first attempt's answers and changes nothing.
--
-- The common call is a batch of BUYs of one ticket by different users, and Redis's
-- time per sale is what this layout and the code below save: every argument is a
-- string Redis makes twice (its own, then Lua's), so a one-ticket BUY is two; the users
-- side by side are the one HMGET's arguments as they come; a Lua table keyed by user
-- costs an insert per sale, so a distinct batch with no CONFIRM or CANCEL step (its
-- users cannot change twice, nor be read by name) is decided by position, each sale's
-- new entry going straight into the call's HSET list; and when every BUY sells, the
-- outbox entry is the caller's `bought` text, so no piece of it is made per sale. Users
-- the call changed by name before the loop (holds the sweep expired, entries moved from
-- the old layout) still go through b.entry.
redis.register_function('ticketd_decide', function(keys, args)
  local wrong = version_error(keys, 11)
  if wrong then return wrong end
  local k = keys_of(keys)
  local replay = redis.call('GET', k.call)
  if replay then return replay end
  local call, node, replay_ttl, n = args[1], args[2], tonumber(args[3]), tonumber(args[4])
  local distinct, kinds, bought = args[5] == 'D', args[6], args[7]
  -- The kinds must name every step, and the arguments hold exactly their operands.
  -- (A step has at least one argument, so a count above #args is no count: and it must
  -- be checked before string.rep makes a string that long.)
  if not n or n < 0 or n ~= math.floor(n) or n > #args then
    return redis.error_reply('ticketd: the step count ' .. tostring(args[4]) ..
      ' is not a count of the call\'s steps')
  end
  local nu, operands, settles = 0, 0, false
  local all_one_buys = kinds == string.rep('B', n)
  if all_one_buys then
    nu, operands = n, n
  else
    for i = 1, n do
      local kind = type(kinds) == 'string' and string.byte(kinds, i)
      local more = OPERANDS[kind]
      if not more then
        return redis.error_reply('ticketd: step ' .. i .. ' of ' .. n .. ' has no kind ' ..
          'this library knows (kinds ' .. tostring(kinds) .. ')')
      end
      if kind == KIND_BUY_ONE or kind == KIND_BUY or kind == KIND_RESERVE then
        nu = nu + 1
      else
        settles = true
      end
      operands = operands + more
    end
  end
  local users_at = FIRST_USER_AT
  local p = users_at + nu
  if p + operands - 1 ~= #args then
    return redis.error_reply('ticketd: ' .. n .. ' steps of kinds ' .. tostring(kinds) .. ' have ' ..
      (nu + operands) .. ' operands, the call sent ' .. (#args - users_at + 1))
  end
  -- And every quantity a count of tickets, so no step fails half-way through the call.
  -- (The common call has none: its BUYs are of one ticket.)
  if not all_one_buys then
    local q = p
    for i = 1, n do
      local kind = string.byte(kinds, i)
      if kind == KIND_BUY or kind == KIND_RESERVE then
        local qty = tonumber(args[q])
        if not qty or qty < 1 or qty ~= math.floor(qty) then
          return redis.error_reply('ticketd: step ' .. i .. ' asks for ' .. tostring(args[q]) ..
            ' tickets, not a count of tickets')
        end
      end
      q = q + OPERANDS[kind]
    end
  end
  local bad = wrong_type(k.orders, 'stream', HOLD_INDEX, 'hash')
  if not bad and settles then bad = holds_wrong_type(k) end
  if bad then return bad end
  local m = meta(k.meta)
  local event = string.match(k.meta, '^{ev:(%d+)}')
  local a = answers(n)
  if not m then
    for i = 1, n do answer(a, i, 'N') end
    return reply(a) or unanswered(a)
  end
  local now = now_ms()
  bad = sweep(k, m, now, settles)
  if bad then return bad end
  -- Every B/b/R step's entry with one HMGET, before any decision reads one.
  local b = k.view
  local at = read_steps(b, args, users_at, p - 1)
  local by_position = distinct and not settles
  local changed_entry, pairs_out, np = b.entry, b.pairs, b.np
  local made = outbox()
  -- Outbox pieces are made per sale only once a BUY is refused or a CONFIRM may sell.
  local piecewise = settles
  local expires = now + m.ttl
  local expires_text = tostring(expires)
  local codes, limit, total = a.codes, m.limit, m.total
  -- The selling path's counters as locals (a table field costs a lookup per use), put
  -- back into m, made and a around anything else that reads or changes them.
  local sold, taken, mn, sold_buys = m.sold, m.sold + m.held, 0, 0
  local j, loop_from = 0, 1
  -- The rush's call, decided whole: one-ticket BUYs of distinct users, with stock for
  -- all of them. Every user up to the first with an entry is new (nobody's entry changed
  -- by name above either) and sells, so for them the loop below would only pair each
  -- user with their order id for the HSET: done here, without the per-step decisions.
  -- The loop decides the rest, from the first user it must look at.
  if all_one_buys and by_position and b.nc == 0 and limit >= 1 and taken + n <= total then
    local new_users = n
    for i = 1, n do
      if at[i] then
        new_users = i - 1
        break
      end
    end
    local u0, p0 = users_at - 1, p - 1
    for i = 1, new_users do
      pairs_out[np + 1], pairs_out[np + 2], np = args[u0 + i], args[p0 + i], np + 2
    end
    sold, taken, sold_buys = sold + new_users, taken + new_users, new_users
    j, p, loop_from = new_users, p + new_users, new_users + 1
  end
  for i = loop_from, n do
    local kind = KIND_BUY_ONE
    if not all_one_buys then kind = string.byte(kinds, i) end
    if kind == KIND_BUY_ONE or kind == KIND_BUY then
      -- No call, and for a new buyer's one-ticket sale no string made.
      j = j + 1
      local user, qty_text, id, qty = args[users_at + j - 1], '1', args[p], 1
      if kind == KIND_BUY then
        qty_text, id = args[p], args[p + 1]
        qty = tonumber(qty_text)
      end
      local entry = changed_entry[user]
      local positional = entry == nil and by_position
      if entry == nil then entry = at[j] end
      local code = 'O'
      if (entry and has_in(entry) or 0) + qty > limit then
        code = 'L'
      elseif taken + qty > total then
        code = 'S'
      end
      if code == 'O' then
        sold, taken, sold_buys = sold + qty, taken + qty, sold_buys + 1
        if piecewise then mn = piece(made, mn, id, user, qty_text) end
        local now_entry = id
        if entry or qty ~= 1 then now_entry = with_order(entry, id, qty_text) end
        if positional then
          pairs_out[np + 1], pairs_out[np + 2], np = user, now_entry, np + 2
        else
          set_entry(b, user, now_entry)
        end
      else
        codes[i] = code
        if not piecewise then
          piecewise = true
          mn = bought_pieces(args, kinds, nu, i, made, mn)
        end
      end
      p = p + OPERANDS[kind]
    else
      m.sold, made.n = sold, mn
      if kind == KIND_RESERVE then
        j = j + 1
        local user, qty, id = args[users_at + j - 1], tonumber(args[p]), args[p + 1]
        local entry = changed_entry[user]
        local positional = entry == nil and by_position
        if entry == nil then entry = at[j] end
        local no = refusal(m, entry, qty)
        if no then
          answer(a, i, no)
        else
          m.held = m.held + qty
          local now_entry = with_held(entry, qty)
          if positional then
            pairs_out[np + 1], pairs_out[np + 2], np = user, now_entry, np + 2
          else
            set_entry(b, user, now_entry)
          end
          redis.call('HSET', k.holds, id, format_hold({ user = user, qty = qty,
                     expires = expires, state = 'A', order = '0' }))
          redis.call('ZADD', k.deadlines, expires, id)
          redis.call('HSET', HOLD_INDEX, id, event)
          answer(a, i, 'O', expires_text)
        end
      elseif kind == KIND_CONFIRM then
        settle(k, m, event, 'C', args[p], args[p + 1], made, now, a, i)
      else
        settle(k, m, event, 'X', args[p], nil, made, now, a, i)
      end
      sold, taken, mn = m.sold, m.sold + m.held, made.n
      p = p + OPERANDS[kind]
    end
  end
  m.sold, made.n, b.np, a.n, a.sold_buys = sold, mn, np, n, sold_buys
  local text = reply(a) or unanswered(a)
  save(b)
  if piecewise then
    publish(k, made, node, call)
  elseif bought ~= '' then
    redis.call('XADD', k.orders, '*', 'node', node, 'call', call, 'orders', bought)
  end
  redis.call('HSET', k.meta, 'sold', m.sold, 'held', m.held)
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
  local bad = wrong_type(HOLD_INDEX, 'hash')
  if bad then return bad end
  local m = meta(k.meta)
  if not m then return { -1, -1, -1 } end
  bad = sweep(k, m, now_ms(), false)
  if bad then return bad end
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
  local a = answers(n)
  -- Each step's event, and each event's state and outbox checked, before any write: a
  -- call over several events must not fail in its second after changing its first.
  local states = {}
  for i = 1, n do
    local hold_id = args[4 + (i - 1) * 3 + 2]
    local event = redis.call('HGET', HOLD_INDEX, hold_id)
    if event then
      local state = touched[event]
      if not state then
        local k = event_keys('{ev:' .. event .. '}')
        local bad = wrong_type(k.orders, 'stream', k.deadlines, 'zset') or holds_wrong_type(k)
        if bad then return bad end
        state = { k = k, m = meta(k.meta), made = outbox(), event = event }
        touched[event] = state
      end
      states[i] = state
    end
  end
  for i = 1, n do
    local base = 4 + (i - 1) * 3
    local kind, hold_id, order_id = args[base + 1], args[base + 2], args[base + 3]
    local state = states[i]
    if not state or not state.m then
      answer(a, i, 'N')
    else
      settle(state.k, state.m, state.event, kind, hold_id, order_id, state.made, now, a, i)
    end
  end
  local text = reply(a) or unanswered(a)
  for _, state in pairs(touched) do
    if state.m then
      save(state.k.view)
      publish(state.k, state.made, node, call)
      redis.call('HSET', state.k.meta, 'sold', state.m.sold, 'held', state.m.held)
    end
  end
  redis.call('SET', keys[2], text, 'PX', replay_ttl)
  return text
end)

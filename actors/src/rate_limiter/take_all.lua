-- Token buckets for POST /events, all-or-nothing across KEYS. This is the algorithm of
-- actors/src/token_bucket.rs (its module docs), step by step; the integration test
-- actors/tests/rate_limit_script.rs checks that both compute the same thing.
--
-- KEYS[i]   one bucket: a hash with fields t (tokens) and u (updated_at, Unix ms).
-- ARGV[1]   now in Unix ms, or "" to read Redis's own clock (TIME), so that every replica
--           charges on one clock. Tests pass an explicit time.
-- ARGV[3i-1], ARGV[3i], ARGV[3i+1]   rate (tokens/s), burst and cost of KEYS[i].
--
-- Returns {now_ms, allowed (1 or 0), tokens_1, updated_1, tokens_2, updated_2, ...}: each
-- bucket refilled to now and *before* any charge (tokens as "%.17g" text, since Redis
-- truncates Lua numbers to integers). The caller reruns the same arithmetic on these
-- states to report the decision; here we only decide and store.
local EPS = 1e-9

local now = tonumber(ARGV[1])
if not now then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

local function finite(x)
  return x ~= nil and x == x and x ~= math.huge and x ~= -math.huge
end

local n = #KEYS
local rates, bursts, costs, tokens, updated = {}, {}, {}, {}, {}
local allowed = true

for i = 1, n do
  local rate = tonumber(ARGV[3 * i - 1])
  local burst = tonumber(ARGV[3 * i])
  -- Step 1: a negative or non-finite cost is taken as 0.
  local cost = tonumber(ARGV[3 * i + 1])
  if not finite(cost) or cost < 0 then
    cost = 0
  end
  -- Step 2: refill. A missing bucket, or one whose fields are not numbers, is full.
  local stored = redis.call('HMGET', KEYS[i], 't', 'u')
  local t, u = tonumber(stored[1]), tonumber(stored[2])
  if t == nil or u == nil or u ~= u then
    t, u = burst, now
  else
    if not finite(t) then
      t = 0
    end
    local elapsed = math.max(0, now - u)
    t = math.min(burst, math.max(0, t) + elapsed * rate / 1000)
    u = math.max(u, now)
  end
  rates[i], bursts[i], costs[i], tokens[i], updated[i] = rate, burst, cost, t, u
  -- Step 3: decide.
  if not (cost <= t + EPS) then
    allowed = false
  end
end

local reply = {now, allowed and 1 or 0}
for i = 1, n do
  reply[2 * i + 1] = string.format('%.17g', tokens[i])
  reply[2 * i + 2] = updated[i]
end

-- Step 5: store, only when allowed. A denied request charges nothing, and storing the
-- refilled state is equivalent to not storing it (refilling is linear and capped), so a
-- flood of denials costs Redis no writes. A key expires once its bucket would be full
-- again (ceil(burst / rate) + 1 seconds), which is exactly what a missing key means.
if allowed then
  for i = 1, n do
    local left = math.max(0, tokens[i] - costs[i])
    redis.call('HSET', KEYS[i], 't', string.format('%.17g', left),
      'u', string.format('%.17g', updated[i]))
    -- Capped at a year so that an absurd configured rate cannot overflow EXPIRE.
    local ttl = math.min(math.ceil(bursts[i] / rates[i]) + 1, 31536000)
    redis.call('EXPIRE', KEYS[i], string.format('%d', ttl))
  end
end

return reply

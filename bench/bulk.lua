-- wrk script of python -m bench.bulk: POST a batch of messages to the
-- EMQX-compatible /api/v5/publish/bulk, every message with its own payload, so
-- that a subscriber can tell lost and duplicated messages apart.
--
--   wrk -t1 -c8 -d10s --latency -s bench/bulk.lua "http://127.0.0.1:8080/api/v5/publish/bulk" -- batch=100
--
-- Arguments after the URL (after "--"):
--   batch=N   messages per request (default 100)
--
-- A message: {"topic": "bench/load", "qos": 1, "payload": "<thread>:<request>:<item>"}.
-- At the end it prints "bench-sent: N", the number of requests written.

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local threads = {}
local next_id = 0
local batch = 100

function setup(thread)
   next_id = next_id + 1
   thread:set("id", next_id)
   thread:set("sent", 0)
   table.insert(threads, thread)
end

function init(args)
   sent = 0
   for i = 1, #args do
      local arg = args[i]
      if arg:sub(1, 6) == "batch=" then
         batch = tonumber(arg:sub(7))
      else
         error("bulk.lua: unknown argument " .. arg)
      end
   end
end

function request()
   sent = sent + 1
   local items = {}
   for i = 1, batch do
      items[i] = string.format(
         '{"topic":"bench/load","qos":1,"payload":"%03d:%012d:%05d"}', id, sent, i
      )
   end
   return wrk.format(nil, nil, nil, "[" .. table.concat(items, ",") .. "]")
end

function done(summary, latency, requests)
   local total = 0
   for _, thread in ipairs(threads) do
      total = total + thread:get("sent")
   end
   io.write(string.format("bench-sent: %d\n", total - 1))
end

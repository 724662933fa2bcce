-- wrk script of python -m bench: POST a 64-byte body, distinct for every request,
-- so that a subscriber can tell lost and duplicated messages apart.
--
--   wrk -t1 -c32 -d10s --latency -s bench/post.lua "http://127.0.0.1:8080/topics/bench/load?qos=1"
--   wrk ... -s bench/post.lua "https://..." -- basic=YmVuY2g6cGFzc3dvcmQ= http1.0
--
-- Arguments after the URL (after "--"):
--   basic=BASE64  send "Authorization: Basic BASE64" with every request
--   http1.0       send HTTP/1.0 requests: the server closes the connection after
--                 every response and wrk opens a new one (over https a new TLS
--                 handshake, which wrk's OpenSSL resumes when it can)
--
-- Body: "<thread, 3 digits>:<request number in that thread, 60 digits>".
-- At the end it prints "bench-sent: N", the number of requests written (wrk
-- generates each request just before it writes it), next to wrk's count of the
-- responses received; the difference is what was in flight when wrk stopped.
-- wrk calls request() once more, on the first thread before it starts, only to
-- check the request (script_verify_request in wrk.c); that body is never sent,
-- so it is not counted.

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/octet-stream"

local threads = {}
local next_id = 0
local http10 = false

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
      if arg == "http1.0" then
         http10 = true
      elseif arg:sub(1, 6) == "basic=" then
         wrk.headers["Authorization"] = "Basic " .. arg:sub(7)
      else
         error("post.lua: unknown argument " .. arg)
      end
   end
end

function request()
   sent = sent + 1
   local r = wrk.format(nil, nil, nil, string.format("%03d:%060d", id, sent))
   if http10 then
      r = (r:gsub(" HTTP/1%.1\r\n", " HTTP/1.0\r\n", 1))
   end
   return r
end

function done(summary, latency, requests)
   local total = 0
   for _, thread in ipairs(threads) do
      total = total + thread:get("sent")
   end
   io.write(string.format("bench-sent: %d\n", total - 1))
end

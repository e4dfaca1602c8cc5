-- wrk script for bench/serve.py: POST one fixed body (a multipart/form-data upload written
-- by bench/serve.py) on every request, and print the results as one JSON line at the end.
--
--   wrk -t1 -c32 -d10s --latency --timeout 30s -s bench/wrk/multipart.lua URL -- BODY_FILE CTYPE
--
-- BODY_FILE: the request body, byte for byte; CTYPE: its Content-Type header (with the
-- multipart boundary). done() prints a line starting with "WRK_JSON " and then a JSON object:
-- requests, duration_s, bytes, errors {connect, read, write, status, timeout} (status: the
-- responses that were not 2xx/3xx) and latency_ms {mean, stdev, max, p50, p90, p95, p99}.

function init(args)
   local path, ctype = args[1], args[2]
   if path == nil or ctype == nil then
      error("usage: wrk ... -s multipart.lua URL -- BODY_FILE CONTENT_TYPE")
   end
   local f = assert(io.open(path, "rb"))
   local body = f:read("*a")
   f:close()
   wrk.method = "POST"
   wrk.body = body
   wrk.headers["Content-Type"] = ctype
   -- wrk computes Content-Length itself from wrk.body.
end

function done(summary, latency, requests)
   local function ms(us) return us / 1000.0 end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_s": %.6f, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_ms": {"mean": %.3f, "stdev": %.3f, "max": %.3f, "p50": %.3f, "p90": %.3f, ' ..
      '"p95": %.3f, "p99": %.3f}}\n',
      summary.requests, summary.duration / 1e6, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      ms(latency.mean), ms(latency.stdev), ms(latency.max),
      ms(latency:percentile(50)), ms(latency:percentile(90)),
      ms(latency:percentile(95)), ms(latency:percentile(99))))
end

-- wrk script for bench/compare.py's paced mode: each connection waits
-- SQUALL_BENCH_PACE_MS milliseconds before each request, so that every
-- server is offered about the same request rate. wrk leaves the wait out
-- of the latency it records.
local pace = tonumber(os.getenv("SQUALL_BENCH_PACE_MS") or "6")

function delay()
   return pace
end

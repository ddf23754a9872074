-- One wrk script for every scenario, set by environment variables:
--   BENCH_AUTH    Authorization header value (unset: none)
--   BENCH_UPLOAD  bytes of request body to POST (unset: GET)
--   BENCH_LOGIN   "1": POST a login form with a wrong password; "ok": with
--                 the right one (every request a full login, a token stored)
--   BENCH_TOKENS  a file of tokens, one a line: each request takes the
--                 next one, round-robin (`Authorization: Token ...`)
-- It ends with one machine-readable line for bench/run.sh.
local auth = os.getenv("BENCH_AUTH")
local upload = tonumber(os.getenv("BENCH_UPLOAD") or "")
if auth and auth ~= "" then
    wrk.headers["Authorization"] = auth
end
if upload then
    wrk.method = "POST"
    wrk.body = string.rep("x", upload)
    wrk.headers["Content-Type"] = "application/octet-stream"
end
local login = os.getenv("BENCH_LOGIN")
if login == "1" or login == "ok" then
    wrk.method = "POST"
    wrk.body = login == "ok" and "username=bench&password=bench%20password"
        or "username=bench&password=not-the-password"
    wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
end

local tokens = {}
local tokens_file = os.getenv("BENCH_TOKENS")
if tokens_file and tokens_file ~= "" then
    for line in io.lines(tokens_file) do
        if line ~= "" then
            tokens[#tokens + 1] = "Token " .. line
        end
    end
end
local next_token = 0

if #tokens > 0 then
    function request()
        next_token = next_token % #tokens + 1
        wrk.headers["Authorization"] = tokens[next_token]
        return wrk.format()
    end
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "RESULT requests=%d duration_us=%d bytes=%d p50_us=%d p99_us=%d errors=%d non2xx=%d\n",
        summary.requests, summary.duration, summary.bytes,
        latency:percentile(50), latency:percentile(99),
        e.connect + e.read + e.write + e.timeout, e.status))
end

#!/usr/bin/env bash
# Instructions per request on tokengate's hot paths, counted by valgrind's
# callgrind: stable on a busy machine, unlike timings.
#
#   bench/profile.sh [SECONDS]     (default 20 per path)
#
# Runs the release build (with line tables, in target/profiling) under
# callgrind behind an nginx upstream, warms it up, then counts the
# instructions of SECONDS each of authenticated proxied requests (`auth`),
# requests without a token (`noauth`, the 401 path) and authenticated 1 KiB
# uploads (`upload`), 10 connections. Prints instructions per request and the
# top functions of each path; the callgrind files stay in the printed
# directory for callgrind_annotate.
set -euo pipefail

SECONDS_PER_PATH=${1:-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
BASE=${BENCH_PORT_BASE:-18100}
UP_PORT=$BASE TG_PORT=$((BASE + 2))

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v valgrind >/dev/null || missing+=(valgrind)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

echo "building tokengate (release, line tables) in target/profiling" >&2
(cd "$ROOT" && CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_TARGET_DIR=$ROOT/target/profiling \
    cargo build --release --quiet --bin tokengate)
TG=$ROOT/target/profiling/release/tokengate

DIR=$(mktemp -d /tmp/tokengate-profile.XXXXXX)
chmod 755 "$DIR"
STARTED=()
cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

mkdir -p "$DIR/www"
head -c 1048576 /dev/urandom >"$DIR/www/big"
sed -e "s|@DIR@|$DIR|g" -e "s|@UP_PORT@|$UP_PORT|g" "$BENCH/upstream.conf.in" >"$DIR/upstream.conf"
taskset -c "$LOAD_CPU" "$NGINX" -c "$DIR/upstream.conf" -p "$DIR" 2>>"$DIR/upstream.error.log" &
STARTED+=($!)
cat >"$DIR/tg.toml" <<EOF
[server]
listen = "127.0.0.1:$TG_PORT"
[upstream]
url = "http://127.0.0.1:$UP_PORT"
[store]
path = "store"
[log]
level = "info"
EOF
echo 'bench password' | "$TG" user add bench --password-stdin -c "$DIR/tg.toml" >/dev/null
TOKEN=$("$TG" token issue bench -c "$DIR/tg.toml" 2>/dev/null | tail -n 1)

taskset -c "$PROXY_CPU" valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$DIR/callgrind.%p" "$TG" serve -c "$DIR/tg.toml" 2>"$DIR/tg.log" &
STARTED+=($!)
PID=$!
for _ in $(seq 1 600); do
    curl -s -o /dev/null "http://127.0.0.1:$TG_PORT/" && break
    sleep 0.1
done
callgrind_control -i on "$PID" >/dev/null

count() { # NAME AUTH [PATH [UPLOAD_BYTES]]
    local name=$1 path=${3:-/small} out n ir file
    export BENCH_AUTH=$2 BENCH_UPLOAD=${4:-}
    taskset -c "$LOAD_CPU" wrk -t1 -c10 -d3s -s "$BENCH/wrk.lua" \
        "http://127.0.0.1:$TG_PORT$path" >/dev/null
    callgrind_control -z "$PID" >/dev/null
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c10 -d"$SECONDS_PER_PATH"s \
        -s "$BENCH/wrk.lua" "http://127.0.0.1:$TG_PORT$path" | grep '^RESULT')
    callgrind_control -d "$name" "$PID" >/dev/null
    n=$(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$out")
    file=$(ls -t "$DIR"/callgrind."$PID".* | head -n 1)
    mv "$file" "$DIR/$name.callgrind"
    ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$DIR/$name.callgrind")
    echo
    echo "== $name: $n requests, $((ir / n)) instructions per request"
    callgrind_annotate --inclusive=no "$DIR/$name.callgrind" 2>/dev/null |
        awk '/^-+$/ {d++} d >= 3 && NF' | sed -n '2,26p' | cut -c1-160
}
count auth "Token $TOKEN"
count noauth ""
count upload "Token $TOKEN" /upload 1024
echo
echo "callgrind files: $DIR/{auth,noauth,upload}.callgrind (callgrind_annotate --inclusive=yes FILE)"

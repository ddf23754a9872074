#!/usr/bin/env bash
# tokengate against nginx, in one run, on this machine.
#
#   bench/run.sh            full run (about 20 minutes)
#   bench/run.sh --quick    the same scenarios, shorter (about 5 minutes)
#
# Starts an nginx upstream, an nginx static-token gateway (the anchor, also
# over TLS with a certificate made for the run) and
# tokengate, pins the proxies to one core and the load generator plus the
# upstream to another, and runs every scenario against the upstream
# directly, the anchor and tokengate in interleaved rounds, so that drift
# from whatever else the machine does hits all three alike. Prints figures
# and ratios; nothing here passes or fails on timing.
#
# Load generators: wrk (HTTP/1.1, plain and TLS), h2load (HTTP/2 over TLS)
# and examples/handshakes.rs (a new TLS connection per request, full or
# resumed handshakes; wrk never resumes a session).
#
# Environment: BENCH_PROXY_CPU (0) and BENCH_LOAD_CPU (1) pick the cores,
# BENCH_PORT_BASE (18000) the first of seventeen ports, BENCH_KEEP=1 keeps the
# work directory (configs, logs, raw results), BENCH_ONLY a space-separated
# list of scenarios to run (token50 token200 noauth big upload flood store
# idle postgres tls h2 placed), BENCH_DURATION and BENCH_ROUNDS override the
# run lengths. The postgres scenario starts a PostgreSQL server of its own
# (.ci/postgres.sh, as root) and compares a gateway on it with one on sled.
# tls: keep-alive requests, new connections (full and resumed handshakes)
# and 1 MiB downloads, with an ECDSA P-256 and an RSA-2048 certificate; h2:
# HTTP/2 over TLS with 1 and 100 streams per connection; placed: the
# upstream on the proxies' core, as a sidecar API is deployed.
set -euo pipefail

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
BASE=${BENCH_PORT_BASE:-18000}
UP_PORT=$BASE ANCHOR_PORT=$((BASE + 1)) TG_PORT=$((BASE + 2))
TG_NT_PORT=$((BASE + 3)) TG_1K_PORT=$((BASE + 4)) TG_BIG_PORT=$((BASE + 5)) TG_IDLE_PORT=$((BASE + 6))
TG_PG_PORT=$((BASE + 7)) ANCHOR_TLS_PORT=$((BASE + 8)) TG_TLS_PORT=$((BASE + 9))
ANCHOR_RSA_PORT=$((BASE + 10)) ANCHOR_RSA_TLS_PORT=$((BASE + 11)) TG_RSA_PORT=$((BASE + 12))
UP_PLACED_PORT=$((BASE + 13)) ANCHOR_PLACED_PORT=$((BASE + 14)) ANCHOR_PLACED_TLS_PORT=$((BASE + 15))
TG_PLACED_PORT=$((BASE + 16))
if ((QUICK)); then
    DURATION=${BENCH_DURATION:-3} ROUNDS=${BENCH_ROUNDS:-2} BIG_TOKENS=100000
else
    DURATION=${BENCH_DURATION:-8} ROUNDS=${BENCH_ROUNDS:-3} BIG_TOKENS=1000000
fi
ONLY=${BENCH_ONLY:-token50 token200 noauth big upload flood store idle postgres tls h2 placed}
MIB=1048576

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
wants() { [[ " $ONLY " == *" $1 "* ]]; }

# --- tools -----------------------------------------------------------------

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v taskset >/dev/null || missing+=(util-linux)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
if wants h2 && ! command -v h2load >/dev/null; then missing+=(nghttp2-client); fi
if wants postgres && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then missing+=(postgresql); fi
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
ulimit -n "$(ulimit -Hn)"

log "building tokengate (release)"
(cd "$ROOT" && cargo build --release --quiet --bin tokengate && cargo build --release --quiet --example bigstore --example handshakes)
TG=$ROOT/target/release/tokengate
BIGSTORE=$ROOT/target/release/examples/bigstore
HANDSHAKES=$ROOT/target/release/examples/handshakes

# --- processes ---------------------------------------------------------------

DIR=$(mktemp -d /tmp/tokengate-bench.XXXXXX)
RESULTS=$DIR/results
STARTED=()
cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [[ -n ${PG_STARTED:-} ]]; then "$ROOT/.ci/postgres.sh" stop "$DIR/pg"; fi
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        log "work directory kept: $DIR"
    else
        rm -rf "$DIR"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for port in $UP_PORT $ANCHOR_PORT $TG_PORT $TG_NT_PORT $TG_1K_PORT $TG_BIG_PORT $TG_IDLE_PORT $TG_PG_PORT $ANCHOR_TLS_PORT $TG_TLS_PORT \
    $ANCHOR_RSA_PORT $ANCHOR_RSA_TLS_PORT $TG_RSA_PORT $UP_PLACED_PORT $ANCHOR_PLACED_PORT $ANCHOR_PLACED_TLS_PORT $TG_PLACED_PORT; do
    if ss -ltn "sport = :$port" | grep -q LISTEN; then
        echo "port $port is in use; set BENCH_PORT_BASE" >&2
        exit 1
    fi
done

wait_port() {
    local i
    for i in $(seq 1 200); do
        curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
        sleep 0.05
    done
    echo "nothing answers on port $1" >&2
    exit 1
}

render() { # template → file, placeholders @NAME@
    sed -e "s|@DIR@|$DIR|g" -e "s|@UP_PORT@|$UP_PORT|g" -e "s|@ANCHOR_PORT@|$ANCHOR_PORT|g" \
        -e "s|@ANCHOR_TLS_PORT@|$ANCHOR_TLS_PORT|g" \
        -e "s|@TOKEN@|${TOKEN:-}|g" -e "s|@PROXY_BUFFERING@|${PROXY_BUFFERING:-on}|g" "$1" >"$2"
}

tg_config() { # NAME PORT [extra TOML]
    cat >"$DIR/$1.toml" <<EOF
[server]
listen = "127.0.0.1:$2"
[upstream]
url = "http://127.0.0.1:$UP_PORT"
[store]
path = "$1-store"
[log]
level = "info"
${3:-}
EOF
}

start_tg() { # NAME PORT → pid in TG_PIDS[NAME]
    taskset -c "$PROXY_CPU" "$TG" serve -c "$DIR/$1.toml" 2>"$DIR/$1.log" &
    STARTED+=($!)
    TG_PIDS[$1]=$!
    wait_port "$2"
}
declare -A TG_PIDS

# nginx workers (and PostgreSQL) run as unprivileged users: they must reach the work folder.
chmod 755 "$DIR"
mkdir -p "$DIR/www"
head -c $MIB /dev/urandom >"$DIR/www/big"

log "creating the user and a token through the CLI"
tg_config tg "$TG_PORT"
echo 'bench password' | "$TG" user add bench --password-stdin -c "$DIR/tg.toml" >/dev/null
TOKEN=$("$TG" token issue bench --label bench -c "$DIR/tg.toml" 2>/dev/null | tail -n 1)
AUTH="Token $TOKEN"
# The same user and token in every other store, copied before any server opens them.
cp -a "$DIR/tg-store" "$DIR/tg-nt-store"
cp -a "$DIR/tg-store" "$DIR/tg-idle-store"
for copy in tls rsa placed; do cp -a "$DIR/tg-store" "$DIR/tg-$copy-store"; done
# One ECDSA P-256 certificate for both TLS listeners (the anchor's always
# listens with it; tokengate's only in the tls and h2 scenarios), and one
# RSA-2048 certificate for a second pair.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -keyout "$DIR/tls.key" -out "$DIR/tls.crt" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -keyout "$DIR/rsa.key" -out "$DIR/rsa.crt" 2>/dev/null
with_tls() { # NAME CERT KEY
    sed -i "s|^listen = .*|&\ntls_cert = \"$2\"\ntls_key = \"$3\"|" "$DIR/$1.toml"
}
tg_config tg-tls "$TG_TLS_PORT"
with_tls tg-tls "$DIR/tls.crt" "$DIR/tls.key"
tg_config tg-rsa "$TG_RSA_PORT"
with_tls tg-rsa "$DIR/rsa.crt" "$DIR/rsa.key"
tg_config tg-placed "$TG_PLACED_PORT"
sed -i "s|^url = .*|url = \"http://127.0.0.1:$UP_PLACED_PORT\"|" "$DIR/tg-placed.toml"
tg_config tg-nt "$TG_NT_PORT" $'[throttle]\nenabled = false'
tg_config tg-idle "$TG_IDLE_PORT"
if wants store; then
    tg_config tg-1k "$TG_1K_PORT"
    tg_config tg-big "$TG_BIG_PORT"
    log "building stores of 1000 and $BIG_TOKENS tokens"
    for store in 1k big; do
        count=1000
        [[ $store == big ]] && count=$BIG_TOKENS
        "$BIGSTORE" "$DIR/tg-store" "$DIR/tg-$store-store" "$count" "$DIR/secrets-$store" 2>>"$DIR/bigstore.log"
        echo "$TOKEN" >>"$DIR/secrets-$store"
    done
fi

render "$BENCH/upstream.conf.in" "$DIR/upstream.conf"
render "$BENCH/anchor.conf.in" "$DIR/anchor.conf"
# The upstream shares the load generator's core: the proxy's core is its own.
taskset -c "$LOAD_CPU" "$NGINX" -c "$DIR/upstream.conf" -p "$DIR" 2>>"$DIR/upstream.error.log" &
STARTED+=($!)
UP_PID=$!
taskset -c "$PROXY_CPU" "$NGINX" -c "$DIR/anchor.conf" -p "$DIR" 2>>"$DIR/anchor.error.log" &
STARTED+=($!)
ANCHOR_PID=$!
start_tg tg "$TG_PORT"
wait_port "$UP_PORT"
wait_port "$ANCHOR_PORT"

# Another anchor, from the same template in a folder of its own: another
# certificate, or another upstream.
declare -A NGINX_PIDS
start_anchor() { # NAME UP_PORT PORT TLS_PORT CERT KEY
    local dir=$DIR/$1
    mkdir -p "$dir"
    cp "$5" "$dir/tls.crt"
    cp "$6" "$dir/tls.key"
    DIR=$dir UP_PORT=$2 ANCHOR_PORT=$3 ANCHOR_TLS_PORT=$4 render "$BENCH/anchor.conf.in" "$dir/anchor.conf"
    taskset -c "$PROXY_CPU" "$NGINX" -c "$dir/anchor.conf" -p "$dir" 2>>"$dir/anchor.error.log" &
    STARTED+=($!)
    NGINX_PIDS[$1]=$!
    wait_port "$3"
}
# Both answer a valid token with 200 over TLS.
check_https() { # PORT...
    local port got
    for port in "$@"; do
        got=$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: $AUTH" "https://127.0.0.1:$port/small")
        [[ $got == 200 ]] || { echo "https port $port: got $got" >&2; exit 1; }
    done
}

# Both gateways must answer alike before anything is measured.
check() { # PORT AUTH PATH EXPECTED
    local got
    got=$(curl -s -o /dev/null -w '%{http_code}' ${2:+-H "Authorization: $2"} "http://127.0.0.1:$1$3")
    [[ $got == "$4" ]] || { echo "port $1 $3: got $got, expected $4" >&2; exit 1; }
}
for port in $ANCHOR_PORT $TG_PORT; do
    check "$port" "$AUTH" /small 200
    check "$port" "" /small 401
    check "$port" "Token tg_wrong" /small 401
done

# --- measuring -----------------------------------------------------------------

TCK=$(getconf CLK_TCK)
pids_of() { # an nginx master brings its workers
    case $1 in
        direct) echo "$UP_PID $(pgrep -P "$UP_PID" | tr '\n' ' ')" ;;
        nginx | nginx-tls) echo "$ANCHOR_PID $(pgrep -P "$ANCHOR_PID" | tr '\n' ' ')" ;;
        nginx-*) echo "${NGINX_PIDS[$1]} $(pgrep -P "${NGINX_PIDS[$1]}" | tr '\n' ' ')" ;;
        *) echo "${TG_PIDS[$1]}" ;;
    esac
}
port_of() {
    case $1 in
        direct) echo "$UP_PORT" ;; nginx) echo "$ANCHOR_PORT" ;; tg) echo "$TG_PORT" ;;
        tg-nt) echo "$TG_NT_PORT" ;; tg-1k) echo "$TG_1K_PORT" ;; tg-big) echo "$TG_BIG_PORT" ;;
        tg-idle) echo "$TG_IDLE_PORT" ;; tg-pg) echo "$TG_PG_PORT" ;;
        nginx-tls) echo "$ANCHOR_TLS_PORT" ;; tg-tls) echo "$TG_TLS_PORT" ;;
        nginx-rsa) echo "$ANCHOR_RSA_TLS_PORT" ;; tg-rsa) echo "$TG_RSA_PORT" ;;
        nginx-placed) echo "$ANCHOR_PLACED_PORT" ;; tg-placed) echo "$TG_PLACED_PORT" ;;
    esac
}
cpu_ticks() { # utime + stime, then stime alone, of all threads, in clock ticks
    local pid total=0 sys=0 u s
    for pid in "$@"; do
        read -r u s < <(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12, $13}')
        total=$((total + u + s)) sys=$((sys + s))
    done
    echo "$total $sys"
}
reset_peak() { local pid; for pid in "$@"; do echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true; done; }
mem_kb() { # FIELD PIDS...: VmHWM or VmRSS summed
    local field=$1 pid total=0
    shift
    for pid in "$@"; do
        total=$((total + $(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/status")))
    done
    echo $total
}

# wrk against TARGET; the environment (BENCH_AUTH, BENCH_UPLOAD, ...) shapes requests.
wrk_run() { # SECONDS CONNS PORT PATH
    taskset -c "$LOAD_CPU" wrk -t1 -c"$2" -d"$1"s --timeout 10s -s "$BENCH/wrk.lua" \
        "${BENCH_SCHEME:-http}://127.0.0.1:$3$4" 2>&1 | grep '^RESULT' || echo "RESULT requests=0 duration_us=1 bytes=0 p50_us=0 p99_us=0 errors=1 non2xx=0"
}

# HTTP/2 over TLS with h2load, BENCH_CLIENT=h2-N streams per connection; its
# per-request log gives the percentiles.
h2_run() { # SECONDS CONNS PORT PATH
    local log=$DIR/h2load.requests out
    rm -f "$log"
    out=$(taskset -c "$LOAD_CPU" h2load -t1 -c"$2" -m"${BENCH_CLIENT#h2-}" -D"$1" \
        ${BENCH_AUTH:+-H "authorization: $BENCH_AUTH"} --log-file="$log" "https://127.0.0.1:$3$4" 2>&1) || true
    [[ -s $log ]] || { echo "RESULT requests=0 duration_us=1 bytes=0 p50_us=0 p99_us=0 errors=1 non2xx=0"; return; }
    sort -n -k3,3 "$log" | H2LOAD_OUT=$out awk -v d="$1" '
        { lat[NR] = $3; if ($2 != 200) bad++ }
        END {
            n = split(ENVIRON["H2LOAD_OUT"], lines, "\n")
            for (i = 1; i <= n; i++) {
                if (lines[i] ~ /^requests:/) { split(lines[i], w, /[ ,]+/); errors = w[10] + w[12] }
                if (lines[i] ~ /^traffic:/) { match(lines[i], /\([0-9]+\)/); bytes = substr(lines[i], RSTART + 1, RLENGTH - 2) }
            }
            printf "RESULT requests=%d duration_us=%d bytes=%d p50_us=%d p99_us=%d errors=%d non2xx=%d\n",
                NR, d * 1e6, bytes, lat[int(NR * 0.5) + 1], lat[int(NR * 0.99) + 1], errors, bad
        }'
}

# The load generator BENCH_CLIENT names: wrk (unset), full or resumed (a
# new TLS connection per request), h2-N (h2load).
load_run() { # SECONDS CONNS PORT PATH
    case ${BENCH_CLIENT:-wrk} in
        wrk) wrk_run "$@" ;;
        full | resumed)
            taskset -c "$LOAD_CPU" "$HANDSHAKES" "127.0.0.1:$3" "$2" "$1" "$BENCH_CLIENT" "$4" ${BENCH_AUTH:+"$BENCH_AUTH"} |
                grep '^RESULT' || echo "RESULT requests=0 duration_us=1 bytes=0 p50_us=0 p99_us=0 errors=1 non2xx=0"
            ;;
        h2-*) h2_run "$@" ;;
    esac
}

# The store scenario's targets each take 1000 of their own store's tokens.
tokens_of() { case $1 in tg-1k) echo "$DIR/secrets-1k" ;; tg-big) echo "$DIR/secrets-big" ;; esac; }

# One measured run: appends a line to $RESULTS.
measure() { # SCENARIO TARGET CONNS PATH
    local pids c0 c1 s0 s1 out
    pids=$(pids_of "$2")
    export BENCH_TOKENS
    BENCH_TOKENS=$(tokens_of "$2")
    # shellcheck disable=SC2086
    reset_peak $pids
    # shellcheck disable=SC2086
    read -r c0 s0 < <(cpu_ticks $pids)
    out=$(load_run "$DURATION" "$3" "$(port_of "$2")" "$4")
    # shellcheck disable=SC2086
    read -r c1 s1 < <(cpu_ticks $pids)
    # shellcheck disable=SC2086
    echo "$1 $2 $out cpu=$((c1 - c0)) sys=$((s1 - s0)) hwm_kb=$(mem_kb VmHWM $pids) upload=${BENCH_UPLOAD:-0}" >>"$RESULTS"
}

# A scenario: warm each target up, then ROUNDS rounds, the order rotating.
scenario() { # NAME CONNS PATH TARGETS...
    local name=$1 conns=$2 path=$3 round i n
    shift 3
    local targets=("$@")
    n=${#targets[@]}
    log "scenario $name: ${targets[*]}, $conns connections, $ROUNDS × ${DURATION}s"
    for t in "${targets[@]}"; do BENCH_TOKENS=$(tokens_of "$t") load_run 1 "$conns" "$(port_of "$t")" "$path" >/dev/null; done
    for ((round = 0; round < ROUNDS; round++)); do
        for ((i = 0; i < n; i++)); do
            measure "$name" "${targets[$(((i + round) % n))]}" "$conns" "$path"
        done
    done
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average before: $LOAD_BEFORE"
: >"$RESULTS"
THREE=(direct nginx tg)

if wants token50; then BENCH_AUTH=$AUTH scenario "token c=50" 50 /small "${THREE[@]}"; fi
if wants token200; then BENCH_AUTH=$AUTH scenario "token c=200" 200 /small "${THREE[@]}"; fi
if wants noauth; then scenario "no token (401) c=50" 50 /small nginx tg; fi
if wants big; then BENCH_AUTH=$AUTH scenario "1 MiB download c=10" 10 /big "${THREE[@]}"; fi
if wants upload; then BENCH_AUTH=$AUTH BENCH_UPLOAD=$MIB scenario "1 MiB upload c=10" 10 /upload "${THREE[@]}"; fi

# The login flood: 48 clients posting wrong passwords while 50 connections
# use a valid token. Once with the default throttle (the flood is soon
# answered 429) and once with it off (every attempt costs a full argon2 hash).
flood() { # TARGET LABEL
    local target=$1 label=$2 round port pid
    port=$(port_of "$target")
    log "scenario login flood, $label: $ROUNDS × ${DURATION}s undisturbed and flooded"
    BENCH_AUTH=$AUTH wrk_run 1 50 "$port" /small >/dev/null
    for ((round = 0; round < ROUNDS; round++)); do
        BENCH_AUTH=$AUTH measure "flood, $label: undisturbed c=50" "$target" 50 /small
        BENCH_LOGIN=1 wrk_run $((DURATION + 2)) 48 "$port" /login >"$DIR/flood.out" &
        pid=$!
        sleep 1
        BENCH_AUTH=$AUTH measure "flood, $label: during flood c=50" "$target" 50 /small
        wait "$pid"
        echo "$label|$(cat "$DIR/flood.out")" >>"$DIR/flood.log"
    done
}
if wants flood; then
    flood tg "throttle on (default)"
    start_tg tg-nt "$TG_NT_PORT"
    flood tg-nt "throttle off"
    FLOOD_RSS="RSS after the floods: throttle on $(($(mem_kb VmRSS "${TG_PIDS[tg]}") / 1024)) MiB, throttle off $(($(mem_kb VmRSS "${TG_PIDS[tg-nt]}") / 1024)) MiB"
    kill "${TG_PIDS[tg-nt]}"
fi

if wants store; then
    start_tg tg-1k "$TG_1K_PORT"
    start_tg tg-big "$TG_BIG_PORT"
    check "$TG_BIG_PORT" "$AUTH" /small 200
    # 1000 different live tokens, round-robin, from either store.
    scenario "1000 tokens: store of 1000 vs $BIG_TOKENS" 50 /small tg-1k tg-big
    STORE_RSS="RSS after the store runs: store of 1000 $(($(mem_kb VmRSS "${TG_PIDS[tg-1k]}") / 1024)) MiB, store of $BIG_TOKENS $(($(mem_kb VmRSS "${TG_PIDS[tg-big]}") / 1024)) MiB"
    kill "${TG_PIDS[tg-1k]}" "${TG_PIDS[tg-big]}"
fi

if wants postgres; then
    # The same user and token, moved to a database by backup and restore.
    "$ROOT/.ci/postgres.sh" start "$DIR/pg" >"$DIR/pg.url"
    PG_STARTED=1
    tg_config tg-pg "$TG_PG_PORT"
    sed -i "s|^path = \"tg-pg-store\"|backend = \"postgres\"\nurl = \"$(cat "$DIR/pg.url")\"|" "$DIR/tg-pg.toml"
    "$TG" backup "$DIR/moved.jsonl" -c "$DIR/tg.toml" >/dev/null
    "$TG" restore "$DIR/moved.jsonl" -c "$DIR/tg-pg.toml" >/dev/null 2>&1
    start_tg tg-pg "$TG_PG_PORT"
    check "$TG_PG_PORT" "$AUTH" /small 200
    BENCH_AUTH=$AUTH scenario "token c=50: sled vs postgres" 50 /small tg tg-pg
    # Every request a full login: an argon2 hash and a stored token.
    BENCH_LOGIN=ok scenario "logins c=4: sled vs postgres" 4 /login tg tg-pg
    kill "${TG_PIDS[tg-pg]}"
fi

if wants tls || wants h2; then
    start_tg tg-tls "$TG_TLS_PORT"
    check_https "$ANCHOR_TLS_PORT" "$TG_TLS_PORT"
fi
if wants tls; then
    start_tg tg-rsa "$TG_RSA_PORT"
    start_anchor nginx-rsa "$UP_PORT" "$ANCHOR_RSA_PORT" "$ANCHOR_RSA_TLS_PORT" "$DIR/rsa.crt" "$DIR/rsa.key"
    check_https "$ANCHOR_RSA_TLS_PORT" "$TG_RSA_PORT"
    # TLS 1.3 with a valid token, the same certificate on both gateways.
    # Keep-alive: the record layer's cost per request.
    BENCH_SCHEME=https BENCH_AUTH=$AUTH scenario "TLS keep-alive c=50, ECDSA P-256" 50 /small nginx-tls tg-tls
    BENCH_SCHEME=https BENCH_AUTH=$AUTH scenario "TLS keep-alive c=50, RSA-2048" 50 /small nginx-rsa tg-rsa
    # A new connection per request: the handshake's cost.
    BENCH_CLIENT=full BENCH_AUTH=$AUTH scenario "TLS full handshakes c=50, P-256" 50 /small nginx-tls tg-tls
    BENCH_CLIENT=resumed BENCH_AUTH=$AUTH scenario "TLS resumed handshakes c=50, P-256" 50 /small nginx-tls tg-tls
    BENCH_CLIENT=full BENCH_AUTH=$AUTH scenario "TLS full handshakes c=50, RSA-2048" 50 /small nginx-rsa tg-rsa
    BENCH_SCHEME=https BENCH_AUTH=$AUTH scenario "TLS 1 MiB download c=10, P-256" 10 /big nginx-tls tg-tls
    kill "${TG_PIDS[tg-rsa]}" "${NGINX_PIDS[nginx-rsa]}"
fi
if wants h2; then
    # HTTP/2 from the client, over TLS (ALPN h2), to an HTTP/1.1 upstream.
    BENCH_CLIENT=h2-1 BENCH_AUTH=$AUTH scenario "HTTP/2 10 connections x 1 stream" 10 /small nginx-tls tg-tls
    BENCH_CLIENT=h2-100 BENCH_AUTH=$AUTH scenario "HTTP/2 10 connections x 100 streams" 10 /small nginx-tls tg-tls
fi
if wants tls || wants h2; then kill "${TG_PIDS[tg-tls]}"; fi

if wants placed; then
    # A second upstream on the proxies' own core, as a sidecar API on the
    # same host: the proxy now shares its core, and every wake-up and
    # context switch it causes costs the upstream too.
    mkdir -p "$DIR/up-placed"
    ln -s "$DIR/www" "$DIR/up-placed/www"
    DIR=$DIR/up-placed UP_PORT=$UP_PLACED_PORT render "$BENCH/upstream.conf.in" "$DIR/up-placed/upstream.conf"
    taskset -c "$PROXY_CPU" "$NGINX" -c "$DIR/up-placed/upstream.conf" -p "$DIR/up-placed" 2>>"$DIR/up-placed/error.log" &
    STARTED+=($!)
    wait_port "$UP_PLACED_PORT"
    start_anchor nginx-placed "$UP_PLACED_PORT" "$ANCHOR_PLACED_PORT" "$ANCHOR_PLACED_TLS_PORT" "$DIR/tls.crt" "$DIR/tls.key"
    start_tg tg-placed "$TG_PLACED_PORT"
    check "$ANCHOR_PLACED_PORT" "$AUTH" /small 200
    check "$TG_PLACED_PORT" "$AUTH" /small 200
    BENCH_AUTH=$AUTH scenario "token c=50, upstream on the proxy's core" 50 /small nginx-placed tg-placed
    kill "${TG_PIDS[tg-placed]}" "${NGINX_PIDS[nginx-placed]}"
fi

IDLE=()
if wants idle; then
    # A fresh gateway: the flood above leaves argon2's memory behind.
    start_tg tg-idle "$TG_IDLE_PORT"
    for target in nginx tg-idle; do
        log "scenario 1000 idle keep-alive connections: $target"
        pids=$(pids_of "$target")
        # shellcheck disable=SC2086
        before=$(mem_kb VmRSS $pids)
        python3 "$BENCH/idle.py" "$(port_of "$target")" 1000 4 "$AUTH" >"$DIR/idle.out" &
        pid=$!
        for _ in $(seq 1 100); do grep -q '^open' "$DIR/idle.out" && break; sleep 0.1; done
        sleep 1
        # shellcheck disable=SC2086
        during=$(mem_kb VmRSS $pids)
        wait "$pid"
        IDLE+=("$(awk -v t="$target" -v o="$(cat "$DIR/idle.out")" -v b="$before" -v d="$during" \
            'BEGIN { printf "%-10s %s; RSS %.1f MiB before, %.1f MiB with them open", t ~ /^tg/ ? "tokengate" : t, o, b / 1024, d / 1024 }')")
    done
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ------------------------------------------------------------------------

echo
echo "tokengate benchmark — $(date -u +%FT%TZ), $(nproc) cores, proxies on CPU $PROXY_CPU, wrk + upstream on CPU $LOAD_CPU"
echo "load average before: $LOAD_BEFORE, after: $LOAD_AFTER; $ROUNDS rounds × ${DURATION}s per row, interleaved"
echo "req/s and MiB/s: sums over rounds; p50/p99: median of rounds; CPU: the proxy's own utime+stime per request"
echo "(for 'direct' the upstream's), sys: stime alone; floor: tokengate's sys / nginx's CPU, the least its CPU"
echo "ratio can be with no user-space work at all; peak RSS: VmHWM, reset before each run (nginx: master + worker)"
echo
awk -v tck="$TCK" -v mib=$MIB '
function median(list,   a, n, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
# The CPU ratio round by round (rounds run side by side in time): its
# spread shows how far the summed ratio can be trusted on this machine.
function spread(name, a, b,   ka, kb, i, r, lo, hi) {
    ka = name SUBSEP a; kb = name SUBSEP b
    for (i = 1; i <= rounds[ka] && i <= rounds[kb]; i++) {
        if (per[kb, i] <= 0) continue
        r = per[ka, i] / per[kb, i]
        if (lo == "" || r < lo) lo = r
        if (hi == "" || r > hi) hi = r
    }
    return lo == "" ? "" : sprintf("CPU ratio by round %.2f-%.2f", lo, hi)
}
# Kernel time is the floor of a proxy: the same sockets, the same syscalls.
# Against nginx, "floor" is the kernel time of tokengate alone as a fraction
# of the whole CPU of nginx: no saving in user space goes below it.
function ratio(name, label, a, b,   floor) {
    floor = label == "tg/nginx" && us[b] > 0 ? sprintf("; floor %.2fx", sy[a] / us[b]) : ""
    if (rps[a] > 0 && rps[b] > 0 && q50[b] > 0 && q99[b] > 0 && us[b] > 0 && sy[b] > 0 && mem[b] > 0)
        printf "%-40s %-9s %8.2fx %7.2fx %7.2fx %7.2fx %8.2fx %7.2fx %7.2fx %s%s\n", "", label, rps[a] / rps[b], (mb[b] ? mb[a] / mb[b] : 0), q50[a] / q50[b], q99[a] / q99[b], us[a] / us[b], sy[a] / sy[b], mem[a] / mem[b], spread(name, a, b), floor
}
{
    # "scenario words... TARGET RESULT k=v ...": the target is the word before RESULT
    split("", f)
    for (i = 1; $i != "RESULT"; i++) {}
    target = $(i - 1); name = $1
    for (j = 2; j < i - 1; j++) name = name " " $j
    key = name SUBSEP target
    if (!(key in seen)) { seen[key] = 1; order[++n] = key; if (!(name in named)) { named[name] = 1; names[++m] = name } }
    for (j = i + 1; j <= NF; j++) { split($j, kv, "="); f[kv[1]] = kv[2] + 0 }
    req[key] += f["requests"]; dur[key] += f["duration_us"]; bytes[key] += f["bytes"] + f["requests"] * f["upload"]
    cpu[key] += f["cpu"]; sys[key] += f["sys"]; errs[key] += f["errors"]; non2xx[key] += f["non2xx"]
    p50[key] = p50[key] " " f["p50_us"]; p99[key] = p99[key] " " f["p99_us"]
    if (f["hwm_kb"] > hwm[key]) hwm[key] = f["hwm_kb"]
    if ("resumed" in f) { handshakes[key] = 1; resumed[key] += f["resumed"] }
    per[key, ++rounds[key]] = f["requests"] ? f["cpu"] / f["requests"] : 0
}
END {
    printf "%-40s %-9s %9s %8s %8s %8s %9s %8s %8s %s\n", "scenario", "target", "req/s", "MiB/s", "p50 ms", "p99 ms", "CPU µs/r", "sys µs/r", "RSS MiB", "notes"
    for (s = 1; s <= m; s++) {
        name = names[s]
        split("", rps); split("", q50); split("", q99); split("", us); split("", sy); split("", mem); split("", mb)
        for (k = 1; k <= n; k++) {
            split(order[k], nt, SUBSEP); if (nt[1] != name) continue
            key = order[k]; t = nt[2]
            rps[t] = req[key] / (dur[key] / 1e6); mb[t] = bytes[key] / (dur[key] / 1e6) / mib
            q50[t] = median(p50[key]) / 1000; q99[t] = median(p99[key]) / 1000
            us[t] = req[key] ? cpu[key] * 1e6 / tck / req[key] : 0; mem[t] = hwm[key] / 1024
            sy[t] = req[key] ? sys[key] * 1e6 / tck / req[key] : 0
            note = ""
            if (errs[key]) note = note errs[key] " socket errors; "
            if (non2xx[key]) note = note non2xx[key] " non-2xx; "
            if (handshakes[key]) note = note sprintf("%.0f%% resumed", req[key] ? 100 * resumed[key] / req[key] : 0)
            label = t == "tg-1k" ? "tg 1k" : t == "tg-big" ? "tg big" : t == "tg-pg" ? "tg pg" : t ~ /^tg/ ? "tokengate" : t
            printf "%-40s %-9s %9.0f %8.1f %8.2f %8.2f %9.1f %8.1f %8.1f %s\n", name, label, rps[t], mb[t], q50[t], q99[t], us[t], sy[t], mem[t], note
        }
        ratio(name, "tg/nginx", "tg", "nginx")
        ratio(name, "big/1k", "tg-big", "tg-1k")
        ratio(name, "pg/sled", "tg-pg", "tg")
        ratio(name, "tg/nginx", "tg-tls", "nginx-tls")
        ratio(name, "tg/nginx", "tg-rsa", "nginx-rsa")
        ratio(name, "tg/nginx", "tg-placed", "nginx-placed")
    }
}' "$RESULTS"

if wants flood; then
    echo
    awk '
    {
        for (i = 1; $i != "RESULT"; i++) {}
        name = $1; for (j = 2; j < i - 1; j++) name = name " " $j
        for (j = i + 1; j <= NF; j++) { split($j, kv, "="); f[kv[1]] = kv[2] + 0 }
        if (name ~ /^flood, /) { r[name] += f["requests"]; d[name] += f["duration_us"] }
    }
    END {
        for (name in r) if (name ~ /during flood/) {
            base = name; sub(/during flood/, "undisturbed", base)
            label = name; sub(/^flood, /, "", label); sub(/: during flood.*/, "", label)
            if (d[base] && r[base])
                printf "login flood, %s: authenticated throughput during the flood = %.0f%% of undisturbed\n", label, 100 * (r[name] / d[name]) / (r[base] / d[base])
        }
    }' "$RESULTS"
    awk -F'|' '
    {
        n = split($2, w, " ")
        for (j = 1; j <= n; j++) { split(w[j], kv, "="); f[kv[1]] = kv[2] + 0 }
        r[$1] += f["requests"]; d[$1] += f["duration_us"]; x[$1] += f["non2xx"]
    }
    END {
        for (k in r) printf "login flood, %s: %.0f login attempts/s, %d of %d answered 401/429\n", k, r[k] / (d[k] / 1e6), x[k], r[k]
    }' "$DIR/flood.log"
fi
if [[ -n ${FLOOD_RSS:-} ]]; then echo "$FLOOD_RSS"; fi
if [[ -n ${STORE_RSS:-} ]]; then echo "$STORE_RSS"; fi
if ((${#IDLE[@]})); then
    echo
    echo "1000 idle keep-alive connections (one authorized request each, then idle):"
    printf '  %s\n' "${IDLE[@]}"
fi

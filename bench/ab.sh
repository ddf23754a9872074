#!/usr/bin/env bash
# Two tokengate builds against each other: the same nginx upstream, wrk
# and the builds pinned apart as in run.sh, rounds alternating between
# the builds so that drift hits both alike. Prints req/s and CPU per
# request (utime + stime from /proc) of each build for each run.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [SECONDS]
#   ONLY=big bench/ab.sh ...      1 MiB downloads only
#   PROXY_CPUS=0,1 bench/ab.sh ... the builds on both cores (two workers)
#   UP_CPU=0 bench/ab.sh ...       the upstream on the builds' core (a sidecar)
#
# Build the old one from a worktree, e.g.
#   git worktree add /tmp/old REV && (cd /tmp/old && cargo build --release)
set -euo pipefail
if (($# < 2)); then
    sed -n '2,12p' "$0" >&2
    exit 2
fi
OLD=$1 NEW=$2 ROUNDS=${3:-4} DUR=${4:-5}
B=$(cd "$(dirname "$0")" && pwd)
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
DIR=$(mktemp -d /tmp/ab.XXXXXX); chmod 755 $DIR
UP=18200
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$DIR"' EXIT
TCK=$(getconf CLK_TCK)
mkdir -p $DIR/www; head -c 1048576 /dev/urandom > $DIR/www/big
sed -e "s|@DIR@|$DIR|g" -e "s|@UP_PORT@|$UP|g" $B/upstream.conf.in > $DIR/up.conf
taskset -c "${UP_CPU:-1}" "$NGINX" -c $DIR/up.conf -p $DIR 2>/dev/null & PIDS+=($!)
declare -A PID TOKEN PORT
PORT[old]=18202; PORT[new]=18203
for x in old new; do
  bin=$OLD; [[ $x == new ]] && bin=$NEW
  mkdir -p $DIR/$x
  printf '[server]\nlisten = "127.0.0.1:%s"\n[upstream]\nurl = "http://127.0.0.1:%s"\n[store]\npath = "%s/store"\n[log]\nlevel = "info"\n' ${PORT[$x]} $UP $DIR/$x > $DIR/$x/tg.toml
  echo 'bench password' | $bin user add bench --password-stdin -c $DIR/$x/tg.toml >/dev/null
  TOKEN[$x]=$($bin token issue bench -c $DIR/$x/tg.toml 2>/dev/null | tail -n1)
  taskset -c "${PROXY_CPUS:-0}" $bin serve -c $DIR/$x/tg.toml > $DIR/$x/log 2>&1 & PID[$x]=$!; PIDS+=($!)
done
sleep 1
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
# Context switches of all the process's threads.
switches() { cat /proc/$1/task/*/status | awk '/ctxt_switches/ {n += $2} END {print n}'; }
run() { # x path conns auth
  local x=$1 path=$2 c=$3 auth=$4 before after out n sw
  before=$(cpu ${PID[$x]}); sw=$(switches ${PID[$x]})
  out=$(BENCH_AUTH="$auth" taskset -c 1 wrk -t1 -c$c -d${DUR}s -s $B/wrk.lua http://127.0.0.1:${PORT[$x]}$path | grep '^RESULT')
  after=$(cpu ${PID[$x]}); sw=$(( $(switches ${PID[$x]}) - sw ))
  n=$(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$out")
  p99=$(sed 's/.*p99_us=\([0-9]*\).*/\1/' <<<"$out")
  awk -v x=$x -v p=$path -v c=$c -v n=$n -v t=$((after-before)) -v d=$DUR -v hz=$TCK -v sw=$sw -v p99=$p99 'BEGIN {printf "%s %s c=%s req/s=%d cpu_us_per_req=%.2f p99_ms=%.2f switches_per_1k_req=%.1f\n", x, p, c, n/d, t*1000000/hz/(n>0?n:1), p99/1000, sw*1000/(n>0?n:1)}'
}
for x in old new; do run $x /small 50 "Token ${TOKEN[$x]}" >/dev/null; done
for r in $(seq 1 $ROUNDS); do
  if [[ ${ONLY:-} != big ]]; then
  for x in old new; do run $x /small 50 "Token ${TOKEN[$x]}"; done
  for x in new old; do run $x /small 50 "Token ${TOKEN[$x]}"; done
  fi
  for x in old new; do run $x /big 10 "Token ${TOKEN[$x]}"; done
  for x in new old; do run $x /big 10 "Token ${TOKEN[$x]}"; done
done

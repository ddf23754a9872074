#!/usr/bin/env bash
# The Docker deployment, end to end in a real engine: builds the static
# binaries on the host and the two runtime-prebuilt images from them (so it
# pulls nothing), runs the echo upstream and the gateway on networks of
# their own, and checks what a user relies on: a user added with
# `docker exec`, login and a call through with X-Auth-User arriving, the
# store surviving a container restart on its volume, the health status,
# a clean `docker stop`, a non-root process, the image size.
#
# Run from anywhere; skipped (exit 0) when no Docker engine answers. Every
# name ends in this shell's pid and everything is removed on exit, so runs
# neither collide nor leave anything behind. The gateway is published on
# 127.0.0.1 only, on a port Docker picks.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! docker info >/dev/null 2>&1; then
    echo "docker/test.sh: SKIPPED: \`docker info\` fails, no Docker engine to test with"
    exit 0
fi

readonly TARGET=x86_64-unknown-linux-gnu
readonly MAX_IMAGE_BYTES=20000000 # 20 MB, as `docker images` counts
readonly GRACE=10                 # docker stop's default grace period, seconds
readonly PASSWORD='correct horse battery staple'

readonly id="tgtest-$$"
readonly image="tokengate:$id" echo_image="tokengate-echo:$id"
readonly edge="$id-edge" private="$id-private" volume="$id-data"
readonly gw="$id-gw" api="$id-api"

cleanup() {
    local status=$?
    if [ "$status" -ne 0 ] && docker inspect "$gw" >/dev/null 2>&1; then
        echo "-- gateway log (test failed):"
        docker logs --tail 50 "$gw" 2>&1 | sed 's/^/   /' || true
    fi
    docker rm -f -v "$gw" "$api" >/dev/null 2>&1 || true
    docker network rm "$edge" "$private" >/dev/null 2>&1 || true
    docker volume rm "$volume" >/dev/null 2>&1 || true
    docker image rm "$image" "$echo_image" >/dev/null 2>&1 || true
    rm -f "${build_log:-}"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
ok() { echo "ok: $*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# `until_true SECONDS CMD...`: runs CMD every 0.2 s until it succeeds.
until_true() {
    local deadline=$(($(date +%s) + $1))
    shift
    until "$@"; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

echo "== static binaries (host build, $TARGET, crt-static)"
t=$(now)
RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --locked --quiet --target "$TARGET" \
    --bin tokengate --example echo_upstream
for bin in "target/$TARGET/release/tokengate" "target/$TARGET/release/examples/echo_upstream"; do
    # A static executable has no program interpreter (dynamic loader). The
    # containers below are the real proof; this names the culprit early.
    if command -v readelf >/dev/null && readelf -l "$bin" | grep 'program interpreter' >/dev/null; then
        fail "$bin is dynamically linked"
    fi
done
ok "binaries built in $(since "$t") s"

echo "== images (runtime-prebuilt targets; nothing pulled)"
t=$(now)
build_log=$(mktemp)
build() { # `build TAG DOCKERFILE`: the build's output only when it fails
    docker build -f "$2" --target runtime-prebuilt -t "$1" . >"$build_log" 2>&1 ||
        { cat "$build_log"; fail "docker build -f $2 failed"; }
}
build "$image" docker/Dockerfile
build "$echo_image" docker/echo.Dockerfile
ok "images built in $(since "$t") s"
size=$(docker image inspect -f '{{.Size}}' "$image")
echo "   image $image: $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1e6 }') MB)"
[ "$size" -le "$MAX_IMAGE_BYTES" ] || fail "image is $size bytes, over $MAX_IMAGE_BYTES"
ok "image under 20 MB"

echo "== compose file"
if docker-compose version >/dev/null 2>&1; then
    compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    compose=()
fi
if [ "${#compose[@]}" -gt 0 ]; then
    "${compose[@]}" -f docker/compose.yaml config -q || fail "docker/compose.yaml is invalid"
    ok "docker/compose.yaml valid for ${compose[*]} $("${compose[@]}" version --short 2>/dev/null || true)"
    # Its database password is required: checked with one, and refused without.
    TOKENGATE_DB_PASSWORD=example "${compose[@]}" -f docker/compose.postgres.yaml config -q ||
        fail "docker/compose.postgres.yaml is invalid"
    if env -u TOKENGATE_DB_PASSWORD "${compose[@]}" -f docker/compose.postgres.yaml config -q 2>/dev/null; then
        fail "docker/compose.postgres.yaml starts without TOKENGATE_DB_PASSWORD"
    fi
    ok "docker/compose.postgres.yaml valid, and needs TOKENGATE_DB_PASSWORD"
else
    echo "   no docker-compose or docker compose: compose file not checked"
fi

echo "== containers"
docker network create "$edge" >/dev/null
# Internal: no published ports, no way out; only the gateway joins it too.
docker network create --internal "$private" >/dev/null
docker volume create "$volume" >/dev/null
docker run -d --name "$api" --network "$private" --network-alias api "$echo_image" >/dev/null
# The upstream is named as compose would name it, so the gateway's own
# resolver has to find it through Docker's DNS. A short health interval
# keeps the test quick; the command is the image's HEALTHCHECK.
docker create --name "$gw" \
    --network "$edge" -p 127.0.0.1::8080 \
    -v "$volume:/data" \
    -e TOKENGATE_UPSTREAM_URL=http://api:8000 \
    --health-interval 1s --health-start-period 0s \
    "$image" >/dev/null
docker network connect "$private" "$gw"
t=$(now)
docker start "$gw" >/dev/null
# Docker picks the host port anew on every start.
published() { base="http://$(docker port "$gw" 8080/tcp | head -n1)"; }
published
echo "   gateway published on $base"

status_of() { curl -s -o /dev/null -w '%{http_code}' "$@" || true; }
answers_401() { [ "$(status_of "$base/")" = 401 ]; }
until_true 30 answers_401 || fail "gateway did not answer on $base"
ok "gateway answering in $(since "$t") s"
[ -z "$(docker port "$api")" ] || fail "the upstream has published ports"

echo "== user added with docker exec, password on stdin"
printf '%s\n' "$PASSWORD" |
    docker exec -i "$gw" /tokengate user add alice --role admin --password-stdin
has_alice() { case "$(docker exec "$gw" /tokengate user list --json)" in *'"username":"alice"'*) ;; *) return 1 ;; esac; }
has_alice || fail "user list does not show alice"
ok "alice added"

echo "== login and a call through"
login=$(curl -s -d username=alice --data-urlencode "password=$PASSWORD" "$base/login")
token=$(printf '%s' "$login" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
[ -n "$token" ] || fail "login answered: $login"
ok "logged in, token ${token:0:6}…"
echoed=$(curl -s -H "Authorization: Token $token" -H 'X-Auth-User: mallory' "$base/items?page=2")
echo "   upstream saw: $echoed"
case "$echoed" in *'"x-auth-user":"alice"'*) ;; *) fail "X-Auth-User: alice did not arrive" ;; esac
case "$echoed" in *'"path":"/items"'*'"query":"page=2"'*) ;; *) fail "path or query changed" ;; esac
case "$echoed" in *mallory*) fail "the client's X-Auth-User was forwarded" ;; esac
case "$echoed" in *'"authorization"'*) fail "the credential was forwarded" ;; esac
ok "X-Auth-User: alice reached the upstream at http://api:8000"
[ "$(status_of -H 'Authorization: Token tg_nonsense' "$base/items")" = 401 ] ||
    fail "a bad token was not refused"
ok "a bad token gets 401"

echo "== restart: user and token survive on the volume"
t=$(now)
docker restart -t "$GRACE" "$gw" >/dev/null
published
answers_200() { [ "$(status_of -H "Authorization: Token $token" "$base/after-restart")" = 200 ]; }
until_true 30 answers_200 || fail "the token from before the restart no longer works"
ok "restarted and serving the old token in $(since "$t") s"
has_alice || fail "alice is gone after the restart"
ok "alice still in the store"

echo "== health"
t=$(now)
health() { docker inspect -f '{{.State.Health.Status}}' "$gw"; }
is_healthy() { [ "$(health)" = healthy ]; }
until_true 60 is_healthy || fail "health status is $(health), not healthy"
ok "health status healthy after $(since "$t") s"

echo "== non-root"
user=$(docker inspect -f '{{.Config.User}}' "$gw")
[ "$user" = "65532:65532" ] || fail "configured user is '$user'"
# The real process as the host's kernel sees it, not just the config.
uids=$(docker top "$gw" -o pid,uid,gid,args | awk 'NR > 1 { print $2 ":" $3 }' | sort -u)
echo "   processes run as uid:gid $uids"
[ "$uids" = "65532:65532" ] || fail "a process runs as $uids"
ok "runs as 65532:65532"

echo "== docker stop: SIGTERM, clean exit within ${GRACE} s"
t=$(now)
docker stop -t "$GRACE" "$gw" >/dev/null
took=$(since "$t")
code=$(docker inspect -f '{{.State.ExitCode}}' "$gw")
oom=$(docker inspect -f '{{.State.OOMKilled}}' "$gw")
[ "$code" = 0 ] || fail "exit code $code after docker stop (137 = killed after the grace period)"
[ "$oom" = false ] || fail "OOM killed"
awk -v t="$took" -v g="$GRACE" 'BEGIN { exit !(t < g) }' || fail "stop took $took s"
# Not `| grep -q`: grep quitting early fails the pipe under pipefail.
case "$(docker logs "$gw" 2>&1)" in *'SIGTERM received'*) ;; *) fail "no SIGTERM in the log" ;; esac
ok "stopped in $took s, exit code 0"

echo "PASS: docker/test.sh ($image, $size bytes)"

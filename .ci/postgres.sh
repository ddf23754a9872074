#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests: initdb in a temporary folder
# as the postgres OS user, trust auth on 127.0.0.1 only, a free port.
#   .ci/postgres.sh start DIR   prints the server's URL
#   .ci/postgres.sh stop DIR
#   .ci/postgres.sh resume DIR  starts a stopped one again on its port
# With TOKENGATE_PG_TLS=FOLDER (holding server.crt and server.key), start
# gives the server TLS too.
set -euo pipefail
action=${1:?start or stop}
dir=${2:?a folder for the server}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[[ -x $bin/initdb ]] || { echo "no PostgreSQL server installed (apt-get install postgresql)" >&2; exit 1; }
as_postgres() {
    if [[ $(id -un) == postgres ]]; then "$@"; else runuser -u postgres -- "$@"; fi
}
case $action in
start)
    mkdir -p "$dir"
    chown postgres "$dir"
    as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log"
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' >"$dir/port"
    if [[ -n ${TOKENGATE_PG_TLS:-} ]]; then
        install -o postgres -m 600 "$TOKENGATE_PG_TLS/server.crt" "$TOKENGATE_PG_TLS/server.key" "$dir/"
    fi
    "$0" resume "$dir"
    echo "postgres://postgres@127.0.0.1:$(cat "$dir/port")/postgres"
    ;;
resume)
    port=$(cat "$dir/port")
    tls=()
    if [[ -f $dir/server.crt ]]; then tls=(-c ssl=on -c "ssl_cert_file=$dir/server.crt" -c "ssl_key_file=$dir/server.key"); fi
    as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=200 -c fsync=on ${tls[*]}" \
        start >/dev/null
    ;;
stop)
    as_postgres "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null || true
    ;;
*) echo "start or stop" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Interleaved A/B refresh runs (issue 16), SQLite or PostgreSQL:
#
#   benches/ab.sh ROUNDS DURATION [--pg postgres://user@host:port] [--scenario S] name=BIN_DIR ...
#
# Each run: a fresh data directory (and with --pg a fresh database), `BIN_DIR/sessiond serve`
# started, `BIN_DIR/sessiond-load` (from the same build) at 64 clients for DURATION, the server
# stopped. Odd rounds run the builds in the order given, even rounds in reverse, so that no
# build always has the warmer machine. One line per run, with the load average at its start.
# SESSIOND_PASSWORD_QUEUE=256 is set: the load generator logs its 64 users in at once.
set -u
rounds=$1; dur=$2; shift 2
pg=""; scenario=refresh
while [ $# -gt 0 ]; do
  case $1 in
    --pg) pg=$2; shift 2 ;;
    --scenario) scenario=$2; shift 2 ;;
    *) break ;;
  esac
done
export SESSIOND_PASSWORD_QUEUE=256
specs=("$@")
for r in $(seq 1 "$rounds"); do
  order=("${specs[@]}")
  if [ $((r % 2)) -eq 0 ]; then
    order=(); for ((i=${#specs[@]}-1; i>=0; i--)); do order+=("${specs[$i]}"); done
  fi
  for spec in "${order[@]}"; do
    name=${spec%%=*}; dir=${spec#*=}
    rm -rf /tmp/bench-$name; mkdir -p /tmp/bench-$name
    db=()
    if [ -n "$pg" ]; then
      psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS bench_$name" -c "CREATE DATABASE bench_$name" >/dev/null
      db=(--database-url "$pg/bench_$name")
    fi
    RUST_LOG=warn "$dir/sessiond" serve --data-dir /tmp/bench-$name "${db[@]}" --listen 127.0.0.1:18181 >/tmp/bench-$name.log 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:18181/healthz && break; sleep 0.1; done
    load=$(cut -d' ' -f1 /proc/loadavg)
    out=$("$dir/sessiond-load" --url http://127.0.0.1:18181 --clients 64 --duration "$dur" --scenario "$scenario" 2>&1 | tr '\n' ' ')
    echo "round $r $name (load $load): $out"
    kill -TERM $pid; wait $pid 2>/dev/null
  done
done

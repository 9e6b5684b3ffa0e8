#!/usr/bin/env bash
# Interleaved A/B: refresh at 64 clients, then a timed `projections rebuild`, per build.
# Usage: benches/refresh-rebuild-ab.sh ROUNDS DURATION name=DIR_WITH_RELEASE_BINARIES ...
set -u
rounds=$1; dur=$2; shift 2
export SESSIOND_PASSWORD_QUEUE=256
for r in $(seq 1 "$rounds"); do
  for spec in "$@"; do
    name=${spec%%=*}; dir=${spec#*=}
    d=/tmp/cost-$name; rm -rf $d; mkdir -p $d
    RUST_LOG=warn "$dir/sessiond" serve --data-dir $d --listen 127.0.0.1:18191 >/tmp/cost-$name.log 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:18191/healthz && break; sleep 0.1; done
    out=$("$dir/sessiond-load" --url http://127.0.0.1:18191 --clients 64 --duration "$dur" --scenario refresh 2>&1 | tr '\n' ' ')
    kill -TERM $pid; wait $pid 2>/dev/null
    s=$(date +%s.%N)
    rb=$(RUST_LOG=warn "$dir/sessiond" projections rebuild --data-dir $d 2>&1 | tail -1)
    e=$(date +%s.%N)
    n=$(echo "$rb" | grep -o '[0-9]\+' | head -1)
    secs=$(echo "$e - $s" | bc -l)
    rate=$(echo "$n / $secs" | bc -l 2>/dev/null | cut -d. -f1)
    echo "round $r $name: $out | rebuild: $rb in ${secs:0:6}s = ${rate} events/s | load $(cut -d' ' -f1-3 /proc/loadavg)"
  done
done

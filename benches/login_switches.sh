#!/usr/bin/env bash
# Thread sleeps per login (issue 16, BENCHMARKS.md "Stop 20"):
#
#   benches/login_switches.sh BIN_DIR
#
# A fresh data directory, `BIN_DIR/sessiond serve`, `BIN_DIR/sessiond-load --scenario login` at 64
# clients for 20 s; from 28 s to 38 s after the start, the voluntary and involuntary context
# switches of each server thread (grouped by name, from /proc/PID/task/*/status), divided by the
# logins that succeeded meanwhile (sessiond_logins_total). Each statement is a round trip between
# two threads, so voluntary switches per login follow the round trips a login makes.
dir=$1; port=18192; data=$(mktemp -d)
sw() { for t in /proc/$1/task/*; do echo "$(cat $t/comm) $(awk '/^voluntary_ctxt/{v=$2} /^nonvoluntary/{n=$2} END{print v, n}' $t/status)"; done | awk '{v[$1]+=$2; n[$1]+=$3} END {for (k in v) print k, v[k], n[k]}' | sort; }
SESSIOND_PASSWORD_QUEUE=256 RUST_LOG=warn "$dir/sessiond" serve --data-dir "$data" --listen 127.0.0.1:$port >"$data/log" 2>&1 &
server=$!
for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:$port/healthz && break; sleep 0.1; done
"$dir/sessiond-load" --url http://127.0.0.1:$port --clients 64 --duration 20s --scenario login >"$data/load" 2>&1 &
load=$!
sleep 28; sw $server > $data/s0; c0=$(curl -s localhost:$port/metrics | awk '/^sessiond_writer_batch_size_count/{print $2}'); l0=$(curl -s localhost:$port/metrics | grep -E '^sessiond_logins_total.*success' | awk '{s+=$2} END{print s}')
sleep 10; sw $server > $data/s1; c1=$(curl -s localhost:$port/metrics | awk '/^sessiond_writer_batch_size_count/{print $2}'); l1=$(curl -s localhost:$port/metrics | grep -E '^sessiond_logins_total.*success' | awk '{s+=$2} END{print s}')
wait $load; tail -1 $data/load
echo "batches $((c1-c0)) logins $((l1-l0))"
join $data/s0 $data/s1 | awk -v n=$((l1-l0)) '{printf "%-18s vol/login %.1f  invol/login %.2f\n", $1, ($4-$2)/n, ($5-$3)/n}'
kill $server; wait $server 2>/dev/null; rm -rf $data

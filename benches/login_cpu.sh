#!/usr/bin/env bash
# Where a login's CPU goes (issue 16, BENCHMARKS.md "Stop 19"):
#
#   benches/login_cpu.sh BIN_DIR
#
# A fresh data directory, `BIN_DIR/sessiond serve`, `BIN_DIR/sessiond-load --scenario login` at 64
# clients for 40 s; 25 s after the start (setup and warm-up done) the CPU time of each server
# thread, grouped by thread name, and of the load generator is taken over 10 s, while the load
# still runs (checked: a window that outlived the load is refused). With both cores
# saturated by logins, the argon2 threads' share of all CPU used is the login rate as a fraction
# of the bare argon2 rate, a figure the machine's own drift in speed does not move.
set -u
dir=$1
port=18183
data=$(mktemp -d)
threads() {
  for t in /proc/$1/task/*; do
    s=($(sed 's/^.*) //' "$t/stat"))
    echo "$(cat "$t/comm") ${s[11]} ${s[12]}"
  done | awk '{u[$1]+=$2; k[$1]+=$3} END {for (n in u) print n, u[n], k[n]}' | sort
}
ticks() { [[ -r /proc/$1/stat ]] || return 0; s=($(sed 's/^.*) //' "/proc/$1/stat")); echo $((s[11] + s[12])); }
SESSIOND_PASSWORD_QUEUE=256 RUST_LOG=warn "$dir/sessiond" serve --data-dir "$data" \
  --listen 127.0.0.1:$port >"$data/log" 2>&1 &
server=$!
for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:$port/healthz && break; sleep 0.1; done
"$dir/sessiond-load" --url http://127.0.0.1:$port --clients 64 --duration 40s --scenario login \
  >"$data/load" 2>&1 &
load=$!
sleep 25
l0=$(ticks $load); threads $server >"$data/t0"
sleep 10
l1=$(ticks $load); threads $server >"$data/t1"
if [[ -z $l1 ]]; then echo "the load ended inside the window: no figure" >&2; kill $server; exit 1; fi
wait $load
tail -1 "$data/load"
hz=$(getconf CLK_TCK)
join "$data/t0" "$data/t1" | awk -v load=$((l1 - l0)) -v hz="$hz" '
  { u = $4 - $2; k = $5 - $3; all += u + k; cpu[$1] = u + k
    printf "%-16s %6.2f s user %6.2f s system\n", $1, u / hz, k / hz }
  END { all += load; printf "%-16s %6.2f s\n", "load generator", load / hz
        printf "argon2 share of all CPU: %.1f%%\n", 100 * cpu["sessiond-argon2"] / all }'
# Commands per commit over the whole run, and the commits that waited for company.
curl -s http://127.0.0.1:$port/metrics | awk '
  /^sessiond_writer_batch_size_sum / { s = $2 } /^sessiond_writer_batch_size_count / { n = $2 }
  /^sessiond_writer_lingered_total / { l = $2 }
  END { printf "commits %d, commands per commit %.2f, lingered %d\n", n, s / n, l }'
kill $server; wait $server 2>/dev/null
rm -rf "$data"

#!/bin/bash
# Instructions and cache misses per HTTP response of a hyper server at 1 000 keep-alive
# connections, in valgrind's cache model with this machine's L2 (2 MiB) as its last level: at
# that many connections a connection's state leaves the caches between two of its requests, so
# how many cache lines a request touches decides as much as what it executes. The counts are
# the same whatever else the machine is doing (the kernel's work is not in them).
#
#   cargo build --release --examples
#   benches/cachesim_http.sh NAME -- SERVER_COMMAND...
#   benches/cachesim_http.sh ringloop -- target/release/examples/http_server --addr {addr}
#   benches/cachesim_http.sh tokio -- target/release/examples/tokio_http_server --addr {addr}
#
# `{addr}` in the server command is filled in by `c10k`, which loads the server for 8 s; the
# counters are zeroed 5 s after the server starts (connection set-up excluded), and responses
# are counted as calls of hyper's `encode` (one per response). Needs valgrind.
set -euo pipefail
name=$1
shift 2
out=target/callgrind
mkdir -p "$out"
rm -f "$out/$name".*
ulimit -n 20000
cmd="valgrind --tool=callgrind --cache-sim=yes --LL=2097152,16,64 --callgrind-out-file=$out/$name.out $*"
target/release/examples/c10k --http-only --reps 1 --seconds 8 --http-connections 1000 \
    --http-64k-connections 0 --http-backends "" --no-pin --http-server "$name=$cmd" \
    >"$out/$name.log" 2>&1 &
load=$!
for _ in $(seq 100); do callgrind_control 2>/dev/null | grep -q "PID" && break; sleep 0.2; done
sleep 5
callgrind_control -z >/dev/null 2>&1
wait "$load"
python3 - "$out/$name.out" "$name" <<'PY'
import re, sys
lines = open(sys.argv[1]).read().splitlines()
names = {}
for l in lines:
    m = re.match(r'c?fn=\((\d+)\)\s*(.*)', l)
    if m and m.group(2):
        names[m.group(1)] = m.group(2)
encode = {k for k, v in names.items() if 'Http1Transaction>::encode' in v and 'Server' in v}
responses = 0
for i, l in enumerate(lines):
    m = re.match(r'cfn=\((\d+)\)', l)
    if m and m.group(1) in encode and lines[i + 1].startswith('calls='):
        responses += int(lines[i + 1].split('=')[1].split()[0])
events = next(l for l in lines if l.startswith('events:')).split()[1:]
totals = next(l for l in lines if l.startswith(('summary:', 'totals:'))).split()[1:]
per = {e: int(t) / max(responses, 1) for e, t in zip(events, totals)}
print(f"{sys.argv[2]}: {responses} responses; per response: {per['Ir']:.0f} instructions, "
      f"L1 misses {per['D1mr']:.1f} read / {per['D1mw']:.1f} write, "
      f"last-level (2 MiB) misses {per['DLmr']:.1f} read / {per['DLmw']:.1f} write")
PY

#!/bin/bash
# User-space instructions per echoed message of an echo server, counted by callgrind (the same
# count whatever else the machine is doing; the kernel's work is not in it).
#
#   cargo build --release --examples
#   benches/callgrind_echo.sh NAME CONNECTIONS SECONDS -- SERVER_COMMAND...
#   benches/callgrind_echo.sh floor 1000 5 -- target/release/examples/floor_echo --addr {addr}
#
# `{addr}` in the server command becomes a free loopback address. The server runs under
# `valgrind --tool=callgrind`, `echo_client` loads it with CONNECTIONS connections × 64 B for
# SECONDS, then the count is dumped and divided by the messages echoed.
set -euo pipefail
name=$1 conns=$2 secs=$3
shift 4
port=$((20000 + RANDOM % 20000))
cmd="${*//\{addr\}/127.0.0.1:$port}"
out=target/callgrind
mkdir -p "$out"
rm -f "$out/$name".*
# shellcheck disable=SC2086
valgrind --tool=callgrind --callgrind-out-file="$out/$name" $cmd >"$out/$name.log" 2>&1 &
vg=$!
for _ in $(seq 100); do grep -q "listening on" "$out/$name.log" && break; sleep 0.2; done
load=$(target/release/examples/echo_client --addr "127.0.0.1:$port" --connections "$conns" \
    --size 64 --seconds "$secs" 2>&1 | tail -1)
callgrind_control -d "$vg" >/dev/null 2>&1
sleep 1
kill -9 "$vg" 2>/dev/null || true
wait "$vg" 2>/dev/null || true
rate=$(echo "$load" | sed -E 's/.*: ([0-9]+) msg\/s.*/\1/')
ir=$(callgrind_annotate "$(ls "$out/$name".* | grep -v log | tail -1)" 2>/dev/null |
    awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "$name: $load; $ir instructions, $((ir / (rate * secs))) per message"

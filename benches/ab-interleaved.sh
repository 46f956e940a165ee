#!/bin/bash
# Two relay builds, interleaved on this host: ingest (unique and duplicates) per relay
# CPU-second, fan-out deliveries/s, and resident memory per idle connection holding one
# subscription. Each run starts the relay on a fresh data directory and stops it after; the
# idle measurement has a fresh relay of its own.
#
#   benches/ab-interleaved.sh BASE_BINARY NEW_BINARY [rounds]
#
# Build relay_load first: cargo bench --bench relay_load --no-run
set -eu
base=$1 new=$2 rounds=${3:-3}
ulimit -n "$(ulimit -Hn)"
load=$(ls -t target/release/deps/relay_load-* | grep -v '\.d$' | head -1)
config=$(mktemp)
printf '[limits]\nconnections_per_ip_max = 100000\n' >"$config"
port=18300
for round in $(seq "$rounds"); do
  for which in base new; do
    binary=$base; [ "$which" = new ] && binary=$new
    dir=$(mktemp -d); port=$((port + 1))
    "$binary" serve --config "$config" --listen 127.0.0.1:$port --data-dir "$dir" --cores 2 >"$dir/log" 2>&1 &
    pid=$!; sleep 1.5
    "$load" ingest ws://127.0.0.1:$port 20000 8 $pid 2>&1 | tail -2 | sed "s/^/$which $round: /"
    "$load" fanout ws://127.0.0.1:$port 1000 200 2>&1 | tail -1 | sed "s/^/$which $round: /"
    kill $pid; wait $pid 2>/dev/null || true; rm -rf "$dir"
    # Idle memory on a relay of its own: after ingest and fan-out the allocator reuses what
    # they freed, and the per-connection figure means nothing.
    dir=$(mktemp -d); port=$((port + 1))
    "$binary" serve --config "$config" --listen 127.0.0.1:$port --data-dir "$dir" --cores 2 >"$dir/log" 2>&1 &
    pid=$!; sleep 1.5
    "$load" idle ws://127.0.0.1:$port $pid 4000 1 2>&1 | tail -1 | sed "s/^/$which $round: /"
    kill $pid; wait $pid 2>/dev/null || true; rm -rf "$dir"
  done
done
rm -f "$config"

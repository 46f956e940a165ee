#!/usr/bin/env bash
# What keeping the NIP-50 index costs ingest (docs/benchmarks.md): the relay on CPU 0 with
# `[search] enabled` false and true, loadgen on CPU 1 publishing RATE signed events a second
# (80% notes, indexed; 20% reactions, not) for DURATION; prints each run's publish latency
# and events per relay CPU-second (loadgen --relay-pid), and what the index took in.
#   benches/search-ingest.sh RINGRELAY LOADGEN [DURATION] [RATE]
# ROUNDS=N repeats both settings, interleaved.
set -eu
RELAY=$1 LOADGEN=$2 DURATION=${3:-20s} RATE=${4:-2000}
PORT=7896 DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
for round in $(seq 1 "${ROUNDS:-1}"); do
  for enabled in false true; do
    rm -rf "$DIR/data"
    printf '[limits]\nconnections_per_ip_max = 100000\n\n[search]\nenabled = %s\n' "$enabled" > "$DIR/relay.toml"
    taskset -c 0 "$RELAY" serve --config "$DIR/relay.toml" --cores 1 --listen 127.0.0.1:$PORT --data-dir "$DIR/data" 2>"$DIR/relay.log" &
    RELAY_PID=$!
    for _ in $(seq 1 600); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.1; done
    echo "== round $round, search enabled = $enabled"
    taskset -c 1 "$LOADGEN" ws://127.0.0.1:$PORT --publish "$RATE" -d "$DURATION" -w 2s --relay-pid $RELAY_PID -q \
      | grep -E '^publish|^relay' || true
    sleep 2
    curl -s http://127.0.0.1:$PORT/metrics | grep -E '^ringrelay_search_indexed_total' || true
    kill -TERM $RELAY_PID; wait $RELAY_PID || true
  done
done

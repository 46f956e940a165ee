#!/usr/bin/env bash
# What permessage-deflate costs and saves in the fan-out scenario (docs/benchmarks.md): the
# relay on CPU 0 with compression off, in the shared mode and in the context mode, loadgen
# on CPU 1 with SUBSCRIBERS subscribers that all offer deflate (`--deflate`); prints for
# each the relay's CPU-seconds, deliveries per relay CPU-second, bytes per delivered event
# as text and on the wire, and fan-out latency.
#   benches/deflate-fanout.sh RINGRELAY LOADGEN [DURATION] [SUBSCRIBERS] [RATE]
# MODES="off shared" runs only the settings named; ROUNDS=N repeats them, interleaved.
set -eu
RELAY=$1 LOADGEN=$2 DURATION=${3:-20s} SUBSCRIBERS=${4:-1000} RATE=${5:-100}
PORT=7898 DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
for round in $(seq 1 "${ROUNDS:-1}"); do
  for mode in ${MODES:-off shared context}; do
    rm -rf "$DIR/data"
    case $mode in
      off) compression='enabled = false' ;;
      *) compression="mode = \"$mode\"" ;;
    esac
    printf '[limits]\nconnections_per_ip_max = 100000\n\n[compression]\n%s\ncontexts_per_core_max = 100000\n' "$compression" > "$DIR/relay.toml"
    taskset -c 0 "$RELAY" serve --config "$DIR/relay.toml" --cores 1 --listen 127.0.0.1:$PORT --data-dir "$DIR/data" 2>"$DIR/relay.log" &
    RELAY_PID=$!
    for _ in $(seq 1 600); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.1; done
    taskset -c 1 "$LOADGEN" ws://127.0.0.1:$PORT --fanout "$SUBSCRIBERS" --fanout-rate "$RATE" --deflate \
      -d "$DURATION" -w 3s --relay-pid $RELAY_PID -q --json "$DIR/run.json" >/dev/null || true
    rss=$(curl -s http://127.0.0.1:$PORT/stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["rss_bytes"])')
    python3 - "$DIR/run.json" "$mode" "$round" "$rss" <<'PY' || true
import json, sys
report = json.load(open(sys.argv[1]))["report"]
fanout = next(s for s in report["scenarios"] if s["name"] == "fanout")
counts, cpu = fanout["counts"], report["relay_cpu"]["cpu_seconds"]
delivered = max(counts["deliveries"], 1)
print(f"round {sys.argv[3]} {sys.argv[2]:8} relay {cpu:6.2f} CPU-s, {fanout['completed'] / cpu:8.0f} deliveries/CPU-s, "
      f"{counts['bytes'] / delivered:6.0f} B/delivery as text, {counts['wire_bytes'] / delivered:6.0f} on the wire, "
      f"fanout p50 {fanout['latency']['p50_ms']:.2f} ms p99 {fanout['latency']['p99_ms']:.2f} ms, "
      f"relay RSS {int(sys.argv[4]) / 2**20:.0f} MiB")
PY
    kill -TERM $RELAY_PID; wait $RELAY_PID || true
  done
done

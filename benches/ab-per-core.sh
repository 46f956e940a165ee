#!/usr/bin/env bash
# Two relay builds A and B, one core each (CPU 0), the load on CPU 1, interleaved runs:
# ingest (relay_load, events per relay CPU-second) and fan-out (loadgen, deliveries per relay
# CPU-second). Usage: benches/ab-per-core.sh RELAY_A RELAY_B RELAY_LOAD LOADGEN [ROUNDS]
# (SKIP_INGEST=1: fan-out only; EXTRA_A, EXTRA_B: TOML appended to that relay's config, e.g.
# a [write_plugin] section).
set -u
A=$1 B=$2 LOAD=$3 LOADGEN=$4 ROUNDS=${5:-3}
PORT=7893
CONFIG_A=$(mktemp --suffix .toml) CONFIG_B=$(mktemp --suffix .toml)
printf '%s\n[limits]\nconnections_per_ip_max = 100000\n' "${EXTRA_A:-}" > "$CONFIG_A"
printf '%s\n[limits]\nconnections_per_ip_max = 100000\n' "${EXTRA_B:-}" > "$CONFIG_B"
run() { # label binary config
    local dir; dir=$(mktemp -d)
    taskset -c 0 "$2" serve --config "$3" --cores 1 --listen 127.0.0.1:$PORT --data-dir "$dir" 2>/dev/null &
    local pid=$!
    for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.1; done
    [ "${SKIP_INGEST:-}" ] || echo "$1 ingest: $(taskset -c 1 "$LOAD" ingest ws://127.0.0.1:$PORT 100000 8 $pid 2>/dev/null | head -1)"
    echo "$1 fanout: $(taskset -c 1 "$LOADGEN" ws://127.0.0.1:$PORT --threads 1 --fanout 1000 --fanout-rate 6000 \
        -d 6s -w 1s --relay-pid $pid -q 2>/dev/null | grep -iE 'fanout|relay' | tr '\n' ' ')"
    kill -TERM $pid; wait $pid 2>/dev/null; rm -rf "$dir"
}
for round in $(seq 1 "$ROUNDS"); do
    run A "$A" "$CONFIG_A"
    run B "$B" "$CONFIG_B"
done
rm -f "$CONFIG_A" "$CONFIG_B"

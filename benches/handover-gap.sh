#!/usr/bin/env bash
# The gap a client sees across `serve --takeover`: a store of EVENTS events, HTTP requests
# to /healthz every 10 ms (each a new connection) across the handover; prints the slowest
# request and how many failed (curl exit 7: refused). Usage:
#   benches/handover-gap.sh RINGRELAY RELAY_LOAD [EVENTS] [CORES]
# DATA=DIR uses that data directory as it is (a store from `cargo bench --bench
# build_store`) instead of filling a new one. SETTLE=SECONDS waits that long after the probes
# start before taking over (default 2; 8 lands in the old relay's background scrub).
set -u
RELAY=$1 LOAD=$2 EVENTS=${3:-200000} CORES=${4:-2}
PORT=7896 DIR=$(mktemp -d)
DATA_DIR=${DATA:-$DIR/data}
CONFIG=$DIR/relay.toml
printf '[limits]\nconnections_per_ip_max = 100000\n' > "$CONFIG"
"$RELAY" serve --config "$CONFIG" --cores "$CORES" --listen 127.0.0.1:$PORT --data-dir "$DATA_DIR" 2>"$DIR/old.log" &
OLD=$!
for _ in $(seq 1 600); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.1; done
[ -z "${DATA:-}" ] && "$LOAD" ingest ws://127.0.0.1:$PORT "$EVENTS" 8 2>/dev/null | head -1
( end=$((SECONDS + ${PROBE_SECS:-12})); while [ $SECONDS -lt $end ]; do
    curl -s -o /dev/null -m 20 -w '%{time_total} %{http_code}\n' http://127.0.0.1:$PORT/healthz; echo "rc $?"; sleep 0.01
  done ) > "$DIR/probes" &
PROBES=$!
sleep "${SETTLE:-2}"
started=$(date +%s.%N)
"$RELAY" serve --config "$CONFIG" --cores "$CORES" --listen 127.0.0.1:$PORT --data-dir "$DATA_DIR" --takeover 2>"$DIR/new.log" &
NEW=$!
wait $OLD; echo "old relay exited with $? after $(echo "$(date +%s.%N) - $started" | bc) s"
wait $PROBES
echo "probes: $(grep -c '^rc 0' "$DIR/probes") answered, $(grep '^rc' "$DIR/probes" | grep -vc '^rc 0') failed"
echo "slowest: $(grep -v '^rc' "$DIR/probes" | sort -n | tail -1) s; median $(grep -v '^rc' "$DIR/probes" | sort -n | awk '{a[NR]=$1} END {print a[int(NR/2)+1]}') s"
kill -TERM $NEW; wait $NEW
rm -rf "$DIR"

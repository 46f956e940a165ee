#!/usr/bin/env bash
# What online compaction costs the clients while it runs (docs/benchmarks.md): the same
# store and load twice, compaction off (`compaction_dead_percent = 0`) and on (50). Each
# run starts a copy of STORE with `[retention] max_age_secs` set to keep 40 of its 90
# days (a store from `cargo bench --bench build_store` spans the last 90 days), so that
# about 55% of every segment is dead; the relay runs on CPU 0, loadgen on CPU 1, publishing
# and querying for DURATION from the start. Prints loadgen's report and what compaction did.
#   benches/compaction-cost.sh STORE RINGRELAY LOADGEN [DURATION] [PUBLISH_RATE] [QUERY_RATE]
# PERCENTS="50" runs only the settings named; RELAY_LOG=FILE keeps the relay's log there.
set -eu
STORE=$1 RELAY=$2 LOADGEN=$3 DURATION=${4:-120s} PUBLISH=${5:-200} QUERY=${6:-50}
PORT=7897 DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
metric() { curl -s http://127.0.0.1:$PORT/metrics | awk -v name="$1" '$1 ~ "^"name"({|$)" {sum += $2} END {printf "%.0f", sum}'; }
for percent in ${PERCENTS:-0 50}; do
  rm -rf "$DIR/data"; cp -a "$STORE" "$DIR/data"
  printf 'compaction_dead_percent = %s\n\n[limits]\nconnections_per_ip_max = 100000\n\n[retention]\nmax_age_secs = 3456000\n' "$percent" > "$DIR/relay.toml"
  taskset -c 0 "$RELAY" serve --config "$DIR/relay.toml" --cores 1 --listen 127.0.0.1:$PORT --data-dir "$DIR/data" 2>"${RELAY_LOG:-$DIR/relay.log}" &
  RELAY_PID=$!
  for _ in $(seq 1 600); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.1; done
  echo "== compaction_dead_percent = $percent; segments: $(metric ringrelay_shard_size_bytes) bytes"
  taskset -c 1 "$LOADGEN" ws://127.0.0.1:$PORT --publish "$PUBLISH" --query "$QUERY" --query-preload 2000 \
    -d "$DURATION" -w 2s --relay-pid $RELAY_PID -q --json "$DIR/run-$percent.json" | grep -E 'publish|query|cpu' || true
  echo "retired $(metric ringrelay_retention_retired_total) events; $(metric ringrelay_compactions_total) compactions gave back $(metric ringrelay_compaction_reclaimed_bytes_total) bytes, wrote $(metric ringrelay_compaction_written_bytes_total); segments now $(metric ringrelay_shard_size_bytes) bytes"
  grep "compacted sealed segments" "${RELAY_LOG:-$DIR/relay.log}" | sed -n '1p;$p' | cut -c1-24
  kill -TERM $RELAY_PID; wait $RELAY_PID || true
done

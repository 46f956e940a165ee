#!/usr/bin/env bash
# Side by side: ringrelay and nostr-rs-relay (cargo install nostr-rs-relay; it needs protoc)
# on this machine, one after the other, with the same pre-signed load from relay_load.
# Usage: bash benches/compare.sh [events] [latency_rate]
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-20000}
rate=${2:-2000}
work=$(mktemp -d)
trap 'pkill -f "$work" 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --release --quiet
cargo bench --bench relay_load --no-run --quiet 2>/dev/null
load=$(ls -t target/release/deps/relay_load-* | grep -v '\.d$' | head -1)

. benches/relay-configs.sh
relay_configs "$work" 7812

run() { # name url pid
  echo "== $1"
  "$load" idle "$2" "$3" 2000 | tail -1
  "$load" ingest "$2" "$events" 8 | tail -2
  "$load" latency "$2" "$rate" 10 | tail -1
  "$load" fanout "$2" 1000 100 | tail -1
}

./target/release/ringrelay serve --config "$work/ringrelay.toml" --listen 127.0.0.1:7811 --data-dir "$work/rr-data" 2>"$work/rr.log" &
rr=$!; sleep 2
run "ringrelay $(git rev-parse --short HEAD) (2 cores)" ws://127.0.0.1:7811 $rr
kill -TERM $rr; wait $rr || true

nostr-rs-relay --config "$work/nrr.toml" --db "$work/nrr-data" >"$work/nrr.log" 2>&1 &
nrr=$!; sleep 3
run "nostr-rs-relay $(nostr-rs-relay --version 2>/dev/null | awk '{print $2}')" ws://127.0.0.1:7812 $nrr
kill -TERM $nrr; wait $nrr || true

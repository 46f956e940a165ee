#!/usr/bin/env bash
# ringrelay and nostr-rs-relay side by side, measured by loadgen in one run on one machine.
# Needs nostr-rs-relay on PATH (cargo install nostr-rs-relay; it needs protoc).
# Usage: bash benches/loadgen-compare.sh [seconds] [out-dir]
# Writes one JSON report per relay and scenario, and a sweep plot per relay, to out-dir.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
out=${2:-target/loadgen-compare}
mkdir -p "$out"
work=$(mktemp -d)
trap 'pkill -f "$work" 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --release --quiet -p ringrelay -p loadgen
lg="./target/release/loadgen"
common=(-d "${seconds}s" -w 2s --drain 10s)

. benches/relay-configs.sh
relay_configs "$work" 7842

scenarios() { # name url
  local name=$1 url=$2
  echo "== $name"
  "$lg" "$url" "${common[@]}" --quiet --publish 2000 --publish-connections 16 --json "$out/$name-publish.json" | sed -n '2,4p' || true
  "$lg" "$url" "${common[@]}" --quiet --fanout 1000 --fanout-rate 200 --json "$out/$name-fanout.json" | sed -n '3,5p' || true
  "$lg" "$url" "${common[@]}" --quiet --query 200 --query-preload 20000 --json "$out/$name-query.json" | sed -n '3,5p' || true
  "$lg" "$url" "${common[@]}" --quiet --connect 2000 --connect-rate 400 --json "$out/$name-connect.json" | sed -n '3,5p' || true
  "$lg" "$url" -d 5s -w 1s --quiet --publish 1000 --publish-connections 16 --sweep --sweep-factor 1.5 --sweep-steps 8 \
    --slo 'publish.p99<10ms,publish.achieved>=95%,errors<0.1%' --plot "$out/$name-sweep.svg" --json "$out/$name-sweep.json" || true
}

./target/release/ringrelay serve --config "$work/ringrelay.toml" --listen 127.0.0.1:7841 --data-dir "$work/rr-data" 2>"$work/rr.log" &
rr=$!; sleep 2
scenarios "ringrelay" ws://127.0.0.1:7841
kill -TERM $rr; wait $rr || true

nostr-rs-relay --config "$work/nrr.toml" --db "$work/nrr-data" >"$work/nrr.log" 2>&1 &
nrr=$!; sleep 3
scenarios "nostr-rs-relay" ws://127.0.0.1:7842
kill -TERM $nrr; wait $nrr || true

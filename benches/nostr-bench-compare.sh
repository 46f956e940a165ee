#!/usr/bin/env bash
# ringrelay and nostr-rs-relay side by side under nostr-bench, per relay core: each relay
# alone on CPU 0, nostr-bench (one thread, 50 connections) on CPU 1.
# Needs nostr-bench and nostr-rs-relay on PATH (cargo install nostr-bench nostr-rs-relay;
# nostr-rs-relay needs protoc) and two CPUs.
# Usage: bash benches/nostr-bench-compare.sh [seconds]
# Per relay: `nostr-bench event` for the given time, then `nostr-bench req --limit 10` over
# what the first step stored. Prints completed operations per second, mean and max
# latency, errors, and the relay's CPU time.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
work=$(mktemp -d)
trap 'pkill -f "$work" 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --release --quiet -p ringrelay

. benches/relay-configs.sh
relay_configs "$work" 7852

cpu_seconds() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat"; }

# bench LABEL PID URL NOSTR-BENCH-ARGS...: one nostr-bench run against the relay PID serves.
bench() {
  local label=$1 pid=$2 url=$3
  shift 3
  local before after
  before=$(cpu_seconds "$pid")
  # nostr-bench runs until stopped, printing its totals every 2 s.
  timeout $((seconds + 2)) taskset -c 1 nostr-bench "$@" "$url" -c 50 -r 50 -t 1 --json >"$work/out" 2>&1 || true
  after=$(cpu_seconds "$pid")
  tail -1 "$work/out" >"$work/last.json"
  python3 - "$work/last.json" "$label" "$(echo "$after - $before" | bc)" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
stats = report["message_stats"]
done = stats["success_time"]["count"]
rate = done / report["elapsed"] * 1000
mean = stats["success_time"]["total"] / max(done, 1)
print(f"{sys.argv[2]:<28} {rate:>9.0f}/s  mean {mean:>6.2f} ms  max {stats['success_time']['max']:>4} ms"
      f"  errors {stats['error']}  relay CPU {sys.argv[3]} s")
PY
}

run() { # NAME URL then the relay command line
  local name=$1 url=$2
  shift 2
  taskset -c 0 "$@" >"$work/$name.log" 2>&1 &
  local pid=$!
  sleep 3
  bench "$name event" "$pid" "$url" event
  bench "$name req --limit 10" "$pid" "$url" req --limit 10
  kill -TERM "$pid"
  wait "$pid" || true
}

run ringrelay ws://127.0.0.1:7851 ./target/release/ringrelay serve --cores 1 --config "$work/ringrelay.toml" \
  --listen 127.0.0.1:7851 --data-dir "$work/rr-data"
run nostr-rs-relay ws://127.0.0.1:7852 nostr-rs-relay --config "$work/nrr.toml" --db "$work/nrr-data"

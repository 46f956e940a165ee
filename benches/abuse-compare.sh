#!/usr/bin/env bash
# The healthy clients' latency with and without hostile ones beside them, and the relay's
# peak memory: loadgen/scenarios/abuse.toml against the same scenario without its [abuse]
# section, and against it with a COUNT flood from many addresses instead (59 flooders, one
# per loopback address from 127.0.0.2, so per-address rate limits do not bind: the flood
# from many hosts), interleaved, the relay on CPU 0 (one core), loadgen on CPU 1.
# KINDS=... picks among healthy, abuse, many and reading (the many-address flood reading its
# answers; needs a loadgen with `[abuse] reading`).
# Usage: bash benches/abuse-compare.sh [runs] [duration]   (KINDS="healthy many": only those;
# EXTRA_CONFIG: TOML added to the relay's config)
# ABUSE_SOURCE=127.0.0.2: the abusers connect from that address, so the relay's default
# per-address rate limits (loopback, where the healthy clients come from, is exempt) meet
# them, as they would hostile clients on the internet.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-2}
duration=${2:-20s}
work=$(mktemp -d)
trap 'pkill -f "$work" 2>/dev/null || true; rm -rf "$work"' EXIT
relay=${RELAY:-target/release/ringrelay}
loadgen=${LOADGEN:-target/release/loadgen}
sed '/^\[abuse\]/,$d' loadgen/scenarios/abuse.toml >"$work/healthy.toml"
cp loadgen/scenarios/abuse.toml "$work/abuse.toml"
cp "$work/healthy.toml" "$work/many.toml"
printf '[abuse]\ncount_flooders = 59\nsource = "127.0.0.2"\nsource_count = 59\n' >>"$work/many.toml"
# `reading`: the same flood, its connections reading (and dropping) their answers, so that
# their outbound budgets do not hold them back: ~35k COUNTs a second offered.
cp "$work/many.toml" "$work/reading.toml"
printf 'reading = true\n' >>"$work/reading.toml"
# Every client comes from 127.0.0.1: the per-address cap (256) would refuse most of them.
printf '[limits]\nconnections_per_ip_max = 100000\n' >"$work/relay.toml"
# EXTRA_CONFIG: more TOML for the relay, e.g. $'[search]\nenabled = false'.
printf '%s\n' "${EXTRA_CONFIG:-}" >>"$work/relay.toml"
port=7870
for run in $(seq "$runs"); do
  for kind in ${KINDS:-healthy abuse many reading}; do
    port=$((port + 1))
    taskset -c 0 "$relay" serve --cores 1 --config "$work/relay.toml" --listen "127.0.0.1:$port" --data-dir "$work/data-$kind-$run" \
      2>"$work/relay-$kind-$run.log" &
    pid=$!
    sleep 1
    source=()
    if [ "$kind" = abuse ] && [ -n "${ABUSE_SOURCE:-}" ]; then source=(--abuse-source "$ABUSE_SOURCE"); fi
    taskset -c 1 "$loadgen" "ws://127.0.0.1:$port" --scenario "$work/$kind.toml" "${source[@]}" -d "$duration" -t 1 --quiet \
      --relay-pid "$pid" --json "$work/$kind-$run.json" >/dev/null || true
    stats=$(curl -s "http://127.0.0.1:$port/stats")
    peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    kill -TERM "$pid"; wait "$pid" || true
    python3 - "$work/$kind-$run.json" "$kind" "$peak" "$stats" <<'PY'
import json, sys
path, kind, peak_kib, stats = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
report = json.load(open(path))["report"]
parts = []
for s in report["scenarios"]:
    lat = s.get("latency", {})
    parts.append(f'{s["name"]} p50 {lat.get("p50_ms", 0):.2f} p99 {lat.get("p99_ms", 0):.2f} ms')
abuse = report.get("abuse", {})
print(f'{kind:8} | ' + " | ".join(parts) + f' | errors {report.get("errors", {})} | peak RSS {peak_kib / 1024:.0f} MiB'
      + f' | slow closes {stats["slow_consumer_closes"]}, stalls {stats["write_stall_closes"]}, cancelled {stats["queries_cancelled"]},'
      + f' outbound max {stats["outbound_bytes_max_seen"] / 1048576:.1f} MiB | {abuse}')
PY
  done
done

#!/usr/bin/env bash
# One run of a loadgen scenario against a one-core relay (relay on CPU 0, loadgen on CPU 1),
# with the relay's own figures scraped over 4 s of the measured phase: mean EVENT-to-OK time
# (ingest_duration), mean fdatasync time and events per commit, beside loadgen's publish
# p50/p99; then how many EVENT-to-OK times were over 2.5 and 5 ms and fdatasyncs over
# 0.5 ms (of how many), and the relay's and loadgen's CPU use over those 4 s. Used to tell
# a slow relay from a slow generator or host disk.
#   benches/abuse-probe.sh RELAY LOADGEN SCENARIO.toml [PORT]
#   e.g. sed '/^\[abuse\]/,$d' loadgen/scenarios/abuse.toml >/tmp/healthy.toml, then
#        benches/abuse-probe.sh target/release/ringrelay target/release/loadgen /tmp/healthy.toml
set -euo pipefail
relay=$1 loadgen=$2 scenario=$3 port=${4:-7998}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '[limits]\nconnections_per_ip_max = 100000\n' >"$work/relay.toml"
printf '%s\n' "${EXTRA_CONFIG:-}" >>"$work/relay.toml" # more TOML for the relay
taskset -c 0 "$relay" serve --cores 1 --config "$work/relay.toml" --listen "127.0.0.1:$port" --data-dir "$work/data" 2>"$work/relay.log" &
pid=$!
sleep 1
taskset -c 1 "$loadgen" "ws://127.0.0.1:$port" --scenario "$scenario" -d 15s -t 1 --quiet --relay-pid "$pid" \
  --json "$work/out.json" >/dev/null &
loadgen_pid=$!
figures='^ringrelay_(fsync_duration_seconds|ingest_duration_seconds|commit_batch_events)_(sum|count|bucket)'
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
sleep 9
curl -s "127.0.0.1:$port/metrics" | grep -E "$figures" >"$work/a.txt"
relay_a=$(ticks "$pid") loadgen_a=$(ticks "$loadgen_pid")
sleep 4
curl -s "127.0.0.1:$port/metrics" | grep -E "$figures" >"$work/b.txt"
relay_b=$(ticks "$pid") loadgen_b=$(ticks "$loadgen_pid")
cpu="relay CPU $(( (relay_b - relay_a) / 4 ))%, loadgen CPU $(( (loadgen_b - loadgen_a) / 4 ))%"
wait "$loadgen_pid" || true
kill "$pid"; wait "$pid" 2>/dev/null || true
python3 - "$work" "$cpu" <<'PY'
import json, re, sys
work, cpu = sys.argv[1], sys.argv[2]
def load(name):
    totals = {}
    for line in open(f"{work}/{name}"):
        key, value = line.rsplit(" ", 1)
        le = re.search(r'le="([^"]+)"', key)
        key = re.sub(r"\{.*\}", "", key) + (f"@{le.group(1)}" if le else "")
        totals[key] = totals.get(key, 0) + float(value)
    return totals
a, b = load("a.txt"), load("b.txt")
delta = {key: b[key] - a.get(key, 0) for key in b}
mean = lambda name: delta[f"ringrelay_{name}_sum"] / max(delta[f"ringrelay_{name}_count"], 1)
publish = next(s for s in json.load(open(f"{work}/out.json"))["report"]["scenarios"] if s["name"] == "publish")
print(f"publish p50 {publish['latency']['p50_ms']:.2f} p99 {publish['latency']['p99_ms']:.2f} ms | "
      f"relay EVENT-to-OK mean {mean('ingest_duration_seconds') * 1000:.2f} ms | "
      f"fdatasync mean {mean('fsync_duration_seconds') * 1000:.2f} ms | events per commit {mean('commit_batch_events'):.1f}")
over = lambda name, le: int(delta[f"ringrelay_{name}_count"] - delta[f"ringrelay_{name}_bucket@{le}"])
print(f"  EVENT-to-OK over 2.5 ms {over('ingest_duration_seconds', '0.0025')}, over 5 ms "
      f"{over('ingest_duration_seconds', '0.005')} of {int(delta['ringrelay_ingest_duration_seconds_count'])} | "
      f"fdatasync over 0.5 ms {over('fsync_duration_seconds', '0.0005')} of "
      f"{int(delta['ringrelay_fsync_duration_seconds_count'])} | {cpu}")
PY

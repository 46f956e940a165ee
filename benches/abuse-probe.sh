#!/usr/bin/env bash
# One run of a loadgen scenario against a one-core relay (relay on CPU 0, loadgen on CPU 1),
# with the relay's own figures scraped over 4 s of the measured phase: mean EVENT-to-OK time
# (ingest_duration), mean fdatasync time and events per commit, beside loadgen's publish
# p50/p99. Used to tell a slow relay from a slow generator or host disk.
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
figures='^ringrelay_(fsync_duration_seconds|ingest_duration_seconds|commit_batch_events)_(sum|count)'
sleep 9
curl -s "127.0.0.1:$port/metrics" | grep -E "$figures" >"$work/a.txt"
sleep 4
curl -s "127.0.0.1:$port/metrics" | grep -E "$figures" >"$work/b.txt"
wait "$loadgen_pid" || true
kill "$pid"; wait "$pid" 2>/dev/null || true
python3 - "$work" <<'PY'
import json, re, sys
work = sys.argv[1]
def load(name):
    totals = {}
    for line in open(f"{work}/{name}"):
        key, value = line.rsplit(" ", 1)
        key = re.sub(r"\{.*\}", "", key)
        totals[key] = totals.get(key, 0) + float(value)
    return totals
a, b = load("a.txt"), load("b.txt")
delta = {key: b[key] - a.get(key, 0) for key in b}
mean = lambda name: delta[f"ringrelay_{name}_sum"] / max(delta[f"ringrelay_{name}_count"], 1)
publish = next(s for s in json.load(open(f"{work}/out.json"))["report"]["scenarios"] if s["name"] == "publish")
print(f"publish p50 {publish['latency']['p50_ms']:.2f} p99 {publish['latency']['p99_ms']:.2f} ms | "
      f"relay EVENT-to-OK mean {mean('ingest_duration_seconds') * 1000:.2f} ms | "
      f"fdatasync mean {mean('fsync_duration_seconds') * 1000:.2f} ms | events per commit {mean('commit_batch_events'):.1f}")
PY

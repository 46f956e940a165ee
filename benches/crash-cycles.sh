#!/usr/bin/env bash
# kill -9 under load, over and over, on one data directory: publishers pipeline fresh events
# over 4 connections and log every acknowledged id; the relay is killed at a random moment,
# restarted, and every id acknowledged so far must be served.
#   bash benches/crash-cycles.sh [cycles] [cores]
# With DISK_FULL=1 the data directory is on a 48 MiB tmpfs (root) and each cycle first fills
# it with a filler file to within ~2 MiB, so the publishers run into a full disk before the
# kill; the filler is removed after the check, and a publish must then succeed with no
# restart.
set -euo pipefail
cd "$(dirname "$0")/.."
cycles=${1:-50}
cores=${2:-2}
relay=${RELAY:-target/release/ringrelay}
load=${RELAY_LOAD:-$(ls -t target/release/deps/relay_load-* | grep -v '\.d$' | head -1)}
work=$(mktemp -d)
data=$work/data
if [[ "${DISK_FULL:-0}" == 1 ]]; then
  mkdir -p "$work/fs"
  mount -t tmpfs -o size=48m tmpfs "$work/fs"
  data=$work/fs/data
fi
cleanup() {
  pkill -9 -f "$work" 2>/dev/null || true
  if [[ "${DISK_FULL:-0}" == 1 ]]; then umount -l "$work/fs" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
: >"$work/relay.toml"
[[ "${DISK_FULL:-0}" == 1 ]] && printf 'segment_size = 1048576\nstorage_reserve_bytes = 0\n' >"$work/relay.toml"
printf '[limits]\nconnections_per_ip_max = 100000\n' >>"$work/relay.toml"
port=$((7700 + RANDOM % 200))
start() {
  "$relay" serve --cores "$cores" --config "$work/relay.toml" --listen "127.0.0.1:$port" --data-dir "$data" \
    2>>"$work/relay.log" &
  pid=$!
  for _ in $(seq 100); do
    curl -s "http://127.0.0.1:$port/" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "the relay did not start; log:"; tail -20 "$work/relay.log"; exit 1
}
lost=0
touch "$work/acked.ids"
for cycle in $(seq "$cycles"); do
  start
  if [[ "${DISK_FULL:-0}" == 1 ]]; then
    free=$(df --output=avail -B1 "$work/fs" | tail -1)
    if ((free > 3 * 1048576)); then
      head -c $((free - 2 * 1048576)) /dev/zero >"$work/fs/filler" || true
    fi
  fi
  before=$(wc -l <"$work/acked.ids")
  "$load" acked "ws://127.0.0.1:$port" "$work/acked.ids" 20000 4 >"$work/load.out" 2>&1 &
  load_pid=$!
  # Under load: the kill comes 0.1-1.5 s after the first acknowledgement of this cycle.
  for _ in $(seq 300); do
    (($(wc -l <"$work/acked.ids") > before)) && break
    sleep 0.05
  done
  sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.2f", 0.1 + (r % 1400) / 1000 }')"
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
  wait "$load_pid" || true
  start
  if ! "$load" check "ws://127.0.0.1:$port" "$work/acked.ids" >"$work/check.out" 2>&1; then
    lost=$((lost + 1))
  fi
  resumed=""
  if [[ "${DISK_FULL:-0}" == 1 ]]; then
    refused=$(grep -c "a commit failed\|event refused" "$work/relay.log" || true)
    rm -f "$work/fs/filler"
    "$load" acked "ws://127.0.0.1:$port" "$work/after.ids" 1 1 >/dev/null 2>&1 || true
    for _ in $(seq 30); do
      [[ -s "$work/after.ids" ]] && break
      sleep 0.5
      "$load" acked "ws://127.0.0.1:$port" "$work/after.ids" 1 1 >/dev/null 2>&1 || true
    done
    [[ -s "$work/after.ids" ]] && resumed=", writes resumed" || resumed=", WRITES DID NOT RESUME"
    cat "$work/after.ids" >>"$work/acked.ids"; rm -f "$work/after.ids"
    resumed="$resumed (refusals logged so far: $refused)"
  fi
  echo "cycle $cycle: $(($(wc -l <"$work/acked.ids") - before)) acknowledged this cycle; $(cat "$work/check.out")$resumed"
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
done
echo "$cycles cycles, $(wc -l <"$work/acked.ids") acknowledged events in all, cycles with a loss: $lost"

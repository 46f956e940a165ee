#!/usr/bin/env bash
# Thread-per-core scaling on the 16-CPU device machine: the relay on CPUs 0..N-1, the load
# on CPUs 8-15. Prints everything; copies its log to $OUT.
#
# It runs the binaries beside it: copy it into a git-ignored folder (e.g. .devbin/) with
# stripped static builds of `ringrelay`, `relay_load` (cargo bench --bench relay_load
# --no-run) and a `bench.toml` holding `[limits] connections_per_ip_max = 100000`; build with
# RUSTFLAGS="-C target-feature=+crt-static" --target x86_64-unknown-linux-gnu, since the
# device's image may have an older glibc. Carry that folder and run `bash .devbin/scaling.sh`.
# Environment: ROUNDS (2), CORES_LIST ("1 2 4 8"), PER_CORE events (150000), LOAD_CPUS (8-15).
set -u
B=$(cd "$(dirname "$0")" && pwd)
exec > >(tee "$OUT/scaling.log") 2>&1
ulimit -l unlimited 2>/dev/null || ulimit -l 1048576
ulimit -n 200000 2>/dev/null || ulimit -n 65536
echo "date: $(date -u)"; uname -a; nproc; grep -m1 "model name" /proc/cpuinfo; free -g | head -2
echo "memlock $(ulimit -l) nofile $(ulimit -n)"; cat /proc/sys/kernel/io_uring_disabled 2>/dev/null
PORT=7777
start_relay() { # cores dir
    local last=$(( $1 - 1 ))
    rm -rf "$2"; mkdir -p "$2"
    taskset -c 0-$last "$B/ringrelay" serve --config "$B/bench.toml" --cores "$1" --listen 127.0.0.1:$PORT --data-dir "$2/data" > "$2.log" 2>&1 &
    RELAY=$!
    for i in $(seq 1 100); do
        if curl -sf http://127.0.0.1:$PORT/healthz >/dev/null 2>&1; then return 0; fi
        if ! kill -0 $RELAY 2>/dev/null; then echo "relay died:"; cat "$2.log"; return 1; fi
        sleep 0.1
    done
    echo "relay not up:"; cat "$2.log"; return 1
}
stop_relay() { kill -TERM $RELAY 2>/dev/null; wait $RELAY 2>/dev/null; }
DATA=""
for d in /var/tmp/rr /tmp/rr /root/rr "$B/rr" /dev/shm/rr; do
    if start_relay 1 "$d"; then DATA=$d; stop_relay; break; fi
done
[ -n "$DATA" ] || { echo "no data dir works"; exit 1; }
echo "data dir: $DATA ($(df -T "$DATA" | tail -1))"
for round in $(seq 1 ${ROUNDS:-2}); do
  for n in ${CORES_LIST:-1 2 4 8}; do
    echo "=== round $round, relay cores $n"
    start_relay $n "$DATA" || exit 1
    count=$(( ${PER_CORE:-150000} * n ))
    timeout 120 taskset -c ${LOAD_CPUS:-8-15} "$B/relay_load" ingest ws://127.0.0.1:$PORT $count 32 $RELAY
    timeout 60 taskset -c ${LOAD_CPUS:-8-15} "$B/relay_load" fanout ws://127.0.0.1:$PORT 1000 1000
    curl -s http://127.0.0.1:$PORT/stats; echo
    stop_relay
  done
done
echo "finished $(date -u)"

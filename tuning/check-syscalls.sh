#!/usr/bin/env bash
# By hand: run the relay under strace through startup, ingest, fan-out, a scrape and a clean
# stop, and check every system call it made against the unit's SystemCallFilter
# (@system-service without @privileged). Needs strace, systemd-analyze and a built relay.
#   tuning/check-syscalls.sh [RINGRELAY] [RELAY_LOAD]
set -u
RELAY=${1:-target/release/ringrelay}
LOAD=${2:-$(ls target/release/deps/relay_load-* 2>/dev/null | grep -v '\.d$' | head -1)}
DIR=$(mktemp -d) PORT=7898
printf '[limits]\nconnections_per_ip_max = 100000\n' > "$DIR/relay.toml"
strace -f -qq -o "$DIR/trace" "$RELAY" serve --cores 2 --listen 127.0.0.1:$PORT --data-dir "$DIR/data" --config "$DIR/relay.toml" 2>"$DIR/log" &
TRACED=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.1; done
"$LOAD" ingest ws://127.0.0.1:$PORT 2000 4 2>/dev/null | head -1
"$LOAD" fanout ws://127.0.0.1:$PORT 20 50 2>/dev/null | tail -1
curl -s http://127.0.0.1:$PORT/metrics >/dev/null
kill -TERM "$(pgrep -f "listen 127.0.0.1:$PORT" | grep -v "^$TRACED$" | head -1)"; wait $TRACED
expand() { # a syscall group, its nested groups expanded
    for entry in $(systemd-analyze syscall-filter "$1" | tr -d ' ' | grep -v '^#\|^$' | tail -n +2); do
        case $entry in @*) expand "$entry" ;; *) echo "$entry" ;; esac
    done
}
allowed=$(expand @system-service | sort -u) denied=$(expand @privileged | sort -u)
used=$(awk '{print $2}' "$DIR/trace" | sed -E 's/\(.*//' | grep -E '^[a-z_0-9]+$' | sort -u)
status=0
for call in $used; do
    if ! grep -qx "$call" <<<"$allowed" || grep -qx "$call" <<<"$denied"; then echo "FILTERED: $call"; status=1; fi
done
echo "$(wc -w <<<"$used") system calls used, $([ $status = 0 ] && echo 'all allowed by the unit' || echo 'some filtered')"
rm -rf "$DIR"
exit $status

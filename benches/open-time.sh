#!/bin/bash
# By hand (docs/benchmarks.md, "A store builder for benchmarks"): benches/open-time.sh DATA_DIR [PORT]
# Time from `ringrelay serve` to listening on DIR, and the RSS (anonymous and file-backed)
# 2 s after; then stop it. RINGRELAY=path runs another build; COLD=1 drops the page cache
# first (root).
dir=$1; port=${2:-17900}
bin=${RINGRELAY:-"$(dirname "$0")/../target/release/ringrelay"}
[ -n "$COLD" ] && { sync; echo 3 > /proc/sys/vm/drop_caches; }
start=$(date +%s.%N)
"$bin" serve --listen 127.0.0.1:$port --data-dir "$dir" --cores 2 > "${TMPDIR:-/tmp}/open-time.log" 2>&1 &
pid=$!
log="${TMPDIR:-/tmp}/open-time.log"
# At most 10 minutes, and not past the relay's own end.
for _ in $(seq 30000); do
    grep -q 'listening on' "$log" && break
    kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.02
done
ready=$(date +%s.%N)
sleep 2
rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
anon=$(awk '/RssAnon/ {print $2}' /proc/$pid/status)
file=$(awk '/RssFile/ {print $2}' /proc/$pid/status)
kill $pid; wait $pid 2>/dev/null
echo "open: $(echo "$ready - $start" | bc) s; RSS 2 s after: $((rss/1024)) MiB (anonymous $((anon/1024)) MiB, file $((file/1024)) MiB)"

#!/usr/bin/env bash
# Report whether this host is set up for ringrelay. Changes nothing; exit 1 if something
# required is missing.
set -u
status=0
ok() { printf 'ok    %s\n' "$*"; }
warn() { printf 'warn  %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; status=1; }

cores=$(nproc)
memlock=$(ulimit -l)
if [ "$memlock" = "unlimited" ]; then
  ok "locked memory: unlimited"
elif [ "$memlock" -ge $((cores * 4096)) ] && [ "$memlock" -ge 8192 ]; then
  ok "locked memory: ${memlock} KiB for ${cores} cores"
else
  fail "locked memory: ${memlock} KiB; need at least $((cores * 4096 > 8192 ? cores * 4096 : 8192)) KiB (ulimit -l / LimitMEMLOCK)"
fi

nofile=$(ulimit -Hn)  # the relay raises its soft limit to this
if [ "$nofile" = "unlimited" ] || [ "$nofile" -ge 65536 ]; then ok "open files: $nofile"; else warn "open files (hard limit): $nofile (LimitNOFILE=1048576 recommended)"; fi

if [ -e /proc/sys/kernel/io_uring_disabled ] && [ "$(cat /proc/sys/kernel/io_uring_disabled)" != "0" ]; then
  fail "io_uring is disabled (kernel.io_uring_disabled=$(cat /proc/sys/kernel/io_uring_disabled))"
else
  ok "io_uring available (kernel $(uname -r))"
fi

somaxconn=$(cat /proc/sys/net/core/somaxconn 2>/dev/null || echo 0)
if [ "$somaxconn" -ge 4096 ]; then ok "net.core.somaxconn=$somaxconn"; else warn "net.core.somaxconn=$somaxconn (4096+ recommended, see sysctl.conf)"; fi

migrate=$(cat /proc/sys/net/ipv4/tcp_migrate_req 2>/dev/null || echo missing)
case "$migrate" in
  1) ok "net.ipv4.tcp_migrate_req=1 (a handover moves queued connections to the new relay)" ;;
  missing) warn "net.ipv4.tcp_migrate_req is missing (Linux 5.14+): a handover resets connections queued at the old relay" ;;
  *) warn "net.ipv4.tcp_migrate_req=$migrate: a handover (serve --takeover) resets connections queued at the old relay; set 1 (sysctl.conf)" ;;
esac

dir=${1:-ringrelay-data}
target=$dir; [ -e "$target" ] || target=$(dirname "$(readlink -f "$dir")")
fstype=$(stat -f -c %T "$target" 2>/dev/null || echo unknown)
case "$fstype" in
  tmpfs|ramfs) fail "data directory $dir is on $fstype, which has no O_DIRECT" ;;
  *) ok "data directory $dir on $fstype" ;;
esac
exit $status

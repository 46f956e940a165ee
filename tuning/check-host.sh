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
elif [ "$memlock" -ge $((cores * 8192)) ]; then
  ok "locked memory: ${memlock} KiB for ${cores} cores"
elif [ "$memlock" -ge $((cores * 4096)) ] && [ "$memlock" -ge 8192 ]; then
  warn "locked memory: ${memlock} KiB for ${cores} cores runs, but glommio cannot register its poll ring's buffers (a warning at start); 8 MiB per core or LimitMEMLOCK=infinity"
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

kernel=$(uname -r)
major=${kernel%%.*} rest=${kernel#*.} minor=${rest%%.*}
if [ "$major" -gt 5 ] || { [ "$major" -eq 5 ] && [ "$minor" -ge 14 ]; }; then
  ok "kernel $kernel"
else
  warn "kernel $kernel: 5.14 or later is advised (io_uring maturity, tcp_migrate_req); 5.8 is the minimum"
fi

somaxconn=$(cat /proc/sys/net/core/somaxconn 2>/dev/null || echo 0)
if [ "$somaxconn" -ge 4096 ]; then ok "net.core.somaxconn=$somaxconn"; else warn "net.core.somaxconn=$somaxconn (4096+ recommended, see sysctl.conf)"; fi

migrate=$(cat /proc/sys/net/ipv4/tcp_migrate_req 2>/dev/null || echo missing)
case "$migrate" in
  1) ok "net.ipv4.tcp_migrate_req=1 (a handover moves queued connections to the new relay)" ;;
  missing) warn "net.ipv4.tcp_migrate_req is missing (Linux 5.14+): a handover resets connections queued at the old relay" ;;
  *) warn "net.ipv4.tcp_migrate_req=$migrate: a handover (serve --takeover) resets connections queued at the old relay; set 1 (sysctl.conf)" ;;
esac

maps=$(cat /proc/sys/vm/max_map_count 2>/dev/null || echo 0)
if [ "$maps" -ge 262144 ]; then ok "vm.max_map_count=$maps"; else warn "vm.max_map_count=$maps: each sealed segment is a memory map; 262144 for large stores (sysctl.conf)"; fi

governors=$(cat /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor 2>/dev/null | sort -u | tr '\n' ' ')
case "$governors" in
  "") ok "CPU frequency: no cpufreq governor exposed (a VM, or fixed by firmware)" ;;
  "performance ") ok "CPU frequency governor: performance" ;;
  *) warn "CPU frequency governor: $governors(performance keeps latency steady: cpupower frequency-set -g performance)" ;;
esac

thp=$(sed -E 's/.*\[(.*)\].*/\1/' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo unknown)
case "$thp" in
  always) warn "transparent huge pages: always (compaction stalls can add latency; madvise is enough)" ;;
  *) ok "transparent huge pages: $thp" ;;
esac

clock=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null || echo unknown)
case "$clock" in
  tsc|kvm-clock|arch_sys_counter) ok "clock source: $clock" ;;
  *) warn "clock source: $clock (tsc or kvm-clock make timestamps and timers cheap; hpet/acpi_pm are slow)" ;;
esac

dir=${1:-ringrelay-data}
target=$dir; [ -e "$target" ] || target=$(dirname "$(readlink -f "$dir")")
fstype=$(stat -f -c %T "$target" 2>/dev/null || echo unknown)
case "$fstype" in
  tmpfs|ramfs) fail "data directory $dir is on $fstype, which has no O_DIRECT" ;;
  *) ok "data directory $dir on $fstype" ;;
esac
options=$(findmnt -n -o OPTIONS --target "$target" 2>/dev/null || echo unknown)
case ",$options," in
  *,nobarrier,*|*,barrier=0,*) fail "data directory mounted with $options: without barriers an fdatasync does not make data durable" ;;
  *,noatime,*|*,relatime,*) ok "data directory mount options: $options" ;;
  *) warn "data directory mount options: $options (noatime saves a metadata write per read)" ;;
esac
exit $status

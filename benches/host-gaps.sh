#!/usr/bin/env bash
# How much CPU time the host itself takes from this machine: a loop reading CLOCK_MONOTONIC
# on each listed CPU at once for SECS seconds, counting the gaps over 0.5, 2 and 5 ms it
# sees (a timer tick, an interrupt, another thread, or the hypervisor running something
# else). Run it with every CPU busy and with one, to tell the host's noise from the relay's.
#   benches/host-gaps.sh [SECS] [CPUS]   e.g. benches/host-gaps.sh 10 "0 1"
set -euo pipefail
secs=${1:-10} cpus=${2:-"0 1"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/gaps.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
  double secs = atof(argv[1]), start = now(), last = start, lost = 0, longest = 0;
  long over_half = 0, over_2 = 0, over_5 = 0;
  for (double t = start; t - start < secs; last = t) {
    t = now();
    double gap = t - last;
    if (gap > 0.0005) { lost += gap; over_half++; over_2 += gap > 0.002; over_5 += gap > 0.005; if (gap > longest) longest = gap; }
  }
  printf("CPU %s: gaps over 0.5 ms %ld, over 2 ms %ld, over 5 ms %ld; %.1f ms lost in %.0f s, longest %.2f ms\n",
         argv[2], over_half, over_2, over_5, lost * 1000, secs, longest * 1000);
  return 0;
}
C
cc -O2 -o "$work/gaps" "$work/gaps.c"
for cpu in $cpus; do taskset -c "$cpu" "$work/gaps" "$secs" "$cpu" & done
wait

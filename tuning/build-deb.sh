#!/usr/bin/env bash
# Build the Debian package (cargo deb, which builds the release binary) and check what it
# holds: the files, the conffile, the system user and the unit in its maintainer scripts,
# and that the packaged binary accepts the packaged config. Exit 1 on anything missing.
#   cargo install cargo-deb; tuning/build-deb.sh
set -eu
cd "$(dirname "$0")/.."
cargo deb "$@" >/dev/null
deb=$(ls -t target/debian/ringrelay_*.deb | head -1)
echo "built $deb ($(du -h "$deb" | cut -f1))"
status=0
check() { if eval "$2"; then echo "ok    $1"; else echo "FAIL  $1"; status=1; fi; }
contents=$(dpkg-deb -c "$deb" | awk '{print $6}')
for path in ./usr/bin/ringrelay ./etc/ringrelay/ringrelay.toml ./usr/lib/systemd/system/ringrelay.service \
    ./usr/lib/systemd/system/ringrelay@.service ./usr/share/ringrelay/sysctl.conf ./usr/share/ringrelay/check-host \
    ./usr/share/doc/ringrelay/README.md ./usr/share/doc/ringrelay/operations.md ./usr/share/doc/ringrelay/tuning.md \
    ./usr/share/doc/ringrelay/monitoring/grafana-dashboard.json ./usr/share/doc/ringrelay/monitoring/ringrelay-alerts.yml; do
    check "contains $path" "grep -qx '$path' <<<\"\$contents\""
done
work=$(mktemp -d)
dpkg-deb -e "$deb" "$work/control"
dpkg-deb -x "$deb" "$work/root"
check "the config is a conffile" "grep -qx /etc/ringrelay/ringrelay.toml '$work/control/conffiles'"
check "depends on adduser" "dpkg-deb -f '$deb' Depends | grep -q adduser"
check "postinst creates the ringrelay system user" "grep -q 'adduser --system' '$work/control/postinst'"
check "postinst enables the unit" "grep -q 'deb-systemd-helper' '$work/control/postinst'"
check "the binary runs" "'$work/root/usr/bin/ringrelay' --version >/dev/null"
check "the packaged config checks" "'$work/root/usr/bin/ringrelay' check-config '$work/root/etc/ringrelay/ringrelay.toml' >/dev/null"
check "the unit passes systemd-analyze verify" \
    "! command -v systemd-analyze >/dev/null || systemd-analyze verify '$work/root/usr/lib/systemd/system/ringrelay.service' 2>&1 | grep -v 'is not executable' | { ! grep -q .; }"
rm -rf "$work"
exit $status

//! The relay through another implementation's client library: nostr-tools (JavaScript), run
//! by node against the real binary. `tests/clients/` holds the check and its pinned
//! dependencies, installed from the npm registry into the target directory on first use.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::relay::Relay;

const CHECKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");

/// A directory holding the checks and their node_modules, installed by `npm ci` when the
/// lockfile changed since the last install.
pub fn installed_checks() -> PathBuf {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|out| out.status.success()),
        "this test needs node (20.19 or later) and npm: `apt-get install nodejs npm`, as .ci/run does"
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("client-checks");
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::read(Path::new(CHECKS).join("package-lock.json")).unwrap();
    let installed_lock = dir.join("node_modules/.ringrelay-installed-lock");
    if std::fs::read(&installed_lock).ok().as_deref() != Some(lock.as_slice()) {
        for file in ["package.json", "package-lock.json"] {
            std::fs::copy(Path::new(CHECKS).join(file), dir.join(file)).unwrap();
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("npm runs");
        assert!(status.success(), "npm ci in {} failed", dir.display());
        std::fs::write(&installed_lock, &lock).unwrap();
    }
    // Node resolves the scripts' imports next to the scripts.
    for script in ["check.mjs", "nostr-tools.mjs", "nip98.mjs", "ndk-sync.mjs", "deflate.mjs", "search.mjs"] {
        std::fs::copy(Path::new(CHECKS).join(script), dir.join(script)).unwrap();
    }
    dir
}

/// Run the check `script` against `relay`; it must pass.
fn run_check(script: &str, relay: &Relay) {
    let checks = installed_checks();
    let output = Command::new("node")
        .arg(checks.join(script))
        .arg(format!("ws://127.0.0.1:{}", relay.port))
        .output()
        .expect("node runs");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && report.contains("all passed"),
        "{script} against the relay:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn nostr_tools_publishes_queries_counts_and_subscribes() {
    let data = tempfile::tempdir().unwrap();
    run_check("nostr-tools.mjs", &Relay::start(data.path(), 2));
}

#[test]
fn node_ws_clients_with_and_without_permessage_deflate_read_the_same() {
    let data = tempfile::tempdir().unwrap();
    let relay = Relay::start(data.path(), 2);
    run_check("deflate.mjs", &relay);
    let stats = relay.stats();
    assert!(stats["compressed_connections"].as_u64() >= Some(3), "{stats}");
    let (sent, wire) = (stats["sent_bytes"].as_u64().unwrap(), stats["sent_wire_bytes"].as_u64().unwrap());
    assert!(wire < sent, "sent {sent} bytes as {wire} on the wire");
    let (received, received_wire) =
        (stats["received_bytes"].as_u64().unwrap(), stats["received_wire_bytes"].as_u64().unwrap());
    assert!(received_wire < received, "received {received} bytes as {received_wire}");
}

#[test]
fn nostr_tools_searches_with_nip50() {
    let data = tempfile::tempdir().unwrap();
    run_check("search.mjs", &Relay::start(data.path(), 2));
}

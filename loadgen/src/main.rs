//! `loadgen`: an open-loop load generator for any NIP-01 relay.
//!
//! The scenarios land with their own issue; until then the binary explains itself.

fn main() {
    eprintln!(
        "loadgen: open-loop SLO load generator for Nostr relays\n\
         usage: loadgen --relay ws://HOST:PORT [--scenario FILE] [--slo SPEC] [--json FILE]\n\
         status: scenarios are not implemented yet; see docs/benchmarks.md"
    );
    std::process::exit(2);
}

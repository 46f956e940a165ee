//! The fuzz targets' regression inputs, replayed through the same entry points
//! (`ringrelay::fuzzing`): every input a fuzzer found a problem with, plus the seeds each
//! target started from. The fuzzers themselves run by hand (fuzz/Cargo.toml).

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions").join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&bytes));
        assert!(outcome.is_ok(), "{} panics again", path.display());
        count += 1;
    }
    assert!(count > 0, "no inputs in {}", dir.display());
}

#[test]
fn segment_inputs() {
    replay("segment", ringrelay::fuzzing::segment);
}

#[test]
fn manifest_inputs() {
    replay("manifest", ringrelay::fuzzing::manifest);
}

#[test]
fn event_inputs() {
    replay("event", ringrelay::fuzzing::event);
}

#[test]
fn neg_message_inputs() {
    replay("neg_message", ringrelay::fuzzing::neg_message);
}

#[test]
fn relay_message_inputs() {
    replay("relay_message", ringrelay::fuzzing::relay_message);
}

#[test]
fn client_message_inputs() {
    replay("client_message", ringrelay::fuzzing::client_message);
}

#[test]
fn framed_records_inputs() {
    replay("framed_records", ringrelay::fuzzing::framed_records);
}

#[test]
fn search_query_inputs() {
    replay("search_query", ringrelay::fuzzing::search_query);
}

#[test]
fn compressed_message_inputs() {
    replay("compressed_message", ringrelay::fuzzing::compressed_message);
}

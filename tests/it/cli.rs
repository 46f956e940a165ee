//! The offline commands, run as the operator runs them: the real binary on real files.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::support::{keys, signed, verified};

pub fn ringrelay(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringrelay"))
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn served(json: &str) -> String {
    verified(json).json().to_owned()
}

fn sample_events() -> Vec<String> {
    (0..30u32)
        .map(|i| {
            let kind = if i % 10 == 9 { 7 } else { 1 };
            signed(&keys(500 + i % 4), kind, 1_700_000_000 + u64::from(i), &[&["t", "cli"]], &format!("cli {i}"))
        })
        .collect()
}

#[test]
fn import_export_verify_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let events = sample_events();
    let mut input = events.join("\n");
    input.push_str("\nnot json\n");
    input.push_str(&events[0].replace("cli 0", "cli zero"));
    input.push('\n');
    input.push_str(&events[1]);
    input.push_str("\n\n");
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, &input).unwrap();

    let output = ringrelay(&["import", "--data-dir", data, "--shards", "2", file.to_str().unwrap()], None);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("read 33 lines: 30 accepted, 1 duplicate, 2 rejected"), "{stderr}");
    assert!(stderr.contains("1  invalid: malformed event json"), "{stderr}");
    assert!(stderr.contains("1  invalid: id mismatch"), "{stderr}");

    let output = ringrelay(&["export", "--data-dir", data], None);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let expected: Vec<String> = events.iter().map(|j| served(j)).collect();
    assert_eq!(text(&output.stdout).lines().collect::<Vec<_>>(), expected);

    let output = ringrelay(&["export", "--data-dir", data, "--filter", r#"{"kinds":[7]}"#], None);
    let sevens: Vec<String> = expected.iter().filter(|j| j.contains("\"kind\":7")).cloned().collect();
    assert_eq!(sevens.len(), 3);
    assert_eq!(text(&output.stdout).lines().collect::<Vec<_>>(), sevens);

    let output = ringrelay(&["export", "--data-dir", data, "--filter", r#"{"bogus":1}"#], None);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("unsupported: filter field `bogus`"), "{}", text(&output.stderr));

    let output = ringrelay(&["verify", data, "--signatures"], None);
    assert!(output.status.success(), "{}", text(&output.stdout));
    assert!(text(&output.stdout).contains("30 records, 0 problems"), "{}", text(&output.stdout));

    // Importing the export again from stdin changes nothing.
    let exported = ringrelay(&["export", "--data-dir", data], None).stdout;
    let output = ringrelay(&["import", "--data-dir", data, "-"], Some(&exported));
    assert!(text(&output.stderr).contains("0 accepted, 30 duplicate, 0 rejected"), "{}", text(&output.stderr));
}

#[test]
fn verify_reports_damage_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_str = data.to_str().unwrap();
    let events = sample_events();
    for half in events.chunks(15) {
        let output =
            ringrelay(&["import", "--data-dir", data_str, "--shards", "1", "-"], Some(half.join("\n").as_bytes()));
        assert!(output.status.success());
    }
    let segments = ringrelay::store::segment::list_segments(&data.join("shard-000")).unwrap();
    assert_eq!(segments.len(), 2);
    let first = &segments[0].1;
    let mut bytes = std::fs::read(first).unwrap();
    bytes[4096 + 200] ^= 0x01;
    std::fs::write(first, &bytes).unwrap();
    let output = ringrelay(&["verify", data_str], None);
    let stdout = text(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(stdout.contains(&format!("{} @ 4096: record checksum mismatch", first.display())), "{stdout}");
    assert!(stdout.contains("1 problems"), "{stdout}");
    // Opening for writing refuses too, naming the same place, once the segment is read at
    // open (as it is without its index part).
    ringrelay::store::part::remove(first).unwrap();
    let output = ringrelay(&["import", "--data-dir", data_str, "-"], Some(b""));
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("corrupt record at offset 4096"), "{}", text(&output.stderr));
}

#[test]
fn verify_names_a_seal_that_does_not_match() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_str = data.to_str().unwrap();
    let input = sample_events().join("\n");
    assert!(ringrelay(&["import", "--data-dir", data_str, "--shards", "1", "-"], Some(input.as_bytes()))
        .status
        .success());
    let segments = ringrelay::store::segment::list_segments(&data.join("shard-000")).unwrap();
    let path = &segments[0].1;
    let mut bytes = std::fs::read(path).unwrap();
    let seal = ringrelay::store::format::seal_offset(&bytes).expect("import closes with a seal");
    assert!(ringrelay(&["verify", data_str], None).status.success());
    ringrelay::store::format::write_seal(&mut bytes, seal, &[7; 32]);
    std::fs::write(path, &bytes).unwrap();
    let output = ringrelay(&["verify", data_str], None);
    let stdout = text(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    let expected = format!("{} @ {seal}: the segment's seal does not match its contents", path.display());
    assert!(stdout.contains(&expected), "{stdout}");
}

#[test]
fn compact_drops_dead_records_and_keeps_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let author = keys(600);
    let mut lines = Vec::new();
    for version in 0..20u64 {
        lines.push(signed(&author, 0, 1_700_000_000 + version, &[], &format!("profile v{version}")));
    }
    let doomed = signed(&author, 1, 1_700_000_100, &[], "to be deleted");
    let kept = signed(&author, 1, 1_700_000_101, &[], "kept");
    let deletion = signed(&author, 5, 1_700_000_102, &[&["e", &verified(&doomed).id().to_hex()]], "");
    lines.extend([doomed, kept.clone(), deletion.clone()]);
    let output = ringrelay(&["import", "--data-dir", data, "--shards", "1", "-"], Some(lines.join("\n").as_bytes()));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let before = text(&ringrelay(&["export", "--data-dir", data], None).stdout);
    // A search index the relay kept: its checkpoint would not know the rewritten segments.
    let search = std::path::Path::new(data).join("shard-000/search");
    std::fs::create_dir_all(&search).unwrap();
    std::fs::write(search.join("meta.json"), b"{}").unwrap();

    let output = ringrelay(&["compact", "--data-dir", data], None);
    assert!(!search.exists(), "compaction removes the search index, rebuilt at the next start");
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(stdout.contains("(23 records) into 1 segments (3 records)"), "{stdout}");
    let after = text(&ringrelay(&["export", "--data-dir", data], None).stdout);
    assert_eq!(before, after);
    let expected = [served(&lines[19]), served(&kept), served(&deletion)];
    assert_eq!(after.lines().collect::<Vec<_>>(), expected);
    assert!(ringrelay(&["verify", data], None).status.success());
}

/// Checked-in stores written by each format version must read back exactly, so a format
/// change can never pass silently.
#[test]
fn fixture_stores_read_back() {
    for version in [1u32, 2, 3] {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/store-v{version}"));
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("store");
        crate::support::copy_dir(&fixture.join("data"), &copy);
        let copy = copy.to_str().unwrap();
        let output = ringrelay(&["export", "--data-dir", copy], None);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let expected = std::fs::read_to_string(fixture.join("expected.jsonl")).unwrap();
        assert_eq!(text(&output.stdout), expected);
        let output = ringrelay(&["verify", copy, "--signatures"], None);
        assert!(output.status.success(), "{}", text(&output.stdout));
        let segment = std::fs::read(fixture.join("data/shard-000/seg-0000000001.rr")).unwrap();
        let header = ringrelay::store::format::SegmentHeader::decode(&segment).unwrap();
        assert_eq!((header.shard_id, header.segment_id, header.key_check), (0, 1, None));
        assert_eq!(&segment[8..12], &version.to_le_bytes(), "format version {version}");
        // Versions 2 and later end a closed segment with a seal; version 1 has none.
        assert_eq!(ringrelay::store::format::seal_offset(&segment).is_some(), version >= 2);
    }
}

/// The writer must still produce the current format byte for byte: importing the fixture's
/// input into a fresh store gives the same records and seal as the checked-in segment.
#[test]
fn writer_still_writes_the_fixture_format() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v3");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let input = fixture.join("input.jsonl");
    let args = ["import", "--data-dir", data.to_str().unwrap(), "--shards", "1", input.to_str().unwrap()];
    assert!(ringrelay(&args, None).status.success());
    let fresh = std::fs::read(data.join("shard-000/seg-0000000001.rr")).unwrap();
    let checked_in = std::fs::read(fixture.join("data/shard-000/seg-0000000001.rr")).unwrap();
    // The header differs only in its creation time and checksum, and so the seal, which
    // covers the header, differs in its hash (and its own checksum); the records and the
    // seal's place and type are identical.
    assert_eq!(fresh.len(), checked_in.len());
    assert_eq!(fresh[..24], checked_in[..24]);
    let seal = ringrelay::store::format::seal_offset(&checked_in).expect("the fixture is sealed");
    assert_eq!(ringrelay::store::format::seal_offset(&fresh), Some(seal));
    assert!(fresh[4096..seal + 16] == checked_in[4096..seal + 16], "records or seal header differ");
}

/// `serve` run until it exits by itself (bounded): its status and stderr.
fn serve_expecting_exit(data: &str, extra: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringrelay"))
        .args(["serve", "--data-dir", data, "--listen", "127.0.0.1:0", "--cores", "1"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started on a damaged data directory");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

/// The measured case: one flipped byte in the middle of the newest segment after a clean
/// stop. `serve` refuses to start and names the file and offset, `verify` reports it until
/// the operator acts, `repair` moves the damaged record aside and keeps every other one, and
/// then the store opens clean (`verify`) and holds them all (`export`, the same open as
/// `serve`).
#[test]
fn damage_in_the_newest_segment_stops_serve_until_repair() {
    for encrypted in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let data_str = data.to_str().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "ab".repeat(32)).unwrap();
        let key_args: Vec<&str> = match encrypted {
            true => vec!["--key-file", key_file.to_str().unwrap()],
            false => vec![],
        };
        let events = sample_events();
        let mut args = vec!["import", "--data-dir", data_str, "--shards", "1"];
        args.extend(&key_args);
        args.push("-");
        assert!(ringrelay(&args, Some(events.join("\n").as_bytes())).status.success());
        let segments = ringrelay::store::segment::list_segments(&data.join("shard-000")).unwrap();
        let newest = &segments.last().unwrap().1;
        let mut bytes = std::fs::read(newest).unwrap();
        let mut spans = Vec::new();
        let key = encrypted.then(|| ringrelay::store::crypto::SegmentKey::from_bytes([0xab; 32]));
        ringrelay::store::segment::scan(&bytes, key.as_ref(), |span, _| spans.push(*span)).unwrap();
        let victim = spans[spans.len() / 2];
        bytes[victim.payload_range().start + 5] ^= 0x04;
        std::fs::write(newest, &bytes).unwrap();

        let (status, stderr) = serve_expecting_exit(data_str, &key_args);
        assert!(!status.success());
        let named = format!("{}: corrupt record at offset {}", newest.display(), victim.offset);
        assert!(stderr.contains(&named), "{stderr}");
        for _ in 0..2 {
            let mut args = vec!["verify", data_str];
            args.extend(&key_args);
            let output = ringrelay(&args, None);
            assert!(!output.status.success());
            let expected = format!("{} @ {}: record checksum mismatch", newest.display(), victim.offset);
            assert!(text(&output.stdout).contains(&expected), "{}", text(&output.stdout));
        }

        let search = data.join("shard-000/search");
        std::fs::create_dir_all(&search).unwrap();
        let mut args = vec!["repair", data_str];
        args.extend(&key_args);
        let output = ringrelay(&args, None);
        let report = text(&output.stdout);
        assert!(output.status.success(), "{report}{}", text(&output.stderr));
        assert!(!search.exists(), "a repaired shard's search index is removed, rebuilt at the next start");
        assert!(report.contains(&format!("{} @ {}: ", newest.display(), victim.offset)), "{report}");
        assert!(report.contains(&format!("{} valid records kept", spans.len() - 1)), "{report}");
        assert!(report.contains("1 repaired"), "{report}");
        let quarantine = data.join("shard-000").join("quarantine");
        assert_eq!(std::fs::read_dir(&quarantine).unwrap().count(), 2, "the damaged range and the original");

        let mut args = vec!["verify", data_str];
        args.extend(&key_args);
        let output = ringrelay(&args, None);
        assert!(output.status.success(), "{}", text(&output.stdout));
        let mut args = vec!["export", "--data-dir", data_str];
        args.extend(&key_args);
        let exported = text(&ringrelay(&args, None).stdout);
        let served_events: Vec<String> = events.iter().map(|e| served(e)).collect();
        let kept = served_events.iter().filter(|e| exported.contains(e.as_str())).count();
        assert_eq!(kept, events.len() - 1, "every event but the damaged one");
        // And a second repair finds nothing to do.
        let mut args = vec!["repair", data_str];
        args.extend(&key_args);
        assert!(text(&ringrelay(&args, None).stdout).contains("0 repaired"));
    }
}

/// `check-config` prints the effective config of a valid file, and names an unknown key
/// with its line.
#[test]
fn check_config_prints_the_effective_config_and_names_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, "cores = 2\n[limits]\nlimit_max = 100\nlimit_default = 50\n").unwrap();
    let output = ringrelay(&["check-config", path.to_str().unwrap()], None);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    for line in ["cores = 2", "limit_max = 100", "limit_default = 50", "storage_reserve_bytes = 268435456", "[log]"] {
        assert!(stdout.lines().any(|l| l == line), "{line} missing from\n{stdout}");
    }
    std::fs::write(&path, "cores = 2\nbogus = 1\n").unwrap();
    let output = ringrelay(&["check-config", path.to_str().unwrap()], None);
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("unknown field `bogus`") && stderr.contains("line 2"), "{stderr}");
}

/// Logs written to a file or a pipe carry no ANSI escapes, and `format = "json"` gives one
/// JSON object per line: seen on the warning a torn tail makes at start.
#[test]
fn logs_are_plain_or_json_when_not_on_a_terminal() {
    for format in ["text", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let data_str = data.to_str().unwrap();
        let input = sample_events().join("\n");
        assert!(ringrelay(&["import", "--data-dir", data_str, "--shards", "1", "-"], Some(input.as_bytes()))
            .status
            .success());
        // As after a crash mid-commit: no clean mark, and half a record at the end.
        std::fs::remove_file(data.join("shard-000/CLEAN")).unwrap();
        let segment = &ringrelay::store::segment::list_segments(&data.join("shard-000")).unwrap()[0].1;
        let mut bytes = std::fs::read(segment).unwrap();
        let seal = ringrelay::store::format::seal_offset(&bytes).unwrap();
        bytes.truncate(seal + 20);
        std::fs::write(segment, &bytes).unwrap();
        let config = dir.path().join("relay.toml");
        std::fs::write(&config, format!("[log]\nformat = \"{format}\"\n")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringrelay"))
            .args(["serve", "--data-dir", data_str, "--listen", "127.0.0.1:0", "--cores", "1", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut lines = Vec::new();
        for line in std::io::BufRead::lines(stderr).map_while(Result::ok) {
            let listening = line.contains("listening on");
            lines.push(line);
            if listening || lines.len() > 50 {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let warning = lines.iter().find(|l| l.contains("cutting torn tail")).unwrap_or_else(|| panic!("{lines:?}"));
        if format == "text" {
            assert!(
                warning.contains("core{core=0}") && warning.contains("shard=0"),
                "names its core and shard: {warning}"
            );
        }
        assert!(lines.iter().all(|l| !l.contains('\u{1b}')), "ANSI escapes in {lines:?}");
        if format == "json" {
            let value: serde_json::Value = serde_json::from_str(warning).expect("a JSON log line");
            assert_eq!(value["level"], "WARN", "{value}");
            assert_eq!(value["span"]["core"], 0, "the line names its core: {value}");
            assert_eq!(value["fields"]["shard"], 0, "and its shard: {value}");
            assert_eq!(value["fields"]["message"], "cutting torn tail of the newest segment", "{value}");
        }
    }
}

/// The benchmark store builder (`tools::bench_store`, unsigned events) makes a data
/// directory the relay opens and serves: its events, replaceable ones reduced to the newest
/// per author; `verify` finds its records sound and, with `--signatures`, every signature
/// bad, as the builder says.
#[test]
fn a_benchmark_store_opens_and_serves_and_is_told_apart_by_its_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bench");
    let options = ringrelay::tools::StoreOptions {
        data_dir: data.clone(),
        key_file: None,
        segment_size: ringrelay::limits::SEGMENT_SIZE_DEFAULT,
    };
    ringrelay::tools::bench_store::build(&options, 2, 3000, |_| {}).unwrap();
    let now = ringrelay::now_unix();
    let records: Vec<_> = (0..3000).map(|n| ringrelay::tools::bench_store::record(n, now)).collect();
    let notes = records.iter().filter(|record| record.kind == 1).count();
    let profiles: std::collections::HashSet<_> =
        records.iter().filter(|record| record.kind == 0).map(|record| record.pubkey).collect();

    let output = ringrelay(&["verify", data.to_str().unwrap()], None);
    assert!(output.status.success(), "{}", text(&output.stdout));
    let output = ringrelay(&["verify", data.to_str().unwrap(), "--signatures"], None);
    assert!(!output.status.success());

    let relay = crate::relay::Relay::start(&data, 2);
    let mut client = relay.connect();
    assert_eq!(client.req("notes", &[serde_json::json!({"kinds": [1], "limit": 5000})]).len(), notes);
    assert_eq!(client.req("profiles", &[serde_json::json!({"kinds": [0], "limit": 5000})]).len(), profiles.len());
}

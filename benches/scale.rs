//! Storage at scale: reopen, index memory and query latency over 1M stored events.
//! `cargo bench --bench scale`. The store is built once in $RINGRELAY_BENCH_DIR (default
//! /tmp/ringrelay-bench-1m) from synthetic records: replay and queries never check
//! signatures, so the figures are those of real events of the same shape.

use std::hint::black_box;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use ringrelay::filter::Filter;
use ringrelay::store::record::{Record, RecordTag};
use ringrelay::store::{FilterScan, OpenMode, Shard, ShardConfig, ShardState};

const EVENT_COUNT: u64 = 1_000_000;
const AUTHOR_COUNT: u64 = 10_000;
const KINDS: [u16; 8] = [1, 1, 1, 1, 7, 7, 6, 1111];
const WORDS: usize = 100;

fn bench_dir() -> PathBuf {
    std::env::var_os("RINGRELAY_BENCH_DIR").map_or_else(|| PathBuf::from("/tmp/ringrelay-bench-1m"), PathBuf::from)
}

fn hash(domain: &str, i: u64) -> [u8; 32] {
    *blake3::Hasher::new().update(domain.as_bytes()).update(&i.to_le_bytes()).finalize().as_bytes()
}

fn author_key(i: u64) -> [u8; 32] {
    hash("author", i % AUTHOR_COUNT)
}

fn synthetic_record(i: u64) -> Record {
    let id = hash("id", i);
    let pubkey = author_key(i * 7_919);
    let referenced = ringrelay::hex::encode(&hash("id", i / 2));
    let mention = ringrelay::hex::encode(&author_key(i * 104_729));
    let word = format!("word{}", i as usize % WORDS);
    let created_at = 1_600_000_000 + i / 4 + (i * 31) % 7;
    let kind = KINDS[((i.wrapping_mul(2_654_435_761) >> 7) % KINDS.len() as u64) as usize];
    let json = format!(
        r#"{{"id":"{}","pubkey":"{}","created_at":{created_at},"kind":{kind},"tags":[["e","{referenced}"],["p","{mention}"],["t","{word}"]],"content":"{}","sig":"{}"}}"#,
        ringrelay::hex::encode(&id),
        ringrelay::hex::encode(&pubkey),
        "synthetic note of typical length ".repeat(6),
        "ab".repeat(64)
    );
    Record {
        id,
        pubkey,
        created_at,
        expiration: 0,
        kind,
        tags: vec![
            RecordTag { letter: b'e', value: referenced.into_bytes() },
            RecordTag { letter: b'p', value: mention.into_bytes() },
            RecordTag { letter: b't', value: word.into_bytes() },
        ],
        json: json.into_bytes(),
    }
}

fn config() -> ShardConfig {
    ShardConfig::new(ringrelay::limits::SEGMENT_SIZE_DEFAULT, None)
}

/// Build a shard of the events `i` with `i % stride == offset` once; later runs reuse it,
/// until the segment format changes.
fn ensure_shard(dir: &Path, stride: u64, offset: u64) {
    let done = dir.join(format!("COMPLETE-v{}", ringrelay::store::format::FORMAT_VERSION));
    if done.exists() {
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
    let path = dir.to_owned();
    ringrelay::tools::run_local("build-bench-store", move || {
        Box::pin(async move {
            let state = ShardState::open(&path, ringrelay::store::ShardId(0), config(), OpenMode::ReadWrite).unwrap();
            let shard = Shard::start(state);
            for i in (offset..EVENT_COUNT).step_by(stride as usize) {
                let archive = rkyv::to_bytes::<rkyv::rancor::Error>(&synthetic_record(i)).unwrap();
                shard.state_mut().write_record(&archive).unwrap();
            }
            shard.close().await.unwrap();
        })
    })
    .unwrap();
    std::fs::write(done, b"").unwrap();
}

fn scale(c: &mut Criterion) {
    let root = bench_dir();
    let dir = root.join("one-shard");
    let halves = [root.join("half-0"), root.join("half-1")];
    ensure_shard(&dir, 1, 0);
    ensure_shard(&halves[0], 2, 0);
    ensure_shard(&halves[1], 2, 1);
    let mut group = c.benchmark_group("scale_1m");
    group.sample_size(10);
    // The worst case for one core: all 1M events in one shard.
    group.bench_function("reopen_one_shard", |b| {
        b.iter(|| ShardState::open(&dir, ringrelay::store::ShardId(0), config(), OpenMode::ReadOnly).unwrap())
    });
    // What a 2-core relay does at start: each core replays its own shard, at the same time.
    group.bench_function("reopen_two_shards_in_parallel", |b| {
        b.iter(|| {
            std::thread::scope(|scope| {
                let opening: Vec<_> = halves
                    .iter()
                    .map(|half| {
                        scope.spawn(move || {
                            ShardState::open(half, ringrelay::store::ShardId(0), config(), OpenMode::ReadOnly)
                                .unwrap()
                                .index
                                .len()
                        })
                    })
                    .collect();
                opening.into_iter().map(|o| o.join().unwrap()).sum::<u32>()
            })
        })
    });

    let state = ShardState::open(&dir, ringrelay::store::ShardId(0), config(), OpenMode::ReadOnly).unwrap();
    assert_eq!(u64::from(state.index.len()), EVENT_COUNT);
    let bytes_per_event = state.index.memory_size() as f64 / EVENT_COUNT as f64;
    eprintln!("scale_1m/index_memory: {bytes_per_event:.1} bytes per event ({} events)", state.index.len());

    let now = 2_000_000_000;
    let author = ringrelay::hex::encode(&author_key(4_242));
    let filters = [
        ("query_author_limit100", format!(r#"{{"authors":["{author}"],"limit":100}}"#)),
        ("query_kind_limit100", r#"{"kinds":[7],"limit":100}"#.to_owned()),
        ("query_rare_kind_limit100", r#"{"kinds":[1111],"until":1600100000,"limit":100}"#.to_owned()),
        ("query_tag_limit100", r##"{"#t":["word42"],"limit":100}"##.to_owned()),
        ("query_author_and_kind_limit100", format!(r#"{{"authors":["{author}"],"kinds":[1],"limit":100}}"#)),
        ("query_recent_limit100", r#"{"limit":100}"#.to_owned()),
    ];
    for (name, text) in &filters {
        let filter = Filter::from_text(text).unwrap();
        let limit = filter.limit.unwrap() as usize;
        let hits = {
            let mut scan = FilterScan::new(&filter, limit, &state.index);
            while !scan.step(&state.index, &state, now, ringrelay::limits::QUERY_STEP_CANDIDATE_COUNT) {}
            scan.into_hits().len()
        };
        eprintln!("scale_1m/{name}: {hits} hits");
        group.bench_function(*name, |b| {
            b.iter(|| {
                let mut scan = FilterScan::new(black_box(&filter), limit, &state.index);
                while !scan.step(&state.index, &state, now, ringrelay::limits::QUERY_STEP_CANDIDATE_COUNT) {}
                scan.into_hits()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, scale);
criterion_main!(benches);

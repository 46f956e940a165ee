//! Hot paths of the event core and storage, per event.
//! `cargo bench --bench core`; figures go to docs/benchmarks.md.

use std::hint::black_box;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use nostr::{EventBuilder, JsonUtil, Keys, Kind, Tag, Timestamp};
use ringrelay::event::{parse_event, VerifiedEvent};
use ringrelay::limits::EventLimits;
use ringrelay::store::{OpenMode, Shard, ShardConfig, ShardId, ShardState};
use secp256k1::{schnorr::Signature, Message, XOnlyPublicKey, SECP256K1};

/// A typical kind-1 note: ~300 bytes of content, an e, a p and a t tag.
fn typical_event(keys: &Keys, i: u64) -> String {
    let tags = vec![
        Tag::parse(["e", &format!("{:064x}", i * 7919)]).unwrap(),
        Tag::parse(["p", &"cd".repeat(32)]).unwrap(),
        Tag::parse(["t", "nostr"]).unwrap(),
    ];
    let content =
        format!("{i}: the quick brown fox jumps over the lazy dog. {}", "lorem ipsum dolor sit amet ".repeat(9));
    EventBuilder::new(Kind::TextNote, content)
        .tags(tags)
        .custom_created_at(Timestamp::from(1_700_000_000 + i))
        .sign_with_keys(keys)
        .unwrap()
        .as_json()
}

fn signed_events(count: u64) -> Vec<VerifiedEvent> {
    let keys: Vec<Keys> = (0..64).map(|_| Keys::generate()).collect();
    (0..count)
        .map(|i| {
            let json = typical_event(&keys[(i % 64) as usize], i);
            VerifiedEvent::from_json(json.as_bytes(), &EventLimits::default()).unwrap()
        })
        .collect()
}

fn event_core(c: &mut Criterion) {
    let keys = Keys::generate();
    let json = typical_event(&keys, 1);
    let limits = EventLimits::default();
    let mut group = c.benchmark_group("event");
    group.throughput(Throughput::Elements(1));
    group
        .bench_function("parse_and_id_check", |b| b.iter(|| parse_event(black_box(json.as_bytes()), &limits).unwrap()));
    let parsed = parse_event(json.as_bytes(), &limits).unwrap();
    group.bench_function("verify_signature", |b| {
        b.iter_batched(|| parsed.clone(), |p| VerifiedEvent::verify(p).unwrap(), BatchSize::SmallInput)
    });
    // The floor: libsecp256k1 alone, with the key and signature parse the relay must also do.
    let (pubkey, sig, id) = (parsed.pubkey.0, parsed.sig, parsed.id.0);
    group.bench_function("raw_libsecp256k1_verify", |b| {
        b.iter(|| {
            let pk = XOnlyPublicKey::from_slice(black_box(&pubkey)).unwrap();
            let sig = Signature::from_slice(black_box(&sig)).unwrap();
            SECP256K1.verify_schnorr(&sig, &Message::from_digest(id), &pk).unwrap()
        })
    });
    // What a per-core cache of parsed keys would leave: the key's square root is paid once.
    let parsed_key = XOnlyPublicKey::from_slice(&pubkey).unwrap();
    group.bench_function("raw_verify_key_parsed", |b| {
        b.iter(|| {
            let sig = Signature::from_slice(black_box(&sig)).unwrap();
            SECP256K1.verify_schnorr(&sig, &Message::from_digest(id), black_box(&parsed_key)).unwrap()
        })
    });
    // Distinct events, as a relay sees them: each signature reads other entries of
    // libsecp256k1's 1 MiB of precomputed tables (the same signature again and again stays in
    // cache).
    let distinct: Vec<_> =
        signed_events(4096).iter().map(|e| parse_event(e.json().as_bytes(), &limits).unwrap()).collect();
    let mut keys = ringrelay::event::KeyCache::new();
    let mut next = 0;
    group.bench_function("verify_distinct_cached_keys", |b| {
        b.iter_batched(
            || {
                next = (next + 1) % distinct.len();
                distinct[next].clone()
            },
            |p| VerifiedEvent::verify_cached(p, &mut keys).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("parse_and_full_verify", |b| {
        b.iter(|| VerifiedEvent::from_json(black_box(json.as_bytes()), &limits).unwrap())
    });
    group.finish();
}

const APPEND_BATCH: usize = 20_000;

/// An empty writable shard (64 MiB segments, no key) in a temporary directory.
fn fresh_shard() -> (tempfile::TempDir, ShardState) {
    let dir = tempfile::tempdir().unwrap();
    let config = ShardConfig::new(64 << 20, None);
    let state = ShardState::open(dir.path(), ShardId(0), config, OpenMode::ReadWrite).unwrap();
    (dir, state)
}

fn storage_append(c: &mut Criterion) {
    let events = signed_events(APPEND_BATCH as u64);
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(APPEND_BATCH as u64));
    group.sample_size(20);
    // Rules, rkyv encoding, copy into the segment image and indexing; no I/O.
    group.bench_function("append_no_fsync_x20000", |b| {
        b.iter_batched(
            fresh_shard,
            |(dir, mut state)| {
                for event in &events {
                    state.append(event, 1_800_000_000).unwrap();
                }
                (dir, state)
            },
            BatchSize::PerIteration,
        )
    });
    // The same, durable: appends share group commits on glommio direct I/O, 256 in flight.
    group.bench_function("ingest_group_commit_x20000", |b| {
        b.iter_custom(|iterations| {
            let events = events.clone();
            ringrelay::tools::run_local("bench", move || {
                Box::pin(async move {
                    let mut total = std::time::Duration::ZERO;
                    for _ in 0..iterations {
                        let (_dir, state) = fresh_shard();
                        let shard = Shard::start(state);
                        let started = std::time::Instant::now();
                        for window in events.chunks(256) {
                            let mut pending = Vec::with_capacity(window.len());
                            for event in window {
                                if let ringrelay::store::Admission::Stored(durable) =
                                    shard.append(event, 1_800_000_000).unwrap()
                                {
                                    pending.push(durable);
                                }
                            }
                            for durable in pending {
                                durable.await.unwrap();
                            }
                        }
                        total += started.elapsed();
                        shard.close().await.unwrap();
                    }
                    total
                })
            })
            .unwrap()
        })
    });
    group.finish();
}

/// Events indexed into one shard, as relay_load sends them: 64 authors, one `t` tag, kind 1.
const INDEX_EVENTS: u32 = 300_000;

/// Indexing alone (no record, no I/O): in `created_at` order, and in relay_load's order,
/// where each arrival is dated a second before the one before it, 600 times over: every
/// arrival lands somewhere in the middle of the global, kind and tag lists.
fn index_insert(c: &mut Criterion) {
    use ringrelay::store::index::{Facts, Index, Loc};
    let mut group = c.benchmark_group("index");
    group.throughput(Throughput::Elements(u64::from(INDEX_EVENTS)));
    group.sample_size(10);
    let authors: Vec<[u8; 32]> = (0..64u8).map(|a| [a; 32]).collect();
    let ids: Vec<[u8; 32]> = (0..INDEX_EVENTS).map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes()).collect();
    let tags: [(u8, &[u8]); 1] = [(b't', b"bench")];
    for (name, created_at) in [
        ("insert_in_order_x300000", (|i: u32| 1_700_000_000 + u64::from(i)) as fn(u32) -> u64),
        ("insert_relay_load_order_x300000", |i: u32| 1_700_000_000 - u64::from(i % 600)),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                Index::default,
                |mut index| {
                    for i in 0..INDEX_EVENTS {
                        let facts = Facts {
                            id: &ids[i as usize],
                            pubkey: &authors[i as usize % 64],
                            created_at: created_at(i),
                            kind: 1,
                            expiration: None,
                            tags: &tags,
                        };
                        index.insert(&facts, Loc { segment: 0, offset: i * 16 }, Vec::new());
                    }
                    index
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, event_core, storage_append, fan_out, index_insert);
criterion_main!(benches);

/// The relay's own work per live event on one core with 1,000 matching subscribers, network
/// aside: match the event through the subscription index, then build each subscriber's frame
/// as the connection writer does. Per delivery, it is what a core spends besides `send()`.
fn fan_out(c: &mut Criterion) {
    use ringrelay::filter::Filter;
    use ringrelay::proto::{frame_event, SubId};
    use ringrelay::subs::{ConnId, LiveEvent, SubscriptionIndex};
    let event = &signed_events(1)[0];
    let live = LiveEvent::from_event(event);
    let mut index = SubscriptionIndex::default();
    let filter = Filter::from_json(&serde_json::json!({"kinds": [1], "#t": ["nostr"]})).unwrap();
    for conn in 0..1000 {
        index.insert(ConnId(conn), SubId::new(&format!("sub-{conn}")).unwrap(), vec![filter.clone()]);
    }
    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(1000));
    let mut matches = Vec::with_capacity(1000);
    group.bench_function("match_and_frame_1000_subscribers", |b| {
        b.iter(|| {
            matches.clear();
            index.matches(black_box(&live), &mut matches);
            let mut bytes = 0;
            for (_, sub) in matches.drain(..) {
                bytes += black_box(frame_event(&sub, &live.json)).len();
            }
            bytes
        })
    });
    group.finish();
}

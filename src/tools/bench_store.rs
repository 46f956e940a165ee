//! FOR BENCHMARKS ONLY: a data directory of `count` realistic events written straight into
//! segments, without signing them. Each event's id is the real SHA-256 of its canonical form,
//! but its signature is random bytes: no client would accept one, and
//! `ringrelay verify --signatures` reports every one. The relay serves what a store holds as
//! it is (records are checked by their checksums, not signatures), so such a store measures
//! opening, memory and queries at sizes (10M, 50M events) that signing and importing would
//! take hours to make. Never serve one to clients. (`cargo bench --bench build_store`.)
//!
//! The mix: 20,000 authors of skewed activity (a few write most), notes (50%), replies
//! (20%, `e` and `p` tags naming earlier events and their authors), reactions (20%, the
//! same), profiles (10%, replaceable: each author's newest wins), dated over the last 90 days,
//! every note tagged with one of 64 topics (`t`).

use sha2::{Digest, Sha256};

use crate::store::record::{Record, RecordTag};
use crate::store::{DataDir, OpenMode, Shard, ShardId, ShardState};

use super::StoreOptions;

const AUTHORS: u64 = 20_000;
const SPAN_SECS: u64 = 90 * 86_400;
const TOPICS: u64 = 64;
/// Records written to a shard between flushes (its images stay in memory until then).
const BATCH: usize = 100_000;

/// Event `n`'s record: its JSON as served and the fields the index reads.
pub fn record(n: u64, now: u64) -> Record {
    let x = mix(n);
    // Skewed: author a is picked with a probability falling as a grows.
    let author = skewed_author(x);
    let pubkey = key_of(author);
    let created_at = now - x % SPAN_SECS;
    // An earlier event, and its author, for replies and reactions.
    let earlier = n.saturating_sub(1 + mix(n ^ 0x5eed) % 10_000);
    let (earlier_id, earlier_author) =
        (id_hint(earlier), key_of((mix(earlier) % 1000) * (mix(earlier) % 1000) * AUTHORS / 1_000_000));
    let hex = crate::hex::encode;
    let (kind, tags, content): (u16, Vec<(u8, String)>, String) = match x % 10 {
        0..=4 => {
            (1, vec![(b't', format!("topic{}", x % TOPICS))], format!("note {n} {}", "word ".repeat((x % 60) as usize)))
        }
        5..=6 => (1, vec![(b'e', hex(&earlier_id)), (b'p', hex(&earlier_author))], format!("reply {n}")),
        7..=8 => (7, vec![(b'e', hex(&earlier_id)), (b'p', hex(&earlier_author))], "+".to_owned()),
        _ => (0, Vec::new(), format!("{{\"name\":\"author {author}\",\"about\":\"version {n}\"}}")),
    };
    let tag_json: Vec<serde_json::Value> =
        tags.iter().map(|(letter, value)| serde_json::json!([char::from(*letter).to_string(), value])).collect();
    let pubkey_hex = hex(&pubkey);
    let canonical = serde_json::json!([0, pubkey_hex, created_at, kind, tag_json, content]).to_string();
    let id: [u8; 32] = Sha256::digest(canonical.as_bytes()).into();
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&id);
    sig[32..].copy_from_slice(&pubkey);
    let json = serde_json::json!({
        "id": hex(&id),
        "pubkey": pubkey_hex,
        "created_at": created_at,
        "kind": kind,
        "tags": tag_json,
        "content": content,
        "sig": hex(&sig),
    })
    .to_string();
    Record {
        id,
        pubkey,
        created_at,
        expiration: 0,
        kind,
        tags: tags.into_iter().map(|(letter, value)| RecordTag { letter, value: value.into_bytes() }).collect(),
        json: json.into_bytes(),
    }
}

fn mix(n: u64) -> u64 {
    let mut x = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The author a random `x` picks: author a with a probability falling as a grows.
pub fn skewed_author(x: u64) -> u64 {
    (x % 1000) * (x % 1000) * AUTHORS / 1_000_000
}

fn key_of(author: u64) -> [u8; 32] {
    *blake3::hash(&author.to_le_bytes()).as_bytes()
}

/// Author `author`'s pubkey (for queries over a built store).
pub fn author_key(author: u64) -> [u8; 32] {
    key_of(author)
}

/// A stand-in id for event `n` in tags (the real one would need the event built).
fn id_hint(n: u64) -> [u8; 32] {
    *blake3::hash(&n.to_be_bytes()).as_bytes()
}

/// The id replies and reactions to event `n` name in their `e` tags (for thread queries).
pub fn reference(n: u64) -> [u8; 32] {
    id_hint(n)
}

/// Build a store of `count` events in a new data directory of `shard_count` shards;
/// `progress` sees how many are written.
pub fn build(options: &StoreOptions, shard_count: u16, count: u64, progress: fn(u64)) -> anyhow::Result<()> {
    let options = options.clone();
    super::run_local("bench-store", move || {
        Box::pin(async move { write_all(&options, shard_count, count, progress).await })
    })?
}

async fn write_all(options: &StoreOptions, shard_count: u16, count: u64, progress: fn(u64)) -> anyhow::Result<()> {
    anyhow::ensure!(
        !options.data_dir.exists(),
        "{} exists: a benchmark store is built in a new directory",
        options.data_dir.display()
    );
    let dir = DataDir::open_or_create(&options.data_dir, shard_count)?;
    let config = options.shard_config()?;
    let mut states: Vec<Option<ShardState>> = ShardId::all(dir.shard_count)
        .map(|shard| ShardState::open(&dir.shard_dir(shard), shard, config.clone(), OpenMode::ReadWrite).map(Some))
        .collect::<Result<_, _>>()?;
    let now = crate::now_unix();
    let mut pending = vec![0usize; states.len()];
    let mut scratch = rkyv::util::AlignedVec::<16>::new();
    for n in 0..count {
        let record = record(n, now);
        let shard = usize::from(dir.owner_shard(&record.pubkey));
        scratch.clear();
        scratch = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&record, scratch)?;
        let state = states[shard].as_mut().expect("every shard is open");
        state.write_record(&scratch)?;
        pending[shard] += 1;
        if pending[shard] == BATCH {
            pending[shard] = 0;
            let state = states[shard].take().expect("open");
            states[shard] = Some(Shard::start(state).close().await?);
            progress(n + 1);
        }
    }
    for state in states.into_iter().flatten() {
        Shard::start(state).close().await?;
    }
    progress(count);
    // The records went in without an index: open each shard (a replay) and give its sealed
    // segments their parts, as the relay would in the background.
    for shard in ShardId::all(dir.shard_count) {
        let mut state = ShardState::open(&dir.shard_dir(shard), shard, config.clone(), OpenMode::ReadWrite)?;
        state.build_parts();
        Shard::start(state).close().await?;
    }
    Ok(())
}

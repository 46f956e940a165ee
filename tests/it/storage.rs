//! The storage engine through its public API on real files: rules, a differential test of
//! the query engine against a naive model, reopen, crash cuts, and encryption.

use std::cell::Ref;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringrelay::event::{KindClass, VerifiedEvent};
use ringrelay::filter::{Filter, TagFilter};
use ringrelay::limits::{EventLimits, CONTENT_SIZE_MAX, EVENT_SIZE_MAX, TAG_COUNT_MAX};
use ringrelay::store::crypto::SegmentKey;
use ringrelay::store::format::{seal_offset, FormatError, SEAL_RECORD_SIZE};
use ringrelay::store::layer::Layer;
use ringrelay::store::part;
use ringrelay::store::{
    query_shards, Admission, DataDir, OpenMode, Rejection, Shard, ShardConfig, ShardId, ShardState, StoreError,
};

use crate::support::{keys, now, run_glommio, signed, verified};

const SEGMENT_SIZE: usize = 1024 * 1024;
const DEFAULT_LIMIT: usize = 500;
const MAX_LIMIT: usize = 5_000;

/// What an append came to, in terms the model can produce too.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Stored,
    Duplicate,
    Ephemeral,
    Rejected(Rejection),
}

/// A data directory with its shards running on the current glommio executor.
struct Store {
    dir: DataDir,
    shards: Vec<Shard>,
}

impl Store {
    fn open(path: &Path, shard_count: u16, key: Option<SegmentKey>) -> Result<Store, StoreError> {
        let dir = DataDir::open_or_create(path, shard_count)?;
        let config = ShardConfig::new(SEGMENT_SIZE, key);
        let mut shards = Vec::new();
        for shard in ShardId::all(dir.shard_count) {
            let state = ShardState::open(&dir.shard_dir(shard), shard, config.clone(), OpenMode::ReadWrite)?;
            shards.push(Shard::start(state));
        }
        Ok(Store { dir, shards })
    }

    async fn append(&self, event: &VerifiedEvent, now: u64) -> Outcome {
        let shard = &self.shards[usize::from(self.dir.owner_shard(&event.pubkey().0))];
        match shard.append(event, now).expect("append works") {
            Admission::Stored(durable) => {
                durable.await.expect("durable");
                Outcome::Stored
            }
            Admission::Duplicate(_) => Outcome::Duplicate,
            Admission::Ephemeral => Outcome::Ephemeral,
            Admission::Rejected(rejection) => Outcome::Rejected(rejection),
        }
    }

    /// The JSON of every event a REQ with `filters` returns, in order.
    fn query(&self, filters: &[Filter], now: u64) -> Vec<String> {
        let states: Vec<Ref<'_, ShardState>> = self.shards.iter().map(|s| s.state()).collect();
        let refs: Vec<&ShardState> = states.iter().map(|s| &**s).collect();
        query_shards(&refs, filters, DEFAULT_LIMIT, MAX_LIMIT, now)
            .into_iter()
            .map(|hit| {
                String::from_utf8(refs[usize::from(hit.shard)].event_json(hit.hit.no).expect("reads back")).unwrap()
            })
            .collect()
    }

    async fn close(self) {
        for shard in self.shards {
            shard.close().await.expect("close flushes");
        }
    }
}

fn filter(text: &str) -> Filter {
    Filter::from_text(text).unwrap()
}

fn served(json: &str) -> String {
    verified(json).json().to_owned()
}

/// Each rule as a sequence of (event, expected outcome), then a query and its expected answer.
#[test]
fn storage_rules() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    run_glommio(move || {
        Box::pin(async move {
            let store = Store::open(&path, 2, None).unwrap();
            let now = now();
            let alice = keys(10);
            let bob = keys(11);
            let check = |json: &str, expected: Outcome| {
                let event = verified(json);
                let json = json.to_owned();
                let store = &store;
                async move { assert_eq!(store.append(&event, now).await, expected, "{json}") }
            };

            // Duplicates and ephemeral events.
            let note = signed(&alice, 1, 1000, &[], "note");
            check(&note, Outcome::Stored).await;
            check(&note, Outcome::Duplicate).await;
            check(&signed(&alice, 20001, 1000, &[], "ephemeral"), Outcome::Ephemeral).await;
            assert!(store.query(&[filter(r#"{"kinds":[20001]}"#)], now).is_empty());

            // Replaceable: newer replaces, older is refused, ties go to the lowest id.
            let profile_1 = signed(&alice, 0, 2000, &[], "v1");
            let profile_2 = signed(&alice, 0, 2001, &[], "v2");
            check(&profile_1, Outcome::Stored).await;
            check(&profile_2, Outcome::Stored).await;
            check(&signed(&alice, 0, 1999, &[], "older"), Outcome::Rejected(Rejection::Superseded)).await;
            assert_eq!(store.query(&[filter(r#"{"kinds":[0]}"#)], now), vec![served(&profile_2)]);
            let (mut tie_a, mut tie_b) = (signed(&alice, 0, 2002, &[], "tie a"), signed(&alice, 0, 2002, &[], "tie b"));
            if verified(&tie_a).id() > verified(&tie_b).id() {
                std::mem::swap(&mut tie_a, &mut tie_b);
            }
            check(&tie_b, Outcome::Stored).await;
            check(&tie_a, Outcome::Stored).await;
            check(&tie_b, Outcome::Rejected(Rejection::Superseded)).await;
            check(&signed(&alice, 0, 2002, &[], "tie c"), Outcome::Rejected(Rejection::Superseded)).await;
            assert_eq!(store.query(&[filter(r#"{"kinds":[0]}"#)], now), vec![served(&tie_a)]);

            // Addressable: keyed by d, each d separately.
            let article_x1 = signed(&alice, 30023, 3000, &[&["d", "x"]], "x1");
            let article_y1 = signed(&alice, 30023, 3000, &[&["d", "y"]], "y1");
            let article_x2 = signed(&alice, 30023, 3001, &[&["d", "x"]], "x2");
            check(&article_x1, Outcome::Stored).await;
            check(&article_y1, Outcome::Stored).await;
            check(&article_x2, Outcome::Stored).await;
            let got = store.query(&[filter(r#"{"kinds":[30023]}"#)], now);
            assert_eq!(got, vec![served(&article_x2), served(&article_y1)]);

            // NIP-09 by e: own events only; the deleted event stays refused.
            let bobs = signed(&bob, 1, 4000, &[], "bob's");
            check(&bobs, Outcome::Stored).await;
            let note_id = verified(&note).id().to_hex();
            let bobs_id = verified(&bobs).id().to_hex();
            check(&signed(&alice, 5, 4001, &[&["e", &note_id], &["e", &bobs_id]], ""), Outcome::Stored).await;
            assert!(store.query(&[filter(&format!(r#"{{"ids":["{note_id}"]}}"#))], now).is_empty());
            assert_eq!(store.query(&[filter(&format!(r#"{{"ids":["{bobs_id}"]}}"#))], now), vec![served(&bobs)]);
            check(&note, Outcome::Rejected(Rejection::Deleted)).await;

            // NIP-09 by a: versions up to the deletion's created_at go; newer ones are welcome.
            let alice_hex = alice.public_key().to_hex();
            let address = format!("30023:{alice_hex}:x");
            check(&signed(&alice, 5, 3500, &[&["a", &address]], ""), Outcome::Stored).await;
            let got = store.query(&[filter(r#"{"kinds":[30023]}"#)], now);
            assert_eq!(got, vec![served(&article_y1)]);
            check(&signed(&alice, 30023, 3400, &[&["d", "x"]], "x old"), Outcome::Rejected(Rejection::Deleted)).await;
            let article_x3 = signed(&alice, 30023, 3600, &[&["d", "x"]], "x3");
            check(&article_x3, Outcome::Stored).await;
            let got = store.query(&[filter(r#"{"kinds":[30023]}"#)], now);
            assert_eq!(got, vec![served(&article_x3), served(&article_y1)]);

            // NIP-40: expired on arrival is refused; a stored one stops being served when it expires.
            let past = (now - 10).to_string();
            let soon = (now + 100).to_string();
            check(&signed(&alice, 1, 5000, &[&["expiration", &past]], ""), Outcome::Rejected(Rejection::Expired)).await;
            let expiring = signed(&alice, 1, 5001, &[&["expiration", &soon]], "short-lived");
            check(&expiring, Outcome::Stored).await;
            assert_eq!(store.query(&[filter(r#"{"since":5001}"#)], now), vec![served(&expiring)]);
            assert!(store.query(&[filter(r#"{"since":5001}"#)], now + 100).is_empty());

            // Ordering ties by lowest id, limit honoured across ties, limit 0, no event twice.
            let mut same_second: Vec<String> =
                (0..6).map(|i| signed(&keys(20 + i), 1, 6000, &[&["t", "tie"]], &format!("tie {i}"))).collect();
            for json in &same_second {
                check(json, Outcome::Stored).await;
            }
            same_second.sort_by_key(|json| verified(json).id().0);
            let expected: Vec<String> = same_second.iter().map(|j| served(j)).collect();
            assert_eq!(store.query(&[filter(r##"{"#t":["tie"]}"##)], now), expected);
            assert_eq!(store.query(&[filter(r##"{"#t":["tie"],"limit":2}"##)], now), expected[..2]);
            assert!(store.query(&[filter(r##"{"#t":["tie"],"limit":0}"##)], now).is_empty());
            let both = [filter(r##"{"#t":["tie"],"limit":3}"##), filter(r#"{"kinds":[1],"since":6000}"#)];
            assert_eq!(store.query(&both, now), expected);
            store.close().await;
        })
    });
}

/// The naive model of the storage rules: every decision by scanning everything.
#[derive(Default)]
struct Model {
    stored: Vec<(VerifiedEvent, bool)>,
    deleted_ids: Vec<([u8; 32], [u8; 32])>,
    deleted_addresses: Vec<(VersionKey, u64)>,
    latest: Vec<(VersionKey, (u64, [u8; 32]))>,
}

type VersionKey = (u16, [u8; 32], Vec<u8>);

fn version_key(event: &VerifiedEvent) -> VersionKey {
    let d = if event.class() == KindClass::Addressable { event.d_tag().to_vec() } else { Vec::new() };
    (event.kind(), event.pubkey().0, d)
}

impl Model {
    fn submit(&mut self, event: &VerifiedEvent, now: u64) -> Outcome {
        if event.class() == KindClass::Ephemeral {
            return Outcome::Ephemeral;
        }
        let id = event.id().0;
        let pubkey = event.pubkey().0;
        if event.kind() != 5 && self.deleted_ids.contains(&(id, pubkey)) {
            return Outcome::Rejected(Rejection::Deleted);
        }
        if self.stored.iter().any(|(e, alive)| *alive && e.id().0 == id) {
            return Outcome::Duplicate;
        }
        let known = self.stored.iter().any(|(e, _)| e.id().0 == id);
        if event.expiration().is_some_and(|at| at <= now) {
            return Outcome::Rejected(Rejection::Expired);
        }
        if event.class().is_versioned() {
            let key = version_key(event);
            if self.deleted_addresses.iter().any(|(k, until)| *k == key && event.created_at() <= *until) {
                return Outcome::Rejected(Rejection::Deleted);
            }
            let mine = (event.created_at(), std::cmp::Reverse(id));
            if let Some((_, (at, latest_id))) = self.latest.iter().find(|(k, _)| *k == key) {
                if mine <= (*at, std::cmp::Reverse(*latest_id)) {
                    return Outcome::Rejected(Rejection::Superseded);
                }
            }
            for (stored, alive) in &mut self.stored {
                if version_key(stored) == key {
                    *alive = false;
                }
            }
            if known {
                return Outcome::Duplicate;
            }
            self.latest.retain(|(k, _)| *k != key);
            self.latest.push((key, (event.created_at(), id)));
        }
        if known {
            return Outcome::Duplicate;
        }
        if event.kind() == 5 {
            self.apply_deletion(event);
        }
        self.stored.push((event.clone(), true));
        Outcome::Stored
    }

    fn apply_deletion(&mut self, deletion: &VerifiedEvent) {
        let pubkey = deletion.pubkey().0;
        for tag in deletion.index_tags() {
            if tag.letter == b'e' {
                let Some(target) = ringrelay::hex::decode_lower::<32>(&tag.value) else { continue };
                self.deleted_ids.push((target, pubkey));
                for (stored, alive) in &mut self.stored {
                    if stored.id().0 == target && stored.pubkey().0 == pubkey && stored.kind() != 5 {
                        *alive = false;
                    }
                }
            }
            if tag.letter == b'a' {
                let text = std::str::from_utf8(&tag.value).unwrap();
                let mut parts = text.splitn(3, ':');
                let (Some(kind), Some(author), Some(d)) = (parts.next(), parts.next(), parts.next()) else { continue };
                let (Ok(kind), Some(author)) =
                    (kind.parse::<u16>(), ringrelay::hex::decode_lower::<32>(author.as_bytes()))
                else {
                    continue;
                };
                let class = KindClass::of(kind);
                if author != pubkey || !class.is_versioned() {
                    continue;
                }
                let d = if class == KindClass::Addressable { d.as_bytes().to_vec() } else { Vec::new() };
                let key = (kind, author, d);
                for (stored, alive) in &mut self.stored {
                    if version_key(stored) == key && stored.created_at() <= deletion.created_at() {
                        *alive = false;
                    }
                }
                self.deleted_addresses.push((key, deletion.created_at()));
            }
        }
    }

    fn query(&self, filters: &[Filter], now: u64) -> Vec<String> {
        let order = |e: &&VerifiedEvent| (std::cmp::Reverse(e.created_at()), e.id().0);
        let mut all: Vec<&VerifiedEvent> = Vec::new();
        for filter in filters {
            let limit = ringrelay::store::effective_limit(filter, DEFAULT_LIMIT, MAX_LIMIT);
            let mut matching: Vec<&VerifiedEvent> = self
                .stored
                .iter()
                .filter(|(e, alive)| *alive && e.expiration().is_none_or(|at| at > now) && filter.matches(e))
                .map(|(e, _)| e)
                .collect();
            matching.sort_by_key(order);
            all.extend(matching.into_iter().take(limit));
        }
        all.sort_by_key(order);
        all.dedup_by_key(|e| e.id().0);
        all.iter().map(|e| e.json().to_owned()).collect()
    }
}

const AUTHOR_COUNT: u32 = 8;
const KINDS: [u16; 9] = [0, 1, 1, 3, 5, 7, 10002, 20001, 30023];
const WORDS: [&str; 4] = ["nostr", "relay", "rust", "日本"];
const BASE_TIME: u64 = 1_700_000_000;

fn random_event(rng: &mut StdRng, earlier: &[VerifiedEvent], now: u64) -> String {
    let author = keys(100 + rng.gen_range(0..AUTHOR_COUNT));
    let kind = KINDS[rng.gen_range(0..KINDS.len())];
    let created_at = BASE_TIME + rng.gen_range(0..40);
    let mut tags: Vec<Vec<String>> = Vec::new();
    for _ in 0..rng.gen_range(0..4) {
        let tag = match rng.gen_range(0..4) {
            0 => vec!["t".to_owned(), WORDS[rng.gen_range(0..WORDS.len())].to_owned()],
            1 => vec!["p".to_owned(), keys(100 + rng.gen_range(0..AUTHOR_COUNT)).public_key().to_hex()],
            2 if !earlier.is_empty() => vec!["e".to_owned(), earlier[rng.gen_range(0..earlier.len())].id().to_hex()],
            _ => vec!["T".to_owned(), WORDS[rng.gen_range(0..WORDS.len())].to_owned()],
        };
        tags.push(tag);
    }
    if kind == 30023 || rng.gen_bool(0.05) {
        tags.push(vec!["d".to_owned(), WORDS[rng.gen_range(0..2)].to_owned()]);
    }
    if kind == 5 && !earlier.is_empty() {
        let target = &earlier[rng.gen_range(0..earlier.len())];
        if rng.gen_bool(0.5) {
            tags.push(vec!["e".to_owned(), target.id().to_hex()]);
        } else {
            let d = String::from_utf8(target.d_tag().to_vec()).unwrap();
            tags.push(vec!["a".to_owned(), format!("{}:{}:{d}", target.kind(), target.pubkey().to_hex())]);
        }
    }
    if rng.gen_bool(0.05) {
        let at = if rng.gen_bool(0.5) { now - 1 } else { now + 1_000 };
        tags.push(vec!["expiration".to_owned(), at.to_string()]);
    }
    let tag_refs: Vec<Vec<&str>> = tags.iter().map(|t| t.iter().map(String::as_str).collect()).collect();
    let tag_slices: Vec<&[&str]> = tag_refs.iter().map(Vec::as_slice).collect();
    let content = format!("{} {}", WORDS[rng.gen_range(0..WORDS.len())], rng.gen::<u32>());
    signed(&author, kind, created_at, &tag_slices, &content)
}

fn random_filter(rng: &mut StdRng, events: &[VerifiedEvent]) -> Filter {
    let mut filter = Filter::default();
    let pick = |rng: &mut StdRng| &events[rng.gen_range(0..events.len())];
    if rng.gen_bool(0.1) {
        let mut ids: Vec<_> = (0..rng.gen_range(1..4)).map(|_| *pick(rng).id()).collect();
        ids.push(ringrelay::event::EventId([7; 32]));
        filter.ids = Some(ids);
    }
    if rng.gen_bool(0.4) {
        filter.authors = Some((0..rng.gen_range(1..3)).map(|_| *pick(rng).pubkey()).collect());
    }
    if rng.gen_bool(0.4) {
        filter.kinds = Some((0..rng.gen_range(1..3)).map(|_| KINDS[rng.gen_range(0..KINDS.len())]).collect());
    }
    if rng.gen_bool(0.3) {
        let letter = [b't', b'T', b'd'][rng.gen_range(0..3)];
        let values = (0..rng.gen_range(1..3)).map(|_| WORDS[rng.gen_range(0..WORDS.len())].as_bytes().into()).collect();
        filter.tags.push(TagFilter { letter, values });
    }
    if rng.gen_bool(0.15) {
        filter.tags.push(TagFilter { letter: b'p', values: vec![pick(rng).pubkey().to_hex().into_bytes().into()] });
    }
    if rng.gen_bool(0.3) {
        filter.since = Some(BASE_TIME + rng.gen_range(0..40));
    }
    if rng.gen_bool(0.3) {
        filter.until = Some(BASE_TIME + rng.gen_range(0..40));
    }
    if rng.gen_bool(0.7) {
        filter.limit = Some([0, 1, 2, 5, 20, 100, 10_000][rng.gen_range(0..7)]);
    }
    filter
}

/// Thousands of random events and filters: the store must answer exactly as the naive model,
/// before and after a reopen.
#[test]
fn differential_against_naive_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let now = now();
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut events = Vec::new();
    for _ in 0..2_500 {
        let json = random_event(&mut rng, &events, now);
        events.push(verified(&json));
    }
    // Some resubmissions: duplicates, and deleted or superseded events coming back.
    for _ in 0..300 {
        let again = events[rng.gen_range(0..events.len())].clone();
        events.push(again);
    }
    let requests: Vec<Vec<Filter>> =
        (0..400).map(|_| (0..rng.gen_range(1..4)).map(|_| random_filter(&mut rng, &events)).collect()).collect();
    let mut model = Model::default();
    let expected_outcomes: Vec<Outcome> = events.iter().map(|e| model.submit(e, now)).collect();
    let expected: Vec<Vec<String>> = requests.iter().map(|filters| model.query(filters, now)).collect();
    let stored = expected_outcomes.iter().filter(|o| **o == Outcome::Stored).count();
    assert!(stored > 1_000, "the generator must store a good share of events, stored {stored}");
    assert!(expected.iter().filter(|answer| !answer.is_empty()).count() > 200, "most queries must match something");

    run_glommio(move || {
        Box::pin(async move {
            let store = Store::open(&path, 2, None).unwrap();
            for (event, expected) in events.iter().zip(&expected_outcomes) {
                assert_eq!(&store.append(event, now).await, expected, "{event:?}");
            }
            for (filters, expected) in requests.iter().zip(&expected) {
                assert_eq!(&store.query(filters, now), expected, "{filters:?}");
            }
            store.close().await;
            let store = Store::open(&path, 2, None).unwrap();
            for (filters, expected) in requests.iter().zip(&expected) {
                assert_eq!(&store.query(filters, now), expected, "after reopen: {filters:?}");
            }
            store.close().await;
        })
    });
}

/// Write `count` events to a one-shard store and return their JSON in append order.
fn write_events(path: &Path, count: u32, key: Option<SegmentKey>) -> Vec<String> {
    let run = rand::random::<u32>();
    let events: Vec<String> = (0..count)
        .map(|i| signed(&keys(200 + i % 3), 1, BASE_TIME + u64::from(i), &[], &format!("event {i} of run {run}")))
        .collect();
    store_all(path, &events, key);
    events
}

/// Store `events` in a one-shard store, each durable before the next.
fn store_all(path: &Path, events: &[String], key: Option<SegmentKey>) {
    let path = path.to_owned();
    let to_store = events.to_vec();
    run_glommio(move || {
        Box::pin(async move {
            let store = Store::open(&path, 1, key).unwrap();
            for json in &to_store {
                assert_eq!(store.append(&verified(json), now()).await, Outcome::Stored);
                // Durable, so every segment but the active one is sealed and mapped.
                assert_eq!(store.shards[0].state().images_in_memory(), 1);
            }
            store.close().await;
        })
    });
}

fn open_one(path: &Path, key: Option<SegmentKey>, mode: OpenMode) -> Result<ShardState, StoreError> {
    let dir = DataDir::open_or_create(path, 1)?;
    ShardState::open(&dir.shard_dir(ShardId(0)), ShardId(0), ShardConfig::new(SEGMENT_SIZE, key), mode)
}

fn stored_json(state: &ShardState) -> Vec<String> {
    (0..state.index.len()).map(|no| String::from_utf8(state.event_json(no).expect("reads back")).unwrap()).collect()
}

/// Remove the clean-shutdown mark of shard 0, as if the process had been killed after its
/// last commit.
fn forget_clean_shutdown(path: &Path) {
    std::fs::remove_file(path.join("shard-000").join("CLEAN")).expect("a clean close leaves its mark");
}

fn only_segment(path: &Path) -> PathBuf {
    let files = ringrelay::store::segment::list_segments(&path.join("shard-000")).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].1.clone()
}

/// Cut the newest segment at every byte of its last records: reopening never panics, keeps
/// every record written in full before the cut, and returns nothing else.
#[test]
fn crash_cut_at_every_byte_of_the_tail() {
    for key in [None, Some(SegmentKey::from_bytes([3; 32]))] {
        let original = tempfile::tempdir().unwrap();
        let events = write_events(original.path(), 12, key.clone());
        // As after a crash that followed the last commit: a cut of a segment that a clean
        // shutdown closed is corruption, not a torn tail.
        forget_clean_shutdown(original.path());
        let segment = only_segment(original.path());
        let bytes = std::fs::read(&segment).unwrap();
        let mut spans = Vec::new();
        ringrelay::store::segment::scan(&bytes, key.as_ref(), |span, _| spans.push(*span)).unwrap();
        let payload_ends: Vec<usize> = spans.iter().map(|span| span.payload_range().end).collect();
        assert_eq!(payload_ends.len(), events.len());
        let seal = seal_offset(&bytes).expect("a closed segment ends in its seal");
        assert_eq!(seal, spans.last().unwrap().end());
        let tail_start = payload_ends[payload_ends.len() - 4];
        let scratch_root = if Path::new("/dev/shm").is_dir() { Path::new("/dev/shm") } else { Path::new("/tmp") };
        for cut in tail_start..=bytes.len() {
            let scratch = tempfile::tempdir_in(scratch_root).unwrap();
            crate::support::copy_dir(original.path(), scratch.path());
            let segment_copy = scratch.path().join("shard-000").join(segment.file_name().unwrap());
            std::fs::OpenOptions::new().write(true).open(&segment_copy).unwrap().set_len(cut as u64).unwrap();
            let state = open_one(scratch.path(), key.clone(), OpenMode::ReadWrite).unwrap();
            let survivors = payload_ends.iter().filter(|&&end| end <= cut).count();
            assert_eq!(
                stored_json(&state),
                events[..survivors].iter().map(|j| served(j)).collect::<Vec<_>>(),
                "cut {cut}"
            );
            // The seal record the close wrote is torn the same way, and cutting all of it
            // leaves a segment without a seal, which is whole.
            let torn = spans.iter().any(|span| span.offset < cut && cut < span.payload_range().end)
                || (seal < cut && cut < seal + SEAL_RECORD_SIZE);
            assert_eq!(!state.repairs.is_empty(), torn, "cut {cut}: {:?}", state.repairs);
            // That open sealed what it kept: the next one reads the same through the seal.
            let kept = stored_json(&state);
            drop(state);
            let sealed = seal_offset(&std::fs::read(&segment_copy).unwrap());
            assert_eq!(sealed.is_some(), survivors > 0, "cut {cut}");
            let again = open_one(scratch.path(), key.clone(), OpenMode::ReadOnly).unwrap();
            assert!(again.repairs.is_empty(), "cut {cut}: {:?}", again.repairs);
            assert_eq!(stored_json(&again), kept, "cut {cut}");
        }
    }
}

/// Appended but never fsynced: gone after a crash; everything acknowledged is there.
#[test]
fn crash_between_append_and_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let acknowledged = write_events(dir.path(), 5, None);
    let mut state = open_one(dir.path(), None, OpenMode::ReadWrite).unwrap();
    let unsynced = signed(&keys(300), 1, BASE_TIME, &[], "never synced");
    assert!(matches!(state.append(&verified(&unsynced), now()), Ok(ringrelay::store::Appended::Stored(_))));
    // Not yet durable: not served.
    assert!(!state.index.is_visible(state.index.len() - 1, now()));
    drop(state);
    let state = open_one(dir.path(), None, OpenMode::ReadWrite).unwrap();
    assert_eq!(stored_json(&state), acknowledged.iter().map(|j| served(j)).collect::<Vec<_>>());
}

/// A damaged record inside a sealed segment is a loud error naming the file and offset.
#[test]
fn corruption_in_a_sealed_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), 3, None);
    write_events(dir.path(), 3, None); // a second run makes the first segment sealed
    let files = ringrelay::store::segment::list_segments(&dir.path().join("shard-000")).unwrap();
    assert_eq!(files.len(), 2);
    let mut bytes = std::fs::read(&files[0].1).unwrap();
    bytes[4096 + 100] ^= 0x40;
    std::fs::write(&files[0].1, &bytes).unwrap();
    // A segment without its index part is read at open (one with its part is not: see
    // `damage_behind_an_index_part_is_found_when_read`).
    part::remove(&files[0].1).unwrap();
    match open_one(dir.path(), None, OpenMode::ReadWrite) {
        Err(StoreError::Corrupt { path, offset, .. }) => {
            assert_eq!(path, files[0].1);
            assert_eq!(offset, 4096);
        }
        Err(other) => panic!("wrong error {other}"),
        Ok(_) => panic!("corruption went unnoticed"),
    }
}

/// A sealed segment opened through its index part is not read at open: a record damaged
/// after the part was written is found when it is read, and is not served (nor anything in
/// its place); the other events are; compaction gives the segment up without changing
/// it; `verify` names the damage.
#[test]
fn damage_behind_an_index_part_is_found_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let events = write_events(dir.path(), 3, None);
    assert_eq!(build_parts(dir.path()), 1);
    let segment = &ringrelay::store::segment::list_segments(&dir.path().join("shard-000")).unwrap()[0].1;
    let spans = spans_of(segment);
    let mut bytes = std::fs::read(segment).unwrap();
    bytes[spans[1].payload_range().start + 40] ^= 0x40;
    std::fs::write(segment, &bytes).unwrap();
    let state = open_one(dir.path(), None, OpenMode::ReadWrite).unwrap();
    assert!(matches!(state.index.layers()[0], Layer::Mapped(_)), "opened through its part");
    let read: Vec<Option<String>> =
        (0..3).map(|no| state.event_json(no).map(|json| String::from_utf8(json).unwrap())).collect();
    assert_eq!(read, vec![Some(served(&events[0])), None, Some(served(&events[2]))]);
    // Compaction reads the damaged record it would keep: it gives up on the segment for
    // good (until a restart) and changes nothing.
    let mut state = state;
    assert!(state.index.kill_id(&verified(&events[0]).id().0));
    let policy = ringrelay::store::CompactionPolicy { dead_percent_min: 1, shard_bytes_max: 0 };
    assert_eq!(state.compact_now(policy), 0);
    assert_eq!(state.figures().compaction_failures, 1);
    assert_eq!(state.compact_now(policy), 0);
    assert_eq!(state.figures().compaction_failures, 1, "not tried again");
    assert_eq!(std::fs::read(segment).unwrap(), bytes, "the segment is as it was");
    drop(state);
    let options =
        ringrelay::tools::StoreOptions { data_dir: dir.path().to_owned(), key_file: None, segment_size: SEGMENT_SIZE };
    let report = ringrelay::tools::verify::run(&options, false).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].offset, Some(spans[1].offset));
}

#[test]
fn encryption_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let key = SegmentKey::from_bytes([9; 32]);
    let events = write_events(dir.path(), 4, Some(key.clone()));
    let bytes = std::fs::read(only_segment(dir.path())).unwrap();
    assert!(!bytes.windows(7).any(|w| w == b"event 1"), "content must not be on disk in clear");
    let state = open_one(dir.path(), Some(key), OpenMode::ReadOnly).unwrap();
    assert_eq!(stored_json(&state), events.iter().map(|j| served(j)).collect::<Vec<_>>());
    drop(state);
    let wrong = open_one(dir.path(), Some(SegmentKey::from_bytes([8; 32])), OpenMode::ReadOnly);
    assert!(matches!(wrong, Err(StoreError::Key { .. })), "wrong key must fail at open");
    let missing = open_one(dir.path(), None, OpenMode::ReadOnly);
    assert!(matches!(missing, Err(StoreError::Key { .. })), "missing key must fail at open");
}

/// Segments rotate at the configured size and everything reads back after reopen.
#[test]
fn rotation_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let big = "x".repeat(60_000);
    let events: Vec<String> =
        (0..40).map(|i| signed(&keys(400), 1, BASE_TIME + i, &[], &format!("{i} {big}"))).collect();
    store_all(dir.path(), &events, None);
    let files = ringrelay::store::segment::list_segments(&dir.path().join("shard-000")).unwrap();
    assert!(files.len() >= 3, "40 x 60 KB must span several 1 MiB segments, got {}", files.len());
    // Full segments and the one the close ended are sealed, and read through their seal.
    for (_, path) in &files {
        let bytes = std::fs::read(path).unwrap();
        assert!(seal_offset(&bytes).is_some(), "{} has no seal that holds", path.display());
        let report = ringrelay::store::segment::scan(&bytes, None, |_, _| {}).unwrap();
        assert!(report.sealed && report.corrupt.is_none());
    }
    let state = open_one(dir.path(), None, OpenMode::ReadOnly).unwrap();
    assert_eq!(stored_json(&state), events.iter().map(|j| served(j)).collect::<Vec<_>>());
}

/// The largest events the hard caps let through make records a reader believes
/// (`RECORD_PAYLOAD_SIZE_MAX`), plain and encrypted: the most tags, each indexed, filling the
/// event; and the most content with the most empty tags (each costs the record more than its
/// JSON).
#[test]
fn the_largest_events_fit_a_record() {
    let caps = EventLimits::hard_caps();
    let value = "v".repeat((EVENT_SIZE_MAX - 1_000) / TAG_COUNT_MAX - 9);
    let full_tags: Vec<[&str; 2]> = vec![["a", value.as_str()]; TAG_COUNT_MAX];
    let empty_tags: Vec<[&str; 2]> = vec![["a", ""]; TAG_COUNT_MAX];
    let as_refs = |tags: &[[&str; 2]]| -> Vec<Vec<String>> {
        tags.iter().map(|tag| tag.iter().map(|part| part.to_string()).collect()).collect()
    };
    let shapes = [(as_refs(&full_tags), String::new()), (as_refs(&empty_tags), "x".repeat(CONTENT_SIZE_MAX))];
    let mut events = Vec::new();
    for (index, (tags, content)) in shapes.iter().enumerate() {
        let tag_refs: Vec<Vec<&str>> = tags.iter().map(|tag| tag.iter().map(String::as_str).collect()).collect();
        let tag_refs: Vec<&[&str]> = tag_refs.iter().map(Vec::as_slice).collect();
        let json = signed(&keys(460), 1, BASE_TIME + index as u64, &tag_refs, content);
        assert!(json.len() > EVENT_SIZE_MAX - 40 * 1024, "{} bytes", json.len());
        events.push(json);
    }
    for encrypted in [false, true] {
        let key = || encrypted.then(|| SegmentKey::from_bytes([4; 32]));
        let dir = tempfile::tempdir().unwrap();
        let (path, to_store, store_caps, store_key) = (dir.path().to_owned(), events.clone(), caps.clone(), key());
        run_glommio(move || {
            Box::pin(async move {
                let store = Store::open(&path, 1, store_key).unwrap();
                for json in &to_store {
                    let event = VerifiedEvent::from_json(json.as_bytes(), &store_caps).unwrap();
                    assert_eq!(store.append(&event, now()).await, Outcome::Stored);
                }
                store.close().await;
            })
        });
        let state = open_one(dir.path(), key(), OpenMode::ReadOnly).unwrap();
        let expected: Vec<String> = events
            .iter()
            .map(|json| VerifiedEvent::from_json(json.as_bytes(), &caps).unwrap().json().to_owned())
            .collect();
        assert!(stored_json(&state) == expected, "the largest events read back as stored");
    }
}

/// A damaged seal is named as such; a seal with bytes after it too; and a segment a crash
/// left without a seal reads record by record.
#[test]
fn seals_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_events(dir.path(), 3, None);
    let second = write_events(dir.path(), 3, None);
    let files = ringrelay::store::segment::list_segments(&dir.path().join("shard-000")).unwrap();
    assert_eq!(files.len(), 2);
    let pristine = std::fs::read(&files[0].1).unwrap();
    let seal = seal_offset(&pristine).expect("a closed segment is sealed");
    let open_error = |bytes: &[u8]| {
        std::fs::write(&files[0].1, bytes).unwrap();
        match open_one(dir.path(), None, OpenMode::ReadWrite) {
            Err(StoreError::Corrupt { path, offset, error }) => {
                assert_eq!(path, files[0].1);
                (offset, error)
            }
            Err(other) => panic!("wrong error {other}"),
            Ok(_) => panic!("damage went unnoticed"),
        }
    };
    let mut bad_hash = pristine.clone();
    bad_hash[seal + 48] ^= 0x01;
    assert_eq!(open_error(&bad_hash), (seal, FormatError::RecordChecksum), "the seal record's own checksum");
    // A well-formed seal over the wrong bytes: records before it all hold, so the seal is named.
    let mut wrong_hash = pristine.clone();
    ringrelay::store::format::write_seal(&mut wrong_hash, seal, &[7; 32]);
    assert_eq!(open_error(&wrong_hash), (seal, FormatError::SealChecksum));
    let mut trailing = pristine.clone();
    trailing.truncate(seal + SEAL_RECORD_SIZE);
    trailing.extend_from_slice(&[1; 16]);
    assert_eq!(open_error(&trailing), (seal + SEAL_RECORD_SIZE, FormatError::AfterSeal));
    // Without its seal (as a crash leaves a segment) it reads record by record, and opening
    // for writing seals it again: the same seal the close wrote.
    let mut unsealed = pristine.clone();
    unsealed[seal..].fill(0);
    std::fs::write(&files[0].1, &unsealed).unwrap();
    assert!(!ringrelay::store::segment::scan(&unsealed, None, |_, _| {}).unwrap().sealed);
    let all: Vec<String> = first.iter().chain(&second).map(|j| served(j)).collect();
    let state = open_one(dir.path(), None, OpenMode::ReadOnly).unwrap();
    assert_eq!(stored_json(&state), all);
    drop(state);
    assert!(seal_offset(&std::fs::read(&files[0].1).unwrap()).is_none(), "a read-only open writes nothing");
    let state = open_one(dir.path(), None, OpenMode::ReadWrite).unwrap();
    assert!(state.repairs.is_empty(), "{:?}", state.repairs);
    assert_eq!(stored_json(&state), all);
    drop(state);
    assert_eq!(std::fs::read(&files[0].1).unwrap(), pristine);
}

/// Segment images are reused once their segment is sealed (`store_all` checks that rotated
/// segments are sealed). Records of many sizes over six 1 MiB segments: a reused image must
/// never put an old segment's bytes into a new file, so reopening finds every record and
/// nothing to cut.
#[test]
fn reused_segment_images_leave_no_old_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<String> = (0..150u64)
        .map(|i| {
            let size = 1_000 + (i * 7_919) % 60_000;
            signed(&keys(500), 1, BASE_TIME + i, &[], &format!("{i} {}", "y".repeat(size as usize)))
        })
        .collect();
    store_all(dir.path(), &events, None);
    let files = ringrelay::store::segment::list_segments(&dir.path().join("shard-000")).unwrap();
    assert!(files.len() >= 5, "150 events of ~30 KB must span at least five 1 MiB segments, got {}", files.len());
    let state = open_one(dir.path(), None, OpenMode::ReadWrite).unwrap();
    assert!(state.repairs.is_empty(), "reopen cut something: {:?}", state.repairs);
    assert_eq!(stored_json(&state), events.iter().map(|j| served(j)).collect::<Vec<_>>());
}

#[test]
fn data_dir_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _held = DataDir::open_or_create(dir.path(), 1).unwrap();
    assert!(matches!(DataDir::open_or_create(dir.path(), 1), Err(StoreError::DataDir(_))));
}

#[test]
fn routing_is_stable_and_spread() {
    let dir = tempfile::tempdir().unwrap();
    let first: Vec<ShardId> = {
        let data = DataDir::open_or_create(dir.path(), 4).unwrap();
        (0..64).map(|i| data.owner_shard(&keys(i).public_key().to_bytes())).collect()
    };
    let data = DataDir::open_or_create(dir.path(), 2).unwrap();
    assert_eq!(data.shard_count, 4, "the manifest keeps the shard count it was created with");
    let again: Vec<ShardId> = (0..64).map(|i| data.owner_shard(&keys(i).public_key().to_bytes())).collect();
    assert_eq!(first, again);
    for shard in ShardId::all(4) {
        assert!(first.contains(&shard), "64 authors must reach all 4 shards: {first:?}");
    }
}

/// A scan that yields after every candidate, with new events arriving between steps, returns
/// exactly what one uninterrupted scan returned when it began.
#[test]
fn scans_are_time_bounded_and_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = open_one(dir.path(), None, OpenMode::ReadWrite).unwrap();
    let now = now();
    let mut rng = StdRng::seed_from_u64(7);
    for i in 0..300u32 {
        let tags: &[&[&str]] = if i % 3 == 0 { &[&["t", "three"]] } else { &[] };
        let json = signed(&keys(800 + i % 5), 1, BASE_TIME + rng.gen_range(0..50), tags, &format!("{i}"));
        state.append(&verified(&json), now).unwrap();
    }
    state.index.set_durable(state.index.len());
    let filters = [
        r#"{"limit":40}"#,
        r##"{"#t":["three"],"limit":25}"##,
        r#"{"kinds":[1],"since":1700000010,"until":1700000030}"#,
        &format!(
            r#"{{"authors":["{}","{}"],"limit":30}}"#,
            keys(801).public_key().to_hex(),
            keys(803).public_key().to_hex()
        ),
    ];
    for text in filters {
        let filter = filter(text);
        let limit = ringrelay::store::effective_limit(&filter, DEFAULT_LIMIT, MAX_LIMIT);
        let mut whole = ringrelay::store::FilterScan::new(&filter, limit, &state.index);
        assert!(whole.step(&state.index, &state, now, usize::MAX), "one unbounded step finishes");
        let expected = whole.into_hits();
        assert!(!expected.is_empty(), "{text}");

        let mut sliced = ringrelay::store::FilterScan::new(&filter, limit, &state.index);
        let mut steps = 0;
        while !sliced.step(&state.index, &state, now, 1) {
            steps += 1;
            let json = signed(&keys(801), 1, BASE_TIME + 25, &[&["t", "three"]], &format!("late {steps} {text}"));
            state.append(&verified(&json), now).unwrap();
            state.index.set_durable(state.index.len());
        }
        assert!(steps >= expected.len(), "{text}: a budget of 1 must take many steps, took {steps}");
        assert_eq!(sliced.into_hits(), expected, "{text}");
    }
}

/// A counting scan counts exactly what a REQ of the same filter finds, whatever its budget
/// per step: counts of kinds, authors or everything (counted run by run, without merging),
/// and random filters (counted through the merge), over random events with versions,
/// deletions and expirations spread over several segments.
#[test]
fn counting_scans_count_what_a_req_finds() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = open_one(dir.path(), None, OpenMode::ReadWrite).unwrap();
    let now = now();
    let (events, _) = events_and_requests(0xc0417, 6_000, 0, now);
    for event in &events {
        state.append(event, now).unwrap();
    }
    state.index.set_durable(state.index.len());
    assert!(state.index.layers().len() >= 2, "several segments");
    let (one, two) = (keys(101).public_key().to_hex(), keys(104).public_key().to_hex());
    let mut filters: Vec<Filter> = [
        "{}".to_string(),
        format!(r#"{{"since":{}}}"#, BASE_TIME + 13),
        r#"{"kinds":[1]}"#.to_string(),
        format!(r#"{{"kinds":[1,7,0],"since":{},"until":{}}}"#, BASE_TIME + 5, BASE_TIME + 31),
        r#"{"kinds":[1,1]}"#.to_string(),
        format!(r#"{{"authors":["{one}","{two}"],"until":{}}}"#, BASE_TIME + 20),
        format!(r#"{{"authors":["{one}"],"kinds":[1]}}"#),
    ]
    .iter()
    .map(|text| filter(text))
    .collect();
    let mut rng = StdRng::seed_from_u64(11);
    filters.extend((0..60).map(|_| random_filter(&mut rng, &events)));
    let limit = 1_000_000;
    for filter in &filters {
        let mut req = ringrelay::store::FilterScan::new(filter, limit, &state.index);
        assert!(req.step(&state.index, &state, now, usize::MAX));
        let expected = req.into_hits().len();
        for budget in [1, 7, 100, usize::MAX] {
            let mut count = ringrelay::store::FilterScan::new_count(filter, limit, &state.index);
            let mut steps = 0;
            while !count.step(&state.index, &state, now, budget) {
                steps += 1;
                assert!(steps <= events.len() + 10, "{filter:?} makes progress");
            }
            assert_eq!(count.count(), expected, "{filter:?}, budget {budget}");
        }
    }
    let mut capped = ringrelay::store::FilterScan::new_count(&filters[0], 10, &state.index);
    while !capped.step(&state.index, &state, now, 3) {}
    assert_eq!(capped.count(), 10, "a count stops at its limit");
}

/// A segment file moved under another name is refused at open, not misread later.
#[test]
fn renamed_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), 2, Some(SegmentKey::from_bytes([5; 32])));
    let segment = only_segment(dir.path());
    std::fs::rename(&segment, segment.with_file_name("seg-0000000007.rr")).unwrap();
    match open_one(dir.path(), Some(SegmentKey::from_bytes([5; 32])), OpenMode::ReadOnly) {
        Err(StoreError::DataDir(message)) => assert!(message.contains("header says shard 0 segment 1"), "{message}"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a renamed segment was accepted"),
    }
}

/// Open shard 0 and expect it refused as corrupt at `offset` of `path`.
fn refused_as_corrupt(dir: &Path, path: &Path, mode: OpenMode) -> (usize, FormatError) {
    match open_one(dir, None, mode) {
        Err(StoreError::Corrupt { path: at, offset, error }) => {
            assert_eq!(at, path);
            (offset, error)
        }
        Err(other) => panic!("wrong error {other}"),
        Ok(state) => panic!("damage taken for a torn tail: {:?}", state.repairs),
    }
}

/// Record spans of a segment file, in order.
fn spans_of(path: &Path) -> Vec<ringrelay::store::format::RecordSpan> {
    let bytes = std::fs::read(path).unwrap();
    let mut spans = Vec::new();
    ringrelay::store::segment::scan(&bytes, None, |span, _| spans.push(*span)).unwrap();
    spans
}

/// One flipped byte in the middle of the newest segment is corruption, not a torn tail:
/// after a clean shutdown (the clean mark), and after a crash too, because records written
/// once it was durable follow it. Serve and verify refuse it with the file and offset until
/// the operator acts; nothing is cut.
#[test]
fn damage_before_acknowledged_records_is_corruption_not_a_torn_tail() {
    for crashed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        write_events(dir.path(), 20, None);
        if crashed {
            forget_clean_shutdown(dir.path());
        }
        let segment = only_segment(dir.path());
        let spans = spans_of(&segment);
        let victim = spans[8];
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes[victim.payload_range().start + 10] ^= 0x20;
        std::fs::write(&segment, &bytes).unwrap();
        for mode in [OpenMode::ReadWrite, OpenMode::ReadOnly, OpenMode::ReadWrite] {
            let (offset, error) = refused_as_corrupt(dir.path(), &segment, mode);
            assert_eq!((offset, error), (victim.offset, FormatError::RecordChecksum), "crashed: {crashed}");
        }
        assert_eq!(std::fs::read(&segment).unwrap(), bytes, "nothing was cut");
    }
}

/// Damage in the last record after a crash has no acknowledged record after it: a torn tail,
/// cut, with the cut bytes kept in the shard's quarantine directory. After a clean shutdown
/// the same damage is corruption.
#[test]
fn damage_in_the_last_record_is_a_torn_tail_only_after_a_crash() {
    for crashed in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let events = write_events(dir.path(), 6, None);
        if crashed {
            forget_clean_shutdown(dir.path());
        }
        let segment = only_segment(dir.path());
        let last = *spans_of(&segment).last().unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes[last.payload_range().start + 3] ^= 0x01;
        std::fs::write(&segment, &bytes).unwrap();
        if !crashed {
            assert_eq!(refused_as_corrupt(dir.path(), &segment, OpenMode::ReadWrite).0, last.offset);
            continue;
        }
        let state = open_one(dir.path(), None, OpenMode::ReadWrite).unwrap();
        assert_eq!(state.repairs.len(), 1, "{:?}", state.repairs);
        assert_eq!(stored_json(&state), events[..5].iter().map(|j| served(j)).collect::<Vec<_>>());
        drop(state);
        let quarantine = dir.path().join("shard-000").join("quarantine");
        let kept: Vec<_> = std::fs::read_dir(&quarantine).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(std::fs::read(&kept[0]).unwrap(), bytes[last.offset..], "the cut bytes are kept");
    }
}

/// A newest segment cut short after a clean shutdown (mid-record, or exactly between two
/// records) is corruption: the clean mark says how long it was.
#[test]
fn a_cleanly_closed_segment_cut_short_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), 10, None);
    let segment = only_segment(dir.path());
    let spans = spans_of(&segment);
    let pristine = std::fs::read(&segment).unwrap();
    for cut in [spans[5].offset + 30, spans[5].offset] {
        std::fs::write(&segment, &pristine[..cut]).unwrap();
        let (offset, error) = refused_as_corrupt(dir.path(), &segment, OpenMode::ReadWrite);
        assert_eq!((offset, error), (cut, FormatError::Truncated(pristine.len() as u64)));
    }
}

/// A damaged header of the newest segment with records after it is corruption; only a
/// header with nothing after it (a crash while the segment began) is removed.
#[test]
fn a_damaged_header_before_records_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), 4, None);
    forget_clean_shutdown(dir.path());
    let segment = only_segment(dir.path());
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[20] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    assert_eq!(refused_as_corrupt(dir.path(), &segment, OpenMode::ReadWrite), (0, FormatError::HeaderChecksum));
    assert!(segment.exists());
}

/// The answer of each request in `requests`, from the store at `path` opened afresh.
fn answers_after_open(path: &Path, requests: &[Vec<Filter>], now: u64) -> (Vec<Vec<String>>, usize) {
    let (path, requests) = (path.to_owned(), requests.to_vec());
    run_glommio(move || {
        Box::pin(async move {
            let store = Store::open(&path, 1, None).unwrap();
            let mapped =
                store.shards[0].state().index.layers().iter().filter(|l| matches!(l, Layer::Mapped(_))).count();
            let answers = requests.iter().map(|filters| store.query(filters, now)).collect();
            store.close().await;
            (answers, mapped)
        })
    })
}

/// Give every sealed segment of the one-shard store at `path` its index part.
fn build_parts(path: &Path) -> usize {
    open_one(path, None, OpenMode::ReadWrite).unwrap().build_parts()
}

fn part_files(path: &Path) -> Vec<PathBuf> {
    let segments = ringrelay::store::segment::list_segments(&path.join("shard-000")).unwrap();
    segments.iter().map(|(_, segment)| part::part_path(segment)).filter(|part| part.exists()).collect()
}

/// `count` random events (versions, deletions, expirations, and a request to vanish every
/// 400) and `requests` random REQs of one or two filters over them, from `seed`.
fn events_and_requests(seed: u64, count: usize, requests: usize, now: u64) -> (Vec<VerifiedEvent>, Vec<Vec<Filter>>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut events: Vec<VerifiedEvent> = Vec::new();
    for i in 0..count {
        let json = if i % 400 == 399 {
            let author = keys(100 + rng.gen_range(0..AUTHOR_COUNT));
            signed(&author, 62, BASE_TIME + rng.gen_range(0..20), &[&["relay", "ALL_RELAYS"]], "")
        } else {
            random_event(&mut rng, &events, now)
        };
        events.push(verified(&json));
    }
    let requests =
        (0..requests).map(|_| (0..rng.gen_range(1..3)).map(|_| random_filter(&mut rng, &events)).collect()).collect();
    (events, requests)
}

/// Random events with versions, deletions, requests to vanish and expirations, stored in two
/// runs with the first run's segments given their parts in between, so that the second run
/// deletes and replaces events that a part holds. Every way of opening the store afterwards
/// (sealed segments through parts, some parts missing, damaged, or naming another segment)
/// answers every request as the store did before it closed.
#[test]
fn reopen_through_index_parts_answers_as_the_store_did() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let now = now();
    let (events, requests) = events_and_requests(0x1dec5, 10_000, 300, now);
    let (first, second) = events.split_at(5_000);
    let (first, second) = (first.to_vec(), second.to_vec());
    let (store_path, store_requests) = (path.clone(), requests.clone());
    let first_path = path.clone();
    run_glommio(move || {
        Box::pin(async move {
            let store = Store::open(&first_path, 1, None).unwrap();
            for event in &first {
                store.append(event, now).await;
            }
            store.close().await;
        })
    });
    build_parts(&path);
    assert!(part_files(&path).len() >= 2, "the first run fills more than one segment");
    let expected = run_glommio(move || {
        Box::pin(async move {
            let store = Store::open(&store_path, 1, None).unwrap();
            for event in &second {
                store.append(event, now).await;
            }
            let answers: Vec<Vec<String>> = store_requests.iter().map(|filters| store.query(filters, now)).collect();
            store.close().await;
            answers
        })
    });
    assert!(expected.iter().filter(|answer| !answer.is_empty()).count() > 150, "most queries match something");
    let check = |case: &str, mapped_min: usize| {
        let (answers, mapped) = answers_after_open(&path, &requests, now);
        assert!(mapped >= mapped_min, "{case}: {mapped} parts mapped");
        for ((filters, expected), answer) in requests.iter().zip(&expected).zip(&answers) {
            assert_eq!(answer, expected, "{case}: {filters:?}");
        }
    };
    check("the first run's segments through parts", 2);
    build_parts(&path);
    let segments = ringrelay::store::segment::list_segments(&path.join("shard-000")).unwrap().len();
    let parts = part_files(&path);
    assert!(segments >= 4 && parts.len() < segments, "parts were merged: {parts:?} for {segments} segments");
    check("every sealed segment through parts, four of them through one", parts.len());

    // Damage: a part that does not hold is not used (its segments are read), and rebuilt.
    let mut bytes = std::fs::read(&parts[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&parts[0], &bytes).unwrap();
    if let Some(last) = parts.get(1) {
        let bytes = std::fs::read(last).unwrap();
        std::fs::write(last, &bytes[..bytes.len() - 100]).unwrap();
    }
    check("a damaged merged part, a truncated part", 0);
    assert!(std::fs::read(&parts[0]).map_or(true, |now| now != bytes), "the damaged part is not kept");
    build_parts(&path);
    check("parts rebuilt and merged again", parts.len());
    // A crash between a merge's rename and its removal of the parts it replaced.
    let second = &ringrelay::store::segment::list_segments(&path.join("shard-000")).unwrap()[1].1;
    std::fs::write(part::part_path(second), b"a part that a merge replaced").unwrap();
    check("a part left by a merge", parts.len());
    assert!(!part::part_path(second).exists(), "it is removed");
    // What a crash while writing a part leaves: nothing, or its temp file alone.
    std::fs::remove_file(&parts[0]).unwrap();
    std::fs::write(parts[0].with_extension("tmp"), b"half a part").unwrap();
    check("a missing part", parts.len() - 1);
    build_parts(&path);
    // A part that names other seals than its segments' (as one left from before a repair
    // rewrote a segment would): another store's part of its first segment.
    let other = tempfile::tempdir().unwrap();
    write_events(other.path(), 40, None);
    build_parts(other.path());
    std::fs::copy(&part_files(other.path())[0], &parts[0]).unwrap();
    check("a stale part", parts.len() - 1);
    build_parts(&path);
    check("parts rebuilt", parts.len());
    for part in part_files(&path) {
        std::fs::remove_file(part).unwrap();
    }
    check("no parts", 0);
}

/// The scrub checks a sealed segment's seal a piece at a time; a flipped byte is named at
/// its record, and a segment without its seal at once.
#[test]
fn the_scrub_checks_a_seal_piece_by_piece_and_names_the_damage() {
    use ringrelay::store::segment::Scrub;
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), 40, None);
    // A read-write open trims the segment to its seal (and gives it its part).
    assert_eq!(build_parts(dir.path()), 1);
    let segment = ringrelay::store::segment::list_segments(&dir.path().join("shard-000")).unwrap()[0].1.clone();
    let scrub_all = |path: &Path| {
        let mut scrub = Scrub::open(path)?;
        let mut pieces = 0;
        loop {
            pieces += 1;
            if let Some(outcome) = scrub.step(4096) {
                return outcome.map(|()| pieces);
            }
        }
    };
    let pieces = scrub_all(&segment).unwrap();
    assert!(pieces > 2, "{pieces} pieces");
    let spans = spans_of(&segment);
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[spans[20].payload_range().start + 10] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    assert_eq!(scrub_all(&segment).unwrap_err().0, spans[20].offset);
    bytes.truncate(bytes.len() - 10);
    std::fs::write(&segment, &bytes).unwrap();
    assert!(scrub_all(&segment).is_err(), "no seal at the end");
}

/// The JSON of every event a REQ with `filters` returns from one open shard, in order.
fn answer_of(state: &ShardState, filters: &[Filter], now: u64) -> Vec<String> {
    query_shards(&[state], filters, DEFAULT_LIMIT, MAX_LIMIT, now)
        .into_iter()
        .map(|hit| String::from_utf8(state.event_json(hit.hit.no).expect("reads back")).unwrap())
        .collect()
}

/// Bytes of shard 0's segment files, and whether a compaction's temporary file is there.
fn segment_bytes(path: &Path) -> (u64, bool) {
    let shard = path.join("shard-000");
    let segments = ringrelay::store::segment::list_segments(&shard).unwrap();
    let bytes = segments.iter().map(|(_, path)| std::fs::metadata(path).unwrap().len()).sum();
    let temp = std::fs::read_dir(&shard).unwrap().any(|entry| {
        entry.unwrap().path().extension().is_some_and(|ext| ext == ringrelay::store::compact::TEMP_SUFFIX)
    });
    (bytes, temp)
}

/// Online compaction (`ShardState::compact_now`, what the relay's indexer runs a step at
/// a time): random events with versions, deletions, requests to vanish and expirations;
/// every sealed run of segments with a dead record is rewritten without its dead records.
/// The store answers every request as before, in the same process and after a reopen, from
/// fewer bytes; and a crash at each of compaction's I/O steps (each write, rename, removal
/// and directory sync) leaves a store that answers every request the same.
#[test]
fn online_compaction_keeps_every_answer_and_survives_a_crash_at_every_step() {
    use ringrelay::store::faults::{Fault, Faults, IoOp};
    use ringrelay::store::CompactionPolicy;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let now = now();
    let (events, requests) = events_and_requests(0xc0_4ac7, 8_000, 200, now);
    let store_path = path.clone();
    run_glommio(move || {
        Box::pin(async move {
            let store = Store::open(&store_path, 1, None).unwrap();
            for event in &events {
                store.append(event, now).await;
            }
            store.close().await;
        })
    });
    build_parts(&path);
    let pristine = tempfile::tempdir().unwrap();
    crate::support::copy_dir(&path, pristine.path());
    let (expected, _) = answers_after_open(&path, &requests, now);
    assert!(expected.iter().filter(|answer| !answer.is_empty()).count() > 100, "most queries match something");

    let policy = CompactionPolicy { dead_percent_min: 1, shard_bytes_max: 0 };
    let (bytes_before, _) = segment_bytes(&path);
    let mut state = open_one(&path, None, OpenMode::ReadWrite).unwrap();
    let dead_before = state.figures().dead_bytes;
    assert!(dead_before > 0, "the events retire some of their own");
    // A hold from the first segment on (a search index catching up) keeps compaction off.
    let first = state.segment_ids()[0];
    state.hold_compaction_from(Some(first));
    assert_eq!(state.compact_now(policy), 0, "held segments are not compacted");
    state.hold_compaction_from(None);
    let compacted = state.compact_now(policy);
    assert!(compacted >= 1, "a sealed run of segments is compacted");
    let figures = state.figures();
    assert!(figures.dead_bytes < dead_before, "{} dead bytes left of {dead_before}", figures.dead_bytes);
    assert_eq!(figures.compactions, state.figures().compactions);
    let answers: Vec<Vec<String>> = requests.iter().map(|filters| answer_of(&state, filters, now)).collect();
    for ((filters, expected), answer) in requests.iter().zip(&expected).zip(&answers) {
        assert_eq!(answer, expected, "served from the compacted segments: {filters:?}");
    }
    assert_eq!(state.compact_now(policy), 0, "nothing is left to compact");
    drop(state);
    let (bytes_after, temp_left) = segment_bytes(&path);
    assert!(bytes_after < bytes_before, "{bytes_after} bytes of segments, from {bytes_before}");
    assert!(!temp_left, "no temporary file is left");
    let (reopened, mapped) = answers_after_open(&path, &requests, now);
    assert!(mapped >= 1, "the compacted segments open through their part");
    for ((filters, expected), answer) in requests.iter().zip(&expected).zip(&reopened) {
        assert_eq!(answer, expected, "after a reopen: {filters:?}");
    }

    // A crash at each step: every operation from there on fails, as the disk a crash left.
    let mut step = 0;
    loop {
        let crashed = tempfile::tempdir().unwrap();
        crate::support::copy_dir(pristine.path(), crashed.path());
        let faults = Faults::plan();
        faults.inject(IoOp::Compact, step, u64::MAX, Fault::Errno(5));
        let data = DataDir::open_or_create(crashed.path(), 1).unwrap();
        let config = ShardConfig::new(SEGMENT_SIZE, None).with_faults(faults.clone());
        let mut state = ShardState::open(&data.shard_dir(ShardId(0)), ShardId(0), config, OpenMode::ReadWrite).unwrap();
        let compacted = state.compact_now(policy);
        if step == 0 {
            // Failed before it replaced anything: the store is as it was, and compaction
            // rests before it tries again.
            assert_eq!((compacted, state.figures().compaction_failures), (0, 1));
            assert!(!segment_bytes(crashed.path()).1, "the failed rewrite removed its files");
            faults.clear();
            assert_eq!(state.compact_now(policy), 0, "no second try at once");
        }
        drop((state, data));
        let (answers, _) = answers_after_open(crashed.path(), &requests, now);
        for ((filters, expected), answer) in requests.iter().zip(&expected).zip(&answers) {
            assert_eq!(answer, expected, "after a crash at compaction step {step}: {filters:?}");
        }
        assert!(!segment_bytes(crashed.path()).1, "the open removes what the crash left");
        if faults.count(IoOp::Compact) <= step {
            break;
        }
        step += 1;
        assert!(step < 500, "compaction takes a bounded number of steps");
    }
    assert!(step >= 6, "every step of at least one compaction was crashed at ({step})");
}

/// `ShardState::prepare` opens a shard another writer still appends to (as a relay taking
/// over does, before the other lets go), and `Prepared::finish` loads what was written
/// since: the shard then answers as one opened afresh, also when the store was compacted
/// in between (the prepared files changed: it is opened afresh instead).
#[test]
fn a_prepared_shard_finishes_with_what_was_written_since() {
    use ringrelay::store::CompactionPolicy;
    let now = now();
    let (events, requests) = events_and_requests(0x7a4e, 6_000, 150, now);
    let (first, second) = events.split_at(3_000);
    for compact_between in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let store_events = |path: PathBuf, events: Vec<VerifiedEvent>| {
            run_glommio(move || {
                Box::pin(async move {
                    let store = Store::open(&path, 1, None).unwrap();
                    for event in &events {
                        store.append(event, now).await;
                    }
                    store.close().await;
                })
            })
        };
        store_events(path.clone(), first.to_vec());
        build_parts(&path);
        let shard_dir = path.join("shard-000");
        let prepared =
            ShardState::prepare(&shard_dir, ShardId(0), ShardConfig::new(SEGMENT_SIZE, None)).expect("prepared");
        // The other writer goes on: more segments, deletions and replacements of what the
        // prepared shard holds.
        store_events(path.clone(), second.to_vec());
        if compact_between {
            let policy = CompactionPolicy { dead_percent_min: 1, shard_bytes_max: 0 };
            assert!(open_one(&path, None, OpenMode::ReadWrite).unwrap().compact_now(policy) >= 1);
        }
        let state = prepared.finish().expect("finished");
        let answers: Vec<Vec<String>> = requests.iter().map(|filters| answer_of(&state, filters, now)).collect();
        let ids = state.segment_ids();
        drop(state);
        let fresh = open_one(&path, None, OpenMode::ReadWrite).unwrap();
        for (filters, answer) in requests.iter().zip(&answers) {
            assert_eq!(answer, &answer_of(&fresh, filters, now), "compacted between: {compact_between}; {filters:?}");
        }
        assert!(answers.iter().filter(|answer| !answer.is_empty()).count() > 75, "most queries match something");
        assert_eq!(ids[..ids.len() - 1], fresh.segment_ids()[..ids.len() - 1], "the same segments");
    }
}

//! Everything sent during a run, built and signed before it starts: signing costs ~30 µs
//! per event and must not load the machine while latency is measured.
//!
//! Authors, sizes, tags and filters come from the seed. `created_at` follows the clock
//! (the second each event is due), so a rerun against the same relay is not all duplicates.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use async_tungstenite::tungstenite::Utf8Bytes;
use hashbrown::HashMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secp256k1::{Keypair, Message, SecretKey, SECP256K1};
use serde_json::json;
use sha2::{Digest, Sha256};

/// What an event is for, which decides who expects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Publish,
    Fanout,
    Preload,
}

/// One signed event, ready to send.
pub struct Prepared {
    pub id: [u8; 32],
    pub role: Role,
    /// Index of the author within its pool.
    pub author: u32,
    pub kind: u16,
    /// Fanout topic or query tag index, when it carries one.
    pub topic: Option<u32>,
    pub created_at: u64,
    /// `["EVENT",{...}]`, shared without copying by every send.
    pub message: Utf8Bytes,
}

/// Send progress of an event, shared by every generator thread.
pub mod status {
    pub const UNSENT: u8 = 0;
    pub const SENT: u8 = 1;
    pub const ACCEPTED: u8 = 2;
    pub const REJECTED: u8 = 3;
}

/// The events of a run with their shared send state.
pub struct EventTable {
    pub events: Vec<Prepared>,
    pub by_id: HashMap<[u8; 32], u32>,
    /// When each event was scheduled to be sent, in ns after the run's start (+1; 0 = not yet).
    scheduled: Vec<AtomicU64>,
    status: Vec<AtomicU8>,
}

impl EventTable {
    pub fn new(events: Vec<Prepared>) -> EventTable {
        let by_id = events.iter().enumerate().map(|(i, e)| (e.id, i as u32)).collect();
        let scheduled = events.iter().map(|_| AtomicU64::new(0)).collect();
        let status = events.iter().map(|_| AtomicU8::new(status::UNSENT)).collect();
        EventTable { events, by_id, scheduled, status }
    }

    pub fn mark_sent(&self, index: usize, scheduled_ns: u64) {
        self.scheduled[index].store(scheduled_ns + 1, Ordering::Release);
        self.status[index].store(status::SENT, Ordering::Release);
    }

    pub fn scheduled_ns(&self, index: usize) -> Option<u64> {
        self.scheduled[index].load(Ordering::Acquire).checked_sub(1)
    }

    pub fn set_status(&self, index: usize, value: u8) {
        self.status[index].store(value, Ordering::Release);
    }

    pub fn status(&self, index: usize) -> u8 {
        self.status[index].load(Ordering::Acquire)
    }
}

/// Key pairs derived from the seed: the same seed, the same authors.
pub fn authors(seed: u64, pool: &str, count: usize) -> Vec<Keypair> {
    (0..count as u64)
        .map(|i| {
            let mut counter = 0u32;
            loop {
                let digest = Sha256::new()
                    .chain_update(b"loadgen author")
                    .chain_update(pool.as_bytes())
                    .chain_update(seed.to_le_bytes())
                    .chain_update(i.to_le_bytes())
                    .chain_update(counter.to_le_bytes())
                    .finalize();
                if let Ok(secret) = SecretKey::from_slice(&digest) {
                    break Keypair::from_secret_key(SECP256K1, &secret);
                }
                counter += 1;
            }
        })
        .collect()
}

pub fn pubkey_hex(keypair: &Keypair) -> String {
    hex(&keypair.x_only_public_key().0.serialize())
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 15)] as char);
    }
    out
}

/// 64 lowercase or uppercase hex digits to 32 bytes.
pub fn decode_id(text: &[u8]) -> Option<[u8; 32]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// What one event says, before signing.
pub struct Draft {
    pub role: Role,
    pub author: u32,
    pub kind: u16,
    pub topic: Option<u32>,
    pub created_at: u64,
    pub tags: Vec<Vec<String>>,
    pub content: String,
}

/// Sign one draft (NIP-01 id, BIP-340 signature without auxiliary randomness, so the same
/// draft always gives the same bytes).
pub fn sign(draft: Draft, keypair: &Keypair) -> Prepared {
    let pubkey = pubkey_hex(keypair);
    let canonical = json!([0, pubkey, draft.created_at, draft.kind, draft.tags, draft.content]).to_string();
    let id: [u8; 32] = Sha256::digest(canonical.as_bytes()).into();
    let signature = SECP256K1.sign_schnorr_no_aux_rand(&Message::from_digest(id), keypair);
    let event = json!({
        "id": hex(&id),
        "pubkey": pubkey,
        "created_at": draft.created_at,
        "kind": draft.kind,
        "tags": draft.tags,
        "content": draft.content,
        "sig": hex(signature.as_ref()),
    });
    Prepared {
        id,
        role: draft.role,
        author: draft.author,
        kind: draft.kind,
        topic: draft.topic,
        created_at: draft.created_at,
        message: Utf8Bytes::from(format!("[\"EVENT\",{event}]")),
    }
}

/// Sign drafts on every core; the order is kept.
pub fn sign_all(drafts: Vec<Draft>, keys: &[Keypair]) -> Vec<Prepared> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = drafts.len().div_ceil(threads).max(1);
    let mut drafts = drafts;
    let mut chunks = Vec::new();
    while !drafts.is_empty() {
        let rest = drafts.split_off(chunk.min(drafts.len()));
        chunks.push(std::mem::replace(&mut drafts, rest));
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|draft| {
                            let keypair = &keys[draft.author as usize];
                            sign(draft, keypair)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|handle| handle.join().expect("signing thread")).collect()
    })
}

const WORDS: &[&str] = &[
    "nostr",
    "relay",
    "the",
    "a",
    "of",
    "and",
    "zap",
    "note",
    "bitcoin",
    "lightning",
    "gm",
    "pura",
    "vida",
    "today",
    "build",
    "protocol",
    "keys",
    "client",
    "event",
    "signal",
    "coffee",
    "morning",
    "thread",
    "sats",
    "meme",
    "open",
    "source",
    "freedom",
    "social",
    "network",
    "wen",
    "ship",
    "it",
    "is",
    "to",
    "in",
    "this",
    "that",
    "with",
    "for",
];
const HASHTAGS: &[&str] = &[
    "nostr",
    "bitcoin",
    "grownostr",
    "zapathon",
    "photography",
    "music",
    "art",
    "coffee",
    "plebchain",
    "dev",
    "rust",
    "foodstr",
    "asknostr",
    "introductions",
    "memes",
    "news",
    "books",
    "travel",
    "running",
    "gaming",
];

/// Note content whose length follows the long tail of real notes: most are a sentence or
/// two, a few are long posts (median ~120 bytes, capped at 4 KiB).
fn content(rng: &mut StdRng) -> String {
    let normal: f64 = (0..12).map(|_| rng.gen::<f64>()).sum::<f64>() - 6.0;
    let length = (120.0 * (0.9 * normal).exp()).clamp(2.0, 4096.0) as usize;
    let mut text = String::with_capacity(length + 12);
    while text.len() < length {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
    }
    text
}

fn random_hex(rng: &mut StdRng) -> String {
    hex(&rng.gen::<[u8; 32]>())
}

/// The `publish` scenario's events: 80% notes with 0–3 hashtags and sometimes a mention or
/// a reply, 20% reactions, from `authors` authors; event `i` is due at `due(i)` (unix s).
pub fn publish_drafts(seed: u64, count: usize, authors: &[Keypair], due: impl Fn(usize) -> u64) -> Vec<Draft> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7075_626c);
    (0..count)
        .map(|i| {
            let author = rng.gen_range(0..authors.len()) as u32;
            let other = pubkey_hex(&authors[rng.gen_range(0..authors.len())]);
            if rng.gen_bool(0.2) {
                let tags = vec![vec!["e".into(), random_hex(&mut rng)], vec!["p".into(), other]];
                return Draft {
                    role: Role::Publish,
                    author,
                    kind: 7,
                    topic: None,
                    created_at: due(i),
                    tags,
                    content: "+".into(),
                };
            }
            let mut tags = Vec::new();
            for _ in 0..rng.gen_range(0..=3) {
                tags.push(vec!["t".into(), HASHTAGS[rng.gen_range(0..HASHTAGS.len())].into()]);
            }
            if rng.gen_bool(0.3) {
                tags.push(vec!["p".into(), other]);
            }
            if rng.gen_bool(0.2) {
                tags.push(vec!["e".into(), random_hex(&mut rng), String::new(), "reply".into()]);
            }
            Draft {
                role: Role::Publish,
                author,
                kind: 1,
                topic: None,
                created_at: due(i),
                tags,
                content: content(&mut rng),
            }
        })
        .collect()
}

/// The hashtag of fanout topic `topic` in a run with `seed`; the run's own, so stored
/// events of other tools never match.
pub fn fanout_topic(seed: u64, topic: u32) -> String {
    format!("loadgen-{seed}-topic-{topic}")
}

/// The `fanout` scenario's events: notes each carrying one topic, from the fanout authors.
pub fn fanout_drafts(seed: u64, count: usize, authors: usize, topics: usize, due: impl Fn(usize) -> u64) -> Vec<Draft> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6661_6e6f);
    (0..count)
        .map(|i| {
            let topic = rng.gen_range(0..topics) as u32;
            Draft {
                role: Role::Fanout,
                author: rng.gen_range(0..authors) as u32,
                kind: 1,
                topic: Some(topic),
                created_at: due(i),
                tags: vec![vec!["t".into(), fanout_topic(seed, topic)]],
                content: content(&mut rng),
            }
        })
        .collect()
}

/// What a fanout subscriber follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follow {
    Topic(u32),
    Author(u32),
    /// A filter that matches nothing the run publishes.
    Nothing,
}

impl Follow {
    /// Whether an event of the fanout pool is meant for this subscriber.
    pub fn wants(&self, event: &Prepared) -> bool {
        match *self {
            Follow::Topic(topic) => event.role == Role::Fanout && event.topic == Some(topic),
            Follow::Author(author) => event.role == Role::Fanout && event.author == author,
            Follow::Nothing => false,
        }
    }

    /// The REQ filter: live events only, through `since` the run's start. Not `limit: 0`:
    /// nostr-rs-relay 0.8 never answers such a REQ with EOSE.
    pub fn filter(&self, seed: u64, since: u64, fanout_authors: &[Keypair]) -> serde_json::Value {
        match *self {
            Follow::Topic(topic) => {
                json!({"kinds": [1], "#t": [fanout_topic(seed, topic)], "since": since})
            }
            Follow::Author(author) => {
                json!({"authors": [pubkey_hex(&fanout_authors[author as usize])], "since": since})
            }
            Follow::Nothing => {
                json!({"kinds": [1], "#t": [format!("loadgen-{seed}-nobody")], "since": since})
            }
        }
    }
}

/// Subscriber `i`'s filter: idle ones first, then author followers, then topic followers.
pub fn follows(
    seed: u64,
    subscribers: usize,
    topics: usize,
    authors: usize,
    author_ratio: f64,
    idle_ratio: f64,
) -> Vec<Follow> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x666f_6c6c);
    let idle = (subscribers as f64 * idle_ratio).round() as usize;
    let by_author = (subscribers as f64 * author_ratio).round() as usize;
    (0..subscribers)
        .map(|i| {
            if i < idle {
                Follow::Nothing
            } else if i < idle + by_author {
                Follow::Author(rng.gen_range(0..authors) as u32)
            } else {
                Follow::Topic(rng.gen_range(0..topics) as u32)
            }
        })
        .collect()
}

/// Tags of the preloaded store that queries ask for.
pub const QUERY_TAGS: u32 = 16;

pub fn query_tag(seed: u64, tag: u32) -> String {
    format!("loadgen-{seed}-history-{tag}")
}

/// Events stored before a `query` run: notes and reactions spread over the last day, with
/// every fourth sharing a `created_at` with its neighbour so that tie order is exercised.
pub fn preload_drafts(seed: u64, count: usize, authors: usize, now: u64) -> Vec<Draft> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7072_656c);
    let mut created_at = now - 1;
    (0..count)
        .map(|i| {
            if i % 4 != 0 {
                created_at = now - 1 - rng.gen_range(0..86_400);
            }
            let tag = rng.gen_range(0..QUERY_TAGS);
            let reaction = rng.gen_bool(0.25);
            Draft {
                role: Role::Preload,
                author: rng.gen_range(0..authors) as u32,
                kind: if reaction { 7 } else { 1 },
                topic: Some(tag),
                created_at,
                tags: vec![vec!["t".into(), query_tag(seed, tag)]],
                content: if reaction { "+".into() } else { content(&mut rng) },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_events_carry_their_canonical_id_and_a_valid_signature() {
        let keys = authors(3, "t", 2);
        let drafts = publish_drafts(3, 20, &keys, |i| 1_700_000_000 + i as u64);
        let events = sign_all(drafts, &keys);
        assert_eq!(events.len(), 20);
        for event in &events {
            let value: serde_json::Value = serde_json::from_str(&event.message).unwrap();
            let body = &value[1];
            let canonical = json!([0, body["pubkey"], body["created_at"], body["kind"], body["tags"], body["content"]]);
            let id: [u8; 32] = Sha256::digest(canonical.to_string().as_bytes()).into();
            assert_eq!(body["id"].as_str().unwrap(), hex(&id));
            assert_eq!(id, event.id);
            let signature =
                secp256k1::schnorr::Signature::from_slice(&decode_id_128(body["sig"].as_str().unwrap())).unwrap();
            let pubkey =
                secp256k1::XOnlyPublicKey::from_slice(&decode_id(body["pubkey"].as_str().unwrap().as_bytes()).unwrap())
                    .unwrap();
            SECP256K1.verify_schnorr(&signature, &Message::from_digest(id), &pubkey).unwrap();
        }
    }

    fn decode_id_128(text: &str) -> Vec<u8> {
        let (a, b) = text.split_at(64);
        let mut out = decode_id(a.as_bytes()).unwrap().to_vec();
        out.extend(decode_id(b.as_bytes()).unwrap());
        out
    }

    #[test]
    fn the_seed_fixes_the_workload() {
        let keys = authors(9, "t", 4);
        let a = sign_all(publish_drafts(9, 50, &keys, |_| 1_700_000_000), &keys);
        let b = sign_all(publish_drafts(9, 50, &keys, |_| 1_700_000_000), &keys);
        assert!(a.iter().zip(&b).all(|(a, b)| a.message == b.message));
        let c = sign_all(publish_drafts(10, 50, &keys, |_| 1_700_000_000), &keys);
        assert!(a.iter().zip(&c).any(|(a, c)| a.message != c.message));
    }

    #[test]
    fn follows_have_the_asked_shares() {
        let follows = follows(1, 100, 10, 5, 0.2, 0.1);
        assert_eq!(follows.iter().filter(|f| **f == Follow::Nothing).count(), 10);
        assert_eq!(follows.iter().filter(|f| matches!(f, Follow::Author(_))).count(), 20);
        assert_eq!(follows.iter().filter(|f| matches!(f, Follow::Topic(_))).count(), 70);
    }
}

//! Which JSON crate parses events fastest, on this project's build flags (no target-cpu)?
//! The same borrowed, typed event shape through serde with each parser.
//! `cargo bench --bench json`.

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use nostr::{EventBuilder, JsonUtil, Keys, Kind, Tag, Timestamp};

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Wire<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    pubkey: Cow<'a, str>,
    created_at: u64,
    kind: u16,
    #[serde(borrow)]
    tags: Vec<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    content: Cow<'a, str>,
    #[serde(borrow)]
    sig: Cow<'a, str>,
}

fn event_json(content: &str) -> String {
    let tags = vec![
        Tag::parse(["e", &"ab".repeat(32)]).unwrap(),
        Tag::parse(["p", &"cd".repeat(32)]).unwrap(),
        Tag::parse(["t", "nostr"]).unwrap(),
    ];
    EventBuilder::new(Kind::TextNote, content)
        .tags(tags)
        .custom_created_at(Timestamp::from(1_700_000_000))
        .sign_with_keys(&Keys::generate())
        .unwrap()
        .as_json()
}

fn json(c: &mut Criterion) {
    let cases = [
        ("typical_note", event_json(&"lorem ipsum dolor sit amet ".repeat(11))),
        ("long_article_8k", event_json(&"a longer article paragraph, with \"quotes\"\n".repeat(190))),
    ];
    for (name, json) in &cases {
        let mut group = c.benchmark_group(format!("json/{name}"));
        group.bench_function("serde_json", |b| {
            b.iter(|| serde_json::from_slice::<Wire>(black_box(json.as_bytes())).unwrap().kind)
        });
        group.bench_function("sonic_rs", |b| {
            b.iter(|| sonic_rs::from_slice::<Wire>(black_box(json.as_bytes())).unwrap().kind)
        });
        group.finish();
    }
}

criterion_group!(benches, json);
criterion_main!(benches);

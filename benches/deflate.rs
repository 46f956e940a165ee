//! permessage-deflate offline: what each mode saves on a realistic stream of live events
//! (loadgen's publish mix: signed notes with hashtags, mentions, replies and reactions from
//! 1,000 authors, as one subscriber receives them), what it costs a message, and what a
//! deflate context costs in memory. `cargo bench --bench deflate`; the ratios and the memory
//! are printed before criterion's timings.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use ringrelay::deflate::{stored_then, Codec, Deflater};

const EVENTS: usize = 4000;

/// `["EVENT","<sub>",{...}]` as a subscriber receives each event, and the events' JSON.
fn stream() -> (Vec<String>, Vec<String>) {
    let authors = loadgen::workload::authors(7, "deflate", 1000);
    let drafts = loadgen::workload::publish_drafts(7, EVENTS, &authors, |i| 1_760_000_000 + i as u64);
    let events = loadgen::workload::sign_all(drafts, &authors);
    let json: Vec<String> = events
        .iter()
        .map(|event| {
            let message = event.message.as_str();
            message["[\"EVENT\",".len()..message.len() - 1].to_owned()
        })
        .collect();
    let frames = json.iter().map(|json| format!("[\"EVENT\",\"feed\",{json}]")).collect();
    (frames, json)
}

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|pages| pages.parse::<usize>().ok()).unwrap_or(0) * 4096
}

fn report(frames: &[String], json: &[String]) {
    let raw: usize = frames.iter().map(String::len).sum();
    println!("deflate: {} live events, {raw} bytes as sent uncompressed", frames.len());
    for level in [1, 2, 4, 6, 9] {
        let mut codec = Codec::new(level);
        // Shared: each event deflated alone, behind the recipient's stored head.
        let mut shared = 0;
        for (frame, json) in frames.iter().zip(json) {
            let mut body = Vec::new();
            codec.deflate(format!("{json}]").as_bytes(), &mut body);
            let mut payload = Vec::new();
            stored_then(&frame.as_bytes()[..frame.len() - json.len() - 1], &body, &mut payload);
            shared += payload.len();
        }
        println!("deflate: shared, level {level}: {:.1}% of the bytes", 100.0 * shared as f64 / raw as f64);
        for bits in [15, 12, 10] {
            let mut deflater = Deflater::new(level, bits);
            let mut context = 0;
            for frame in frames {
                let mut payload = Vec::new();
                deflater.deflate(frame.as_bytes(), &mut payload);
                context += payload.len();
            }
            println!(
                "deflate: context, level {level}, {bits}-bit window: {:.1}% of the bytes",
                100.0 * context as f64 / raw as f64
            );
        }
    }
    for bits in [15, 12, 10] {
        let before = resident_bytes();
        let mut contexts: Vec<Deflater> = (0..1000).map(|_| Deflater::new(6, bits)).collect();
        for (deflater, frame) in contexts.iter_mut().zip(frames.iter().cycle()) {
            deflater.deflate(frame.as_bytes(), &mut Vec::new());
        }
        let each = resident_bytes().saturating_sub(before) / contexts.len();
        println!("deflate: a {bits}-bit context after one message: {} KiB resident", each / 1024);
        drop(contexts);
    }
}

fn deflate(c: &mut Criterion) {
    let (frames, json) = stream();
    report(&frames, &json);
    let mut group = c.benchmark_group("deflate/message");
    for level in [1, 2, 6] {
        let mut codec = Codec::new(level);
        let mut n = 0;
        group.bench_function(format!("shared_level{level}"), |b| {
            b.iter(|| {
                n = (n + 1) % frames.len();
                let mut out = Vec::new();
                codec.deflate(black_box(frames[n].as_bytes()), &mut out);
                out.len()
            })
        });
        if level == 1 {
            continue;
        }
        let mut deflater = Deflater::new(level, 12);
        group.bench_function(format!("context12_level{level}"), |b| {
            b.iter(|| {
                n = (n + 1) % frames.len();
                let mut out = Vec::new();
                deflater.deflate(black_box(frames[n].as_bytes()), &mut out);
                out.len()
            })
        });
    }
    let mut codec = Codec::new(6);
    let mut body = Vec::new();
    codec.deflate(format!("{}]", json[0]).as_bytes(), &mut body);
    group.bench_function("shared_copy_behind_a_head", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            stored_then(black_box(b"[\"EVENT\",\"feed\","), &body, &mut out);
            out.len()
        })
    });
    let mut payload = Vec::new();
    codec.deflate(frames[0].as_bytes(), &mut payload);
    group.bench_function("inflate", |b| b.iter(|| codec.inflate(black_box(&payload), 1 << 20).map(|out| out.len())));
    let sub = ringrelay::proto::SubId::new("feed").unwrap();
    group.bench_function("uncompressed_frame", |b| {
        b.iter(|| ringrelay::proto::frame_event(&sub, black_box(&json[0])).len())
    });
    group.finish();
}

criterion_group!(benches, deflate);
criterion_main!(benches);

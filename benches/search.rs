//! NIP-50 search on one shard's index, the engine alone: index N notes (default 1M; words
//! drawn from a 30,000-word vocabulary with Zipf's law, 5 to 60 words a note, dates over 90
//! days), then time queries of the best 100: one common word (ranks 1–50), one typical
//! word (ranks 100–5,000), two typical words, and a phrase of two words taken from a note.
//! Prints indexing rate, index bytes per note and p50/p99/max per kind of query.
//! `cargo bench --bench search [-- NOTES]`.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringrelay::search::{Doc, LogPosition, SearchQuery, ShardSearch};

const VOCABULARY: usize = 30_000;
const QUERIES: usize = 300;
const NOW: u64 = 1_800_000_000;

/// The word of rank `rank`: letters from its number, so that every word is distinct.
fn word(rank: usize) -> String {
    const SYLLABLES: [&str; 16] =
        ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ba", "de", "fu", "gi", "ho", "ja", "po", "ze"];
    let mut n = rank + 16;
    let mut out = String::new();
    while n > 0 {
        out.push_str(SYLLABLES[n % 16]);
        n /= 16;
    }
    out
}

struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(size: usize) -> Zipf {
        let mut total = 0.0;
        let cumulative = (1..=size)
            .map(|rank| {
                total += 1.0 / rank as f64;
                total
            })
            .collect();
        Zipf { cumulative }
    }
    fn sample(&self, rng: &mut StdRng) -> usize {
        let x = rng.gen::<f64>() * self.cumulative.last().unwrap();
        self.cumulative.partition_point(|&c| c < x)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let notes: usize = std::env::args().filter_map(|arg| arg.parse().ok()).next().unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("search");
    let zipf = Zipf::new(VOCABULARY);
    let words: Vec<String> = (0..VOCABULARY).map(word).collect();
    let mut rng = StdRng::seed_from_u64(50);
    let mut samples = Vec::new();
    let started = Instant::now();
    let mut text_bytes = 0;
    {
        let (search, _) = ShardSearch::open(&path, 64 << 20, 32 << 20).unwrap();
        for n in 0..notes {
            let length = rng.gen_range(5..=60);
            let text: Vec<&str> = (0..length).map(|_| words[zipf.sample(&mut rng)].as_str()).collect();
            let text = text.join(" ");
            if n % (notes / QUERIES).max(1) == 0 {
                samples.push(text.clone());
            }
            text_bytes += text.len();
            while !search.has_room() {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&(n as u64).to_le_bytes());
            let at = LogPosition { segment: 1 + (n / 100_000) as u32, offset: n as u32 };
            search.add(Doc { id, created_at: NOW - rng.gen_range(0..90 * 86_400), text, at, dedupe: false });
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let size: u64 = std::fs::read_dir(&path).unwrap().map(|entry| entry.unwrap().metadata().unwrap().len()).sum();
    println!(
        "search: indexed {notes} notes ({:.0} bytes of text each) in {seconds:.1} s: {:.0} notes/s on one writer; index {:.0} bytes a note",
        text_bytes as f64 / notes as f64,
        notes as f64 / seconds,
        size as f64 / notes as f64
    );
    let (search, _) = ShardSearch::open(&path, 64 << 20, 32 << 20).unwrap();
    let searching = search.searching();
    let mut kinds: Vec<(&str, Vec<String>)> = vec![
        ("one common word", (0..QUERIES).map(|_| words[rng.gen_range(0..50)].clone()).collect()),
        ("one typical word", (0..QUERIES).map(|_| words[rng.gen_range(100..5000)].clone()).collect()),
        (
            "two typical words",
            (0..QUERIES)
                .map(|_| format!("{} {}", words[rng.gen_range(100..5000)], words[rng.gen_range(100..5000)]))
                .collect(),
        ),
    ];
    let phrases = samples
        .iter()
        .map(|text| {
            let words: Vec<&str> = text.split(' ').collect();
            let at = rng.gen_range(0..words.len() - 1);
            format!("\"{} {}\"", words[at], words[at + 1])
        })
        .collect();
    kinds.push(("a two-word phrase", phrases));
    for (kind, queries) in kinds {
        let mut times = Vec::new();
        let mut found = 0;
        for text in &queries {
            let query = SearchQuery::parse(text).unwrap();
            let started = Instant::now();
            found += searching.search(&query, 100, NOW).unwrap().len();
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "search: {kind:18} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({:.0} hits a query of 100 asked)",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times.last().unwrap(),
            found as f64 / queries.len() as f64
        );
    }
}

//! The relay's side of a NIP-77 sync over a large set, with the negentropy crate the relay
//! uses: building and sorting the set, and each answer of a sync in which the client lacks
//! some of it; and, for comparison, a set kept sorted on write (strfry's way: a tree per
//! configured filter), its cost per write and at a sync's open. Figures in
//! docs/benchmarks.md.
//!
//!     cargo bench --bench negentropy_sets [ITEMS] [MISSING]   (defaults 500000 10000)

use std::time::{Duration, Instant};

use negentropy::{Id, Negentropy, NegentropyStorageVector};

fn id(i: u64) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    bytes[8..16].copy_from_slice(&i.to_le_bytes());
    bytes
}

/// Item `i`'s date: spread over 30 days.
fn created_at(i: u64) -> u64 {
    1_700_000_000 + (i * 7919) % 86_400 * 30
}

fn storage(count: u64) -> NegentropyStorageVector {
    let mut storage = NegentropyStorageVector::with_capacity(count as usize);
    for i in 0..count {
        storage.insert(created_at(i), Id::from_byte_array(id(i))).unwrap();
    }
    storage.seal().unwrap();
    storage
}

fn main() {
    let numbers: Vec<u64> = std::env::args().skip(1).filter_map(|arg| arg.parse().ok()).collect();
    let items = numbers.first().copied().unwrap_or(500_000);
    let missing = numbers.get(1).copied().unwrap_or(10_000).min(items);
    let started = Instant::now();
    let relay_storage = storage(items);
    let build = started.elapsed();
    let mut client = Negentropy::owned(storage(items - missing), 0).unwrap();
    let mut relay = Negentropy::owned(relay_storage, 60_000).unwrap();
    let mut message = client.initiate().unwrap();
    let (mut have, mut need) = (Vec::new(), Vec::new());
    let (mut rounds, mut total, mut longest) = (0, Duration::ZERO, Duration::ZERO);
    loop {
        let started = Instant::now();
        let answer = relay.reconcile(&message).unwrap();
        let took = started.elapsed();
        (rounds, total, longest) = (rounds + 1, total + took, longest.max(took));
        match client.reconcile_with_ids(&answer, &mut have, &mut need).unwrap() {
            Some(next) => message = next,
            None => break,
        }
    }
    assert_eq!(need.len() as u64, missing);
    println!(
        "{items} items: insert and seal {build:?}; {missing} missing found in {rounds} rounds of 60 KB frames, \
         relay answers {total:?} in all, longest {longest:?}"
    );
    kept_sorted(items);
}

/// The other way to hold a sync's set: kept sorted as events are written (a B-tree of
/// (created_at, id)), copied out at a sync's open.
fn kept_sorted(items: u64) {
    let started = Instant::now();
    let mut tree = std::collections::BTreeSet::new();
    for i in 0..items {
        tree.insert((created_at(i), id(i)));
    }
    let per_write = started.elapsed() / items as u32;
    let started = Instant::now();
    let mut storage = NegentropyStorageVector::with_capacity(tree.len());
    for (created_at, id) in &tree {
        storage.insert(*created_at, Id::from_byte_array(*id)).unwrap();
    }
    storage.seal().unwrap();
    let open = started.elapsed();
    println!(
        "kept sorted: {per_write:?} per write (in a tree of up to {items}); copied out and sealed at open in {open:?}"
    );
}

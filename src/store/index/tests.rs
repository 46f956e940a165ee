//! The index's own tests: its memory figure kept without a walk, runs by date, retirements.

use super::*;

/// The kept byte counts match a walk of the index, after loading in bulk and after
/// live inserts (in and out of order, tags shared and not, versions replaced).
#[test]
fn the_memory_figure_is_kept_without_a_walk() {
    let mut index = Index::new_bulk();
    let insert = |index: &mut Index, i: u32, created_at: u64| {
        let id = {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            id
        };
        let pubkey = [(i % 7) as u8; 32];
        let tag = format!("t{}", i % 13);
        let d = format!("d{}", i % 5);
        let tags: Vec<(u8, &[u8])> = vec![(b't', tag.as_bytes()), (b'd', d.as_bytes())];
        let kind = if i.is_multiple_of(3) { 30_023 } else { 1 };
        let facts = Facts { id: &id, pubkey: &pubkey, created_at, kind, expiration: None, tags: &tags };
        if let Admit::Store { kills } = index.admit(&facts, 0) {
            let loc = Loc { segment: 0, offset: 0 };
            index.insert(&facts, loc, kills);
            index.set_durable(index.len());
        }
    };
    for i in 0..3_000 {
        insert(&mut index, i, 1_000 + u64::from(i % 500));
    }
    index.finish_bulk();
    let postings_kept = |index: &Index| {
        index.layers.iter().all(|layer| match layer {
            Layer::Memory(layer) => layer.postings_bytes() == layer.postings_walked(),
            Layer::Mapped(_) => true,
        })
    };
    assert!(postings_kept(&index));
    for i in 3_000..9_000 {
        // Mostly newest-first arrivals, with old-dated ones going to the side runs.
        let created_at = if i % 10 == 0 { 900 + u64::from(i % 100) } else { 2_000 + u64::from(i) };
        insert(&mut index, i, created_at);
    }
    assert!(postings_kept(&index));
    assert_eq!(index.version_d_bytes, index.versions.keys().map(|k| k.d.len()).sum::<usize>());
    assert!(index.memory_size() > index.version_d_bytes);
}

/// A list's runs come only from the layers whose dates meet the window: segments written
/// in date order are skipped by a scan that cannot find anything in them.
#[test]
fn runs_come_from_the_layers_whose_dates_meet_the_window() {
    let mut index = Index::new_bulk();
    for i in 0..20u8 {
        let (segment, created_at) = if i < 10 { (0, 100 + u64::from(i)) } else { (1, 1_000 + u64::from(i)) };
        let (id, pubkey) = ([i; 32], [i; 32]);
        let facts = Facts { id: &id, pubkey: &pubkey, created_at, kind: 1, expiration: None, tags: &[] };
        let Admit::Store { kills } = index.admit(&facts, 0) else { panic!("stored") };
        index.insert(&facts, Loc { segment, offset: 0 }, kills);
    }
    index.finish_bulk();
    index.set_durable(index.len());
    let nos = |window: RangeInclusive<u64>| {
        let mut nos: Vec<EventNo> = index.kind_runs_within(1, &window).iter().flat_map(Run::iter).collect();
        nos.sort_unstable();
        nos
    };
    assert_eq!(nos(0..=u64::MAX), (0..20).collect::<Vec<_>>());
    assert_eq!(nos(500..=u64::MAX), (10..20).collect::<Vec<_>>(), "since 500: the older segment is skipped");
    assert_eq!(nos(0..=150), (0..10).collect::<Vec<_>>(), "until 150: the newer one is");
    assert!(nos(200..=900).is_empty(), "between them: neither");
}

/// An operator's retirements: a banned id, and a banned author's events up to the ban
/// (not after it, not another author's); put in force again, they find nothing more.
#[test]
fn retirements_retire_banned_ids_and_authors_up_to_the_ban() {
    let mut index = Index::new_bulk();
    index.finish_bulk();
    let event = |i: u8, author: u8, created_at: u64| ([i; 32], [author; 32], created_at);
    let events = [event(1, 7, 100), event(2, 7, 200), event(3, 7, 300), event(4, 8, 100), event(5, 8, 150)];
    for (id, pubkey, created_at) in &events {
        let facts = Facts { id, pubkey, created_at: *created_at, kind: 1, expiration: None, tags: &[] };
        let Admit::Store { kills } = index.admit(&facts, 0) else { panic!("stored") };
        index.insert(&facts, Loc { segment: 0, offset: 0 }, kills);
    }
    index.set_durable(index.len());
    let retirements = super::super::Retirements { events: vec![[5; 32], [9; 32]], pubkeys: vec![([7; 32], 200)] };
    assert_eq!(retirements.apply(&mut index), 3);
    let live: Vec<u8> =
        (0..index.len()).filter(|&no| index.is_visible(no, 0)).map(|no| index.entry(no).id[0]).collect();
    assert_eq!(live, vec![3, 4]);
    assert_eq!(retirements.apply(&mut index), 0);
    assert_eq!(index.live_count, 2);
}

//! What the history queries expect of the preloaded store: the acknowledged preload events,
//! newest first with ties by lowest id, per author, kind and tag. Built once by the engine,
//! read by every query connection.

use std::collections::HashMap;
use std::ops::Range;

use crate::workload::{status, EventTable};

/// What queries expect of the preloaded store: acknowledged events, newest first with ties
/// by lowest id, per author, kind and tag.
#[derive(Default)]
pub(super) struct Known {
    pub(super) accepted: Vec<u32>,
    pub(super) by_author: HashMap<u32, Vec<Entry>>,
    pub(super) by_kind: HashMap<u16, Vec<Entry>>,
    pub(super) by_tag: HashMap<u32, Vec<Entry>>,
}

/// `(created_at, id)`; ordered the way a relay must return events.
pub(super) type Entry = (u64, [u8; 32]);

pub(super) fn newest_first(a: &Entry, b: &Entry) -> std::cmp::Ordering {
    b.0.cmp(&a.0).then(a.1.cmp(&b.1))
}

impl Known {
    pub(super) fn build(table: &EventTable, range: Range<usize>) -> Known {
        let mut known = Known::default();
        for index in range {
            if table.status(index) != status::ACCEPTED {
                continue;
            }
            let event = &table.events[index];
            let entry = (event.created_at, event.id);
            known.accepted.push(index as u32);
            known.by_author.entry(event.author).or_default().push(entry);
            known.by_kind.entry(event.kind).or_default().push(entry);
            if let Some(tag) = event.topic {
                known.by_tag.entry(tag).or_default().push(entry);
            }
        }
        for list in known.by_author.values_mut().chain(known.by_kind.values_mut()).chain(known.by_tag.values_mut()) {
            list.sort_by(newest_first);
        }
        known
    }
}

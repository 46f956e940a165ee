//! `ringrelay export`: every live event as JSON lines, oldest first, optionally filtered.

use std::io::Write;

use crate::filter::Filter;
use crate::store::query::RecordSource;
use crate::store::ShardState;

use super::StoreOptions;

/// Write matching live events to `out`, oldest first across all shards; returns the count.
pub fn run(options: &StoreOptions, filters: &[Filter], out: &mut dyn Write) -> anyhow::Result<u64> {
    let (_dir, shards) = super::open_read_only(options)?;
    let now = crate::now_unix();
    let orders: Vec<Vec<u32>> = shards.iter().map(|state| state.index.all_oldest_first()).collect();
    let mut cursors: Vec<usize> = vec![0; shards.len()];
    let mut count = 0;
    loop {
        let next = shards
            .iter()
            .enumerate()
            .filter_map(|(shard, state)| {
                next_visible(state, &orders[shard], &mut cursors[shard], now).map(|no| (state, no))
            })
            .min_by_key(|(state, no)| {
                let entry = state.index.entry(*no);
                (entry.created_at, entry.id)
            });
        let Some((state, no)) = next else { break };
        cursors[usize::from(state.shard_id)] += 1;
        let keep = state.with_record(no, |record| {
            let keep = filters.is_empty() || filters.iter().any(|filter| filter.matches(record));
            if keep {
                out.write_all(&record.json).and_then(|()| out.write_all(b"\n")).map(|()| true)
            } else {
                Ok(false)
            }
        });
        let keep = keep.ok_or_else(|| {
            anyhow::anyhow!("shard {}: a stored record does not read back; run `ringrelay verify`", state.shard_id)
        })??;
        count += u64::from(keep);
    }
    out.flush()?;
    Ok(count)
}

/// Advance `cursor` over the shard's events, oldest first, to the next visible one.
fn next_visible(state: &ShardState, all: &[u32], cursor: &mut usize, now: u64) -> Option<u32> {
    while let Some(&no) = all.get(*cursor) {
        if state.index.is_visible(no, now) {
            return Some(no);
        }
        *cursor += 1;
    }
    None
}

//! One core's side of a query: its shards scanned for a REQ's events or counted for a COUNT.
//! Scans run in budgeted steps and yield between them, so a long one never holds the core.

use std::rc::Rc;

use super::parts::{CountPart, QueryLimits, WireHit};
use super::queries::Queries;
use super::stats::Stats;
use super::storage::Storage;
use super::turns::ScanTurn;
use crate::filter::Filter;
use crate::limits::{LONG_SCAN_AFTER_STEPS, QUERY_STEP_CANDIDATE_COUNT};
use crate::store::query::{merge_newest_first, union_filters, Ordered};
use crate::store::{effective_limit, FilterScan, Hit, Privacy, ShardHit, ShardId, ShardState};

/// Per filter, the newest `limit` events of this core's shards, with their JSON: at most
/// `limits.bytes_max` of it over all filters (filters in order, each newest first).
pub async fn hits(
    storage: &Rc<Storage>,
    queries: &Queries,
    filters: &[Filter],
    limits: QueryLimits,
    privacy: &Privacy,
) -> Vec<Vec<WireHit>> {
    let turn = queries.start_scan();
    let mut per_filter = Vec::with_capacity(filters.len());
    let mut bytes_left = limits.bytes_max;
    for filter in filters {
        if filter.search.is_some() {
            let hits =
                super::search::hits(storage, filter, QueryLimits { bytes_max: bytes_left, ..limits }, privacy).await;
            bytes_left = bytes_left.saturating_sub(hits.iter().map(|hit| hit.json.len()).sum());
            per_filter.push(hits);
            continue;
        }
        let limit = effective_limit(filter, limits.default, limits.max);
        let mut lists = Vec::new();
        for shard_id in storage.shard_ids() {
            let found = scan_shard(storage, queries, &turn, shard_id, filter, limit, limits.now, privacy).await;
            lists.push(found.into_iter().map(|hit| ShardHit { shard: shard_id, hit }).collect());
        }
        let mut hits = Vec::new();
        for ShardHit { shard, hit } in merge_newest_first(lists, limit) {
            let Some(json) = storage.with_shard(shard, |state| state.event_json(hit.no)).flatten() else { continue };
            if json.len() > bytes_left {
                bytes_left = 0;
                break;
            }
            bytes_left -= json.len();
            hits.push(WireHit { created_at: hit.created_at, id: hit.id, json: json.into(), score: 0.0 });
        }
        per_filter.push(hits);
    }
    per_filter
}

/// The (created_at, id) of this core's newest `limit` events matching `filter`, over every
/// shard (a NIP-77 sync's set; the asker checks whether the whole is over its maximum).
pub async fn ids(
    storage: &Rc<Storage>,
    queries: &Queries,
    filter: &Filter,
    limit: usize,
    now: u64,
    privacy: &Privacy,
) -> Vec<(u64, [u8; 32])> {
    if filter.search.is_some() {
        let limits = QueryLimits { default: limit, max: limit, now, bytes_max: usize::MAX };
        let hits = super::search::hits(storage, filter, limits, privacy).await;
        return hits.into_iter().map(|hit| (hit.created_at, hit.id)).collect();
    }
    let turn = queries.start_scan();
    let mut ids = Vec::new();
    for shard_id in storage.shard_ids() {
        let hits = scan_shard(storage, queries, &turn, shard_id, filter, limit, now, privacy).await;
        ids.extend(hits.into_iter().map(|hit| (hit.created_at, hit.id)));
    }
    ids
}

/// How many of this core's events match any of the filters. An event lives on one shard,
/// so parts from different cores add up; within the core, events matching several filters
/// are counted once. One filter with no field, or on kinds alone, or authors alone, is
/// answered from the indexes' counts, O(keys) however many events there are, private kinds
/// included (see `count_from_index`).
pub async fn count(
    storage: &Rc<Storage>,
    queries: &Queries,
    stats: &Stats,
    filters: &[Filter],
    limits: QueryLimits,
    privacy: &Privacy,
) -> CountPart {
    let searching = filters.iter().any(|filter| filter.search.is_some());
    if let (false, [filter]) = (searching, filters) {
        if let Some(count) = count_from_index(storage, filter, privacy, limits.now) {
            stats.counts_from_index.inc();
            let limit = effective_limit(filter, limits.default, limits.max) as u64;
            return CountPart { count: count.min(limit), approximate: false };
        }
    }
    stats.counts_scanned.inc();
    let turn = queries.start_scan();
    if let (false, [filter]) = (searching, filters) {
        // One filter: its events on different shards are different events; count them
        // without keeping them.
        let limit = effective_limit(filter, limits.default, limits.max);
        let mut total = CountPart::default();
        for shard_id in storage.shard_ids() {
            let plan = |state: &ShardState| FilterScan::new_count(filter, limit, &state.index).hiding(privacy);
            if let Some(scan) = run_scan(storage, queries, &turn, shard_id, plan, limits.now).await {
                total.count += scan.count() as u64;
                total.approximate |= scan.count() >= limit;
            }
        }
        return total;
    }
    let mut approximate = false;
    let mut per_filter = Vec::with_capacity(filters.len());
    for filter in filters {
        let limit = effective_limit(filter, limits.default, limits.max);
        let mut found = Vec::new();
        if filter.search.is_some() {
            // A search counts its best `limit`, as the index finds them.
            let unbounded = QueryLimits { bytes_max: usize::MAX, ..limits };
            let hits = super::search::hits(storage, filter, unbounded, privacy).await;
            approximate |= hits.len() >= limit;
            found.extend(hits.into_iter().map(|hit| CountedHit { created_at: hit.created_at, id: hit.id }));
            per_filter.push(found);
            continue;
        }
        for shard_id in storage.shard_ids() {
            let hits = scan_shard(storage, queries, &turn, shard_id, filter, limit, limits.now, privacy).await;
            approximate |= hits.len() >= limit;
            found.extend(hits.into_iter().map(|hit| CountedHit { created_at: hit.created_at, id: hit.id }));
        }
        per_filter.push(found);
    }
    CountPart { count: union_filters(per_filter).len() as u64, approximate }
}

#[derive(Clone, Copy)]
struct CountedHit {
    created_at: u64,
    id: [u8; 32],
}

impl Ordered for CountedHit {
    fn created_at(&self) -> u64 {
        self.created_at
    }
    fn id(&self) -> &[u8; 32] {
        &self.id
    }
}

/// Whether `privacy` may hide some of `filter`'s events on this core: the filter could match
/// a private kind, the viewers are not all of its authors, and a private event is stored
/// here. (A relay that stores no DMs keeps every one-key COUNT O(1).)
fn hides_here(storage: &Storage, filter: &Filter, privacy: &Privacy, now: u64) -> bool {
    if !privacy.may_hide(filter) {
        return false;
    }
    let own = filter.authors.as_ref().is_some_and(|authors| authors.iter().all(|a| privacy.viewers.contains(&a.0)));
    if own {
        return false;
    }
    storage.shard_ids().into_iter().any(|shard_id| {
        storage
            .with_shard(shard_id, |state| {
                privacy.kinds.iter().any(|&kind| state.index.visible_count_of_kind(kind, now) != Some(0))
            })
            .unwrap_or(false)
    })
}

/// A filter with no field, of kinds alone or of authors alone, counted from the indexes'
/// per-key counts. The counts include private kinds' events: for a viewer who is not
/// authenticated, who may see none of them, they are left out by kind (a COUNT flood of
/// `{}` costs a few lookups, not a scan); for an authenticated one, who may see some, only
/// when this core stores none (else `None`: a scan applies the rule per event).
fn count_from_index(storage: &Storage, filter: &Filter, privacy: &Privacy, now: u64) -> Option<u64> {
    let plain = filter.ids.is_none() && filter.tags.is_empty() && filter.since.is_none() && filter.until.is_none();
    if !plain {
        return None;
    }
    let hidden: &[u16] = match privacy.may_hide(filter) {
        false => &[],
        true if privacy.viewers.is_empty() && filter.authors.is_none() => &privacy.kinds,
        true if hides_here(storage, filter, privacy, now) => return None,
        true => &[],
    };
    let mut total = 0;
    for shard_id in storage.shard_ids() {
        total += storage.with_shard(shard_id, |state| match (&filter.kinds, &filter.authors) {
            (None, None) => {
                let all = state.index.visible_count_of_all(now)?;
                let private =
                    hidden.iter().map(|&kind| state.index.visible_count_of_kind(kind, now)).sum::<Option<u64>>()?;
                Some(all - private)
            }
            (Some(kinds), None) => {
                let mut kinds = kinds.clone();
                kinds.retain(|kind| !hidden.contains(kind));
                kinds.sort_unstable();
                kinds.dedup();
                kinds.iter().map(|&kind| state.index.visible_count_of_kind(kind, now)).sum::<Option<u64>>()
            }
            (None, Some(authors)) => {
                let mut authors = authors.clone();
                authors.sort_unstable();
                authors.dedup();
                authors.iter().map(|author| state.index.visible_count_of_author(&author.0, now)).sum::<Option<u64>>()
            }
            _ => None,
        })??;
    }
    Some(total)
}

/// The newest `limit` hits of `filter` on one shard, examined a step at a time.
#[allow(clippy::too_many_arguments)]
async fn scan_shard(
    storage: &Rc<Storage>,
    queries: &Queries,
    turn: &Rc<ScanTurn>,
    shard_id: ShardId,
    filter: &Filter,
    limit: usize,
    now: u64,
    privacy: &Privacy,
) -> Vec<Hit> {
    let plan = |state: &ShardState| FilterScan::new(filter, limit, &state.index).hiding(privacy);
    run_scan(storage, queries, turn, shard_id, plan, now).await.map(FilterScan::into_hits).unwrap_or_default()
}

/// Plan a scan on one shard and run it to its end a step at a time, each step in its turn
/// (`turns`); `None` once the shard is closed. Past `LONG_SCAN_AFTER_STEPS` steps the rest
/// runs in the long scans' queue.
async fn run_scan(
    storage: &Rc<Storage>,
    queries: &Queries,
    turn: &Rc<ScanTurn>,
    shard_id: ShardId,
    plan: impl FnOnce(&ShardState) -> FilterScan,
    now: u64,
) -> Option<FilterScan> {
    let mut scan = storage.with_shard(shard_id, plan)?;
    for _ in 0..LONG_SCAN_AFTER_STEPS {
        if turn.step(|| step(storage, shard_id, &mut scan, now)).await? {
            return Some(scan);
        }
        yield_step().await;
    }
    let (owner, turn) = (storage.clone(), turn.clone());
    queries
        .spawn_long(async move {
            loop {
                if turn.step(|| step(&owner, shard_id, &mut scan, now)).await? {
                    return Some(scan);
                }
                yield_step().await;
            }
        })
        .await
}

/// One step of a scan: `Some(true)` once it is done, `None` once the shard is closed.
fn step(storage: &Storage, shard_id: ShardId, scan: &mut FilterScan, now: u64) -> Option<bool> {
    storage.with_shard(shard_id, |state| scan.step(&state.index, state, now, QUERY_STEP_CANDIDATE_COUNT))
}

/// Every step, not only when the time slice is spent, and to the other task queues too:
/// scans take turns a step at a time, so a short query is not queued behind long ones, and
/// a session or a commit woken meanwhile runs next.
async fn yield_step() {
    glommio::executor().yield_task_queue_now().await
}

//! NIP-50 on one core: each of its shards' search index kept fed from the shard's log by a
//! task ([`feed`]), and a search filter's best hits found over them ([`hits`]).
//!
//! Feeding follows the shard's durable events in log order, so an event is searchable
//! shortly after its OK (the index commits at most a second later), and a restart goes on
//! from the index's checkpoint; the store is never held up by it. A search reads the
//! index off the core, then takes each hit from the store as a REQ would: only what is
//! visible now (durable, live, not expired), what the filter's other fields allow, and
//! what the reader may see.

use std::rc::Rc;
use std::time::Duration;

use super::parts::{QueryLimits, WireHit};
use super::storage::Storage;
use crate::config::Config;
use crate::filter::{Filter, Matchable};
use crate::limits::{SEARCH_CATCH_UP_RATE, SEARCH_HITS_MAX, SEARCH_OVERFETCH_FACTOR};
use crate::search::{Doc, LogPosition, SearchConfig, ShardSearch};
use crate::store::query::RecordSource;
use crate::store::{effective_limit, Privacy, ShardId};

/// How often opening a shard's index is tried again, and for how long.
const SEARCH_OPEN_RETRY: Duration = Duration::from_millis(200);
const SEARCH_OPEN_WAIT: Duration = Duration::from_secs(60);
/// Events looked at per step of feeding, between yields.
const FEED_STEP_COUNT: u32 = 256;
/// How often feeding looks for new durable events, or for room in the indexer's queue.
const FEED_PAUSE: Duration = Duration::from_millis(20);

/// Open each shard's search index, when search is on (`Config::search_on`); their
/// checkpoints, for [`feed_all`].
pub fn open_all(storage: &Storage, config: &Config) -> Vec<(ShardId, anyhow::Result<Option<LogPosition>>)> {
    match config.search_on() {
        true => storage.open_search(&config.search, &config.policy.private_kinds),
        false => Vec::new(),
    }
}

/// The tasks that keep each opened index fed ([`feed`]), for the core to own.
pub fn feed_all(
    storage: &Rc<Storage>,
    config: &Config,
    searches: Vec<(ShardId, anyhow::Result<Option<LogPosition>>)>,
) -> Vec<impl std::future::Future<Output = ()>> {
    let search = Rc::new(config.search.clone());
    let private: Rc<[u16]> = config.policy.private_kinds.clone().into();
    let feed_one = |(shard, checkpoint)| feed(storage.clone(), shard, checkpoint, search.clone(), private.clone());
    searches.into_iter().map(feed_one).collect()
}

/// Keep `shard`'s index fed from its log, from the start (skipping what the checkpoint
/// says it has), until the shard closes.
pub async fn feed(
    storage: Rc<Storage>,
    shard: ShardId,
    opened: anyhow::Result<Option<LogPosition>>,
    config: Rc<SearchConfig>,
    private_kinds: Rc<[u16]>,
) {
    let Some(checkpoint) = opened_in_time(&storage, shard, opened, &config, &private_kinds).await else { return };
    let mut next = 0;
    let mut caught_up = false;
    // While catching up (a rebuild), what is indexed is paced, so that the index's writes
    // leave the disk to the store's commits.
    let mut pace = Pace::new(SEARCH_CATCH_UP_RATE);
    loop {
        // Held only within a step: the core lets go of the index when it stops (each index
        // commits what it holds; what it had not taken is fed again at the next start).
        let Some(search) = storage.search_of(shard) else { return };
        // What the store retired (deleted, replaced, vanished, banned, swept) leaves the index.
        let retired =
            if search.has_room() { storage.take_retired(shard, FEED_STEP_COUNT as usize) } else { Vec::new() };
        for (id, kind) in retired {
            if config.kinds.contains(&kind) {
                search.delete(id);
            }
        }
        let step = storage.with_shard(shard, |state| {
            // The free-space reserve is the store's: the index waits while the disk is under it.
            if state.space_below_reserve().is_some() {
                return Fed::Waiting;
            }
            let durable = state.index.durable_count();
            let end = durable.min(next + FEED_STEP_COUNT);
            while next < end && search.has_room() && (caught_up || pace.allows()) {
                if let Some(doc) = doc_of(state, next, checkpoint, &config, &private_kinds) {
                    search.add(doc);
                    pace.took();
                }
                next += 1;
            }
            if next < durable {
                Fed::More
            } else {
                Fed::All
            }
        });
        // Compaction moves records to earlier places. Until feeding has passed the
        // checkpoint's segment, and while documents wait for their commit, the segments from
        // there on stay where a restart would look for them.
        caught_up |= step == Some(Fed::All);
        let catching_up = (!caught_up).then(|| checkpoint.map_or(0, |at| at.segment));
        let hold = catching_up.into_iter().chain(search.figures.pending_segment()).min();
        storage.hold_compaction(shard, hold);
        let more = step == Some(Fed::More) && search.has_room() && (caught_up || pace.allows());
        drop(search);
        match step {
            None => return,
            Some(_) if more => glommio::executor().yield_if_needed().await,
            Some(_) => glommio::timer::sleep(FEED_PAUSE).await,
        }
    }
}

/// A rate in documents a second, as a bucket refilled by the time that passed.
struct Pace {
    rate: f64,
    tokens: f64,
    at: std::time::Instant,
}

impl Pace {
    fn new(rate: u32) -> Pace {
        Pace { rate: f64::from(rate), tokens: 0.0, at: std::time::Instant::now() }
    }

    fn allows(&mut self) -> bool {
        let now = std::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate / 10.0);
        self.at = now;
        self.tokens >= 1.0
    }

    fn took(&mut self) {
        self.tokens -= 1.0;
    }
}

/// Where one step of feeding left a shard's log.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fed {
    /// Every durable event is fed.
    All,
    More,
    /// Free space is under the store's reserve: nothing was fed.
    Waiting,
}

/// The index's checkpoint once it is open: at once, or after the relay this one took over
/// from has let go of it (tantivy's writer lock), tried again every
/// [`SEARCH_OPEN_RETRY`] for [`SEARCH_OPEN_WAIT`]; `None` when it could not be opened.
async fn opened_in_time(
    storage: &Storage,
    shard: ShardId,
    mut opened: anyhow::Result<Option<LogPosition>>,
    config: &SearchConfig,
    private: &[u16],
) -> Option<Option<LogPosition>> {
    let deadline = std::time::Instant::now() + SEARCH_OPEN_WAIT;
    loop {
        match opened {
            Ok(checkpoint) => return Some(checkpoint),
            Err(error) if std::time::Instant::now() >= deadline => {
                tracing::error!(shard = shard.0, %error, "cannot open the shard's search index; searches leave it out");
                return None;
            }
            Err(_) => glommio::timer::sleep(SEARCH_OPEN_RETRY).await,
        }
        opened = storage.open_search_of(shard, config, private);
    }
}

/// What to index of event `no`: `None` when it is not to be (a kind not indexed or private,
/// dead, or already indexed before the checkpoint).
fn doc_of(
    state: &crate::store::ShardState,
    no: u32,
    checkpoint: Option<LogPosition>,
    config: &SearchConfig,
    private_kinds: &[u16],
) -> Option<Doc> {
    let entry = state.index.entry(no);
    if entry.is_dead() || !config.kinds.contains(&entry.kind) || private_kinds.contains(&entry.kind) {
        return None;
    }
    let (segment, offset) = state.log_position(no)?;
    let at = LogPosition { segment, offset };
    // Within the checkpoint's segment, compaction may have moved records: look each up.
    let dedupe = match checkpoint {
        Some(checkpoint) if segment < checkpoint.segment => return None,
        Some(checkpoint) => segment == checkpoint.segment,
        None => false,
    };
    let json = state.event_json(no)?;
    let text = crate::search::text::searchable_text_of_json(std::str::from_utf8(&json).ok()?)?;
    Some(Doc { id: entry.id, created_at: entry.created_at, text, at, dedupe })
}

/// The best `limit` events of this core's shards for a search filter, best first, with
/// their JSON (at most `limits.bytes_max` of it).
pub async fn hits(storage: &Rc<Storage>, filter: &Filter, limits: QueryLimits, privacy: &Privacy) -> Vec<WireHit> {
    let Some(query) = filter.search.clone() else { return Vec::new() };
    let limit = effective_limit(filter, limits.default, limits.max);
    let rest = filter.without_search();
    let mut found = Vec::new();
    for shard in storage.shard_ids() {
        let Some(search) = storage.search_of(shard) else { continue };
        // Hits the store turns away (retired, other fields, private) leave fewer than
        // `limit`: ask the index again for more, up to SEARCH_HITS_MAX.
        let mut top = limit.saturating_mul(SEARCH_OVERFETCH_FACTOR).min(SEARCH_HITS_MAX);
        loop {
            let searching = search.searching();
            let query = query.clone();
            // At the lowest priority: on the core's CPU, the core goes first.
            // A panic inside tantivy is this search's failure, not the core's.
            let search_off_core = move || {
                crate::store::background::at_lowest_priority(|| {
                    let search = || searching.search(&query, top, limits.now).map_err(|error| error.to_string());
                    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(search));
                    caught.unwrap_or_else(|_| Err("panicked".to_owned()))
                })
            };
            let Ok(best) = glommio::executor().spawn_blocking(search_off_core).await else {
                tracing::warn!(shard = shard.0, "a search of the shard's index failed");
                break;
            };
            let exhausted = best.len() < top || top >= SEARCH_HITS_MAX;
            let taken =
                storage.with_shard(shard, |state| take_hits(state, &search, best, &rest, privacy, limits.now, limit));
            let taken = taken.unwrap_or_default();
            if taken.len() >= limit || exhausted {
                found.extend(taken);
                break;
            }
            top = top.saturating_mul(SEARCH_OVERFETCH_FACTOR).min(SEARCH_HITS_MAX);
        }
    }
    let mut best = merge_by_score(vec![found], limit);
    let mut bytes = 0;
    best.retain(|hit| {
        bytes += hit.json.len();
        bytes <= limits.bytes_max
    });
    best
}

/// The first `limit` of the index's `best` that the store serves to this reader: visible
/// now, matching the filter's other fields (`rest`), allowed by `privacy`.
fn take_hits(
    state: &crate::store::ShardState,
    search: &ShardSearch,
    best: Vec<(f32, [u8; 32])>,
    rest: &Filter,
    privacy: &Privacy,
    now: u64,
    limit: usize,
) -> Vec<WireHit> {
    let mut taken = Vec::new();
    for (score, id) in best {
        let visible = state.index.lookup_id(&id).filter(|&no| state.index.is_visible(no, now));
        let Some(no) = visible else {
            // Retired since it was indexed (deleted, replaced, expired, banned).
            forget_unless_pending(state, search, id);
            continue;
        };
        let allowed = state.with_record(no, |record| {
            rest.matches(record) && privacy.allows(record.kind(), record.pubkey(), |v| record.has_tag(b'p', v))
        });
        if allowed == Some(true) {
            let json = state.event_json(no).unwrap_or_default();
            taken.push(WireHit { created_at: state.index.created_at(no), id, json: json.into(), score });
        }
        if taken.len() == limit {
            break;
        }
    }
    taken
}

/// Forget `id` in the index unless the store still holds it and it may become visible
/// (an event not durable yet is indexed only once it is, so this is one retired).
fn forget_unless_pending(state: &crate::store::ShardState, search: &ShardSearch, id: [u8; 32]) {
    let pending = state.index.lookup_id(&id).is_some_and(|no| no >= state.index.durable_count());
    if !pending {
        search.delete(id);
    }
}

/// Lists of scored hits merged, best first (ties: newest, then lowest id), each event once,
/// the first `limit`.
pub fn merge_by_score(lists: Vec<Vec<WireHit>>, limit: usize) -> Vec<WireHit> {
    let mut all: Vec<WireHit> = lists.into_iter().flatten().collect();
    all.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.created_at.cmp(&a.created_at)).then(a.id.cmp(&b.id)));
    let mut seen = std::collections::HashSet::with_capacity(all.len());
    all.retain(|hit| seen.insert(hit.id));
    all.truncate(limit);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(score: f32, created_at: u64, id: u8) -> WireHit {
        WireHit { created_at, id: [id; 32], json: Vec::new().into(), score }
    }

    #[test]
    fn merged_best_first_then_newest_then_lowest_id_each_once() {
        let lists = vec![
            vec![scored(3.0, 10, 1), scored(1.0, 10, 2)],
            vec![scored(2.0, 10, 3), scored(1.0, 20, 4), scored(1.0, 10, 0)],
            vec![scored(3.0, 10, 1)],
        ];
        let merged: Vec<u8> = merge_by_score(lists, 10).iter().map(|hit| hit.id[0]).collect();
        assert_eq!(merged, [1, 3, 4, 0, 2]);
        assert_eq!(merge_by_score(vec![vec![scored(1.0, 1, 1), scored(2.0, 1, 2)]], 1)[0].id[0], 2);
    }
}

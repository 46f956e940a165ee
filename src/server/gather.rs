//! A query's fan-in over every core: the REQ's and the deletion lookup's newest events
//! ([`hits_everywhere`]) and the COUNT's total ([`count_everywhere`]), each one typed gather
//! through the mesh with this core's part run meanwhile ([`super::scan`]). It works on the
//! parts of a core a query needs ([`Scatter`]), not on the core.

use std::rc::Rc;
use std::sync::Arc;

use super::mesh::Mesh;
use super::mesh::{Ask, ScanAsk};
use super::parts::{CountPart, QueryLimits, WireHit};
use super::queries::Queries;
use super::scan;
use super::stats::Stats;
use super::storage::Storage;
use crate::filter::Filter;
use crate::store::query::merge_newest_first;
use crate::store::{effective_limit, Privacy};

/// What a query's fan-in uses of its core: the mesh to ask the others, and its own shards,
/// query queues and counters for its part.
#[derive(Clone, Copy)]
pub struct Scatter<'a> {
    pub mesh: &'a Rc<Mesh>,
    pub storage: &'a Rc<Storage>,
    pub queries: &'a Queries,
    pub stats: &'a Stats,
}

/// Per filter, the newest `limit` events over every core's shards.
pub async fn hits_everywhere(
    core: Scatter<'_>,
    filters: Arc<[Filter]>,
    limits: QueryLimits,
    privacy: Privacy,
) -> Vec<Vec<WireHit>> {
    let ask = Ask::Scan(ScanAsk::Hits { filters: filters.clone(), limits, privacy: privacy.clone() });
    let local = scan::hits(core.storage, core.queries, &filters, limits, &privacy);
    let mut parts: Vec<Vec<Vec<WireHit>>> = core.mesh.gather(ask, local).await;
    (0..filters.len())
        .map(|index| {
            let limit = effective_limit(&filters[index], limits.default, limits.max);
            let lists = parts.iter_mut().map(|part| std::mem::take(&mut part[index])).collect();
            match filters[index].search {
                Some(_) => super::search::merge_by_score(lists, limit),
                None => merge_newest_first(lists, limit),
            }
        })
        .collect()
}

/// The (created_at, id) of up to `limit` events matching `filter` on each core's shards
/// (a NIP-77 sync's set: more than `limit` in all means the set is over its maximum).
pub async fn ids_everywhere(
    core: Scatter<'_>,
    filter: Arc<Filter>,
    limit: usize,
    now: u64,
    privacy: Privacy,
) -> Vec<(u64, [u8; 32])> {
    let ask = Ask::Scan(ScanAsk::Ids { filter: filter.clone(), limit, now, privacy: privacy.clone() });
    let local = scan::ids(core.storage, core.queries, &filter, limit, now, &privacy);
    let parts: Vec<Vec<(u64, [u8; 32])>> = core.mesh.gather(ask, local).await;
    parts.concat()
}

/// How many events match any of the filters over every core's shards (an event lives on
/// one shard, so the parts add up).
pub async fn count_everywhere(
    core: Scatter<'_>,
    filters: Arc<[Filter]>,
    limits: QueryLimits,
    privacy: Privacy,
) -> CountPart {
    let ask = Ask::Scan(ScanAsk::Count { filters: filters.clone(), limits, privacy: privacy.clone() });
    let local = scan::count(core.storage, core.queries, core.stats, &filters, limits, &privacy);
    let parts: Vec<CountPart> = core.mesh.gather(ask, local).await;
    parts.iter().fold(CountPart::default(), |total, part| CountPart {
        count: total.count + part.count,
        approximate: total.approximate || part.approximate,
    })
}

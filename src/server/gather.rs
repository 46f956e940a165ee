//! A query's fan-in over every core: the REQ's and the deletion lookup's newest events
//! ([`hits_everywhere`]) and the COUNT's total ([`count_everywhere`]), each one typed gather
//! through the mesh with this core's part run meanwhile ([`super::scan`]).

use std::rc::Rc;
use std::sync::Arc;

use super::core::Core;
use super::mesh::{Ask, ScanAsk};
use super::parts::{CountPart, QueryLimits, WireHit};
use super::scan;
use crate::filter::Filter;
use crate::store::query::merge_newest_first;
use crate::store::{effective_limit, Privacy};

/// Per filter, the newest `limit` events over every core's shards.
pub async fn hits_everywhere(
    core: &Rc<Core>,
    filters: Arc<[Filter]>,
    limits: QueryLimits,
    privacy: Privacy,
) -> Vec<Vec<WireHit>> {
    let ask = Ask::Scan(ScanAsk::Hits { filters: filters.clone(), limits, privacy: privacy.clone() });
    let local = scan::hits(&core.storage, &core.queries, &filters, limits, &privacy);
    let mut parts: Vec<Vec<Vec<WireHit>>> = core.mesh.gather(ask, local).await;
    (0..filters.len())
        .map(|index| {
            let limit = effective_limit(&filters[index], limits.default, limits.max);
            let lists = parts.iter_mut().map(|part| std::mem::take(&mut part[index])).collect();
            merge_newest_first(lists, limit)
        })
        .collect()
}

/// How many events match any of the filters over every core's shards (an event lives on
/// one shard, so the parts add up).
pub async fn count_everywhere(
    core: &Rc<Core>,
    filters: Arc<[Filter]>,
    limits: QueryLimits,
    privacy: Privacy,
) -> CountPart {
    let ask = Ask::Scan(ScanAsk::Count { filters: filters.clone(), limits, privacy: privacy.clone() });
    let local = scan::count(&core.storage, &core.queries, &core.stats, &filters, limits, &privacy);
    let parts: Vec<CountPart> = core.mesh.gather(ask, local).await;
    parts.iter().fold(CountPart::default(), |total, part| CountPart {
        count: total.count + part.count,
        approximate: total.approximate || part.approximate,
    })
}

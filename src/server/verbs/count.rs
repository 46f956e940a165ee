//! COUNT (NIP-45): a query owned by the connection, answered from the indexes' counts when
//! one key decides it, else by a scan under the same budgets as a REQ. A count that stopped
//! at `count_max` says `approximate`.

use std::rc::Rc;

use crate::filter::Filter;
use crate::proto::{self, SubId};
use crate::server::core::Core;
use crate::server::gather::count_everywhere;
use crate::server::parts::QueryLimits;
use crate::subs::ConnId;

pub fn handle(core: &Rc<Core>, conn: ConnId, sub_id: SubId, filters: Vec<Filter>) {
    let received = std::time::Instant::now();
    if let Some(reason) = super::req::read_refusal(core, conn) {
        return core.sessions.send(conn, proto::frame_closed(&sub_id, reason));
    }
    let privacy = core.privacy_for(conn);
    let owner = core.clone();
    core.start_query(conn, None, async move {
        let part = {
            let _slot = owner.query_slot(conn).await;
            let max = owner.config.limits.count_max;
            let limits = QueryLimits { default: max, max, now: crate::now_unix(), bytes_max: 0 };
            count_everywhere(&owner, filters.into(), limits, privacy).await
        };
        owner.sessions.send(conn, proto::frame_count(&sub_id, part.count, part.approximate));
        owner.stats.count_seconds.observe_since(received);
    });
}

//! CLOSE: the subscription goes, and its query, if still running, is cancelled at once.

use crate::proto::SubId;
use crate::server::core::Core;
use crate::subs::ConnId;

pub fn handle(core: &Core, conn: ConnId, sub_id: &SubId) {
    core.subs.borrow_mut().remove(conn, sub_id);
    core.with_session(conn, |session| {
        session.subs.remove(sub_id);
        session.cancel_queries_of(sub_id);
    });
}

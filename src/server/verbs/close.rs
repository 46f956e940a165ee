//! CLOSE: the subscription goes, and its query, if still running, is cancelled at once.

use crate::proto::SubId;
use crate::server::core::Core;
use crate::subs::ConnId;

pub fn handle(core: &Core, conn: ConnId, sub_id: &SubId) {
    core.sessions.unsubscribe(conn, sub_id);
}

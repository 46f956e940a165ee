//! COUNT (NIP-45): a query owned by the connection, answered from the indexes' counts when
//! one key decides it, else by a scan under the same budgets as a REQ. A count that stopped
//! at `count_max` says `approximate`.

use std::rc::Rc;

use super::{read_refusal, Effect, Peer};
use crate::config::Config;
use crate::filter::Filter;
use crate::proto::{self, SubId};
use crate::server::core::Core;
use crate::server::gather::count_everywhere;
use crate::server::parts::QueryLimits;
use crate::subs::ConnId;

/// A COUNT: refused as a REQ would be (rate, `policy.read`), else counted.
pub fn decide(peer: &impl Peer, config: &Config, sub_id: SubId, filters: Vec<Filter>) -> Vec<Effect> {
    match read_refusal(peer, config, &sub_id) {
        Some(refusal) => refusal,
        None => vec![Effect::Count { sub: sub_id, filters }],
    }
}

/// Count over every core, as a query the connection owns, and answer.
pub fn start(core: &Rc<Core>, conn: ConnId, sub_id: SubId, filters: Vec<Filter>) {
    let received = std::time::Instant::now();
    let privacy = core.privacy_for(conn);
    let owner = core.clone();
    core.start_query(conn, None, async move {
        let part = {
            let _slot = owner.query_slot(conn).await;
            let max = owner.config.limits.count_max;
            let limits = QueryLimits { default: max, max, now: crate::now_unix(), bytes_max: 0 };
            count_everywhere(owner.scatter(), filters.into(), limits, privacy).await
        };
        owner.sessions.send(conn, proto::frame_count(&sub_id, part.count, part.approximate));
        owner.stats.count_seconds.observe_since(received);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReadMode;
    use crate::server::peer::tests::FakePeer;
    use crate::server::verbs::tests::{reply, sub};

    #[test]
    fn a_count_is_counted_unless_over_the_rate_or_unauthenticated_where_reads_need_auth() {
        let mut config = Config::default();
        let filters = vec![Filter { kinds: Some(vec![1]), ..Filter::default() }];
        let peer = FakePeer::default();
        assert_eq!(
            decide(&peer, &config, sub("c"), filters.clone()),
            vec![Effect::Count { sub: sub("c"), filters: filters.clone() }]
        );

        let spent = FakePeer { tokens: Some(0).into(), ..FakePeer::default() };
        let closed = reply(&decide(&spent, &config, sub("c"), filters.clone()));
        assert_eq!(closed[0], "CLOSED");
        assert!(closed[2].as_str().unwrap().starts_with("rate-limited: "), "{closed}");

        config.policy.read = ReadMode::Auth;
        let effects = decide(&peer, &config, sub("c"), filters.clone());
        assert_eq!(effects[0], Effect::Challenge, "the challenge goes first");
        assert!(reply(&effects)[2].as_str().unwrap().starts_with("auth-required: "));
    }
}

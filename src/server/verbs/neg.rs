//! NIP-77 negentropy syncs: `NEG-OPEN` gathers the filter's (created_at, id) set from every
//! core, under the same read rules as a REQ (private kinds hidden from who may not read
//! them, `policy.read`), as a query the connection owns, and answers the client's first
//! message; `NEG-MSG` answers the next ones from the state kept in the session; `NEG-CLOSE`
//! drops it. Budgets (`[negentropy]`): events per sync, events per core, syncs per
//! connection, the message size, and an idle timeout (the core's sweep).

use std::rc::Rc;
use std::sync::Arc;

use super::{read_refusal_as, Effect, Peer};
use crate::config::Config;
use crate::filter::Filter;
use crate::proto::{self, SubId};
use crate::server::core::Core;
use crate::server::gather::ids_everywhere;
use crate::server::negsync::{Built, Lent, NegSync, Turn};
use crate::subs::ConnId;

/// A NEG-OPEN: refused as a REQ would be (NIP-77 off, rate, `policy.read`), or opened.
pub fn decide_open(peer: &impl Peer, config: &Config, sub: SubId, filters: Vec<Filter>, message: &str) -> Vec<Effect> {
    if !config.negentropy.enabled {
        return vec![Effect::Reply(proto::frame_neg_err(&sub, "blocked: NIP-77 sync is turned off on this relay"))];
    }
    if let Some(refusal) = read_refusal_as(peer, config, |reason| proto::frame_neg_err(&sub, reason)) {
        return refusal;
    }
    if filters.iter().any(|filter| filter.search.is_some()) {
        return vec![Effect::Reply(proto::frame_neg_err(&sub, "blocked: a sync's filter cannot search (NIP-50)"))];
    }
    match crate::hex::decode_lower_vec(message.as_bytes()) {
        Some(message) => vec![Effect::NegOpen { sub, filters, message }],
        None => vec![Effect::Reply(proto::frame_neg_err(&sub, NOT_HEX))],
    }
}

/// A NEG-MSG: its message decoded, to be answered by the open sync.
pub fn decide_msg(config: &Config, sub: SubId, message: &str) -> Vec<Effect> {
    if !config.negentropy.enabled {
        return vec![Effect::Reply(proto::frame_neg_err(&sub, "blocked: NIP-77 sync is turned off on this relay"))];
    }
    match crate::hex::decode_lower_vec(message.as_bytes()) {
        Some(message) => vec![Effect::NegMsg { sub, message }],
        None => vec![Effect::Reply(proto::frame_neg_err(&sub, NOT_HEX))],
    }
}

const NOT_HEX: &str = "invalid: a negentropy message is lowercase hex";

/// Open a sync: any sync under the same id closes first; then the set is gathered, as a
/// query the connection owns, and the client's first message answered.
pub fn start(core: &Rc<Core>, conn: ConnId, sub: SubId, filters: Vec<Filter>, message: Vec<u8>) {
    let settings = &core.config.negentropy;
    let serial = core.sessions.fresh_id();
    let already = core.sessions.with(conn, |session| {
        session.negs.remove(&sub);
        session.negs_opening.remove(&sub);
        let already = session.negs.len() + session.negs_opening.len();
        if already < settings.syncs_per_connection_max {
            session.negs_opening.insert(sub.clone(), serial);
        }
        already
    });
    if already.is_some_and(|already| already >= settings.syncs_per_connection_max) {
        let reason = format!("blocked: at most {} syncs at once per connection", settings.syncs_per_connection_max);
        return refuse(core, conn, &sub, &reason);
    }
    let privacy = core.privacy_for(conn);
    let owner = core.clone();
    core.start_query(conn, None, async move {
        let opened = gather_and_build(&owner, conn, filters, privacy, message).await;
        // Answered only if this open is still the one under its id (not closed or replaced).
        let current = owner.sessions.with(conn, |session| {
            let current = session.negs_opening.get(&sub) == Some(&serial);
            if current {
                session.negs_opening.remove(&sub);
            }
            current
        });
        if current != Some(true) {
            return;
        }
        let frame = match opened {
            Ok((built, answer)) => {
                let sync = NegSync::new(built, owner.stats.clone());
                owner.sessions.with(conn, |session| session.negs.insert(sub.clone(), sync));
                proto::frame_neg_msg(&sub, &answer)
            }
            Err(Refused(reason)) => {
                owner.stats.neg_refused.inc();
                proto::frame_neg_err(&sub, &reason)
            }
            Err(Invalid(reason)) => proto::frame_neg_err(&sub, &reason),
        };
        owner.sessions.send(conn, frame);
    });
}

/// Why an open is not answered with a `NEG-MSG`.
enum NotOpened {
    /// Over a budget (`blocked:`), counted.
    Refused(String),
    /// The client's first message does not read.
    Invalid(String),
}
use NotOpened::{Invalid, Refused};

/// Gather the filters' set (waiting for a turn to gather and a query slot), then build the
/// relay's side and answer the first message on glommio's blocking thread (~40 ms at
/// 500,000 events would otherwise hold the core).
async fn gather_and_build(
    core: &Rc<Core>,
    conn: ConnId,
    filters: Vec<Filter>,
    privacy: crate::store::Privacy,
    message: Vec<u8>,
) -> Result<(Built, Vec<u8>), NotOpened> {
    let settings = &core.config.negentropy;
    // The set may hold up to `items_max` events until it is counted: only so many gather at
    // once, the rest wait their turn.
    let stopping = || Refused("error: the relay is shutting down".to_owned());
    let _gathering = core.queries.neg_open_turn().await.ok_or_else(stopping)?;
    let mut items = Vec::new();
    {
        let _slot = core.query_slot(conn).await;
        // At most `items_max + 1` held in all, whatever the number of filters: one more than
        // the maximum is enough to refuse.
        for filter in filters {
            let room = (settings.items_max + 1).saturating_sub(items.len()).max(1);
            items.extend(gather(core, filter, room, privacy.clone()).await);
            if items.len() > settings.items_max {
                break;
            }
        }
    }
    // An event several filters match is in the set once.
    items.sort_unstable_by_key(|item| item.1);
    items.dedup_by(|a, b| a.1 == b.1);
    if items.len() > settings.items_max {
        return Err(Refused(format!(
            "blocked: this filter matches more than {} events; narrow it",
            settings.items_max
        )));
    }
    if core.stats.neg_items.get() + items.len() as u64 > settings.items_per_core_max as u64 {
        return Err(Refused("blocked: the relay holds too many syncs now; try again later".to_owned()));
    }
    let frame_size_max = settings.frame_size_max;
    let built = glommio::executor().spawn_blocking(move || Built::build(items, frame_size_max, &message)).await;
    built.map_err(|error| Invalid(format!("invalid: {error}")))
}

/// One filter's part of the set, at most `cap` events; a filter's own `limit` narrows it
/// to its newest events, as a REQ's would.
async fn gather(core: &Rc<Core>, filter: Filter, cap: usize, privacy: crate::store::Privacy) -> Vec<(u64, [u8; 32])> {
    let wanted = filter.limit.map(|limit| usize::try_from(limit).unwrap_or(usize::MAX));
    let limit = wanted.unwrap_or(usize::MAX).min(cap);
    let mut items = ids_everywhere(core.scatter(), Arc::new(filter), limit, crate::now_unix(), privacy).await;
    if let Some(wanted) = wanted.filter(|&wanted| wanted < items.len()) {
        items.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        items.truncate(wanted);
    }
    items
}

/// Close a sync, or an open still gathering its set.
pub fn close(core: &Core, conn: ConnId, sub: &SubId) {
    core.sessions.with(conn, |session| {
        session.negs.remove(sub);
        session.negs_opening.remove(sub);
    });
}

/// Answer a message of an open sync, here or (a large set) off the core; a message it
/// cannot read ends the sync.
pub fn answer(core: &Rc<Core>, conn: ConnId, sub: &SubId, message: Vec<u8>) {
    let lend_from = core.config.negentropy.answer_off_core_from;
    let turn = core.sessions.with(conn, |session| session.negs.get_mut(sub).map(|sync| sync.turn(&message, lend_from)));
    let answered = match turn {
        None => return,
        Some(None) => Err("closed: no sync is open under this id".to_owned()),
        Some(Some(Turn::Now(answer))) => answer.map_err(|error| format!("invalid: {error}")),
        Some(Some(Turn::Busy)) => Err("invalid: a NEG-MSG came before the last one was answered".to_owned()),
        Some(Some(Turn::Lend(lent))) => return answer_off_core(core, conn, sub.clone(), lent, message),
    };
    finish(core, conn, sub, answered);
}

/// Answer with the state lent out, on glommio's blocking thread, as work the connection
/// owns; the state goes back to its sync unless that was closed meanwhile.
fn answer_off_core(core: &Rc<Core>, conn: ConnId, sub: SubId, mut lent: Lent, message: Vec<u8>) {
    let owner = core.clone();
    core.start_query(conn, None, async move {
        let (lent, answered) = glommio::executor()
            .spawn_blocking(move || {
                let answer = lent.reconcile(&message);
                (lent, answer)
            })
            .await;
        let back =
            owner.sessions.with(conn, |session| session.negs.get_mut(&sub).is_some_and(|sync| sync.give_back(lent)));
        if back == Some(true) {
            finish(&owner, conn, &sub, answered.map_err(|error| format!("invalid: {error}")));
        }
    });
}

/// Send a sync's answer, or end it with its error.
fn finish(core: &Core, conn: ConnId, sub: &SubId, answered: Result<Vec<u8>, String>) {
    let frame = match answered {
        Ok(answer) => proto::frame_neg_msg(sub, &answer),
        Err(reason) => {
            core.sessions.with(conn, |session| session.negs.remove(sub));
            proto::frame_neg_err(sub, &reason)
        }
    };
    core.sessions.send(conn, frame);
}

fn refuse(core: &Core, conn: ConnId, sub: &SubId, reason: &str) {
    core.stats.neg_refused.inc();
    core.sessions.send(conn, proto::frame_neg_err(sub, reason));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReadMode;
    use crate::server::peer::tests::FakePeer;
    use crate::server::verbs::tests::{reply, sub};

    fn filter() -> Vec<Filter> {
        vec![Filter { kinds: Some(vec![1]), ..Filter::default() }]
    }

    #[test]
    fn a_neg_open_is_opened_unless_off_over_the_rate_unauthenticated_or_not_hex() {
        let mut config = Config::default();
        let peer = FakePeer::default();
        assert_eq!(
            decide_open(&peer, &config, sub("n"), filter(), "61ab"),
            vec![Effect::NegOpen { sub: sub("n"), filters: filter(), message: vec![0x61, 0xab] }]
        );
        let refused = |effects: Vec<Effect>| reply(&effects)[2].as_str().unwrap().to_owned();
        assert!(refused(decide_open(&peer, &config, sub("n"), filter(), "6G")).starts_with("invalid: "));
        let spent = FakePeer { tokens: Some(0).into(), ..FakePeer::default() };
        assert!(refused(decide_open(&spent, &config, sub("n"), filter(), "61")).starts_with("rate-limited: "));
        config.policy.read = ReadMode::Auth;
        let effects = decide_open(&peer, &config, sub("n"), filter(), "61");
        assert_eq!(effects[0], Effect::Challenge);
        assert!(refused(effects).starts_with("auth-required: "));
        config.negentropy.enabled = false;
        assert!(refused(decide_open(&peer, &config, sub("n"), filter(), "61")).starts_with("blocked: "));
        assert!(refused(decide_msg(&config, sub("n"), "61")).starts_with("blocked: "));
    }

    #[test]
    fn a_neg_msg_is_decoded_or_refused() {
        let config = Config::default();
        assert_eq!(decide_msg(&config, sub("n"), "61"), vec![Effect::NegMsg { sub: sub("n"), message: vec![0x61] }]);
        assert_eq!(reply(&decide_msg(&config, sub("n"), "6"))[0], "NEG-ERR");
        assert_eq!(reply(&decide_msg(&config, sub("n"), "AB"))[0], "NEG-ERR", "uppercase is not NIP-77's hex");
    }
}

//! An event's way from a verified signature to its `OK`, in named stages:
//! - [`before_signature`]: what is refused on sight (the event rate, the write policy, a
//!   request to vanish naming other relays, the date window);
//! - the signature check (`Core::verify`), then [`after_signature`]: the write plugin's
//!   decision (`plugin`, strfry's protocol), and a deletion request's targets looked up on
//!   every core (NIP-09 ownership), both as work the connection owns;
//! - `route`: to the owner core of the author's shard, waiting while its channel is full;
//! - [`append_owned`], on the owner: the storage rules, the append, and the shard's
//!   [`AckPipeline`]; [`answer_appends`], one task per shard, acknowledges each append once
//!   it is durable and then broadcasts it.

use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;

use super::acks::{AckPipeline, Pending};
use super::core::Core;
use super::mesh::{CoreMsg, Reply};
use super::outbox::Out;
use super::parts::QueryLimits;
use super::plugin::{Source, Verdict};
use super::rates::Work;
use super::refusal::{Prefix, Refusal};
use super::stats::{Outcome, OutcomeClass};
use crate::config::PluginFailure;
use crate::event::kind::{parse_address, KIND_DELETION, KIND_GIFT_WRAP, KIND_VANISH};
use crate::event::{EventId, KindClass, ParsedEvent, VerifiedEvent};
use crate::filter::Filter;
use crate::proto;
use crate::store::{Admission, Privacy, Rejection, ShardId, StoreError};
use crate::subs::{ConnId, LiveEvent};

/// The `OK` reason for an event already stored.
pub const DUPLICATE: &str = "duplicate: already have this event";
/// Refused while the data directory's filesystem is full or below its reserve.
pub const STORAGE_FULL: &str = "error: the relay's storage is full; try again later";
/// Refused, or not stored, because a write to disk failed; the relay retries by itself.
pub const STORAGE_FAILING: &str = "error: could not store the event (a disk write failed); try again later";

/// The `OK` reason for a deletion request that names another author's event.
pub const FOREIGN_DELETION: &str = "blocked: a deletion request can only name its author's own events";

/// What the relay refuses before looking at the signature: the event rate, AUTH events sent
/// as EVENT, the write policy (deny and kind lists, the write mode, NIP-70 protected events;
/// an `auth-required:` answer is preceded by the connection's challenge), gift wraps to a
/// pubkey that vanished, requests to vanish from elsewhere, and dates outside the window.
pub fn before_signature(core: &Core, conn: ConnId, event: &ParsedEvent) -> Result<(), Refusal> {
    if core.over_rate(conn, Work::Event) {
        let rate = core.config.rate_limits.events;
        let message = format!("more than {} events a minute (bursts of {})", rate.per_minute, rate.burst);
        return Err(Refusal::new(Prefix::RateLimited, "events", message));
    }
    if event.kind == crate::auth::KIND_AUTH {
        let message = "AUTH events (kind 22242) are sent in AUTH messages, never published";
        return Err(Refusal::new(Prefix::Invalid, "auth_event", message));
    }
    let policy = core.gate.policy();
    if event.kind == KIND_VANISH {
        // NIP-62: a relay that restricts who may post follows a request to vanish all the
        // same, so it skips the write policy; it must name this relay.
        if !crate::auth::names_relay(&event.json, &core.addresses_for(conn)) {
            let message = "this request to vanish names neither this relay nor ALL_RELAYS";
            return Err(Refusal::new(Prefix::Invalid, "vanish_elsewhere", message));
        }
    } else if event.kind == KIND_GIFT_WRAP && core.storage.is_wrap_to_vanished(event) {
        let message = "this gift wrap is addressed to a pubkey that asked this relay to delete its events";
        return Err(Refusal::new(Prefix::Blocked, "vanished", message));
    } else {
        let authed = match policy.needs_auth(event) {
            true => core.sessions.with(conn, |session| session.auth.pubkeys.clone()).unwrap_or_default(),
            false => Vec::new(),
        };
        if let Err(refusal) = policy.judge(event, &authed) {
            if refusal.wants_challenge() {
                core.sessions.send_challenge(conn);
            }
            return Err(refusal);
        }
    }
    let limits = &core.config.limits;
    // The event's kind's own window, if `[[policy.kind_windows]]` gives it one.
    let (past_max, future_max) =
        policy.window(event.kind).unwrap_or((limits.created_at_past_max_secs, limits.created_at_future_max_secs));
    date_window(event.created_at, crate::now_unix(), past_max, future_max)
}

/// Whether `created_at` lies in the window: at most `future_max` seconds ahead of `now`, and
/// at most `past_max` behind (0: any age).
fn date_window(created_at: u64, now: u64, past_max: u64, future_max: u64) -> Result<(), Refusal> {
    if created_at > now.saturating_add(future_max) {
        let message = format!("created_at is more than {future_max} seconds in the future");
        return Err(Refusal::new(Prefix::Invalid, "created_at_future", message));
    }
    if past_max > 0 && created_at < now.saturating_sub(past_max) {
        let message = format!("created_at is more than {past_max} seconds in the past");
        return Err(Refusal::new(Prefix::Invalid, "created_at_past", message));
    }
    Ok(())
}

/// How a storage rule's refusal is counted.
fn rejection_outcome(rejection: Rejection) -> Outcome {
    match rejection {
        Rejection::Deleted => Outcome::new(OutcomeClass::Refused, "deleted"),
        Rejection::Superseded => Outcome::SUPERSEDED,
        Rejection::Expired => Outcome::new(OutcomeClass::Invalid, "expired"),
        Rejection::ShardFull => Outcome::new(OutcomeClass::Error, "shard_full"),
        Rejection::Vanished => Outcome::new(OutcomeClass::Refused, "vanished"),
    }
}

pub const OUTCOME_DUPLICATE: Outcome = Outcome::new(OutcomeClass::Duplicate, "duplicate");
const OUTCOME_STORAGE_FULL: Outcome = Outcome::new(OutcomeClass::Error, "storage_full");
const OUTCOME_STORAGE_FAILING: Outcome = Outcome::new(OutcomeClass::Error, "storage_failing");

/// Whether this core owns `event`'s shard and has already acknowledged it (checked before
/// the signature, which costs 20 times the rest of ingest). A copy whose original is not
/// yet acknowledged is not answered here: it waits behind the original in the shard's
/// pipeline, so its `duplicate:` OK never comes before the original's OK.
pub fn is_known_duplicate(core: &Core, id: &EventId, shard: ShardId) -> bool {
    if !core.storage.owns(shard) {
        return false;
    }
    let answered = core.storage.ack_pipeline(shard).answered_count();
    core.storage
        .with_shard(shard, |state| {
            let index = &state.index;
            index
                .lookup_id(&id.0)
                .is_some_and(|no| !index.entry(no).is_dead() && no < index.durable_count() && no < answered)
        })
        .unwrap_or(false)
}

/// A verified event from a connection of this core. Its OK is owed from now, so a client
/// that publishes faster than events are stored is held back. A deletion request is first
/// checked against every core, as a query owned by the connection.
pub async fn after_signature(core: &Rc<Core>, reply: Reply, event: VerifiedEvent, shard: ShardId) {
    core.sessions.with(reply.conn, |session| session.outbound.owe_reply());
    // A request to vanish is followed whatever the plugin would say (NIP-62).
    let judged = core.gate.plugin.is_some() && event.kind() != KIND_VANISH;
    if event.kind() != KIND_DELETION && !judged {
        return route(core, reply, event, shard).await;
    }
    let conn = reply.conn;
    let owner = core.clone();
    core.start_query(conn, None, async move {
        if judged && !plugin_accepts(&owner, &reply, &event).await {
            return;
        }
        if event.kind() != KIND_DELETION {
            return route(&owner, reply, event, shard).await;
        }
        let refused = {
            let _slot = owner.query_slot(conn).await;
            names_another_authors_event(&owner, &event).await
        };
        if refused {
            deliver_ok(&owner, &reply, Outcome::new(OutcomeClass::Refused, "foreign_deletion"), FOREIGN_DELETION);
        } else {
            route(&owner, reply, event, shard).await;
        }
    });
}

/// The write plugin's stage: whether `event` goes on; when not, its OK is sent here.
async fn plugin_accepts(core: &Rc<Core>, reply: &Reply, event: &VerifiedEvent) -> bool {
    let Some(plugin) = &core.gate.plugin else { return true };
    let Some((ip, authed)) =
        core.sessions.with(reply.conn, |session| (session.ip, session.auth.pubkeys.first().copied()))
    else {
        return false;
    };
    let source = Source { ip, authed: authed.as_ref() };
    let verdict = plugin.judge(event.json(), event.id().to_hex(), &source).await;
    let (outcome, reason) = match verdict {
        Verdict::Accept => return true,
        Verdict::Reject(msg) => (Outcome::new(OutcomeClass::Refused, "plugin"), with_prefix(msg, "blocked")),
        Verdict::ShadowReject(msg) => (Outcome::new(OutcomeClass::ShadowRejected, "plugin"), msg),
        Verdict::Failed(_) if core.config.write_plugin.on_failure == PluginFailure::Accept => return true,
        Verdict::Failed(_) => (
            Outcome::new(OutcomeClass::Error, "plugin_failed"),
            "error: the relay's write policy could not judge this event; try again later".to_owned(),
        ),
    };
    deliver_ok(core, reply, outcome, &reason);
    false
}

/// A plugin's message as an `OK` reason: kept when it has a NIP-01 prefix (`word: ...`),
/// else given `prefix`.
fn with_prefix(msg: String, prefix: &str) -> String {
    let has_prefix = msg
        .split_once(": ")
        .is_some_and(|(word, _)| !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'));
    match (has_prefix, msg.is_empty()) {
        (true, _) => msg,
        (false, true) => format!("{prefix}: rejected by the relay's write policy"),
        (false, false) => format!("{prefix}: {msg}"),
    }
}

/// NIP-09 lets a relay refuse a deletion request that names someone else's address, or an
/// event stored under another author. Such an event can be on any core's shard.
async fn names_another_authors_event(core: &Rc<Core>, event: &VerifiedEvent) -> bool {
    let author = event.pubkey();
    let mut ids = Vec::new();
    for tag in event.index_tags() {
        match tag.letter {
            b'a' if parse_address(&tag.value).is_some_and(|address| address.pubkey != author.0) => return true,
            b'e' => ids.extend(crate::hex::decode_lower::<32>(&tag.value).map(EventId)),
            _ => {}
        }
    }
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return false;
    }
    let count = ids.len();
    let any_author = Filter { ids: Some(ids), limit: Some(count as u64), ..Filter::default() };
    let own = Filter { authors: Some(vec![*author]), ..any_author.clone() };
    let filters: Arc<[Filter]> = Arc::from([any_author, own]);
    let limits = QueryLimits { default: count, max: count, now: crate::now_unix(), bytes_max: usize::MAX };
    // Ownership is judged over every stored event, private kinds included.
    let found = super::gather::hits_everywhere(core, filters, limits, Privacy::default()).await;
    found[0].len() > found[1].len()
}

/// Send an event whose OK is owed to where it is stored: broadcast if ephemeral, else to
/// the owner of its author's shard, waiting while that core's channel is full.
async fn route(core: &Rc<Core>, reply: Reply, event: VerifiedEvent, shard: ShardId) {
    if event.class() == KindClass::Ephemeral {
        broadcast(core, Arc::new(LiveEvent::from_event(&event))).await;
        deliver_ok(core, &reply, Outcome::EPHEMERAL, "");
        return;
    }
    match core.storage.owner_core(shard) {
        owner if owner == core.id() => append_owned(core, event, shard, reply),
        owner => core.mesh.send(owner, CoreMsg::Append { event: Box::new(event), shard, reply }).await,
    }
}

/// On the owner core: apply the rules and append; the shard's [`AckPipeline`] answers once
/// the append is durable. Never waits: it also runs for other cores' `Append` messages.
pub fn append_owned(core: &Rc<Core>, event: VerifiedEvent, shard: ShardId, reply: Reply) {
    let Some((admission, pipeline)) = core.storage.append(shard, &event, crate::now_unix()) else {
        let outcome = Outcome::new(OutcomeClass::Error, "shutting_down");
        return deliver_ok(core, &reply, outcome, "error: the relay is shutting down");
    };
    let pending = match admission {
        Ok(Admission::Stored(durable)) => {
            let no = core.storage.with_shard(shard, |state| state.index.lookup_id(&event.id().0)).flatten();
            Pending { durable: Some(durable), reply, live: Some(event), duplicate: false, no }
        }
        // Behind whatever the pipeline holds: the original's OK may still be in it.
        Ok(Admission::Duplicate(None)) => Pending { durable: None, reply, live: None, duplicate: true, no: None },
        // The original is still on its way to disk: acknowledging the copy now would
        // promise an event a crash could still lose.
        Ok(Admission::Duplicate(Some(original))) => {
            Pending { durable: Some(original), reply, live: None, duplicate: true, no: None }
        }
        Ok(Admission::Ephemeral) => Pending { durable: None, reply, live: Some(event), duplicate: false, no: None },
        Ok(Admission::Rejected(rejection)) => {
            return deliver_ok(core, &reply, rejection_outcome(rejection), rejection.reason())
        }
        Err(error) => {
            let (outcome, reason) = match &error {
                StoreError::Refusing(refusal) if refusal.is_full() => (OUTCOME_STORAGE_FULL, STORAGE_FULL),
                _ => (OUTCOME_STORAGE_FAILING, STORAGE_FAILING),
            };
            if let Some(held_back) = core.storage.errors.admit() {
                tracing::warn!(core = core.id().0, %shard, %error, held_back, "event refused: storage refuses writes");
            }
            return deliver_ok(core, &reply, outcome, reason);
        }
    };
    pipeline.push(pending);
}

/// Send an OK to its connection, here or on its core, where it is counted. Never waits.
pub fn deliver_ok(core: &Core, reply: &Reply, outcome: Outcome, reason: &str) {
    if reply.core == core.id() {
        core.stats.answered(outcome, reply.received);
        core.sessions.with(reply.conn, |session| {
            let ok = proto::frame_ok(&reply.event_id.to_hex(), outcome.accepted(), reason);
            session.outbound.send_reply(Out::Text(ok), true);
        });
    } else {
        let reason = Cow::Owned(reason.to_owned());
        core.mesh.post(reply.core, CoreMsg::Ack { reply: reply.clone(), outcome, reason });
    }
}

/// A live event to every core: waits while a peer's channel is full.
pub async fn broadcast(core: &Rc<Core>, event: Arc<LiveEvent>) {
    for peer in core.mesh.peers() {
        core.mesh.send(peer, CoreMsg::Live(event.clone())).await;
    }
    super::fanout::fan_out(core, &event);
}

/// The task of one shard's ack pipeline, for the life of the shard: each append's OK once
/// it is durable, in the order the appends were made, then its broadcast.
pub async fn answer_appends(core: Rc<Core>, pipeline: Rc<AckPipeline>) {
    loop {
        let pending = pipeline.next().await;
        let outcome = match pending.durable {
            Some(durable) => durable.await,
            None => Ok(()),
        };
        match outcome {
            Ok(()) if pending.duplicate => deliver_ok(&core, &pending.reply, OUTCOME_DUPLICATE, DUPLICATE),
            Ok(()) => {
                if let Some(no) = pending.no {
                    pipeline.acknowledged(no);
                }
                deliver_ok(&core, &pending.reply, Outcome::STORED, "");
                if let Some(event) = pending.live {
                    broadcast(&core, Arc::new(LiveEvent::from_event(&event))).await;
                }
            }
            Err(error) => {
                if let Some(held_back) = core.storage.errors.admit() {
                    tracing::error!(core = core.id().0, %error, held_back, "append failed");
                }
                deliver_ok(&core, &pending.reply, OUTCOME_STORAGE_FAILING, STORAGE_FAILING);
            }
        }
        pipeline.finished();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(created_at: u64, past_max: u64, future_max: u64, expected: Result<(), &str>) {
        let got = date_window(created_at, 1_000_000, past_max, future_max).map_err(|refusal| refusal.reason());
        assert_eq!(got, expected.map_err(str::to_owned), "created_at {created_at}");
    }

    #[test]
    fn the_date_window_refuses_with_invalid_and_says_which_side() {
        check(1_000_000, 0, 900, Ok(()));
        check(1_000_900, 0, 900, Ok(()));
        check(1_000_901, 0, 900, Err("invalid: created_at is more than 900 seconds in the future"));
        check(1, 0, 900, Ok(()));
        check(999_000, 1_000, 900, Ok(()));
        check(998_999, 1_000, 900, Err("invalid: created_at is more than 1000 seconds in the past"));
        check(u64::MAX, 0, u64::MAX, Ok(()));
    }
}

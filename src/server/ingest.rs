//! An event's way from its parse to its `OK`, one step per stage (`stages`), each taking
//! one stage and giving the next or the [`Stop`] that answers it:
//! - [`admit`] (`ParsedEvent` → [`Admitted`]): what is refused on sight
//!   ([`before_signature`]: the event rate, the write policy, a request to vanish naming
//!   other relays, the date window), its author's shard, and a copy of an event already
//!   acknowledged answered at once, before the signature that costs 20 times the rest;
//! - [`verify`] (→ [`Verified`]): the signature (`Gate::verify`, with its key cache);
//! - [`after_signature`], then `judge` (→ [`Judged`]): the write plugin's decision (`plugin`,
//!   strfry's protocol), and a deletion request's targets looked up on every core (NIP-09
//!   ownership), both as work the connection owns;
//! - `route` (→ [`Routed`]): to the owner core of the author's shard, waiting while its
//!   channel is full;
//! - [`append`] (→ `Pending`), on the owner: the storage rules and the append, into the
//!   shard's [`AckPipeline`]; [`answer_appends`], one task per shard, acknowledges each
//!   append once it is durable and then broadcasts it.

use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;

use super::acks::{AckPipeline, Pending};
use super::core::Core;
use super::gate::Gate;
use super::ids::CoreId;
use super::mesh::{CoreMsg, Reply};
use super::outbox::Out;
use super::parts::QueryLimits;
use super::peer::Peer;
use super::plugin::{Source, Verdict};
use super::policy::Policy;
use super::rates::Work;
use super::refusal::{Prefix, Refusal};
use super::stages::{Admitted, Judged, Routed, Stop, Verified};
use super::stats::{Outcome, OutcomeClass};
use super::storage::Storage;
use crate::config::{Config, PluginFailure};
use crate::event::kind::{parse_address, KIND_DELETION, KIND_GIFT_WRAP, KIND_VANISH};
use crate::event::{EventId, KindClass, ParsedEvent, VerifiedEvent};
use crate::filter::Filter;
use crate::proto;
use crate::store::{Admission, Privacy};
use crate::subs::LiveEvent;

/// The `OK` reason for an event already stored.
pub const DUPLICATE: &str = "duplicate: already have this event";

/// What the stages before the signature read besides the connection: the write policy and
/// the config in force, the time, and whether the event is a gift wrap to a pubkey that
/// vanished (`Storage::is_wrap_to_vanished`, asked only of gift wraps).
pub struct EventRules<'a> {
    pub policy: &'a Policy,
    pub config: &'a Config,
    pub now: u64,
    pub wrap_to_vanished: bool,
}

/// What the relay refuses before looking at the signature: the event rate, AUTH events sent
/// as EVENT, the write policy (deny and kind lists, the write mode, NIP-70 protected events;
/// an `auth-required:` refusal wants the connection's challenge sent first), gift wraps to a
/// pubkey that vanished, requests to vanish from elsewhere, and dates outside the window.
pub fn before_signature(peer: &impl Peer, rules: &EventRules, event: &ParsedEvent) -> Result<(), Refusal> {
    if peer.over_rate(Work::Event) {
        let rate = rules.config.rate_limits.events;
        let message = format!("more than {} events a minute (bursts of {})", rate.per_minute, rate.burst);
        return Err(Refusal::new(Prefix::RateLimited, "events", message));
    }
    if event.kind == crate::auth::KIND_AUTH {
        let message = "AUTH events (kind 22242) are sent in AUTH messages, never published";
        return Err(Refusal::new(Prefix::Invalid, "auth_event", message));
    }
    let policy = rules.policy;
    if event.kind == KIND_VANISH {
        // NIP-62: a relay that restricts who may post follows a request to vanish all the
        // same, so it skips the write policy; it must name this relay.
        if !crate::auth::names_relay(&event.json, &peer.addresses()) {
            let message = "this request to vanish names neither this relay nor ALL_RELAYS";
            return Err(Refusal::new(Prefix::Invalid, "vanish_elsewhere", message));
        }
    } else if event.kind == KIND_GIFT_WRAP && rules.wrap_to_vanished {
        let message = "this gift wrap is addressed to a pubkey that asked this relay to delete its events";
        return Err(Refusal::new(Prefix::Blocked, "vanished", message));
    } else {
        let (authed, fleet) = match policy.needs_auth(event) {
            true => (peer.authed(), peer.is_fleet()),
            false => (Vec::new(), false),
        };
        policy.judge_from(event, &authed, fleet)?;
    }
    let limits = &rules.config.limits;
    // The event's kind's own window, if `[[policy.kind_windows]]` gives it one.
    let (past_max, future_max) =
        policy.window(event.kind).unwrap_or((limits.created_at_past_max_secs, limits.created_at_future_max_secs));
    date_window(event.created_at, rules.now, past_max, future_max)?;
    match rules.config.retention.max_age(event.kind) {
        Some(secs) if event.created_at < rules.now.saturating_sub(secs) => {
            let message = format!("this relay keeps kind {} events for {secs} seconds", event.kind);
            Err(Refusal::new(Prefix::Blocked, "retention", message))
        }
        _ => Ok(()),
    }
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

/// The first step: the rules before the signature, the author's shard, and the answer to a
/// copy of an event this core has already acknowledged.
pub fn admit(peer: &impl Peer, rules: &EventRules, storage: &Storage, event: ParsedEvent) -> Result<Admitted, Stop> {
    before_signature(peer, rules, &event)?;
    let shard = storage.owner_shard(&event.pubkey.0);
    if is_known_duplicate(storage, &event.id, shard) {
        return Err(Stop::Answered { outcome: Outcome::DUPLICATE, reason: DUPLICATE.into() });
    }
    Ok(Admitted { event, shard })
}

/// The signature.
pub fn verify(gate: &Gate, admitted: Admitted) -> Result<Verified, Stop> {
    let Admitted { event, shard } = admitted;
    Ok(Verified { event: gate.verify(event)?, shard })
}

/// Whether this core owns `event`'s shard and has already acknowledged it (checked before
/// the signature). A copy whose original is not yet acknowledged is not answered here: it
/// waits behind the original in the shard's pipeline, so its `duplicate:` OK never comes
/// before the original's OK.
fn is_known_duplicate(storage: &Storage, id: &EventId, shard: crate::store::ShardId) -> bool {
    if !storage.owns(shard) {
        return false;
    }
    let answered = storage.ack_pipeline(shard).answered_count();
    storage
        .with_shard(shard, |state| {
            let index = &state.index;
            index
                .lookup_id(&id.0)
                .is_some_and(|no| !index.entry(no).is_dead() && no < index.durable_count() && no < answered)
        })
        .unwrap_or(false)
}

/// A verified event from a connection of this core. Its OK is owed from now, so a client
/// that publishes faster than events are stored is held back. When the write plugin or
/// NIP-09 has to judge it, that is work the connection owns (a query).
pub async fn after_signature(core: &Rc<Core>, reply: Reply, verified: Verified) {
    core.sessions.with(reply.conn, |session| session.outbound.owe_reply());
    if !needs_judging(core, &verified.event) {
        let Verified { event, shard } = verified;
        return route(core, reply, Judged { event, shard }).await;
    }
    let owner = core.clone();
    core.start_query(reply.conn, None, async move {
        match judge(&owner, &reply, verified).await {
            Ok(judged) => route(&owner, reply, judged).await,
            Err(stop) => deliver_stop(&owner, &reply, &stop),
        }
    });
}

/// Whether `judge` has anything to ask: a write plugin (a request to vanish is followed
/// whatever it would say, NIP-62), or a deletion request's targets.
fn needs_judging(core: &Core, event: &VerifiedEvent) -> bool {
    let judged = core.gate.plugin.is_some() && event.kind() != KIND_VANISH;
    judged || event.kind() == KIND_DELETION
}

/// The write plugin's verdict, then a deletion request's ownership (NIP-09), under a query
/// slot since it looks on every core.
async fn judge(core: &Rc<Core>, reply: &Reply, verified: Verified) -> Result<Judged, Stop> {
    let Verified { event, shard } = verified;
    if core.gate.plugin.is_some() && event.kind() != KIND_VANISH {
        plugin_verdict(core, reply, &event).await?;
    }
    if event.kind() == KIND_DELETION {
        let refused = {
            let _slot = core.query_slot(reply.conn).await;
            names_another_authors_event(core, &event).await
        };
        if refused {
            let message = "a deletion request can only name its author's own events";
            return Err(Refusal::new(Prefix::Blocked, "foreign_deletion", message).into());
        }
    }
    Ok(Judged { event, shard })
}

/// The write plugin's stage: `Ok` when the event goes on.
async fn plugin_verdict(core: &Rc<Core>, reply: &Reply, event: &VerifiedEvent) -> Result<(), Stop> {
    let Some(plugin) = &core.gate.plugin else { return Ok(()) };
    let Some((ip, authed)) =
        core.sessions.with(reply.conn, |session| (session.ip, session.auth.pubkeys.first().copied()))
    else {
        let refusal = Refusal::new(Prefix::Error, "closed", "the connection closed before the event was judged");
        return Err(refusal.into());
    };
    let source = Source { ip, authed: authed.as_ref() };
    let verdict = plugin.judge(event.json(), event.id().to_hex(), &source).await;
    plugin_stop(verdict, core.config.write_plugin.on_failure)
}

/// What a plugin's verdict means for the event: on, or its stop.
fn plugin_stop(verdict: Verdict, on_failure: PluginFailure) -> Result<(), Stop> {
    match verdict {
        Verdict::Accept => Ok(()),
        Verdict::Reject(msg) => Err(Refusal::from_plugin(msg).into()),
        Verdict::ShadowReject(msg) => {
            Err(Stop::Answered { outcome: Outcome::new(OutcomeClass::ShadowRejected, "plugin"), reason: msg.into() })
        }
        Verdict::Failed(_) if on_failure == PluginFailure::Accept => Ok(()),
        Verdict::Failed(_) => {
            let message = "the relay's write policy could not judge this event; try again later";
            Err(Refusal::new(Prefix::Error, "plugin_failed", message).into())
        }
    }
}

/// NIP-09 lets a relay refuse a deletion request that names someone else's address, or an
/// event stored under another author. Such an event can be on any core's shard.
async fn names_another_authors_event(core: &Rc<Core>, event: &VerifiedEvent) -> bool {
    let Some(ids) = deletion_targets(event) else { return true };
    if ids.is_empty() {
        return false;
    }
    let count = ids.len();
    let any_author = Filter { ids: Some(ids), limit: Some(count as u64), ..Filter::default() };
    let own = Filter { authors: Some(vec![*event.pubkey()]), ..any_author.clone() };
    let filters: Arc<[Filter]> = Arc::from([any_author, own]);
    let limits = QueryLimits { default: count, max: count, now: crate::now_unix(), bytes_max: usize::MAX };
    // Ownership is judged over every stored event, private kinds included.
    let found = super::gather::hits_everywhere(core.scatter(), filters, limits, Privacy::default()).await;
    found[0].len() > found[1].len()
}

/// The event ids a deletion request names (`e` tags, sorted, once each), to be looked up;
/// `None` when an `a` tag names another author's address, refused without a lookup.
fn deletion_targets(event: &VerifiedEvent) -> Option<Vec<EventId>> {
    let author = event.pubkey();
    let mut ids = Vec::new();
    for tag in event.index_tags() {
        match tag.letter {
            b'a' if parse_address(&tag.value).is_some_and(|address| address.pubkey != author.0) => return None,
            b'e' => ids.extend(crate::hex::decode_lower::<32>(&tag.value).map(EventId)),
            _ => {}
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Some(ids)
}

/// Send an event whose OK is owed to where it is stored: broadcast if ephemeral, else to
/// the owner of its author's shard, waiting while that core's channel is full.
async fn route(core: &Rc<Core>, reply: Reply, judged: Judged) {
    let Judged { event, shard } = judged;
    match destination(event.class(), core.storage.owner_core(shard), core.id()) {
        Destination::Everyone => {
            broadcast(core, Arc::new(LiveEvent::from_event(&event))).await;
            deliver_ok(core, &reply, Outcome::EPHEMERAL, "");
        }
        Destination::Here => append_owned(core, Routed { event, shard }, reply),
        Destination::Core(owner) => {
            let routed = Box::new(Routed { event, shard });
            core.mesh.send(owner, CoreMsg::Append { routed, reply }).await;
        }
    }
}

/// Where a judged event goes.
#[derive(Debug, PartialEq, Eq)]
enum Destination {
    /// An ephemeral event: to every core's subscribers, stored nowhere.
    Everyone,
    /// Its shard is this core's.
    Here,
    Core(CoreId),
}

fn destination(class: KindClass, owner: CoreId, here: CoreId) -> Destination {
    match class {
        KindClass::Ephemeral => Destination::Everyone,
        _ if owner == here => Destination::Here,
        _ => Destination::Core(owner),
    }
}

/// On the owner core: append, and the shard's [`AckPipeline`] answers once the append is
/// durable. Never waits: it also runs for other cores' `Append` messages.
pub fn append_owned(core: &Rc<Core>, routed: Routed, reply: Reply) {
    match append(&core.storage, routed, reply) {
        Ok((pending, pipeline)) => pipeline.push(pending),
        Err((reply, stop)) => deliver_stop(core, &reply, &stop),
    }
}

/// The last step: the storage rules and the append, as the `Pending` the shard's pipeline
/// answers once it is durable (with its pipeline), or the stop and the reply it is owed to.
pub fn append(storage: &Storage, routed: Routed, reply: Reply) -> Result<(Pending, Rc<AckPipeline>), (Reply, Stop)> {
    let Routed { event, shard } = routed;
    let Some((admission, pipeline)) = storage.append(shard, &event, crate::now_unix()) else {
        let refusal = Refusal::new(Prefix::Error, "shutting_down", "the relay is shutting down");
        return Err((reply, refusal.into()));
    };
    let pending = match admission {
        Ok(Admission::Stored(durable)) => {
            let no = storage.with_shard(shard, |state| state.index.lookup_id(&event.id().0)).flatten();
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
        Ok(Admission::Rejected(rejection)) => return Err((reply, Refusal::rejected(rejection).into())),
        Err(error) => {
            if let Some(held_back) = storage.errors.admit() {
                tracing::warn!(%shard, %error, held_back, "event refused: storage refuses writes");
            }
            return Err((reply, Refusal::storage(&error).into()));
        }
    };
    Ok((pending, pipeline))
}

/// Send a stop's `OK` to its connection.
pub fn deliver_stop(core: &Core, reply: &Reply, stop: &Stop) {
    match stop {
        Stop::Refused(refusal) => deliver_refusal(core, reply, refusal),
        Stop::Answered { outcome, reason } => deliver_ok(core, reply, *outcome, reason),
    }
}

/// Send a refusal's `OK false` to its connection (after the challenge it wants, when the
/// connection is here). Never waits.
pub fn deliver_refusal(core: &Core, reply: &Reply, refusal: &Refusal) {
    if refusal.wants_challenge() && reply.core == core.id() {
        core.sessions.send_challenge(reply.conn);
    }
    deliver_ok(core, reply, refusal.outcome(), &refusal.reason());
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
            Ok(()) if pending.duplicate => deliver_ok(&core, &pending.reply, Outcome::DUPLICATE, DUPLICATE),
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
                deliver_refusal(&core, &pending.reply, &Refusal::storage_failing());
            }
        }
        pipeline.finished();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::RelayAddress;
    use crate::config::WriteMode;
    use crate::event::testing::{keypair, signed};
    use crate::event::{parse_event, Pubkey};
    use crate::server::peer::tests::FakePeer;
    use crate::server::stages::Verified;

    fn parsed(kind: u16, created_at: u64, tags: serde_json::Value) -> ParsedEvent {
        let json = signed(1, kind, created_at, &tags, "hello");
        parse_event(json.as_bytes(), &Config::default().limits.event_limits()).unwrap()
    }

    fn judged(peer: &FakePeer, config: &Config, event: &ParsedEvent, wrap_to_vanished: bool) -> Result<(), String> {
        let policy = Policy::new(&config.policy);
        let rules = EventRules { policy: &policy, config, now: crate::now_unix(), wrap_to_vanished };
        before_signature(peer, &rules, event).map_err(|refusal| refusal.reason())
    }

    fn prefix(result: Result<(), String>) -> String {
        result.unwrap_err().split_once(": ").unwrap().0.to_owned()
    }

    #[test]
    fn an_event_within_the_rules_passes_and_each_refusal_has_its_nip01_prefix() {
        let config = Config::default();
        let now = crate::now_unix();
        let note = parsed(1, now, serde_json::json!([]));
        assert_eq!(judged(&FakePeer::default(), &config, &note, false), Ok(()));

        let spent = FakePeer { tokens: Some(0).into(), ..FakePeer::default() };
        assert_eq!(prefix(judged(&spent, &config, &note, false)), "rate-limited");

        let auth = parsed(crate::auth::KIND_AUTH, now, serde_json::json!([]));
        assert_eq!(prefix(judged(&FakePeer::default(), &config, &auth, false)), "invalid");

        let wrap = parsed(KIND_GIFT_WRAP, now, serde_json::json!([["p", "00".repeat(32)]]));
        assert_eq!(prefix(judged(&FakePeer::default(), &config, &wrap, true)), "blocked");
        assert_eq!(judged(&FakePeer::default(), &config, &wrap, false), Ok(()));

        let future = parsed(1, now + 3_600, serde_json::json!([]));
        assert_eq!(prefix(judged(&FakePeer::default(), &config, &future, false)), "invalid");
    }

    #[test]
    fn a_request_to_vanish_must_name_this_relay_and_skips_the_write_policy() {
        let mut config = Config::default();
        config.policy.write = WriteMode::Auth;
        let here = RelayAddress::parse_url("wss://relay.example.com").unwrap();
        let peer = FakePeer { addresses: vec![here], ..FakePeer::default() };
        let now = crate::now_unix();
        let elsewhere = parsed(KIND_VANISH, now, serde_json::json!([["relay", "wss://other.example.com"]]));
        assert_eq!(prefix(judged(&peer, &config, &elsewhere, false)), "invalid");
        let this_one = parsed(KIND_VANISH, now, serde_json::json!([["relay", "wss://relay.example.com"]]));
        assert_eq!(judged(&peer, &config, &this_one, false), Ok(()), "no AUTH needed to vanish");
    }

    #[test]
    fn where_writes_need_auth_an_unauthenticated_event_is_auth_required_and_wants_the_challenge() {
        let mut config = Config::default();
        config.policy.write = WriteMode::Auth;
        let note = parsed(1, crate::now_unix(), serde_json::json!([]));
        let policy = Policy::new(&config.policy);
        let rules = EventRules { policy: &policy, config: &config, now: crate::now_unix(), wrap_to_vanished: false };
        let refusal = before_signature(&FakePeer::default(), &rules, &note).unwrap_err();
        assert_eq!(refusal.prefix, Prefix::AuthRequired);
        assert!(refusal.wants_challenge());
        let author = Pubkey(keypair(1).x_only_public_key().0.serialize());
        let authed = FakePeer { authed: vec![author], ..FakePeer::default() };
        assert_eq!(judged(&authed, &config, &note, false), Ok(()));
    }

    #[test]
    fn a_protected_event_is_taken_only_from_its_authenticated_author() {
        let config = Config::default();
        let protected = parsed(1, crate::now_unix(), serde_json::json!([["-"]]));
        assert_eq!(prefix(judged(&FakePeer::default(), &config, &protected, false)), "auth-required");
        let someone = FakePeer { authed: vec![Pubkey([7; 32])], ..FakePeer::default() };
        assert_eq!(prefix(judged(&someone, &config, &protected, false)), "restricted");
        let author =
            FakePeer { authed: vec![Pubkey(keypair(1).x_only_public_key().0.serialize())], ..FakePeer::default() };
        assert_eq!(judged(&author, &config, &protected, false), Ok(()));
    }

    fn verified(kind: u16, created_at: u64, content: &str) -> VerifiedEvent {
        let json = signed(1, kind, created_at, &serde_json::json!([]), content);
        let parsed = parse_event(json.as_bytes(), &Config::default().limits.event_limits()).unwrap();
        VerifiedEvent::verify(parsed).unwrap()
    }

    /// The signature step: a forged signature stops the event with `invalid:`, counted under
    /// the parse error's label; a good one gives the next stage.
    #[test]
    fn the_signature_step_refuses_a_forged_signature_as_invalid() {
        let json = signed(1, 1, crate::now_unix(), &serde_json::json!([]), "hello");
        let sig_at = json.find("\"sig\":\"").unwrap() + 7;
        let forged = format!("{}{}{}", &json[..sig_at], "0".repeat(128), &json[sig_at + 128..]);
        let limits = Config::default().limits.event_limits();
        let check = |json: &str| {
            let parsed = parse_event(json.as_bytes(), &limits).unwrap();
            let shard = crate::store::ShardId(0);
            VerifiedEvent::verify(parsed).map(|event| Verified { event, shard }).map_err(Stop::from)
        };
        let stop = check(&forged).err().unwrap();
        assert_eq!(stop.reason(), "invalid: signature is invalid");
        assert_eq!(stop.outcome(), Outcome::new(OutcomeClass::Invalid, "bad_signature"));
        assert!(!stop.outcome().accepted() && !stop.wants_challenge());
        assert!(check(&json).is_ok());
    }

    /// The last step, on a real shard in a scratch directory: a new event is appended (its
    /// OK waits for its fsync, then it is broadcast), a copy waits behind its original and is
    /// not broadcast, an older version of a replaceable event is refused `duplicate:`, and a
    /// deletion's target is refused `blocked:` afterwards.
    #[test]
    fn the_append_step_stores_queues_copies_and_applies_the_storage_rules() {
        use crate::server::ids::CoreId;
        use crate::store::{DataDir, OpenMode, Shard, ShardConfig, ShardId, ShardState};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let labels = crate::tools::run_local("ingest-append-test", move || {
            Box::pin(async move {
                let data = DataDir::open_or_create(&path, 1).unwrap();
                let config = ShardConfig::new(crate::limits::SEGMENT_SIZE_MIN, None);
                let state = ShardState::open(&data.shard_dir(ShardId(0)), ShardId(0), config, OpenMode::ReadWrite);
                let shards = std::collections::HashMap::from([(ShardId(0), Shard::start(state.unwrap()))]);
                let storage = Storage::new(CoreId(0), 1, data.router(), shards);
                let reply = |event: &VerifiedEvent| Reply {
                    core: CoreId(0),
                    conn: crate::subs::ConnId(1),
                    event_id: *event.id(),
                    received: std::time::Instant::now(),
                };
                let step = |event: VerifiedEvent| {
                    let reply = reply(&event);
                    append(&storage, Routed { event, shard: ShardId(0) }, reply).map(|(pending, _)| pending)
                };
                let now = crate::now_unix();
                let mut labels = Vec::new();

                let profile = verified(0, now, "v2");
                let stored = step(profile.clone()).ok().unwrap();
                assert!(!stored.duplicate && stored.live.is_some() && stored.no == Some(0));
                stored.durable.unwrap().await.unwrap();
                let copy = step(profile.clone()).ok().unwrap();
                assert!(copy.duplicate && copy.live.is_none(), "a copy is answered, not broadcast");
                // Once the original's OK is out, the first step answers a copy itself.
                let config = Config::default();
                let policy = Policy::new(&config.policy);
                let rules = EventRules { policy: &policy, config: &config, now, wrap_to_vanished: false };
                let again = || parse_event(profile.json().as_bytes(), &config.limits.event_limits()).unwrap();
                assert!(admit(&FakePeer::default(), &rules, &storage, again()).is_ok(), "not yet acknowledged");
                storage.ack_pipeline(ShardId(0)).acknowledged(0);
                let stop = admit(&FakePeer::default(), &rules, &storage, again()).err().unwrap();
                assert_eq!(stop, Stop::Answered { outcome: Outcome::DUPLICATE, reason: DUPLICATE.into() });
                assert!(stop.outcome().accepted());

                let older = step(verified(0, now - 10, "v1")).err().unwrap().1;
                labels.push((older.reason().split_once(':').unwrap().0.to_owned(), older.outcome().reason));

                let note = verified(1, now, "hello");
                step(note.clone()).ok().unwrap().durable.unwrap().await.unwrap();
                let tags = serde_json::json!([["e", note.id().to_hex()]]);
                let deletion = signed(1, KIND_DELETION, now, &tags, "");
                let limits = Config::default().limits.event_limits();
                let deletion = VerifiedEvent::verify(parse_event(deletion.as_bytes(), &limits).unwrap()).unwrap();
                step(deletion).ok().unwrap().durable.unwrap().await.unwrap();
                let again = step(note).err().unwrap().1;
                labels.push((again.reason().split_once(':').unwrap().0.to_owned(), again.outcome().reason));
                storage.close().await;
                labels
            })
        })
        .unwrap();
        assert_eq!(labels, vec![("duplicate".to_owned(), "superseded"), ("blocked".to_owned(), "deleted")]);
    }

    /// The judging step's own part of NIP-09: an `a` tag naming another author's address is
    /// refused outright; `e` tags are looked up once each.
    #[test]
    fn a_deletion_naming_another_authors_address_is_refused_before_any_lookup() {
        let own = keypair(1).x_only_public_key().0.serialize();
        let deletion = |tags: serde_json::Value| {
            let json = signed(1, KIND_DELETION, crate::now_unix(), &tags, "");
            VerifiedEvent::verify(parse_event(json.as_bytes(), &Config::default().limits.event_limits()).unwrap())
                .unwrap()
        };
        let other = format!("30023:{}:post", "ab".repeat(32));
        assert_eq!(deletion_targets(&deletion(serde_json::json!([["a", other]]))), None);
        let mine = format!("30023:{}:post", crate::hex::encode(&own));
        let (x, y) = ("11".repeat(32), "22".repeat(32));
        let targets = deletion_targets(&deletion(serde_json::json!([["a", mine], ["e", y], ["e", x], ["e", y]])));
        assert_eq!(targets, Some(vec![EventId([0x11; 32]), EventId([0x22; 32])]));
        assert_eq!(deletion_targets(&deletion(serde_json::json!([]))), Some(vec![]));
    }

    /// The routing step: an ephemeral event goes to every core's subscribers, another to
    /// its shard's owner, here or through the mesh.
    #[test]
    fn the_routing_step_sends_ephemeral_events_everywhere_and_others_to_their_shards_owner() {
        let (here, other) = (CoreId(0), CoreId(1));
        assert_eq!(destination(KindClass::Ephemeral, other, here), Destination::Everyone);
        assert_eq!(destination(KindClass::Regular, here, here), Destination::Here);
        assert_eq!(destination(KindClass::Replaceable, other, here), Destination::Core(other));
        assert_eq!(destination(KindClass::Addressable, other, here), Destination::Core(other));
    }

    /// The judging step's plugin part: each verdict's `OK`.
    #[test]
    fn a_plugins_verdict_lets_the_event_on_or_stops_it_with_its_ok() {
        assert_eq!(plugin_stop(Verdict::Accept, PluginFailure::Reject), Ok(()));
        let rejected = plugin_stop(Verdict::Reject("spam: no".into()), PluginFailure::Reject).unwrap_err();
        assert_eq!(
            (rejected.reason().into_owned(), rejected.outcome().accepted()),
            ("blocked: spam: no".into(), false)
        );
        let pow = plugin_stop(Verdict::Reject("pow: 20 bits".into()), PluginFailure::Reject).unwrap_err();
        assert_eq!(pow.reason(), "pow: 20 bits");
        let shadow = plugin_stop(Verdict::ShadowReject("".into()), PluginFailure::Reject).unwrap_err();
        assert!(shadow.outcome().accepted(), "a shadow reject answers OK true");
        let failed = || Verdict::Failed("timeout");
        assert_eq!(plugin_stop(failed(), PluginFailure::Accept), Ok(()));
        let refused = plugin_stop(failed(), PluginFailure::Reject).unwrap_err();
        assert_eq!(refused.outcome(), Outcome::new(OutcomeClass::Error, "plugin_failed"));
    }

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

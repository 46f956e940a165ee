//! One module per client verb, each in two parts: a sans-IO `decide`, which reads what it
//! needs of the connection through [`Peer`] and the config and returns [`Effect`]s, and the
//! shell here ([`apply`]) with the verb's `start` functions, which carry the effects out on
//! the core's subsystems. The decisions are unit-tested over a plain [`Peer`]; the shell is
//! tested end to end.

pub mod auth;
pub mod close;
pub mod count;
pub mod event;
pub mod neg;
pub mod req;

use std::rc::Rc;

use super::core::Core;
pub use super::peer::Peer;
use super::rates::Work;
use super::stats::{AuthResult, Outcome, OutcomeClass, Verb};
use crate::auth::RelayAddress;
use crate::event::Pubkey;
use crate::filter::Filter;
use crate::proto::{self, ClientMessage, MessageLimits, Refusal, SubId};
use crate::subs::ConnId;

/// What a verb asks the shell to do, in order.
#[derive(Debug, PartialEq)]
pub enum Effect {
    /// Queue this frame to the connection.
    Reply(String),
    /// Send the connection its NIP-42 challenge, unless it has one already.
    Challenge,
    /// Open (or replace) the subscription, then answer it: stored events, EOSE, live ones.
    Subscribe { sub: SubId, filters: Vec<Filter> },
    /// Close the subscription and cancel its query.
    Unsubscribe(SubId),
    /// Count the filters' events over every core, and answer with the total.
    Count { sub: SubId, filters: Vec<Filter> },
    /// The connection proved it holds this pubkey (NIP-42).
    Authenticated(Pubkey),
    /// An AUTH answered, for the metrics.
    AuthAnswered(AuthResult),
    /// Open (or replace) a NIP-77 sync: gather the filter's set and answer the message.
    NegOpen { sub: SubId, filters: Vec<Filter>, message: Vec<u8> },
    /// Answer a message of an open sync.
    NegMsg { sub: SubId, message: Vec<u8> },
    /// Close a sync.
    NegClose(SubId),
}

/// A connection of this core, as its verbs see it.
pub struct Conn<'a> {
    pub core: &'a Core,
    pub conn: ConnId,
}

impl Peer for Conn<'_> {
    fn over_rate(&self, work: Work) -> bool {
        self.core.over_rate(self.conn, work)
    }

    fn authed(&self) -> Vec<Pubkey> {
        self.core.sessions.with(self.conn, |session| session.auth.pubkeys.clone()).unwrap_or_default()
    }

    fn is_fleet(&self) -> bool {
        self.core.gate.is_peer(self.authed().iter().map(|key| &key.0))
    }

    fn challenge(&self) -> Option<String> {
        self.core.sessions.with(self.conn, |session| session.auth.challenge.clone()).flatten()
    }

    fn addresses(&self) -> Vec<RelayAddress> {
        self.core.addresses_for(self.conn)
    }

    fn subscriptions(&self, sub: &SubId) -> (usize, bool) {
        self.core
            .sessions
            .with(self.conn, |session| (session.subs.len(), session.subs.contains_key(sub)))
            .unwrap_or((0, false))
    }
}

/// Handle one text message; `false` when nothing will be sent back for it (CLOSE).
pub async fn handle_text(core: &Rc<Core>, conn: ConnId, text: &str) -> bool {
    let limits = MessageLimits { filter_count_max: core.config.limits.filters_per_req_max };
    let message = match proto::parse_client_message(text, &limits) {
        Ok(message) => message,
        Err(Refusal::Notice(reason)) => {
            core.stats.message(Verb::Invalid);
            // An EVENT that is not JSON still gets its OK when its id can be read.
            let frame = match proto::event_id_in_unparsed(text) {
                Some(id) => {
                    let outcome = Outcome::new(OutcomeClass::Invalid, "malformed_json");
                    core.stats.answered(outcome, std::time::Instant::now());
                    proto::frame_ok(id, false, &reason)
                }
                None => proto::frame_notice(&reason),
            };
            core.sessions.send(conn, frame);
            return true;
        }
        Err(Refusal::Closed { sub_id, reason }) => {
            core.stats.message(Verb::Invalid);
            core.sessions.send(conn, proto::frame_closed(&sub_id, &reason));
            return true;
        }
        Err(Refusal::NegErr { sub_id, reason }) => {
            core.stats.message(Verb::Invalid);
            core.sessions.send(conn, proto::frame_neg_err(&sub_id, &reason));
            return true;
        }
    };
    core.stats.message(match &message {
        ClientMessage::Event(_) => Verb::Event,
        ClientMessage::Req { .. } => Verb::Req,
        ClientMessage::Count { .. } => Verb::Count,
        ClientMessage::Close { .. } => Verb::Close,
        ClientMessage::Auth(_) => Verb::Auth,
        ClientMessage::NegOpen { .. } | ClientMessage::NegMsg { .. } | ClientMessage::NegClose { .. } => Verb::Neg,
    });
    let peer = Conn { core, conn };
    let effects = match message {
        // Boxed: an EVENT may wait for room on the mesh, and that state would otherwise be
        // part of every connection's future for its whole life.
        ClientMessage::Event(raw) => {
            Box::pin(event::handle(core, conn, raw)).await;
            return true;
        }
        ClientMessage::Req { sub_id, filters } => req::decide(&peer, &core.config, sub_id, filters),
        ClientMessage::Count { sub_id, filters } => count::decide(&peer, &core.config, sub_id, filters),
        ClientMessage::Close { sub_id } => close::decide(sub_id),
        ClientMessage::Auth(raw) => auth::decide(&peer, &core.config, raw, |parsed| core.gate.verify(parsed)),
        ClientMessage::NegOpen { sub_id, filters, message } => {
            neg::decide_open(&peer, &core.config, sub_id, filters, &message)
        }
        ClientMessage::NegMsg { sub_id, message } => neg::decide_msg(&core.config, sub_id, &message),
        ClientMessage::NegClose { sub_id } => vec![Effect::NegClose(sub_id)],
    };
    let answered = !matches!(effects[..], [Effect::Unsubscribe(_)]);
    apply(core, conn, effects);
    answered
}

/// Carry out a verb's effects on the core's subsystems.
pub fn apply(core: &Rc<Core>, conn: ConnId, effects: Vec<Effect>) {
    for effect in effects {
        match effect {
            Effect::Reply(frame) => core.sessions.send(conn, frame),
            Effect::Challenge => core.sessions.send_challenge(conn),
            Effect::Subscribe { sub, filters } => req::start(core, conn, sub, filters),
            Effect::Unsubscribe(sub) => core.sessions.unsubscribe(conn, &sub),
            Effect::Count { sub, filters } => count::start(core, conn, sub, filters),
            Effect::Authenticated(pubkey) => {
                let peer = core.gate.is_peer(std::iter::once(&pubkey.0));
                core.sessions.with(conn, |session| {
                    session.auth.pubkeys.push(pubkey);
                    if peer {
                        session.outbound.set_capacity_size(core.config.peering.outbound_bytes_max);
                    }
                });
            }
            Effect::AuthAnswered(result) => core.stats.auth.inc(result),
            Effect::NegOpen { sub, filters, message } => neg::start(core, conn, sub, filters, message),
            Effect::NegMsg { sub, message } => neg::answer(core, conn, &sub, message),
            Effect::NegClose(sub) => neg::close(core, conn, &sub),
        }
    }
}

/// Why a REQ or COUNT is refused: over the connection's query rate, or, with
/// `policy.read = "auth"`, not authenticated (its challenge goes out first).
pub fn read_refusal(peer: &impl Peer, config: &crate::config::Config, sub: &SubId) -> Option<Vec<Effect>> {
    read_refusal_as(peer, config, |reason| proto::frame_closed(sub, reason))
}

/// [`read_refusal`], answered with the frame `answer` makes of the reason (a NIP-77 sync's
/// is a `NEG-ERR`).
pub fn read_refusal_as(
    peer: &impl Peer,
    config: &crate::config::Config,
    answer: impl Fn(&str) -> String,
) -> Option<Vec<Effect>> {
    if peer.over_rate(Work::Query) {
        let reason = "rate-limited: too many REQs and COUNTs from this client; slow down";
        return Some(vec![Effect::Reply(answer(reason))]);
    }
    if config.policy.read != crate::config::ReadMode::Auth || !peer.authed().is_empty() {
        return None;
    }
    let reason = "auth-required: this relay serves authenticated clients only";
    Some(vec![Effect::Challenge, Effect::Reply(answer(reason))])
}

/// Helpers for the verbs' unit tests.
#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn sub(name: &str) -> SubId {
        SubId::new(name).unwrap()
    }

    /// The one frame among `effects`, as JSON.
    pub fn reply(effects: &[Effect]) -> serde_json::Value {
        let frames: Vec<&String> = effects
            .iter()
            .filter_map(|effect| if let Effect::Reply(frame) = effect { Some(frame) } else { None })
            .collect();
        assert_eq!(frames.len(), 1, "{effects:?}");
        serde_json::from_str(frames[0]).unwrap()
    }
}

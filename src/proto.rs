//! NIP-01 messages on the wire, sans-IO: parse what a client sends (bounded, never
//! panics) and frame what the relay sends. Stored event JSON is framed as is, never
//! re-serialized.

use std::borrow::Cow;
use std::fmt;
use std::rc::Rc;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::event::json;
use crate::filter::Filter;

/// Most characters in a subscription id (NIP-01).
pub const SUB_ID_CHAR_COUNT_MAX: usize = 64;

/// A subscription id as the client sent it: 1 to 64 characters. Shared, not copied, by every
/// live event queued for the subscription.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubId(Rc<str>);

impl SubId {
    pub fn new(text: &str) -> Option<SubId> {
        let count = text.chars().count();
        (1..=SUB_ID_CHAR_COUNT_MAX).contains(&count).then(|| SubId(text.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The bounds a client message is parsed under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageLimits {
    /// Most filters in one REQ or COUNT.
    pub filter_count_max: usize,
}

impl Default for MessageLimits {
    fn default() -> Self {
        MessageLimits { filter_count_max: 10 }
    }
}

/// A client message; `Event` and `Auth` keep the event object unparsed for the event core.
#[derive(Debug)]
pub enum ClientMessage<'a> {
    Event(&'a RawValue),
    Req {
        sub_id: SubId,
        filters: Vec<Filter>,
    },
    Count {
        sub_id: SubId,
        filters: Vec<Filter>,
    },
    Close {
        sub_id: SubId,
    },
    Auth(&'a RawValue),
    /// NIP-77: a sync of one filter's set, with the client's first negentropy message (hex).
    /// An array of filters (NDK's sync sends one) is taken as their union.
    NegOpen {
        sub_id: SubId,
        filters: Vec<Filter>,
        message: Cow<'a, str>,
    },
    NegMsg {
        sub_id: SubId,
        message: Cow<'a, str>,
    },
    NegClose {
        sub_id: SubId,
    },
}

/// How to answer a message that cannot be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `["NOTICE", reason]`: the message as a whole is malformed.
    Notice(String),
    /// `["CLOSED", sub_id, reason]`: a REQ or COUNT that is well-formed enough to name its id.
    Closed { sub_id: SubId, reason: String },
    /// `["NEG-ERR", sub_id, reason]`: a NEG-OPEN or NEG-MSG that names its id (NIP-77).
    NegErr { sub_id: SubId, reason: String },
}

/// Parse one text frame from a client.
pub fn parse_client_message<'a>(text: &'a str, limits: &MessageLimits) -> Result<ClientMessage<'a>, Refusal> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let outcome = deserializer.deserialize_seq(MessageVisitor { limits });
    let message = match outcome {
        Ok(Ok(message)) => message,
        Ok(Err(refusal)) => return Err(refusal),
        Err(error) => return Err(Refusal::Notice(format!("invalid: malformed message: {error}"))),
    };
    deserializer.end().map_err(|error| Refusal::Notice(format!("invalid: malformed message: {error}")))?;
    Ok(message)
}

struct MessageVisitor<'l> {
    limits: &'l MessageLimits,
}

impl<'de> Visitor<'de> for MessageVisitor<'_> {
    type Value = Result<ClientMessage<'de>, Refusal>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a json array whose first element is the message type")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let message = self.message(&mut seq)?;
        // Whatever was refused early, the frame is still read to its end.
        let mut extra = false;
        while seq.next_element::<de::IgnoredAny>()?.is_some() {
            extra = true;
        }
        Ok(match message {
            Ok(_) if extra => Err(Refusal::Notice("invalid: unexpected extra elements in message".to_owned())),
            other => other,
        })
    }
}

impl MessageVisitor<'_> {
    fn message<'de, A: SeqAccess<'de>>(&self, seq: &mut A) -> Result<Result<ClientMessage<'de>, Refusal>, A::Error> {
        let notice = |text: &str| Ok(Err(Refusal::Notice(text.to_owned())));
        let Some(verb) = seq.next_element::<&str>()? else { return notice("invalid: empty message") };
        let message = match verb {
            "EVENT" | "AUTH" => {
                let Some(event) = seq.next_element::<&RawValue>()? else {
                    return notice("invalid: EVENT and AUTH need an event object");
                };
                if verb == "EVENT" {
                    ClientMessage::Event(event)
                } else {
                    ClientMessage::Auth(event)
                }
            }
            "REQ" | "COUNT" => {
                let Some(sub_id) = sub_id(seq)? else {
                    return notice("invalid: subscription id must be a string of 1 to 64 characters");
                };
                let filters = match filters(seq, self.limits.filter_count_max)? {
                    Ok(filters) => filters,
                    Err(reason) => return Ok(Err(Refusal::Closed { sub_id, reason })),
                };
                if verb == "REQ" {
                    ClientMessage::Req { sub_id, filters }
                } else {
                    ClientMessage::Count { sub_id, filters }
                }
            }
            "CLOSE" | "NEG-CLOSE" => match sub_id(seq)? {
                Some(sub_id) if verb == "CLOSE" => ClientMessage::Close { sub_id },
                Some(sub_id) => ClientMessage::NegClose { sub_id },
                None => return notice("invalid: subscription id must be a string of 1 to 64 characters"),
            },
            "NEG-OPEN" | "NEG-MSG" => {
                let Some(sub_id) = sub_id(seq)? else {
                    return notice("invalid: subscription id must be a string of 1 to 64 characters");
                };
                let filters = if verb == "NEG-OPEN" {
                    let value = seq.next_element::<serde_json::Value>()?;
                    match neg_filters(value, self.limits.filter_count_max) {
                        Ok(filters) => Some(filters),
                        Err(reason) => return Ok(Err(Refusal::NegErr { sub_id, reason })),
                    }
                } else {
                    None
                };
                let Some(message) = seq.next_element::<Cow<'de, str>>()? else {
                    return Ok(Err(Refusal::NegErr { sub_id, reason: "invalid: no negentropy message".into() }));
                };
                match filters {
                    Some(filters) => ClientMessage::NegOpen { sub_id, filters, message },
                    None => ClientMessage::NegMsg { sub_id, message },
                }
            }
            other => {
                let shown: String = other.chars().take(32).collect();
                return Ok(Err(Refusal::Notice(format!("invalid: unknown message type {shown:?}"))));
            }
        };
        Ok(Ok(message))
    }
}

/// A NEG-OPEN's filter: one object, as NIP-77 has it, or an array of 1 to `count_max`
/// filters (their union).
fn neg_filters(value: Option<serde_json::Value>, count_max: usize) -> Result<Vec<Filter>, String> {
    let parse = |value: &serde_json::Value| Filter::from_json(value).map_err(|error| error.reason());
    match value {
        None => Err("invalid: NEG-OPEN needs a filter".to_owned()),
        Some(serde_json::Value::Array(values)) if (1..=count_max).contains(&values.len()) => {
            values.iter().map(parse).collect()
        }
        Some(serde_json::Value::Array(_)) => Err(format!("invalid: NEG-OPEN takes 1 to {count_max} filters")),
        Some(value) => parse(&value).map(|filter| vec![filter]),
    }
}

fn sub_id<'de, A: SeqAccess<'de>>(seq: &mut A) -> Result<Option<SubId>, A::Error> {
    let Some(value) = seq.next_element::<std::borrow::Cow<'de, str>>()? else { return Ok(None) };
    Ok(SubId::new(&value))
}

/// The filters of a REQ or COUNT, at most `count_max`, at least one.
fn filters<'de, A: SeqAccess<'de>>(seq: &mut A, count_max: usize) -> Result<Result<Vec<Filter>, String>, A::Error> {
    let mut filters = Vec::new();
    while let Some(value) = seq.next_element::<serde_json::Value>()? {
        if filters.len() == count_max {
            return Ok(Err(format!("invalid: more than {count_max} filters")));
        }
        match Filter::from_json(&value) {
            Ok(filter) => filters.push(filter),
            Err(error) => return Ok(Err(error.reason())),
        }
    }
    if filters.is_empty() {
        return Ok(Err("invalid: at least one filter is needed".to_owned()));
    }
    Ok(Ok(filters))
}

/// The `id` an `EVENT` message names when the message as a whole is not JSON (a literal
/// control character in a string, a missing brace): its first `"id"` key followed by 64
/// lowercase hex digits, found without parsing, so the client gets an `OK false` for the
/// event it sent rather than only a NOTICE.
pub fn event_id_in_unparsed(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix('[')?.trim_start().strip_prefix("\"EVENT\"")?;
    let after_key = &rest[rest.find("\"id\"")? + 4..];
    let value = after_key.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    let id = value.get(..64)?;
    let closed = value[64..].starts_with('"');
    (closed && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(id)
}

/// The `id` of an event object that failed to parse, when it has a readable one, so the
/// refusal can be an `OK` rather than a `NOTICE`: 64 hex digits, echoed as sent (an id in
/// uppercase is refused, but with the id the client will look for).
pub fn event_id_hint(event: &RawValue) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
    }
    let IdOnly { id } = serde_json::from_str(event.get()).ok()?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.into_owned())
}

/// `["EVENT",<sub_id>,<event json>]`, the event's JSON copied in as it is.
///
/// Allocated at its exact length: the WebSocket crate turns the frame into `Bytes`, which
/// takes over a buffer as it is only when length equals capacity, and otherwise allocates a
/// shared header for it and frees it with an atomic decrement, once per delivery.
pub fn frame_event(sub_id: &SubId, event_json: &str) -> String {
    let length = "[\"EVENT\",".len() + json::quoted_len(sub_id.as_str()) + 1 + event_json.len() + 1;
    let mut out = String::with_capacity(length);
    out.push_str("[\"EVENT\",");
    json::write_str(&mut out, sub_id.as_str());
    out.push(',');
    out.push_str(event_json);
    out.push(']');
    debug_assert_eq!((out.len(), out.capacity()), (length, length));
    out
}

/// `["EVENT",<sub_id>,`: how [`frame_event`] begins, for a frame whose event part is
/// already compressed (permessage-deflate's shared copy).
pub fn frame_event_head(sub_id: &SubId) -> String {
    let mut out = String::with_capacity("[\"EVENT\",".len() + json::quoted_len(sub_id.as_str()) + 1);
    out.push_str("[\"EVENT\",");
    json::write_str(&mut out, sub_id.as_str());
    out.push(',');
    out
}

/// [`frame_event`] for stored bytes. They were valid UTF-8 when accepted and are checksummed
/// on disk; were they not, the frame is sent with replacement characters rather than the
/// relay stopping.
pub fn frame_stored_event(sub_id: &SubId, event_json: &[u8]) -> String {
    frame_event(sub_id, &String::from_utf8_lossy(event_json))
}

/// `["OK",<event id hex>,<accepted>,<reason>]`, at its exact length like [`frame_event`]:
/// one goes out per event received.
pub fn frame_ok(event_id_hex: &str, accepted: bool, reason: &str) -> String {
    let verdict = if accepted { ",true," } else { ",false," };
    let length = "[\"OK\",".len() + json::quoted_len(event_id_hex) + verdict.len() + json::quoted_len(reason) + 1;
    let mut out = String::with_capacity(length);
    out.push_str("[\"OK\",");
    json::write_str(&mut out, event_id_hex);
    out.push_str(verdict);
    json::write_str(&mut out, reason);
    out.push(']');
    debug_assert_eq!((out.len(), out.capacity()), (length, length));
    out
}

/// `["EOSE",<sub_id>]`.
pub fn frame_eose(sub_id: &SubId) -> String {
    frame_strings(&["EOSE", sub_id.as_str()])
}

/// `["CLOSED",<sub_id>,<reason>]`.
pub fn frame_closed(sub_id: &SubId, reason: &str) -> String {
    frame_strings(&["CLOSED", sub_id.as_str(), reason])
}

/// `["NEG-MSG",<sub_id>,<hex>]` (NIP-77).
pub fn frame_neg_msg(sub_id: &SubId, message: &[u8]) -> String {
    frame_strings(&["NEG-MSG", sub_id.as_str(), &crate::hex::encode(message)])
}

/// `["NEG-ERR",<sub_id>,<reason>]` (NIP-77): the sync is over.
pub fn frame_neg_err(sub_id: &SubId, reason: &str) -> String {
    frame_strings(&["NEG-ERR", sub_id.as_str(), reason])
}

/// `["AUTH", challenge]` (NIP-42).
pub fn frame_auth(challenge: &str) -> String {
    frame_strings(&["AUTH", challenge])
}

pub fn frame_notice(message: &str) -> String {
    frame_strings(&["NOTICE", message])
}

/// `["COUNT",<sub_id>,{"count":<n>}]` (NIP-45), with `"approximate":true` when the count
/// stopped at the relay's limit.
pub fn frame_count(sub_id: &SubId, count: u64, approximate: bool) -> String {
    let mut out = String::from("[\"COUNT\",");
    json::write_str(&mut out, sub_id.as_str());
    let approximate = if approximate { ",\"approximate\":true" } else { "" };
    out.push_str(&format!(",{{\"count\":{count}{approximate}}}]"));
    out
}

fn frame_strings(parts: &[&str]) -> String {
    let mut out = String::from("[");
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        json::write_str(&mut out, part);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClientMessage<'_>, Refusal> {
        parse_client_message(text, &MessageLimits { filter_count_max: 2 })
    }

    fn check_notice(text: &str, expected: &str) {
        match parse(text) {
            Err(Refusal::Notice(reason)) => assert!(reason.starts_with(expected), "{text}: {reason}"),
            other => panic!("{text}: {other:?}"),
        }
    }

    fn check_closed(text: &str, expected_sub: &str, expected: &str) {
        match parse(text) {
            Err(Refusal::Closed { sub_id, reason }) => {
                assert_eq!(sub_id.as_str(), expected_sub);
                assert!(reason.starts_with(expected), "{text}: {reason}");
            }
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn well_formed_messages() {
        assert!(
            matches!(parse(r#"["EVENT",{"id":"x"}]"#), Ok(ClientMessage::Event(raw)) if raw.get() == r#"{"id":"x"}"#)
        );
        match parse(r#"["REQ","sub 1",{"kinds":[1]},{"limit":5}]"#) {
            Ok(ClientMessage::Req { sub_id, filters }) => {
                assert_eq!(sub_id.as_str(), "sub 1");
                assert_eq!(filters.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(r#"["COUNT","c",{}]"#), Ok(ClientMessage::Count { .. })));
        assert!(
            matches!(parse(r#"["CLOSE","sub 1"]"#), Ok(ClientMessage::Close { sub_id }) if sub_id.as_str() == "sub 1")
        );
        assert!(matches!(parse(r#"["AUTH",{}]"#), Ok(ClientMessage::Auth(_))));
        let sixty_four = "é".repeat(64);
        assert!(matches!(parse(&format!(r#"["CLOSE","{sixty_four}"]"#)), Ok(ClientMessage::Close { .. })));
    }

    #[test]
    fn malformed_messages_get_a_notice_or_closed() {
        check_notice("", "invalid: malformed message");
        check_notice("{}", "invalid: malformed message");
        check_notice("[", "invalid: malformed message");
        check_notice("[]", "invalid: empty message");
        check_notice("[1]", "invalid: malformed message");
        check_notice(r#"["HELLO",1,2]"#, "invalid: unknown message type \"HELLO\"");
        check_notice(r#"["EVENT"]"#, "invalid: EVENT and AUTH need an event object");
        check_notice(r#"["REQ",""]"#, "invalid: subscription id");
        check_notice(&format!(r#"["REQ","{}",{{}}]"#, "x".repeat(65)), "invalid: subscription id");
        check_notice(r#"["REQ",5,{}]"#, "invalid: malformed message");
        check_notice(r#"["CLOSE","a","b"]"#, "invalid: unexpected extra elements");
        check_notice(r#"["CLOSE","a"] trailing"#, "invalid: malformed message");
        check_closed(r#"["REQ","s"]"#, "s", "invalid: at least one filter");
        check_closed(r#"["REQ","s",{},{},{}]"#, "s", "invalid: more than 2 filters");
        check_closed(r#"["REQ","s",{"kinds":"x"}]"#, "s", "invalid: filter field `kinds`");
        check_closed(r#"["COUNT","s",{"nope":1},{"more":[1,2]}]"#, "s", "unsupported: filter field `nope`");
        check_closed(r#"["REQ","s",[]]"#, "s", "invalid: filter is not a json object");
    }

    /// NIP-77's messages, and a NEG-ERR for one that names its id but is malformed.
    #[test]
    fn negentropy_messages() {
        match parse(r#"["NEG-OPEN","n1",{"kinds":[1]},"6100"]"#) {
            Ok(ClientMessage::NegOpen { sub_id, filters, message }) => {
                assert_eq!(
                    (sub_id.as_str(), filters[0].kinds.as_deref(), &*message),
                    ("n1", Some(&[1u16][..]), "6100")
                );
            }
            other => panic!("{other:?}"),
        }
        match parse(r#"["NEG-OPEN","n2",[{"kinds":[1]},{"kinds":[7]}],"6100"]"#) {
            Ok(ClientMessage::NegOpen { filters, .. }) => assert_eq!(filters.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(parse(r#"["NEG-MSG","n1","61"]"#), Ok(ClientMessage::NegMsg { message, .. }) if message == "61")
        );
        assert!(
            matches!(parse(r#"["NEG-CLOSE","n1"]"#), Ok(ClientMessage::NegClose { sub_id }) if sub_id.as_str() == "n1")
        );
        for (text, expected) in [
            (r#"["NEG-OPEN","n1"]"#, "invalid: NEG-OPEN needs a filter"),
            (r#"["NEG-OPEN","n1",{"kinds":[1]}]"#, "invalid: no negentropy message"),
            (r#"["NEG-OPEN","n1",{"kinds":"x"},"61"]"#, "invalid: filter field `kinds`"),
            (r#"["NEG-OPEN","n1",[],"61"]"#, "invalid: NEG-OPEN takes 1 to 2 filters"),
            (r#"["NEG-OPEN","n1",[{},{},{}],"61"]"#, "invalid: NEG-OPEN takes 1 to 2 filters"),
            (r#"["NEG-OPEN","n1",[{},1],"61"]"#, "invalid: filter is not a json object"),
            (r#"["NEG-MSG","n1"]"#, "invalid: no negentropy message"),
        ] {
            match parse(text) {
                Err(Refusal::NegErr { sub_id, reason }) => {
                    assert_eq!(sub_id.as_str(), "n1");
                    assert!(reason.starts_with(expected), "{text}: {reason}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        check_notice(r#"["NEG-MSG",7,"61"]"#, "invalid: malformed message");
        assert_eq!(frame_neg_msg(&SubId::new("n").unwrap(), &[0x61, 0xab]), r#"["NEG-MSG","n","61ab"]"#);
        assert_eq!(frame_neg_err(&SubId::new("n").unwrap(), "closed: idle"), r#"["NEG-ERR","n","closed: idle"]"#);
    }

    #[test]
    fn frames() {
        let sub = SubId::new("a\"b").unwrap();
        assert_eq!(frame_event(&sub, r#"{"id":"x"}"#), r#"["EVENT","a\"b",{"id":"x"}]"#);
        assert_eq!(frame_stored_event(&sub, br#"{"id":"x"}"#), r#"["EVENT","a\"b",{"id":"x"}]"#);
        assert_eq!(frame_stored_event(&sub, b"{\"c\":\"\xff\"}"), "[\"EVENT\",\"a\\\"b\",{\"c\":\"\u{fffd}\"}]");
        assert_eq!(frame_ok("ab", true, ""), r#"["OK","ab",true,""]"#);
        assert_eq!(frame_ok("ab", false, "invalid: bad\n"), r#"["OK","ab",false,"invalid: bad\n"]"#);
        assert_eq!(frame_eose(&sub), r#"["EOSE","a\"b"]"#);
        assert_eq!(frame_closed(&sub, "error: slow consumer"), r#"["CLOSED","a\"b","error: slow consumer"]"#);
        assert_eq!(frame_notice("hi"), r#"["NOTICE","hi"]"#);
        assert_eq!(frame_count(&sub, 7, false), r#"["COUNT","a\"b",{"count":7}]"#);
        assert_eq!(frame_count(&sub, 9, true), r#"["COUNT","a\"b",{"count":9,"approximate":true}]"#);
        for frame in [frame_ok("ab", false, "x"), frame_closed(&sub, "y"), frame_count(&sub, 1, false)] {
            serde_json::from_str::<serde_json::Value>(&frame).expect("frames are json");
        }
    }

    #[test]
    fn the_id_of_an_event_message_that_is_not_json() {
        let id = "ab".repeat(32);
        let text = format!("[\"EVENT\", {{\"id\" : \"{id}\",\"content\":\"a\u{1}b\"}}]");
        assert!(parse(&text).is_err(), "a literal control character is not JSON");
        assert_eq!(event_id_in_unparsed(&text), Some(id.as_str()));
        assert_eq!(event_id_in_unparsed(&format!("[\"REQ\",{{\"id\":\"{id}\"}}]")), None);
        assert_eq!(event_id_in_unparsed(&format!("[\"EVENT\",{{\"id\":\"{}\"}}]", "AB".repeat(32))), None);
        assert_eq!(event_id_in_unparsed(&format!("[\"EVENT\",{{\"id\":\"{id}0\"}}]")), None);
        assert_eq!(event_id_in_unparsed("[\"EVENT\",{\"id\":\"ab\"}]"), None);
        assert_eq!(event_id_in_unparsed("[\"EVENT\",{\"id\":"), None);
        assert_eq!(event_id_in_unparsed("[\"EVENT\",{\"id\":\"é"), None);
    }

    #[test]
    fn id_hint() {
        let id = "ab".repeat(32);
        let raw: Box<RawValue> = serde_json::from_str(&format!(r#"{{"id":"{id}","kind":"bad"}}"#)).unwrap();
        assert_eq!(event_id_hint(&raw), Some(id));
        let upper = "AB".repeat(32);
        let raw: Box<RawValue> = serde_json::from_str(&format!(r#"{{"id":"{upper}"}}"#)).unwrap();
        assert_eq!(event_id_hint(&raw), Some(upper));
        let raw: Box<RawValue> = serde_json::from_str(r#"{"id":"short"}"#).unwrap();
        assert_eq!(event_id_hint(&raw), None);
        let not_hex = "zz".repeat(32);
        let raw: Box<RawValue> = serde_json::from_str(&format!(r#"{{"id":"{not_hex}"}}"#)).unwrap();
        assert_eq!(event_id_hint(&raw), None);
    }
}

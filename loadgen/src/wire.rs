//! Relay → client messages, read cheaply: a fan-out run can bring hundreds of thousands of
//! EVENT frames per second, and for those only the subscription and the event id matter.

use std::borrow::Cow;

use async_tungstenite::tungstenite::Utf8Bytes;
use serde::Deserialize;

use crate::workload::decode_id;

#[derive(Debug, PartialEq)]
pub enum Reply<'a> {
    /// `["EVENT", sub, event]`; `event` is the raw JSON object.
    Event {
        sub: Cow<'a, str>,
        id: [u8; 32],
        event: &'a str,
    },
    Ok {
        id: [u8; 32],
        accepted: bool,
        reason: String,
    },
    Eose {
        sub: String,
    },
    Closed {
        sub: String,
        reason: String,
    },
    Notice(String),
    /// Anything else a relay may say (AUTH, COUNT, unknown verbs); not an error.
    Other,
}

/// Why a message could not be read.
#[derive(Debug, PartialEq)]
pub struct Unreadable;

pub fn parse(text: &str) -> Result<Reply<'_>, Unreadable> {
    if let Some(reply) = fast_event(text) {
        return Ok(reply);
    }
    let value: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|_| Unreadable)?;
    let string = |i: usize| value.get(i).and_then(|v| v.as_str());
    match string(0) {
        Some("EVENT") => {
            // Unusual spacing or key order: find the event again by parsing it.
            let sub = string(1).ok_or(Unreadable)?.to_owned();
            let id = value.get(2).and_then(|e| e.get("id")).and_then(|id| id.as_str()).ok_or(Unreadable)?;
            let id = decode_id(id.as_bytes()).ok_or(Unreadable)?;
            let event = locate_object(text).ok_or(Unreadable)?;
            Ok(Reply::Event { sub: Cow::Owned(sub), id, event })
        }
        Some("OK") => {
            let id = decode_id(string(1).ok_or(Unreadable)?.as_bytes()).ok_or(Unreadable)?;
            let accepted = value.get(2).and_then(|v| v.as_bool()).ok_or(Unreadable)?;
            Ok(Reply::Ok { id, accepted, reason: string(3).unwrap_or("").to_owned() })
        }
        Some("EOSE") => Ok(Reply::Eose { sub: string(1).ok_or(Unreadable)?.to_owned() }),
        Some("CLOSED") => Ok(Reply::Closed {
            sub: string(1).ok_or(Unreadable)?.to_owned(),
            reason: string(2).unwrap_or("").to_owned(),
        }),
        Some("NOTICE") => Ok(Reply::Notice(string(1).unwrap_or("").to_owned())),
        Some(_) => Ok(Reply::Other),
        None => Err(Unreadable),
    }
}

/// `["EVENT","sub",{..."id":"<64 hex>"...}]` as relays write it, without a full parse.
/// Inside JSON strings every `"` is escaped, so an unescaped `"id":"` can only be the key of
/// the event object (tags are arrays of strings and hold no keys).
fn fast_event(text: &str) -> Option<Reply<'_>> {
    let rest = text.strip_prefix("[\"EVENT\",\"")?;
    let sub_end = memchr::memchr2(b'"', b'\\', rest.as_bytes())?;
    if rest.as_bytes()[sub_end] != b'"' {
        return None;
    }
    let sub = &rest[..sub_end];
    let event = rest[sub_end + 1..].strip_prefix(',')?.strip_suffix(']')?;
    if !event.starts_with('{') || !event.ends_with('}') {
        return None;
    }
    let key = memchr::memmem::find(event.as_bytes(), b"\"id\":\"")?;
    let start = key + 6;
    let id = decode_id(event.as_bytes().get(start..start + 64)?)?;
    if event.as_bytes().get(start + 64) != Some(&b'"') {
        return None;
    }
    Some(Reply::Event { sub: Cow::Borrowed(sub), id, event })
}

/// The first `{` to the last `}` of a message: the event object of an EVENT frame.
fn locate_object(text: &str) -> Option<&str> {
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    (start < end).then(|| &text[start..=end])
}

/// The fields of a stored event that query checks look at.
#[derive(Debug, Deserialize)]
pub struct EventFields<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(borrow)]
    pub pubkey: Cow<'a, str>,
    pub created_at: u64,
    pub kind: u64,
    #[serde(borrow)]
    pub tags: Vec<Vec<Cow<'a, str>>>,
}

pub fn event_fields(event: &str) -> Option<EventFields<'_>> {
    serde_json::from_str(event).ok()
}

/// The machine-readable prefix of an OK or CLOSED reason (`"duplicate: already have it"` →
/// `duplicate`), from NIP-01's list; anything else is `other`.
pub fn reason_prefix(reason: &str) -> &'static str {
    const KNOWN: &[&str] =
        &["duplicate", "pow", "blocked", "rate-limited", "invalid", "restricted", "mute", "error", "auth-required"];
    let prefix = reason.split(':').next().unwrap_or("").trim();
    KNOWN.iter().find(|known| **known == prefix).copied().unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4376c65d2f232afbe9b882a35baa4f6fe8667c4e684749af565f981833ed6a65";

    #[test]
    fn event_frames_are_read_fast_and_slow_alike() {
        let fast = format!(r#"["EVENT","s1",{{"id":"{ID}","pubkey":"ab","content":"say \"id\":\"x\""}}]"#);
        let slow = format!(r#"[ "EVENT", "s1", {{"content":"x","id" : "{ID}"}} ]"#);
        for text in [&fast, &slow] {
            match parse(text).unwrap() {
                Reply::Event { sub, id, event } => {
                    assert_eq!(sub, "s1");
                    assert_eq!(super::super::workload::hex(&id), ID);
                    assert!(event.starts_with('{') && event.ends_with('}'));
                }
                other => panic!("{other:?}"),
            }
        }
        // Content that merely mentions an id key does not fool the fast path.
        let tricky = format!(r#"["EVENT","s",{{"content":"\"id\":\"{ID}\"","id":"{}"}}]"#, "0".repeat(64));
        match parse(&tricky).unwrap() {
            Reply::Event { id, .. } => assert_eq!(id, [0; 32]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_replies_are_read() {
        assert_eq!(
            parse(&format!(r#"["OK","{ID}",false,"rate-limited: slow down"]"#)).unwrap(),
            Reply::Ok {
                id: decode_id(ID.as_bytes()).unwrap(),
                accepted: false,
                reason: "rate-limited: slow down".into()
            }
        );
        assert_eq!(parse(r#"["EOSE","q1"]"#).unwrap(), Reply::Eose { sub: "q1".into() });
        assert_eq!(
            parse(r#"["CLOSED","q1","error: shutting down"]"#).unwrap(),
            Reply::Closed { sub: "q1".into(), reason: "error: shutting down".into() }
        );
        assert_eq!(parse(r#"["NOTICE","hi"]"#).unwrap(), Reply::Notice("hi".into()));
        assert_eq!(parse(r#"["AUTH","challenge"]"#).unwrap(), Reply::Other);
        assert_eq!(parse("not json"), Err(Unreadable));
        assert_eq!(parse(r#"["OK","short",true,""]"#), Err(Unreadable));
        assert_eq!(reason_prefix("rate-limited: slow down"), "rate-limited");
        assert_eq!(reason_prefix("whatever"), "other");
    }
}

/// A connection's reader of permessage-deflate frames (RFC 7692): its window is kept across
/// messages, which reads a relay that keeps a context per connection as well as one that
/// compresses each message on its own. Counts the bytes as they came.
#[derive(Default)]
pub struct Inflater {
    inflate: Option<flate2::Decompress>,
    /// Payload bytes of the last message as it came (compressed or not).
    pub wire_size: usize,
}

impl Inflater {
    /// The text of a data message, inflated if it came compressed; `None` for another kind
    /// of message. A compressed message that does not inflate reads as empty (unreadable).
    pub fn text(&mut self, message: async_tungstenite::tungstenite::Message) -> Option<Utf8Bytes> {
        use async_tungstenite::tungstenite::Message;
        match message {
            Message::Text(text) => {
                self.wire_size = text.len();
                Some(text)
            }
            Message::Frame(frame) if frame.header().rsv1 => {
                self.wire_size = frame.payload().len();
                let inflate = self.inflate.get_or_insert_with(|| flate2::Decompress::new(false));
                let mut out = Vec::with_capacity(frame.payload().len() * 4 + 64);
                for input in [frame.payload(), &[0, 0, 0xff, 0xff][..]] {
                    let mut consumed = 0;
                    while consumed < input.len() || out.len() == out.capacity() {
                        out.reserve(out.capacity().max(64));
                        let before = inflate.total_in();
                        if inflate.decompress_vec(&input[consumed..], &mut out, flate2::FlushDecompress::Sync).is_err()
                        {
                            return Some(Utf8Bytes::default());
                        }
                        consumed += (inflate.total_in() - before) as usize;
                        if out.len() < out.capacity() && consumed == input.len() {
                            break;
                        }
                    }
                }
                Some(String::from_utf8(out).map(Utf8Bytes::from).unwrap_or_default())
            }
            _ => None,
        }
    }
}

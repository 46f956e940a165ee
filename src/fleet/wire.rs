//! The client's side of NIP-01 and NIP-77, sans-IO: what a relay sends, read into
//! [`RelayMessage`], and the frames a client sends.

use serde_json::value::RawValue;

/// One message from a relay, as far as a syncing client cares.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayMessage {
    /// `["EVENT", sub, event]`: the event's JSON text as the relay sent it.
    Event {
        sub: String,
        event: String,
    },
    Ok {
        id: String,
        accepted: bool,
        message: String,
    },
    Eose {
        sub: String,
    },
    Closed {
        sub: String,
        message: String,
    },
    Notice(String),
    Auth {
        challenge: String,
    },
    NegMsg {
        sub: String,
        message: String,
    },
    NegErr {
        sub: String,
        message: String,
    },
    /// Anything else (COUNT, unknown labels): its label.
    Other(String),
}

/// Why a relay's message could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a relay message that is not NIP-01: {0}")]
pub struct Malformed(String);

impl RelayMessage {
    pub fn parse(text: &str) -> Result<RelayMessage, Malformed> {
        let parts: Vec<&RawValue> = serde_json::from_str(text).map_err(|error| Malformed(error.to_string()))?;
        let string = |at: usize| -> Result<String, Malformed> {
            let part = parts.get(at).ok_or_else(|| Malformed(format!("part {at} is missing")))?;
            serde_json::from_str::<String>(part.get()).map_err(|_| Malformed(format!("part {at} is not a string")))
        };
        let label = string(0)?;
        Ok(match label.as_str() {
            "EVENT" => {
                let event = parts.get(2).ok_or_else(|| Malformed("an EVENT without its event".into()))?;
                RelayMessage::Event { sub: string(1)?, event: event.get().to_owned() }
            }
            "OK" => {
                let accepted = parts
                    .get(2)
                    .and_then(|part| serde_json::from_str::<bool>(part.get()).ok())
                    .ok_or_else(|| Malformed("an OK without its true or false".into()))?;
                RelayMessage::Ok { id: string(1)?, accepted, message: string(3).unwrap_or_default() }
            }
            "EOSE" => RelayMessage::Eose { sub: string(1)? },
            "CLOSED" => RelayMessage::Closed { sub: string(1)?, message: string(2).unwrap_or_default() },
            "NOTICE" => RelayMessage::Notice(string(1)?),
            "AUTH" => RelayMessage::Auth { challenge: string(1)? },
            "NEG-MSG" => RelayMessage::NegMsg { sub: string(1)?, message: string(2)? },
            "NEG-ERR" => RelayMessage::NegErr { sub: string(1)?, message: string(2).unwrap_or_default() },
            _ => RelayMessage::Other(label),
        })
    }
}

fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// `["REQ", sub, filter]`; `filter` is JSON text already checked as a filter.
pub fn req(sub: &str, filter: &str) -> String {
    format!("[\"REQ\",{},{filter}]", quoted(sub))
}

/// A REQ for exactly these ids.
pub fn req_ids(sub: &str, ids: &[[u8; 32]]) -> String {
    let mut filter = String::with_capacity(ids.len() * 67 + 32);
    filter.push_str("{\"ids\":[");
    for (n, id) in ids.iter().enumerate() {
        if n > 0 {
            filter.push(',');
        }
        filter.push('"');
        crate::hex::encode_into(id, &mut filter);
        filter.push('"');
    }
    filter.push_str(&format!("],\"limit\":{}}}", ids.len()));
    req(sub, &filter)
}

pub fn close(sub: &str) -> String {
    format!("[\"CLOSE\",{}]", quoted(sub))
}

/// `["EVENT", event]`; `event` is the event's JSON text.
pub fn event(event: &str) -> String {
    format!("[\"EVENT\",{event}]")
}

/// `["AUTH", event]`.
pub fn auth(event: &str) -> String {
    format!("[\"AUTH\",{event}]")
}

pub fn neg_open(sub: &str, filter: &str, message: &[u8]) -> String {
    format!("[\"NEG-OPEN\",{},{filter},\"{}\"]", quoted(sub), crate::hex::encode(message))
}

pub fn neg_msg(sub: &str, message: &[u8]) -> String {
    format!("[\"NEG-MSG\",{},\"{}\"]", quoted(sub), crate::hex::encode(message))
}

pub fn neg_close(sub: &str) -> String {
    format!("[\"NEG-CLOSE\",{}]", quoted(sub))
}

/// The machine-readable prefix of an OK or CLOSED message (`rate-limited`, `duplicate`, …),
/// or `error` when it has none.
pub fn prefix(message: &str) -> &str {
    match message.split_once(':') {
        Some((prefix, _)) if !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') => {
            prefix
        }
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_messages_are_read_by_label() {
        assert_eq!(
            RelayMessage::parse(r#"["EVENT","s",{"id":"ab","kind":1}]"#),
            Ok(RelayMessage::Event { sub: "s".into(), event: r#"{"id":"ab","kind":1}"#.into() })
        );
        assert_eq!(
            RelayMessage::parse(r#"["OK","ab",false,"rate-limited: slow down"]"#),
            Ok(RelayMessage::Ok { id: "ab".into(), accepted: false, message: "rate-limited: slow down".into() })
        );
        assert_eq!(RelayMessage::parse(r#"["EOSE","s"]"#), Ok(RelayMessage::Eose { sub: "s".into() }));
        assert_eq!(RelayMessage::parse(r#"["AUTH","c"]"#), Ok(RelayMessage::Auth { challenge: "c".into() }));
        assert_eq!(
            RelayMessage::parse(r#"["NEG-ERR","n","blocked: too many"]"#),
            Ok(RelayMessage::NegErr { sub: "n".into(), message: "blocked: too many".into() })
        );
        assert_eq!(RelayMessage::parse(r#"["COUNT","s",{"count":3}]"#), Ok(RelayMessage::Other("COUNT".into())));
    }

    #[test]
    fn a_message_that_is_not_nip01_is_malformed() {
        for text in ["", "{}", "[]", "[1]", r#"["EVENT","s"]"#, r#"["OK","ab","yes"]"#, r#"["NEG-MSG","n"]"#] {
            assert!(RelayMessage::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn frames_are_json_a_relay_reads() {
        let id = [0xab; 32];
        let frame: serde_json::Value = serde_json::from_str(&req_ids("f\"1", &[id, id])).expect("json");
        assert_eq!(frame[1], "f\"1");
        assert_eq!(frame[2]["ids"][1], "ab".repeat(32));
        assert_eq!(frame[2]["limit"], 2);
        let frame: serde_json::Value = serde_json::from_str(&neg_open("n", r#"{"kinds":[1]}"#, &[0x61])).expect("json");
        assert_eq!(frame, serde_json::json!(["NEG-OPEN", "n", {"kinds": [1]}, "61"]));
    }

    #[test]
    fn the_prefix_is_the_machine_readable_word() {
        assert_eq!(prefix("rate-limited: slow down"), "rate-limited");
        assert_eq!(prefix("duplicate: have it"), "duplicate");
        assert_eq!(prefix("no prefix here"), "error");
        assert_eq!(prefix("Weird Prefix: x"), "error");
    }
}

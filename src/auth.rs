//! NIP-42 authentication, sans-IO: challenges, the relay address an AUTH event must name,
//! and the checks on the event itself (its signature is checked before, by the verifier).

use serde_json::Value;

use crate::event::VerifiedEvent;

/// The kind of an AUTH event (NIP-42). Never stored, never broadcast.
pub const KIND_AUTH: u16 = 22242;

/// A fresh challenge: 16 random bytes as hex.
pub fn new_challenge() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let filled = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    assert_eq!(filled, bytes.len() as isize, "the kernel's random source failed");
    crate::hex::encode(&bytes)
}

/// What a relay URL comes down to for matching: host (lowercase), port (`None`: the
/// scheme's default) and path (without a trailing slash). The scheme is not compared: TLS is
/// often ended by a proxy in front of the relay, so `ws` and `wss` name the same relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayAddress {
    host: String,
    port: Option<u16>,
    path: String,
}

impl RelayAddress {
    /// `ws://`, `wss://`, `http://` or `https://` URLs; `None` for anything else.
    pub fn parse_url(url: &str) -> Option<RelayAddress> {
        let (scheme, rest) = url.trim().split_once("://")?;
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "ws" | "http" => 80,
            "wss" | "https" => 443,
            _ => return None,
        };
        let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
        let path = path.split(['?', '#']).next().unwrap_or("");
        let mut address = RelayAddress::from_host(authority, path)?;
        if address.port == Some(default_port) {
            address.port = None;
        }
        Some(address)
    }

    /// From a `Host` header (`host` or `host:port`, IPv6 in brackets) and a request path.
    pub fn from_host(host: &str, path: &str) -> Option<RelayAddress> {
        let host = host.trim().rsplit_once('@').map_or(host.trim(), |(_, host)| host);
        let (name, port) = match host.rfind(':') {
            Some(colon) if !host[colon..].contains(']') => {
                (&host[..colon], Some(host[colon + 1..].parse::<u16>().ok()?))
            }
            _ => (host, None),
        };
        if name.is_empty() {
            return None;
        }
        let path = path.trim_end_matches('/');
        Some(RelayAddress { host: name.to_ascii_lowercase(), port, path: path.to_owned() })
    }

    /// Whether a client's `relay` tag names this address. A Host header without a port says
    /// the client used the scheme's default, 80 or 443.
    pub fn accepts(&self, named: &RelayAddress) -> bool {
        self.host == named.host && self.path == named.path && self.port == named.port
    }
}

/// What an AUTH event is checked against.
pub struct AuthCheck<'a> {
    /// The challenge sent on this connection.
    pub challenge: &'a str,
    /// The addresses this relay answers to (its configured URLs, else the connection's Host).
    pub relay: &'a [RelayAddress],
    pub now: u64,
    /// How far `created_at` may be from now, in seconds.
    pub window_secs: u64,
}

/// NIP-42's checks on a verified AUTH event; the `OK` reason when one fails.
pub fn check(event: &VerifiedEvent, check: &AuthCheck) -> Result<(), String> {
    if event.kind() != KIND_AUTH {
        return Err(format!("invalid: an AUTH event must be of kind {KIND_AUTH}"));
    }
    if event.created_at().abs_diff(check.now) > check.window_secs {
        return Err(format!(
            "invalid: the AUTH event's created_at is more than {} seconds from now",
            check.window_secs
        ));
    }
    let tags = tags_of(event.json());
    if tag_values(&tags, "challenge").next() != Some(check.challenge) {
        return Err("invalid: the AUTH event's challenge is not this connection's".to_owned());
    }
    let named = tag_values(&tags, "relay").next().and_then(RelayAddress::parse_url);
    if !named.is_some_and(|named| check.relay.iter().any(|address| address.accepts(&named))) {
        return Err("invalid: the AUTH event's relay tag does not name this relay".to_owned());
    }
    Ok(())
}

/// NIP-98 HTTP auth's kind.
pub const KIND_HTTP_AUTH: u16 = 27235;

/// What a NIP-98 event is checked against.
pub struct HttpCheck<'a> {
    /// The request's method (`POST`).
    pub method: &'a str,
    /// The addresses the `u` tag may name (the relay's configured URLs, else the Host).
    pub relay: &'a [RelayAddress],
    /// The SHA-256 of the request body, which the `payload` tag must carry (NIP-86).
    pub payload: [u8; 32],
    pub now: u64,
    pub window_secs: u64,
}

/// The `Authorization` header's event: `Nostr <base64 of the event JSON>`.
pub fn http_auth_event(header: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("nostr") {
        return None;
    }
    base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()
}

/// NIP-98's checks on a verified event (NIP-86 requires the `payload` tag); why not.
pub fn check_http(event: &VerifiedEvent, check: &HttpCheck) -> Result<(), String> {
    if event.kind() != KIND_HTTP_AUTH {
        return Err(format!("the authorization event must be of kind {KIND_HTTP_AUTH}"));
    }
    if event.created_at().abs_diff(check.now) > check.window_secs {
        return Err(format!(
            "the authorization event's created_at is more than {} seconds from now",
            check.window_secs
        ));
    }
    let tags = tags_of(event.json());
    let named = tag_values(&tags, "u").next().and_then(RelayAddress::parse_url);
    if !named.is_some_and(|named| check.relay.iter().any(|address| address.accepts(&named))) {
        return Err("the authorization event's u tag does not name this relay".to_owned());
    }
    if !tag_values(&tags, "method").next().is_some_and(|method| method.eq_ignore_ascii_case(check.method)) {
        return Err(format!("the authorization event's method tag is not {}", check.method));
    }
    if tag_values(&tags, "payload").next() != Some(crate::hex::encode(&check.payload).as_str()) {
        return Err("the authorization event's payload tag is not the SHA-256 of this request's body".to_owned());
    }
    Ok(())
}

/// NIP-62: a request to vanish applies here when one of its `relay` tags is `ALL_RELAYS`
/// or names one of `relay`'s addresses.
pub fn names_relay(event_json: &str, relay: &[RelayAddress]) -> bool {
    let tags = tags_of(event_json);
    let named = tag_values(&tags, "relay").any(|value| {
        value == "ALL_RELAYS"
            || RelayAddress::parse_url(value).is_some_and(|named| relay.iter().any(|address| address.accepts(&named)))
    });
    named
}

/// An event's `tags` array (multi-letter tags are not kept by the parser).
fn tags_of(event_json: &str) -> Value {
    serde_json::from_str(event_json).map(|mut event: Value| event["tags"].take()).unwrap_or_default()
}

/// The first values of `tags` named `name`, in order.
fn tag_values<'a>(tags: &'a Value, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    tags.as_array().into_iter().flatten().filter_map(move |tag| match tag.as_array()?.as_slice() {
        [key, value, ..] if key == name => value.as_str(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls_are_compared_by_host_port_and_path() {
        let relay = RelayAddress::parse_url("wss://Relay.Example.com/").unwrap();
        assert!(relay.accepts(&RelayAddress::parse_url("ws://relay.example.com").unwrap()));
        assert!(relay.accepts(&RelayAddress::parse_url("wss://relay.example.com:443/").unwrap()));
        assert!(!relay.accepts(&RelayAddress::parse_url("wss://relay.example.com:8443/").unwrap()));
        assert!(!relay.accepts(&RelayAddress::parse_url("wss://relay.example.com/other").unwrap()));
        assert!(!relay.accepts(&RelayAddress::parse_url("wss://evil.example.com/").unwrap()));
        assert!(RelayAddress::parse_url("ftp://relay.example.com").is_none());
        assert!(RelayAddress::parse_url("relay.example.com").is_none());
    }

    #[test]
    fn a_host_header_names_the_relay_a_client_dialled() {
        let host = RelayAddress::from_host("127.0.0.1:7777", "/").unwrap();
        assert!(host.accepts(&RelayAddress::parse_url("ws://127.0.0.1:7777").unwrap()));
        assert!(!host.accepts(&RelayAddress::parse_url("ws://127.0.0.1:7778").unwrap()));
        let v6 = RelayAddress::from_host("[::1]:7777", "").unwrap();
        assert!(v6.accepts(&RelayAddress::parse_url("ws://[::1]:7777/").unwrap()));
        let bare = RelayAddress::from_host("relay.example.com", "/").unwrap();
        assert!(bare.accepts(&RelayAddress::parse_url("wss://relay.example.com").unwrap()));
        assert!(RelayAddress::from_host("relay.example.com:x", "/").is_none());
    }

    #[test]
    fn a_request_to_vanish_applies_to_the_relays_it_names() {
        let relay = [RelayAddress::parse_url("wss://relay.example.com").unwrap()];
        let event = |tags: &str| format!(r#"{{"kind":62,"tags":{tags},"content":""}}"#);
        assert!(names_relay(&event(r#"[["relay","ALL_RELAYS"]]"#), &relay));
        assert!(names_relay(
            &event(r#"[["relay","wss://other.example"],["relay","ws://relay.example.com/"]]"#),
            &relay
        ));
        assert!(!names_relay(&event(r#"[["relay","wss://other.example"]]"#), &relay));
        assert!(!names_relay(&event(r#"[["relay","all_relays"]]"#), &relay), "ALL_RELAYS is upper case");
        assert!(!names_relay(&event("[]"), &relay));
    }

    #[test]
    fn challenges_are_fresh() {
        let (one, two) = (new_challenge(), new_challenge());
        assert_eq!(one.len(), 32);
        assert_ne!(one, two);
    }
}

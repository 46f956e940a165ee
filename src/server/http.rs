//! The HTTP side of a connection, sans-IO: read the request head, then answer with the
//! NIP-11 document, a small page, `/healthz`, or the WebSocket upgrade.

use std::net::IpAddr;

use super::policy::Policy;
use crate::config::{Config, PolicyLists};

/// Largest request head accepted, in bytes.
pub const REQUEST_HEAD_SIZE_MAX: usize = 8 * 1024;
const HEADER_COUNT_MAX: usize = 48;

/// What the client asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// A WebSocket upgrade, with the `Sec-WebSocket-Accept` value to answer.
    Upgrade {
        accept_key: String,
        /// The Host header and the path: the address the client dialled (NIP-42).
        host: Option<crate::auth::RelayAddress>,
        /// Every `Sec-WebSocket-Extensions` value the client sent, joined by commas.
        extensions: Option<String>,
    },
    Nip11,
    Page,
    Health,
    /// Every core's counters as JSON.
    Stats,
    /// The Prometheus (OpenMetrics) exposition.
    Metrics,
    /// A management call (NIP-86), with its body still to read.
    Manage(ManageRequest),
    Preflight,
    NotFound,
    BadRequest(&'static str),
    /// Not a request: the client's address is blocked (NIP-86 `blockip`).
    Blocked,
}

/// What a management call's head says.
#[derive(Debug, PartialEq, Eq)]
pub struct ManageRequest {
    /// The `Authorization` header (NIP-98).
    pub authorization: Option<String>,
    /// The Host header and the path: the address the client called (the `u` tag's).
    pub host: Option<crate::auth::RelayAddress>,
    pub body_size: usize,
}

/// A parsed request head: the route, and what a proxy in front said about the client.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub route: Route,
    /// `X-Forwarded-For`, else `X-Real-IP`: believed only from `trusted_proxies`.
    pub forwarded_for: Option<String>,
}

/// Parse a request head from the start of `buffer`. `Ok(None)`: read more.
/// On success, returns the head and how many bytes it took.
pub fn parse_request(buffer: &[u8]) -> Result<Option<(Head, usize)>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let consumed = match request.parse(buffer) {
        Ok(httparse::Status::Complete(consumed)) => consumed,
        Ok(httparse::Status::Partial) if buffer.len() >= REQUEST_HEAD_SIZE_MAX => return Err("request head too large"),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed request"),
    };
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let every_value = |name: &str| {
        let values: Vec<&str> = request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|value| value.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
    };
    let method = request.method.unwrap_or("");
    let path = request.path.unwrap_or("/").split('?').next().unwrap_or("/");
    let route = match method {
        "GET" if has_token("upgrade", "websocket") => match header("sec-websocket-key") {
            Some(key) if header("sec-websocket-version") == Some("13") => Route::Upgrade {
                accept_key: async_tungstenite::tungstenite::handshake::derive_accept_key(key.trim().as_bytes()),
                host: header("host").and_then(|host| crate::auth::RelayAddress::from_host(host, path)),
                extensions: every_value("sec-websocket-extensions"),
            },
            _ => Route::BadRequest("a websocket upgrade needs Sec-WebSocket-Key and version 13"),
        },
        "POST" if header("content-type").is_some_and(|kind| kind.trim().starts_with("application/nostr+json+rpc")) => {
            match header("content-length").and_then(|size| size.trim().parse::<usize>().ok()) {
                Some(body_size) if body_size <= crate::limits::MANAGE_BODY_SIZE_MAX => Route::Manage(ManageRequest {
                    authorization: header("authorization").map(str::to_owned),
                    host: header("host").and_then(|host| crate::auth::RelayAddress::from_host(host, path)),
                    body_size,
                }),
                Some(_) => Route::BadRequest("a management call's body is limited to 64 KiB"),
                None => Route::BadRequest("a management call needs a Content-Length"),
            }
        }
        "GET" | "HEAD" if path == "/healthz" => Route::Health,
        "GET" if path == "/stats" => Route::Stats,
        "GET" if path == "/metrics" => Route::Metrics,
        "GET" | "HEAD" if header("accept").is_some_and(|accept| accept.contains("application/nostr+json")) => {
            Route::Nip11
        }
        "GET" | "HEAD" if path == "/" => Route::Page,
        "OPTIONS" => Route::Preflight,
        "GET" | "HEAD" => Route::NotFound,
        _ => Route::BadRequest("method not allowed"),
    };
    let forwarded_for = header("x-forwarded-for").or_else(|| header("x-real-ip")).map(str::to_owned);
    Ok(Some((Head { route, forwarded_for }, consumed)))
}

/// The client's address: the peer's, unless the peer is a trusted proxy that says who it
/// forwards for. `X-Forwarded-For` is read from the right (each proxy appends the address it
/// saw), skipping trusted proxies; the first other address is the client. A header that does
/// not parse leaves the peer's address, so a client cannot choose its own by sending one.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpAddr]) -> IpAddr {
    let peer = peer.to_canonical();
    let (Some(forwarded), true) = (forwarded_for, trusted.contains(&peer)) else { return peer };
    let mut client = peer;
    for entry in forwarded.rsplit(',') {
        let Ok(address) = entry.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()) else { return client };
        client = address;
        if !trusted.contains(&address) {
            break;
        }
    }
    client
}

const CORS: &str = "Access-Control-Allow-Origin: *\r\nAccess-Control-Allow-Headers: *\r\nAccess-Control-Allow-Methods: GET, POST, OPTIONS\r\n";

/// The answer to a WebSocket upgrade, with the extension agreed, if one was.
pub fn upgrade_response(accept_key: &str, extension: Option<&str>) -> Vec<u8> {
    let extension = extension.map(|value| format!("Sec-WebSocket-Extensions: {value}\r\n")).unwrap_or_default();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n{extension}\r\n"
    )
    .into_bytes()
}

/// The full response for a route.
pub fn response(route: &Route, config: &Config) -> Vec<u8> {
    match route {
        Route::Upgrade { accept_key, .. } => upgrade_response(accept_key, None),
        Route::Nip11 => {
            let lists = PolicyLists::default();
            nip11_response(config, &Policy::with_lists(&config.policy, &lists), &lists)
        }
        Route::Page => page_response(config, &PolicyLists::default()),
        Route::Health => respond("200 OK", "text/plain", "ok\n"),
        Route::Stats => stats_response(&Default::default()),
        Route::Metrics => metrics_response(""),
        Route::Manage(_) => manage_response("401 Unauthorized", r#"{"error":"unauthorized"}"#),
        Route::Preflight => respond("204 No Content", "text/plain", ""),
        Route::NotFound => respond("404 Not Found", "text/plain", "not found\n"),
        Route::BadRequest(reason) => respond("400 Bad Request", "text/plain", &format!("{reason}\n")),
        Route::Blocked => {
            respond("403 Forbidden", "text/plain", "blocked: connections from your address are refused here\n")
        }
    }
}

/// `/stats`: the counters gathered from every core.
pub fn stats_response(stats: &super::stats::StatsSnapshot) -> Vec<u8> {
    let body = serde_json::to_string(stats).expect("counters serialize");
    respond("200 OK", "application/json", &body)
}

/// `/metrics`: the exposition [`super::metrics::render`] made.
pub fn metrics_response(body: &str) -> Vec<u8> {
    respond("200 OK", super::metrics::CONTENT_TYPE, body)
}

/// A management call's answer (NIP-86).
pub fn manage_response(status: &str, body: &str) -> Vec<u8> {
    respond(status, "application/json", body)
}

/// A 404, for a route served elsewhere (`/metrics` with `metrics_listen` set).
pub fn not_found() -> Vec<u8> {
    response(&Route::NotFound, &Config::default())
}

fn respond(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{CORS}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// NIP-11 with the policy and lists in force.
pub fn nip11_response(config: &Config, policy: &Policy, lists: &PolicyLists) -> Vec<u8> {
    respond("200 OK", "application/nostr+json", &nip11_document(config, policy, lists))
}

/// The page a browser gets, with the name and description in force.
pub fn page_response(config: &Config, lists: &PolicyLists) -> Vec<u8> {
    respond("200 OK", "text/html; charset=utf-8", &page(config, lists))
}

/// The NIPs this relay implements as configured, each claim checked by a test through the
/// real binary: 1 (tests/it/rules.rs), 9 and 40 and 45 and 62 and 70 (rules.rs), 11
/// (relay.rs), 42 (auth.rs); 17 and 59 only while gift wraps (kind 1059) are a private kind,
/// served to their parties alone (auth.rs, `private_kinds_reach_only_their_author_and_recipients`);
/// 65, relay lists (kind 10002) kept as replaceable events (rules.rs,
/// `a_replaceable_event_keeps_the_newest_version_and_the_lowest_id_on_a_tie`); 77 when on
/// (negentropy.rs); 50 when on, on a store that is not encrypted (search.rs); 86 only with
/// admin pubkeys (manage.rs).
pub fn supported_nips(config: &Config) -> Vec<u16> {
    let mut nips = vec![1, 9, 11];
    let gift_wraps_private = config.policy.private_kinds.contains(&crate::event::kind::KIND_GIFT_WRAP);
    if gift_wraps_private {
        nips.push(17);
    }
    nips.extend([40, 42, 45]);
    if config.search_on() {
        nips.push(50);
    }
    if gift_wraps_private {
        nips.push(59);
    }
    nips.extend([62, 65, 70]);
    if config.negentropy.enabled {
        nips.push(77);
    }
    if !config.management.admin_pubkeys.is_empty() {
        nips.push(86);
    }
    nips
}

/// NIP-11: who the relay is, and the real limits and policy it enforces (the lists file's
/// name, description and icon before `[info]`'s).
pub fn nip11_document(config: &Config, policy: &Policy, lists: &PolicyLists) -> String {
    let limits = &config.limits;
    let mut limitation = serde_json::json!({
        "max_message_length": limits.message_size_max,
        "max_subscriptions": limits.subscriptions_per_connection_max,
        "max_concurrent_queries": limits.queries_per_connection_max,
        "max_filters": limits.filters_per_req_max,
        "max_limit": limits.limit_max,
        "default_limit": limits.limit_default,
        "max_subid_length": crate::proto::SUB_ID_CHAR_COUNT_MAX,
        "max_event_tags": limits.event_limits().tag_count_max,
        "max_content_length": limits.event_limits().content_size_max,
        "min_pow_difficulty": 0,
        // NIP-11: authentication before any other action, reads and writes alike.
        "auth_required": config.policy.read == crate::config::ReadMode::Auth
            && config.policy.write == crate::config::WriteMode::Auth,
        "payment_required": config.info.payment_required,
        "restricted_writes": policy.restricts_writes(),
        "created_at_upper_limit": limits.created_at_future_max_secs,
    });
    if limits.created_at_past_max_secs > 0 {
        limitation["created_at_lower_limit"] = limits.created_at_past_max_secs.into();
    }
    let info = &config.info;
    let mut document = serde_json::json!({
        "name": lists.name.as_ref().unwrap_or(&info.name),
        "description": lists.description.as_ref().unwrap_or(&info.description),
        "supported_nips": supported_nips(config),
        "version": env!("CARGO_PKG_VERSION"),
        "limitation": limitation,
    });
    if let Some(pubkey) = &config.info.pubkey {
        document["pubkey"] = pubkey.clone().into();
    }
    if let Some(contact) = &config.info.contact {
        document["contact"] = contact.clone().into();
    }
    if let Some(url) = &config.info.payments_url {
        document["payments_url"] = url.clone().into();
    }
    if let Some(icon) = lists.icon.as_ref().or(info.icon.as_ref()) {
        document["icon"] = icon.clone().into();
    }
    if let Some(software) = &info.software {
        document["software"] = software.clone().into();
    }
    document.to_string()
}

fn page(config: &Config, lists: &PolicyLists) -> String {
    let escape = |text: &str| text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    format!(
        "<!doctype html><meta charset=utf-8><title>{name}</title><h1>{name}</h1><p>{description}</p>\
         <p>This is a Nostr relay: connect a Nostr client to this address with <code>ws://</code> or <code>wss://</code>.</p>\
         <p>ringrelay {version}</p>\n",
        name = escape(lists.name.as_ref().unwrap_or(&config.info.name)),
        description = escape(lists.description.as_ref().unwrap_or(&config.info.description)),
        version = env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(head: &str) -> Route {
        parse_request(head.as_bytes()).unwrap().unwrap().0.route
    }

    #[test]
    fn routes() {
        let upgrade = "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let host = crate::auth::RelayAddress::from_host("x", "/");
        let accept_key = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_owned();
        let plain = Route::Upgrade { accept_key: accept_key.clone(), host: host.clone(), extensions: None };
        assert_eq!(route(upgrade), plain);
        // Extensions offered over two header lines arrive as one list.
        let offered = upgrade.replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nsec-websocket-extensions: x-other\r\n\r\n",
        );
        let extensions = Some("permessage-deflate; client_max_window_bits, x-other".to_owned());
        assert_eq!(route(&offered), Route::Upgrade { accept_key, host, extensions });
        let answer = String::from_utf8(upgrade_response("k", Some("permessage-deflate"))).unwrap();
        assert!(answer.ends_with("Sec-WebSocket-Accept: k\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"));
        assert_eq!(route("GET / HTTP/1.1\r\nAccept: application/nostr+json\r\n\r\n"), Route::Nip11);
        assert_eq!(route("GET / HTTP/1.1\r\n\r\n"), Route::Page);
        assert_eq!(route("GET /healthz HTTP/1.1\r\n\r\n"), Route::Health);
        assert_eq!(route("GET /stats HTTP/1.1\r\n\r\n"), Route::Stats);
        assert_eq!(route("GET /metrics HTTP/1.1\r\n\r\n"), Route::Metrics);
        assert_eq!(route("OPTIONS / HTTP/1.1\r\n\r\n"), Route::Preflight);
        assert_eq!(route("GET /nope HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert!(matches!(route("POST / HTTP/1.1\r\n\r\n"), Route::BadRequest(_)));
        let manage = "POST / HTTP/1.1\r\nHost: x:7\r\nContent-Type: application/nostr+json+rpc\r\nAuthorization: Nostr e30=\r\nContent-Length: 2\r\n\r\n";
        let expected = ManageRequest {
            authorization: Some("Nostr e30=".into()),
            host: crate::auth::RelayAddress::from_host("x:7", "/"),
            body_size: 2,
        };
        assert_eq!(route(manage), Route::Manage(expected));
        let unsized_call = "POST / HTTP/1.1\r\nContent-Type: application/nostr+json+rpc\r\n\r\n";
        assert!(matches!(route(unsized_call), Route::BadRequest(_)));
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost:"), Ok(None));
        assert!(parse_request(b"\x00\x01 garbage\r\n\r\n").is_err());
        assert!(parse_request(&vec![b'a'; REQUEST_HEAD_SIZE_MAX]).is_err());
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let trusted = [ip("127.0.0.1"), ip("10.0.0.2")];
        let head = "GET / HTTP/1.1\r\nX-Forwarded-For: 198.51.100.7, 10.0.0.2\r\n\r\n";
        let forwarded = parse_request(head.as_bytes()).unwrap().unwrap().0.forwarded_for;
        assert_eq!(forwarded.as_deref(), Some("198.51.100.7, 10.0.0.2"));
        assert_eq!(client_ip(ip("127.0.0.1"), forwarded.as_deref(), &trusted), ip("198.51.100.7"));
        assert_eq!(client_ip(ip("::ffff:127.0.0.1"), forwarded.as_deref(), &trusted), ip("198.51.100.7"));
        // A client's own header, sent straight to the relay, is not believed.
        assert_eq!(client_ip(ip("203.0.113.9"), forwarded.as_deref(), &trusted), ip("203.0.113.9"));
        // A client that sends the proxy a made-up header gets the address the proxy saw.
        assert_eq!(client_ip(ip("127.0.0.1"), Some("1.2.3.4, 198.51.100.7"), &trusted), ip("198.51.100.7"));
        assert_eq!(client_ip(ip("127.0.0.1"), Some("not an address"), &trusted), ip("127.0.0.1"));
        assert_eq!(client_ip(ip("127.0.0.1"), None, &trusted), ip("127.0.0.1"));
        let real_ip = "GET / HTTP/1.1\r\nX-Real-IP: 198.51.100.8\r\n\r\n";
        let forwarded = parse_request(real_ip.as_bytes()).unwrap().unwrap().0.forwarded_for;
        assert_eq!(client_ip(ip("127.0.0.1"), forwarded.as_deref(), &trusted), ip("198.51.100.8"));
    }

    #[test]
    fn nip11_carries_the_limits() {
        let config = Config::default();
        let lists = PolicyLists { name: Some("renamed".into()), ..PolicyLists::default() };
        let document: serde_json::Value =
            serde_json::from_str(&nip11_document(&config, &Policy::new(&config.policy), &lists)).unwrap();
        assert_eq!(document["name"], "renamed");
        assert!(!document["supported_nips"].as_array().unwrap().contains(&86.into()), "no admins: no NIP-86");
        assert!(document["supported_nips"].as_array().unwrap().contains(&77.into()), "NIP-77 on by default");
        assert!(document.get("software").is_none(), "no software URL unless the operator names one");
        assert_eq!(document["supported_nips"], serde_json::json!([1, 9, 11, 17, 40, 42, 45, 50, 59, 62, 65, 70, 77]));
        let mut public_wraps = Config::default();
        public_wraps.policy.private_kinds.retain(|&kind| kind != crate::event::kind::KIND_GIFT_WRAP);
        public_wraps.negentropy.enabled = false;
        public_wraps.key_file = Some("key".into());
        assert_eq!(
            supported_nips(&public_wraps),
            vec![1, 9, 11, 40, 42, 45, 62, 65, 70],
            "no 17/59 when gift wraps are public"
        );
        assert_eq!(document["limitation"]["max_limit"], 5000);
        assert_eq!(document["limitation"]["max_subid_length"], 64);
        assert!(document["supported_nips"].as_array().unwrap().contains(&1.into()));
        let response = String::from_utf8(response(&Route::Nip11, &Config::default())).unwrap();
        assert!(response.contains("Access-Control-Allow-Origin: *"));
        assert!(response.contains("Content-Type: application/nostr+json"));
        let mut named = Config::default();
        named.info.software = Some("https://example.com/ringrelay".into());
        let lists = PolicyLists::default();
        let document: serde_json::Value =
            serde_json::from_str(&nip11_document(&named, &Policy::new(&named.policy), &lists)).unwrap();
        assert_eq!(document["software"], "https://example.com/ringrelay");
    }
}

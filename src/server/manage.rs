//! The management API (NIP-86): JSON-RPC over HTTP, authorised by a NIP-98 event signed by
//! one of `management.admin_pubkeys`. A change is written durably to the lists file (see
//! `lists`) and in force on every core before its answer is sent; a read answers from the
//! lists in force. The calls themselves, [`Call::parse`], [`Call::apply`] and
//! [`Call::read`], are sans-IO; [`serve`] is the effect shell.

use std::net::IpAddr;
use std::rc::Rc;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::core::Core;
use super::http::{self, ManageRequest};
use super::lists::ChangeError;
use super::rates::Work;
use super::stats::ManageResult;
use crate::auth::{self, HttpCheck};
use crate::config::{PolicyConfig, PolicyLists};
use crate::event::{parse_event, EventId, Pubkey};
use crate::fleet::client::RelayUrl;
use crate::fleet::sync::{Direction, Plan};
use crate::limits::MANAGE_TEXT_SIZE_MAX;

/// How far a NIP-98 event's `created_at` may be from now, in seconds (NIP-98 suggests 60).
pub const HTTP_AUTH_WINDOW_SECS: u64 = 60;

/// The methods [`Call::parse`] knows, as `supportedmethods` lists them.
pub const METHODS: &[&str] = &[
    "supportedmethods",
    "banpubkey",
    "unbanpubkey",
    "listbannedpubkeys",
    "allowpubkey",
    "unallowpubkey",
    "listallowedpubkeys",
    "banevent",
    "allowevent",
    "listbannedevents",
    "allowkind",
    "disallowkind",
    "listallowedkinds",
    "blockip",
    "unblockip",
    "listblockedips",
    "changerelayname",
    "changerelaydescription",
    "changerelayicon",
    "syncrelay",
];

/// One management call, its parameters checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    SupportedMethods,
    BanPubkey(String, Option<String>),
    UnbanPubkey(String),
    ListBannedPubkeys,
    AllowPubkey(String, Option<String>),
    UnallowPubkey(String),
    ListAllowedPubkeys,
    BanEvent(String, Option<String>),
    AllowEvent(String),
    ListBannedEvents,
    AllowKind(u16),
    DisallowKind(u16),
    ListAllowedKinds,
    BlockIp(String, Option<String>),
    UnblockIp(String),
    ListBlockedIps,
    ChangeName(String),
    ChangeDescription(String),
    ChangeIcon(String),
}

impl Call {
    /// The call a request body names; why not, as its `error`.
    pub fn parse(body: &[u8]) -> Result<Call, String> {
        let request: Value = serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let method = request["method"].as_str().ok_or("the request has no method")?;
        let params = match &request["params"] {
            Value::Null => &[][..],
            Value::Array(params) => &params[..],
            _ => return Err("params must be an array".to_owned()),
        };
        let text = |index: usize, what: &str| -> Result<String, String> {
            let value = params.get(index).and_then(Value::as_str).ok_or(format!("params[{index}] must be {what}"))?;
            if value.len() > MANAGE_TEXT_SIZE_MAX {
                return Err(format!("params[{index}] is longer than {MANAGE_TEXT_SIZE_MAX} bytes"));
            }
            Ok(value.to_owned())
        };
        let reason = || text(1, "a reason").ok().filter(|reason| !reason.is_empty());
        let pubkey = || {
            let key = text(0, "a pubkey")?;
            Pubkey::from_hex(&key)
                .map(|_| key)
                .ok_or("params[0] must be a pubkey in 64 lowercase hex characters".to_owned())
        };
        let event_id = || {
            let id = text(0, "an event id")?;
            EventId::from_hex(&id)
                .map(|_| id)
                .ok_or("params[0] must be an event id in 64 lowercase hex characters".to_owned())
        };
        let ip = || {
            let ip = text(0, "an IP address")?;
            let parsed: IpAddr = ip.parse().map_err(|_| "params[0] must be an IP address".to_owned())?;
            Ok::<_, String>(parsed.to_canonical().to_string())
        };
        let kind = || {
            params
                .first()
                .and_then(Value::as_u64)
                .and_then(|kind| u16::try_from(kind).ok())
                .ok_or("params[0] must be a kind (0 to 65535)".to_owned())
        };
        Ok(match method {
            "supportedmethods" => Call::SupportedMethods,
            "banpubkey" => Call::BanPubkey(pubkey()?, reason()),
            "unbanpubkey" => Call::UnbanPubkey(pubkey()?),
            "listbannedpubkeys" => Call::ListBannedPubkeys,
            "allowpubkey" => Call::AllowPubkey(pubkey()?, reason()),
            "unallowpubkey" => Call::UnallowPubkey(pubkey()?),
            "listallowedpubkeys" => Call::ListAllowedPubkeys,
            "banevent" => Call::BanEvent(event_id()?, reason()),
            "allowevent" => Call::AllowEvent(event_id()?),
            "listbannedevents" => Call::ListBannedEvents,
            "allowkind" => Call::AllowKind(kind()?),
            "disallowkind" => Call::DisallowKind(kind()?),
            "listallowedkinds" => Call::ListAllowedKinds,
            "blockip" => Call::BlockIp(ip()?, reason()),
            "unblockip" => Call::UnblockIp(ip()?),
            "listblockedips" => Call::ListBlockedIps,
            "changerelayname" => Call::ChangeName(text(0, "a name")?),
            "changerelaydescription" => Call::ChangeDescription(text(0, "a description")?),
            "changerelayicon" => Call::ChangeIcon(text(0, "an icon URL")?),
            other => return Err(format!("unsupported method: {other}")),
        })
    }

    /// Whether the call changes the lists.
    pub fn changes(&self) -> bool {
        !matches!(
            self,
            Call::SupportedMethods
                | Call::ListBannedPubkeys
                | Call::ListAllowedPubkeys
                | Call::ListBannedEvents
                | Call::ListAllowedKinds
                | Call::ListBlockedIps
        )
    }

    /// Make the change in the lists file's lists. An entry that `[policy]` in the
    /// configuration holds cannot be removed here: the answer says so.
    pub fn apply(self, lists: &mut PolicyLists, config: &PolicyConfig) -> Result<(), String> {
        let reasons = &mut lists.reasons;
        match self {
            Call::BanPubkey(key, reason) => {
                // Its events stored until now are retired, for good (see `pubkeys_retired`).
                lists.pubkeys_retired.insert(key.clone(), crate::now_unix());
                add(&mut lists.pubkeys_denied, &mut reasons.pubkeys_denied, key.clone(), reason);
                remove(&mut lists.pubkeys_allowed, &mut reasons.pubkeys_allowed, &key);
            }
            Call::UnbanPubkey(key) => {
                if config.pubkeys_denied.contains(&key) {
                    return Err("this pubkey is denied by [policy] in the configuration file; change it there".into());
                }
                remove(&mut lists.pubkeys_denied, &mut reasons.pubkeys_denied, &key);
            }
            Call::AllowPubkey(key, reason) => {
                add(&mut lists.pubkeys_allowed, &mut reasons.pubkeys_allowed, key.clone(), reason);
                remove(&mut lists.pubkeys_denied, &mut reasons.pubkeys_denied, &key);
            }
            Call::UnallowPubkey(key) => {
                if config.pubkeys_allowed.contains(&key) {
                    return Err("this pubkey is allowed by [policy] in the configuration file; change it there".into());
                }
                remove(&mut lists.pubkeys_allowed, &mut reasons.pubkeys_allowed, &key);
            }
            Call::BanEvent(id, reason) => add(&mut lists.events_banned, &mut reasons.events_banned, id, reason),
            Call::AllowEvent(id) => remove(&mut lists.events_banned, &mut reasons.events_banned, &id),
            Call::AllowKind(kind) => {
                if config.kinds_denied.contains(&kind) {
                    return Err("this kind is denied by [policy] in the configuration file; change it there".into());
                }
                lists.kinds_denied.retain(|&denied| denied != kind);
                if !lists.kinds_allowed.contains(&kind) {
                    lists.kinds_allowed.push(kind);
                }
            }
            Call::DisallowKind(kind) => {
                if config.kinds_allowed.contains(&kind) {
                    return Err("this kind is allowed by [policy] in the configuration file; change it there".into());
                }
                lists.kinds_allowed.retain(|&allowed| allowed != kind);
                if !lists.kinds_denied.contains(&kind) {
                    lists.kinds_denied.push(kind);
                }
            }
            Call::BlockIp(ip, reason) => add(&mut lists.ips_blocked, &mut reasons.ips_blocked, ip, reason),
            Call::UnblockIp(ip) => remove(&mut lists.ips_blocked, &mut reasons.ips_blocked, &ip),
            Call::ChangeName(name) => lists.name = Some(name),
            Call::ChangeDescription(description) => lists.description = Some(description),
            Call::ChangeIcon(icon) => lists.icon = Some(icon),
            Call::SupportedMethods
            | Call::ListBannedPubkeys
            | Call::ListAllowedPubkeys
            | Call::ListBannedEvents
            | Call::ListAllowedKinds
            | Call::ListBlockedIps => unreachable!("reads change nothing"),
        }
        Ok(())
    }

    /// A read's result, from `[policy]` and the lists in force.
    pub fn read(&self, lists: &PolicyLists, config: &PolicyConfig) -> Value {
        let entries = |field: &str, first: &[String], second: &[String], reasons: &std::collections::BTreeMap<_, _>| {
            let mut seen = std::collections::HashSet::new();
            let listed: Vec<Value> = first
                .iter()
                .chain(second)
                .filter(|entry| seen.insert(*entry))
                .map(|entry| match reasons.get(entry) {
                    Some(reason) => json!({field: entry, "reason": reason}),
                    None => json!({field: entry}),
                })
                .collect();
            Value::Array(listed)
        };
        let reasons = &lists.reasons;
        match self {
            Call::SupportedMethods => json!(METHODS),
            Call::ListBannedPubkeys => {
                entries("pubkey", &config.pubkeys_denied, &lists.pubkeys_denied, &reasons.pubkeys_denied)
            }
            Call::ListAllowedPubkeys => {
                entries("pubkey", &config.pubkeys_allowed, &lists.pubkeys_allowed, &reasons.pubkeys_allowed)
            }
            Call::ListBannedEvents => entries("id", &[], &lists.events_banned, &reasons.events_banned),
            Call::ListBlockedIps => entries("ip", &[], &lists.ips_blocked, &reasons.ips_blocked),
            Call::ListAllowedKinds => {
                let mut kinds: Vec<u16> = config.kinds_allowed.iter().chain(&lists.kinds_allowed).copied().collect();
                kinds.sort_unstable();
                kinds.dedup();
                json!(kinds)
            }
            _ => Value::Bool(true),
        }
    }
}

fn add(
    list: &mut Vec<String>,
    reasons: &mut std::collections::BTreeMap<String, String>,
    entry: String,
    reason: Option<String>,
) {
    match reason {
        Some(reason) => reasons.insert(entry.clone(), reason),
        None => reasons.remove(&entry),
    };
    if !list.contains(&entry) {
        list.push(entry);
    }
}

fn remove(list: &mut Vec<String>, reasons: &mut std::collections::BTreeMap<String, String>, entry: &str) {
    list.retain(|listed| listed != entry);
    reasons.remove(entry);
}

/// Answer one management call: the caller's rate, its NIP-98 authorization, then the call.
pub async fn serve(core: &Rc<Core>, peer: IpAddr, request: &ManageRequest, body: &[u8]) -> Vec<u8> {
    let rate_key = core.gate.rate_key(peer, &[]);
    if rate_key.is_some_and(|key| core.gate.over_rate_of(key, Work::Query)) {
        core.stats.managed(ManageResult::RateLimited);
        return http::manage_response("429 Too Many Requests", &error("rate-limited: too many calls; slow down"));
    }
    if let Err(reason) = authorize(core, request, body) {
        core.stats.managed(ManageResult::Unauthorized);
        return http::manage_response("401 Unauthorized", &error(&reason));
    }
    if let Some(sync) = SyncCall::parse(body) {
        return sync_now(core, sync).await;
    }
    let call = match Call::parse(body) {
        Ok(call) => call,
        Err(reason) => {
            core.stats.managed(ManageResult::Invalid);
            return http::manage_response("400 Bad Request", &error(&reason));
        }
    };
    if !call.changes() {
        core.stats.managed(ManageResult::Read);
        let result = call.read(&core.gate.lists().lists, &core.config.policy);
        return http::manage_response("200 OK", &json!({ "result": result }).to_string());
    }
    tracing::info!(?call, "management call");
    let file = core.gate.lists_file.clone();
    let config = core.config.policy.clone();
    let changed = glommio::executor().spawn_blocking(move || file.change(|lists| call.apply(lists, &config))).await;
    match changed {
        Ok((lists, ())) => {
            core.put_lists_in_force(lists).await;
            core.stats.managed(ManageResult::Changed);
            http::manage_response("200 OK", r#"{"result":true}"#)
        }
        Err(ChangeError::Refused(reason)) => {
            core.stats.managed(ManageResult::Invalid);
            http::manage_response("400 Bad Request", &error(&reason))
        }
        Err(ChangeError::File(failure)) => {
            core.stats.managed(ManageResult::Failed);
            tracing::error!(error = %failure, "a management call could not read or write the lists file; nothing changed");
            let reason =
                "error: the lists file could not be read or written (the relay's log says why); nothing changed";
            http::manage_response("500 Internal Server Error", &error(reason))
        }
    }
}

/// `syncrelay` (this relay's own method): `[url, direction ("down", "up", "both";
/// default "both"), filter (JSON text; default every event)]`: the running relay syncs with
/// the relay at `url` now (NIP-77) and answers with what moved.
#[derive(Debug, PartialEq, Eq)]
pub struct SyncCall {
    pub url: RelayUrl,
    pub plan: Plan,
}

impl SyncCall {
    /// `None` for any other method.
    pub fn parse(body: &[u8]) -> Option<Result<SyncCall, String>> {
        let request: Value = serde_json::from_slice(body).ok()?;
        (request["method"] == "syncrelay").then(|| {
            let param = |index: usize| request["params"].get(index).and_then(Value::as_str);
            let url = RelayUrl::parse(param(0).ok_or("params[0] must be a relay URL (ws://...)")?)?;
            let direction = match param(1).unwrap_or("both") {
                "down" => Direction::Down,
                "up" => Direction::Up,
                "both" => Direction::Both,
                _ => return Err("params[1] must be \"down\", \"up\" or \"both\"".to_owned()),
            };
            let filter = param(2).unwrap_or("{}");
            crate::filter::Filter::from_text(filter)
                .map_err(|e| format!("params[2] is not a filter: {}", e.reason()))?;
            Ok(SyncCall { url, plan: Plan::new(filter.to_owned(), direction) })
        })
    }
}

async fn sync_now(core: &Rc<Core>, sync: Result<SyncCall, String>) -> Vec<u8> {
    let sync = match sync {
        Ok(sync) => sync,
        Err(reason) => {
            core.stats.managed(ManageResult::Invalid);
            return http::manage_response("400 Bad Request", &error(&reason));
        }
    };
    tracing::info!(url = %sync.url, direction = ?sync.plan.direction, filter = sync.plan.filter, "sync asked for");
    match super::peering::sync_once(core, &sync.url, &sync.plan).await {
        Ok(summary) => {
            tracing::info!(url = %sync.url, %summary, "sync done");
            core.stats.managed(ManageResult::Changed);
            let result = json!({
                "local": summary.local,
                "only_here": summary.have,
                "only_there": summary.need,
                "rounds": summary.rounds,
                "fetched": summary.fetched,
                "stored": summary.stored,
                "duplicate": summary.duplicate,
                "rejected": summary.rejected,
                "published": summary.published,
                "refused": summary.refused,
                "bytes_sent": summary.traffic.bytes_sent,
                "bytes_received": summary.traffic.bytes_received,
                "milliseconds": summary.reconcile_ms + summary.transfer_ms,
            });
            http::manage_response("200 OK", &json!({ "result": result }).to_string())
        }
        Err(failure) => {
            core.stats.managed(ManageResult::Failed);
            http::manage_response("502 Bad Gateway", &error(&format!("error: the sync failed: {failure}")))
        }
    }
}

fn error(reason: &str) -> String {
    json!({ "error": reason }).to_string()
}

/// NIP-98: a signed kind-27235 event for this relay's URL, `POST` and this body, from an
/// admin pubkey.
fn authorize(core: &Core, request: &ManageRequest, body: &[u8]) -> Result<(), String> {
    let admins = &core.config.management.admin_pubkeys;
    if admins.is_empty() {
        return Err("the management API is off: this relay has no management.admin_pubkeys".to_owned());
    }
    let header = request.authorization.as_deref().ok_or("an Authorization header (NIP-98) is required")?;
    let json = auth::http_auth_event(header).ok_or("the Authorization header is not `Nostr <base64 event>`")?;
    let parsed = parse_event(&json, &core.config.limits.event_limits()).map_err(|e| e.reason())?;
    let event = core.gate.verify(parsed).map_err(|e| e.reason())?;
    let relay = core.gate.addresses(request.host.clone());
    let check = HttpCheck {
        method: "POST",
        relay: &relay,
        payload: Sha256::digest(body).into(),
        now: crate::now_unix(),
        window_secs: HTTP_AUTH_WINDOW_SECS,
    };
    auth::check_http(&event, &check)?;
    let signer = event.pubkey().to_hex();
    if !admins.contains(&signer) {
        return Err(format!("{signer} is not an admin of this relay"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(method: &str, params: Value) -> Result<Call, String> {
        Call::parse(json!({"method": method, "params": params}).to_string().as_bytes())
    }

    #[test]
    fn every_listed_method_parses() {
        let key = "ab".repeat(32);
        for method in METHODS {
            if *method == "syncrelay" {
                let body = json!({"method": method, "params": ["ws://10.0.0.6:7777", "down", "{\"kinds\":[1]}"]});
                let sync = SyncCall::parse(body.to_string().as_bytes()).expect("syncrelay").expect("valid");
                assert_eq!((sync.plan.direction, sync.url.port), (Direction::Down, 7777));
                continue;
            }
            let params = match *method {
                "allowkind" | "disallowkind" => json!([7]),
                "blockip" | "unblockip" => json!(["192.0.2.1"]),
                _ => json!([key, "a reason"]),
            };
            assert!(call(method, params).is_ok(), "{method}");
        }
        assert!(call("banpubkey", json!(["AB".repeat(32)])).is_err(), "upper case hex");
        assert!(call("blockip", json!(["nowhere"])).is_err());
        assert!(call("allowkind", json!([70000])).is_err());
        assert!(call("createrole", json!([])).unwrap_err().starts_with("unsupported method"));
        assert!(Call::parse(b"not json").is_err());
        let sync =
            |params: Value| SyncCall::parse(json!({"method": "syncrelay", "params": params}).to_string().as_bytes());
        assert_eq!(sync(json!(["ws://h:1"])).expect("syncrelay").expect("valid").plan.direction, Direction::Both);
        assert!(sync(json!(["http://h"])).expect("syncrelay").is_err());
        assert!(sync(json!(["ws://h:1", "sideways"])).expect("syncrelay").is_err());
        assert!(sync(json!(["ws://h:1", "up", "[1]"])).expect("syncrelay").is_err());
        assert!(sync(json!([])).expect("syncrelay").is_err());
        assert!(SyncCall::parse(br#"{"method":"banpubkey"}"#).is_none());
    }

    #[test]
    fn changes_keep_the_lists_consistent_and_reads_show_them() {
        let key = "cd".repeat(32);
        let config = PolicyConfig { kinds_allowed: vec![1], ..PolicyConfig::default() };
        let mut lists = PolicyLists::default();
        call("allowpubkey", json!([key, "paid"])).unwrap().apply(&mut lists, &config).unwrap();
        let allowed = call("listallowedpubkeys", json!([])).unwrap().read(&lists, &config);
        assert_eq!(allowed, json!([{"pubkey": key, "reason": "paid"}]));
        call("banpubkey", json!([key])).unwrap().apply(&mut lists, &config).unwrap();
        assert!(lists.pubkeys_allowed.is_empty() && lists.reasons.pubkeys_allowed.is_empty(), "a ban ends an allow");
        assert_eq!(call("listbannedpubkeys", json!([])).unwrap().read(&lists, &config), json!([{"pubkey": key}]));
        call("allowkind", json!([7])).unwrap().apply(&mut lists, &config).unwrap();
        assert_eq!(call("listallowedkinds", json!([])).unwrap().read(&lists, &config), json!([1, 7]));
        let refused = call("disallowkind", json!([1])).unwrap().apply(&mut lists, &config);
        assert!(refused.unwrap_err().contains("configuration file"));
        call("blockip", json!(["::ffff:192.0.2.9"])).unwrap().apply(&mut lists, &config).unwrap();
        assert_eq!(lists.ips_blocked, vec!["192.0.2.9"], "addresses are kept as clients arrive");
        call("changerelayname", json!(["new name"])).unwrap().apply(&mut lists, &config).unwrap();
        assert_eq!(lists.name.as_deref(), Some("new name"));
    }
}

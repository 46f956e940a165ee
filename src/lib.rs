//! ringrelay: a thread-per-core Nostr relay on io_uring.
//!
//! Modules in the order an event travels through them:
//! - [`limits`]: every maximum, in one place.
//! - [`hex`]: lowercase hex for ids, keys and signatures.
//! - [`event`]: parse, canonical form, id and signature check (sans-IO).
//! - [`filter`]: NIP-01 filters and the naive match (sans-IO).
//! - [`proto`]: client messages in, relay messages out (sans-IO).
//! - [`deflate`]: RFC 7692 permessage-deflate: what to agree, and the codec (sans-IO).
//! - [`search`]: NIP-50 full-text search: terms, queries, a shard's index (tantivy).
//! - [`subs`]: the live-subscription index of one core (sans-IO).
//! - [`store`]: segments, indexes, storage rules, queries, group commit.
//! - [`config`]: the configuration and every per-connection budget.
//! - [`server`]: `ringrelay serve`: sessions, verbs, ingest stages, the core mesh, fan-out.
//! - [`fleet`]: the relay as a client of other relays: NIP-77 sync, peering.
//! - [`tools`]: the offline commands: import, export, verify, compact, repair, sync.

pub mod auth;
pub mod config;
pub mod deflate;
pub mod event;
pub mod filter;
pub mod fleet;
pub mod fuzzing;
pub mod hex;
pub mod limits;
pub mod measure;
pub mod proto;
pub mod search;
pub mod server;
pub mod store;
pub mod subs;
pub mod tools;

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

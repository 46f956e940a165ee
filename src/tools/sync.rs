//! `ringrelay sync URL`: a stopped data directory reconciled with a running relay over
//! NIP-77, then what the relay has and we lack fetched (down), what we have and it lacks
//! published (up), with a progress line. Fetched events are verified and stored under the
//! same rules as `import`; what is published is what the relay itself would serve.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::event::sign::Signer;
use crate::filter::Filter;
use crate::fleet::client::{Connector, RelayUrl};
use crate::fleet::sync::{self, Direction, Local, Plan, Summary};
use crate::store::query_shards;
use base64::Engine;
use sha2::Digest;

use super::import::{Importer, Outcome};
use super::StoreOptions;

const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

/// What `ringrelay sync` was asked to do.
pub struct SyncJob {
    pub url: RelayUrl,
    pub plan: Plan,
    /// A secret key to answer the relay's NIP-42 challenge with.
    pub auth_key: Option<PathBuf>,
    /// CA certificates (PEM) trusted for `wss://` besides the Mozilla roots.
    pub tls_ca: Option<PathBuf>,
    /// Shards of a new data directory.
    pub shard_count: u16,
}

pub fn run(options: &StoreOptions, job: SyncJob) -> anyhow::Result<Summary> {
    let options = options.clone();
    super::run_local("sync", move || Box::pin(async move { sync_dir(&options, job).await }))?
}

async fn sync_dir(options: &StoreOptions, job: SyncJob) -> anyhow::Result<Summary> {
    let signer = job.auth_key.as_deref().map(Signer::from_file).transpose()?.map(Arc::new);
    let mut local = StoppedDir::open(options, job.shard_count)?;
    let connector = Connector::new(signer, job.tls_ca.as_deref())?;
    let mut client = connector.connect(&job.url, CONNECT_DEADLINE).await?;
    let started = Instant::now();
    let mut last_progress = started;
    let mut progress = |summary: &Summary| {
        if last_progress.elapsed() >= PROGRESS_INTERVAL {
            last_progress = Instant::now();
            eprintln!(
                "sync: {:.0} s: {} local, {} only here, {} only there; {} fetched, {} stored; {} published; {} B \
                 sent, {} B received",
                started.elapsed().as_secs_f64(),
                summary.local,
                summary.have,
                summary.need,
                summary.fetched,
                summary.stored,
                summary.published,
                summary.traffic.bytes_sent,
                summary.traffic.bytes_received,
            );
        }
    };
    let outcome = sync::sync(&mut client, &job.plan, &mut local, &mut progress).await;
    client.close().await;
    local.importer.close().await?;
    Ok(outcome?)
}

/// The stopped data directory's side: its shards open for writing, with what the relay
/// would retire at start (bans, gift wraps to a vanished pubkey) retired, so that nothing
/// the relay would not serve is published.
struct StoppedDir {
    importer: Importer,
}

impl StoppedDir {
    fn open(options: &StoreOptions, shard_count: u16) -> anyhow::Result<StoppedDir> {
        let importer = Importer::open(options, shard_count)?;
        let requests: Vec<_> =
            importer.shards().iter().flat_map(|shard| shard.state().index.vanish_requests()).collect();
        let retirements = super::retirements(&options.data_dir)?;
        for shard in importer.shards() {
            let mut state = shard.state_mut();
            super::retire_wraps_to_vanished(&mut state, &requests);
            retirements.apply(&mut state.index);
        }
        Ok(StoppedDir { importer })
    }
}

impl Local for StoppedDir {
    async fn items(&mut self, filter: &Filter) -> anyhow::Result<Vec<(u64, [u8; 32])>> {
        let states: Vec<_> = self.importer.shards().iter().map(|shard| shard.state()).collect();
        let shards: Vec<_> = states.iter().map(|state| &**state).collect();
        let hits = query_shards(&shards, std::slice::from_ref(filter), usize::MAX, usize::MAX, crate::now_unix());
        Ok(hits.into_iter().map(|found| (found.hit.created_at, found.hit.id)).collect())
    }

    async fn store(&mut self, events: Vec<String>, summary: &mut Summary) -> anyhow::Result<()> {
        for outcome in self.importer.store(&events).await? {
            match outcome {
                Outcome::Stored => summary.stored += 1,
                Outcome::Duplicate => summary.duplicate += 1,
                Outcome::Rejected(reason) => summary.reject(&reason),
            }
        }
        Ok(())
    }

    async fn events(&mut self, ids: &[[u8; 32]]) -> anyhow::Result<Vec<String>> {
        let now = crate::now_unix();
        let mut events = Vec::with_capacity(ids.len());
        for id in ids {
            for shard in self.importer.shards() {
                let state = shard.state();
                if let Some(no) = state.index.lookup_id(id).filter(|&no| state.index.is_visible(no, now)) {
                    if let Some(json) = state.event_json(no) {
                        events.push(String::from_utf8(json)?);
                    }
                    break;
                }
            }
        }
        Ok(events)
    }
}

/// `ringrelay sync URL --relay http://ADMIN`: ask a running relay to sync with `url` now,
/// through its management API (`syncrelay`, signed with NIP-98 by an admin key); the
/// relay's answer, and whether it succeeded.
pub fn ask_running(
    relay: &str,
    admin_key: &Path,
    url: &RelayUrl,
    direction: Direction,
    filter: &str,
) -> anyhow::Result<(bool, String)> {
    use std::io::{Read, Write};
    let signer = Signer::from_file(admin_key)?;
    let rest = relay.strip_prefix("http://").ok_or_else(|| anyhow::anyhow!("--relay {relay}: not an http:// URL"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let direction = match direction {
        Direction::Down => "down",
        Direction::Up => "up",
        Direction::Both => "both",
    };
    let body = serde_json::json!({"method": "syncrelay", "params": [url.to_string(), direction, filter]}).to_string();
    let payload = crate::hex::encode(&sha2::Sha256::digest(body.as_bytes()));
    let tags =
        serde_json::json!([["u", format!("http://{authority}{path}")], ["method", "POST"], ["payload", payload]]);
    let event = signer.sign(crate::auth::KIND_HTTP_AUTH, crate::now_unix(), &tags, "");
    let authorization = base64::engine::general_purpose::STANDARD.encode(event);
    let mut stream = std::net::TcpStream::connect(authority)?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/nostr+json+rpc\r\nAuthorization: Nostr \
         {authorization}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let ok = response.starts_with("HTTP/1.1 200");
    let answer = response.split_once("\r\n\r\n").map_or(response.as_str(), |(_, body)| body).to_owned();
    Ok((ok, answer))
}

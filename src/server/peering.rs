//! Peering (`[[peers]]`, docs/fleet.md): each peer's link, run by one core (`core_of`, a
//! hash of its URL) as a task its `Peers` owns, started and stopped as the list changes
//! (`apply`; SIGHUP `reload`s the list):
//! - the live connection: a REQ from now on for what comes down, and this relay's new
//!   events sent up as they are stored (not those the peer itself sent us), with reconnects
//!   under a doubling pause;
//! - catch-up syncs (`fleet::sync`, NIP-77) at start, after every reconnect of the live
//!   connection and every `interval_secs`, over a connection of their own.
//!
//! Events from a peer enter as any client's EVENT does, through a session of the link's own
//! (`LinkSession`: no address, authenticated as this relay, so it reads every kind and is
//! not rate-limited), and their OKs come back to it.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::core::Core;
use super::gather;
use super::outbox::{Out, Outbox};
use super::parts::QueryLimits;
use super::peers::PeerState;
use crate::config::PeerConfig;
use crate::event::sign::Signer;
use crate::event::{EventId, Pubkey};
use crate::filter::Filter;
use crate::fleet::client::{Client, ClientError, RelayUrl};
use crate::fleet::sync::{self, Local, Plan, Summary, SyncError};
use crate::fleet::wire::{self, RelayMessage};
use crate::subs::ConnId;

const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
const CHALLENGE_WAIT: Duration = Duration::from_secs(2);
const ANSWER_DEADLINE: Duration = Duration::from_secs(30);
/// A live connection with nothing to say for this long is pinged; one that has sent nothing,
/// not even a pong, for twice as long is given up (a peer partitioned away, not closed).
const LIVE_IDLE: Duration = Duration::from_secs(30);
/// Ids of the latest events a peer sent us, not sent back to it: enough for a burst to
/// come back through our fan-out (the fan-out follows the append within milliseconds).
const RECENT_IDS_MAX: usize = 16_384;
/// Ids asked of the store in one query while reading what a peer lacks.
const READ_BATCH: usize = 500;
const LIVE_SUB: &str = "peer-live";
const UP_SUB: &str = "peer-up";

/// Start the links of the configured `[[peers]]` that fall to this core.
pub fn start(core: &Rc<Core>) {
    apply(core, &core.config.peers);
}

/// Which core runs the link to `url`: a hash of it, so that a link stays where it is when
/// other peers are added or removed.
pub fn core_of(url: &str, cores: usize) -> usize {
    let hash =
        url.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3));
    (hash % cores.max(1) as u64) as usize
}

/// Run exactly the links of `peers` that fall to this core: those no longer listed (or
/// listed with other settings) stop, new ones start, the rest go on untouched.
pub fn apply(core: &Rc<Core>, peers: &[PeerConfig]) {
    let mine: Vec<&PeerConfig> =
        peers.iter().filter(|peer| core_of(&peer.url, core.mesh.core_count) == core.id().0).collect();
    for running in core.peers.running() {
        if !mine.contains(&&running) && core.peers.remove(&running) {
            tracing::info!(peer = running.url, "peer link stopped");
        }
    }
    let running = core.peers.running();
    for peer in mine.into_iter().filter(|peer| !running.contains(peer)) {
        let Ok(url) = RelayUrl::parse(&peer.url) else { continue };
        let state = Rc::new(PeerState::new(&peer.url));
        let identity = core.peers.identity.clone();
        let link = Link { core: core.clone(), peer: peer.clone(), url, identity, state: state.clone() };
        let task = glommio::spawn_local(async move {
            futures_lite::future::zip(link.live_loop(), link.sync_loop()).await;
        })
        .detach();
        core.peers.add(peer.clone(), state, task);
    }
}

/// SIGHUP, on the core that watches for it: read `[[peers]]` from the config file again
/// and have every core run its share. A file that does not read or validate changes
/// nothing, and says why in the log. (Only `[[peers]]` is reloaded.)
pub async fn reload(core: &Rc<Core>) {
    let Some(path) = core.config.source.clone() else { return };
    let read = glommio::executor().spawn_blocking(move || crate::config::Config::from_file(&path)).await;
    match read {
        Ok(config) => {
            let count = config.peers.len();
            let peers: Arc<[PeerConfig]> = config.peers.into();
            core.mesh.gather(super::mesh::Ask::Peers(peers.clone()), async { apply(core, &peers) }).await;
            tracing::info!(peers = count, "peers reloaded");
        }
        Err(error) => tracing::error!(%error, "peers not reloaded; the links running stay as they are"),
    }
}

struct Link {
    core: Rc<Core>,
    peer: PeerConfig,
    url: RelayUrl,
    identity: Arc<Signer>,
    state: Rc<PeerState>,
}

impl Link {
    fn pauses(&self) -> (Duration, Duration) {
        let settings = &self.core.config.peering;
        (Duration::from_secs(settings.reconnect_min_secs), Duration::from_secs(settings.reconnect_max_secs))
    }

    /// The live connection, reconnected for as long as the core runs.
    async fn live_loop(&self) {
        if !self.peer.live {
            return;
        }
        let (min, max) = self.pauses();
        let mut pause = min;
        let mut reported_down = false;
        loop {
            match self.core.peers.connector.connect(&self.url, CONNECT_DEADLINE).await {
                Ok(client) => {
                    tracing::info!(peer = %self.url, "peer connected");
                    reported_down = false;
                    self.state.update(|figures| figures.connected = true);
                    self.state.sync_wanted.set(true);
                    let up_since = Instant::now();
                    let why = self.stream(client).await;
                    self.state.update(|figures| {
                        figures.connected = false;
                        figures.reconnects += 1;
                    });
                    tracing::warn!(peer = %self.url, reason = %why, "peer connection lost");
                    if up_since.elapsed() > max {
                        pause = min;
                    }
                }
                Err(error) if !reported_down => {
                    tracing::warn!(peer = %self.url, %error, "peer unreachable; retrying");
                    reported_down = true;
                }
                Err(error) => tracing::debug!(peer = %self.url, %error, "peer still unreachable"),
            }
            glommio::timer::sleep(pause).await;
            pause = (pause * 2).min(max);
        }
    }

    /// One live connection until it ends; why it did.
    async fn stream(&self, mut client: Client) -> String {
        if let Err(error) = client.authenticate(CHALLENGE_WAIT, ANSWER_DEADLINE).await {
            return error.to_string();
        }
        let Some(link) = LinkSession::open(&self.core, &self.identity) else {
            return "no session for the link".into();
        };
        let from_now = live_only(&self.peer.filter);
        if self.peer.direction.down() {
            if let Err(error) = client.send(wire::req(LIVE_SUB, &from_now)).await {
                return error.to_string();
            }
        }
        if self.peer.direction.up() {
            super::verbs::handle_text(&self.core, link.conn, &wire::req(UP_SUB, &from_now)).await;
        }
        let mut from_peer = RecentIds::default();
        loop {
            let next =
                futures_lite::future::race(async { Next::Peer(client.recv(LIVE_IDLE, "events").await) }, async {
                    Next::Local(link.outbox.recv().await)
                })
                .await;
            let sent = match next {
                Next::Peer(Ok(RelayMessage::Event { sub, event })) if sub == LIVE_SUB => {
                    if let Some(id) = sync::event_id(&event) {
                        from_peer.insert(id);
                    }
                    link.publish(&event).await;
                    Ok(())
                }
                Next::Peer(Ok(RelayMessage::Ok { accepted, message, .. })) => {
                    self.count_sent(accepted, &message);
                    Ok(())
                }
                Next::Peer(Ok(RelayMessage::Closed { sub, message })) if sub == LIVE_SUB => {
                    return format!("the peer closed the live subscription: {message}");
                }
                Next::Peer(Ok(other)) => {
                    tracing::debug!(peer = %self.url, ?other, "from a peer");
                    Ok(())
                }
                Next::Peer(Err(ClientError::Timeout(..))) if client.silent_for() > 2 * LIVE_IDLE => {
                    return format!("no answer to a ping for {:?}", client.silent_for() - LIVE_IDLE);
                }
                Next::Peer(Err(ClientError::Timeout(..))) => client.ping().await,
                Next::Peer(Err(error)) => return error.to_string(),
                Next::Local(Some(Out::Event { event, .. })) => match sync::event_id(&event.json) {
                    Some(id) if from_peer.contains(&id) => Ok(()),
                    _ => client.send(wire::event(&event.json)).await,
                },
                Next::Local(Some(out)) => match out.into_text().map(|text| RelayMessage::parse(&text)) {
                    Some(Ok(RelayMessage::Ok { accepted, message, .. })) => {
                        self.count_received(accepted, &message);
                        Ok(())
                    }
                    Some(Ok(RelayMessage::Closed { sub, message })) if sub == UP_SUB => {
                        return format!("this relay closed the link's subscription: {message}");
                    }
                    // A close queued to the link's session: cut off as a slow reader, or stopping.
                    None => return "this relay closed the link's session".into(),
                    _ => Ok(()),
                },
                Next::Local(None) => return "cut off as a slow reader".into(),
            };
            if let Err(error) = sent {
                return error.to_string();
            }
        }
    }

    fn count_sent(&self, accepted: bool, message: &str) {
        self.state.update(|figures| match accepted {
            true => figures.sent += 1,
            false => figures.refused += 1,
        });
        if !accepted {
            tracing::debug!(peer = %self.url, message, "the peer refused an event");
        }
    }

    fn count_received(&self, accepted: bool, message: &str) {
        self.state.update(|figures| match (accepted, wire::prefix(message)) {
            (true, "duplicate") => {}
            (true, _) => figures.received += 1,
            (false, _) => figures.refused += 1,
        });
    }

    /// Catch-up syncs: at start, when the live connection asks (after it reconnects), every
    /// `interval_secs`, and again after a failure under a doubling pause.
    async fn sync_loop(&self) {
        let interval = (self.peer.interval_secs > 0).then(|| Duration::from_secs(self.peer.interval_secs));
        let (min, max) = self.pauses();
        let mut pause = min;
        let mut last: Option<Instant> = None;
        loop {
            let due = self.state.sync_wanted.replace(false)
                || last.is_none()
                || interval.zip(last).is_some_and(|(interval, last)| last.elapsed() >= interval);
            if !due {
                glommio::timer::sleep(Duration::from_secs(1)).await;
                continue;
            }
            match self.catch_up().await {
                Ok(summary) => {
                    tracing::info!(peer = %self.url, %summary, "peer sync done");
                    self.state.update(|figures| {
                        figures.syncs += 1;
                        figures.last_sync_unix = crate::now_unix();
                        figures.last_sync_need = summary.need;
                        figures.last_sync_have = summary.have;
                        figures.received += summary.stored;
                        figures.sent += summary.published;
                        figures.refused +=
                            summary.rejected.values().sum::<u64>() + summary.refused.values().sum::<u64>();
                    });
                    last = Some(Instant::now());
                    pause = min;
                }
                Err(error) => {
                    tracing::warn!(peer = %self.url, %error, "peer sync failed; retrying");
                    self.state.update(|figures| figures.syncs_failed += 1);
                    glommio::timer::sleep(pause).await;
                    pause = (pause * 2).min(max);
                    last = last.or(Some(Instant::now()));
                    self.state.sync_wanted.set(true);
                }
            }
        }
    }

    async fn catch_up(&self) -> Result<Summary, SyncError> {
        sync_once(&self.core, &self.url, &Plan::new(self.peer.filter.clone(), self.peer.direction)).await
    }
}

/// One sync of the running relay with the relay at `url` (a peer's catch-up, or an
/// operator's `syncrelay` management call), over a connection of its own.
pub async fn sync_once(core: &Rc<Core>, url: &RelayUrl, plan: &Plan) -> Result<Summary, SyncError> {
    let identity = &core.peers.identity;
    let mut client = core.peers.connector.connect(url, CONNECT_DEADLINE).await?;
    let link = LinkSession::open(core, identity)
        .ok_or_else(|| SyncError::Local(anyhow::anyhow!("no session for the link")))?;
    let mut local = RelayLocal { core, link: &link };
    let outcome = sync::sync(&mut client, plan, &mut local, &mut |_| {}).await;
    client.close().await;
    outcome
}

enum Next {
    Peer(Result<RelayMessage, ClientError>),
    Local(Option<Out>),
}

/// `filter` (JSON text, checked at start) for new events only: `limit: 0` (NIP-01: no stored
/// events, then every new one). Not `since: now`, which would also drop new events dated a
/// little earlier (clients' clocks, backdated events), since `since` applies to live events
/// too.
fn live_only(filter: &str) -> String {
    let mut value: serde_json::Value = serde_json::from_str(filter).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(object) = value.as_object_mut() {
        object.insert("limit".into(), 0.into());
    }
    value.to_string()
}

/// An OK the link's session was sent: (accepted, message).
fn ok_of(out: Out) -> Option<(bool, String)> {
    match RelayMessage::parse(&out.into_text()?) {
        Ok(RelayMessage::Ok { accepted, message, .. }) => Some((accepted, message)),
        _ => None,
    }
}

/// The latest ids a peer sent, at most `RECENT_IDS_MAX`.
#[derive(Default)]
struct RecentIds {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl RecentIds {
    fn insert(&mut self, id: String) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
        }
        while self.order.len() > RECENT_IDS_MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
}

/// A session of the link's own on its core: events from the peer enter through it as a
/// client's would, and their OKs (and, live, this relay's new events) come back to it.
/// Authenticated as this relay, which is one of the fleet: it reads every kind, is not
/// rate-limited and has `peering.outbound_bytes_max` of queue.
struct LinkSession {
    core: Rc<Core>,
    conn: ConnId,
    outbox: Outbox,
}

impl LinkSession {
    fn open(core: &Rc<Core>, identity: &Signer) -> Option<LinkSession> {
        let (conn, outbox) = core.sessions.open(IpAddr::V6(Ipv6Addr::UNSPECIFIED), None)?;
        core.sessions.with(conn, |session| {
            session.auth.pubkeys.push(Pubkey(identity.pubkey()));
            session.outbound.set_capacity_size(core.config.peering.outbound_bytes_max);
        });
        Some(LinkSession { core: core.clone(), conn, outbox })
    }

    /// Hand an event to the ingest as a client's EVENT; its OK comes back to the outbox.
    async fn publish(&self, event: &str) {
        super::verbs::handle_text(&self.core, self.conn, &wire::event(event)).await;
    }
}

impl Drop for LinkSession {
    fn drop(&mut self) {
        self.core.sessions.close(self.conn);
    }
}

/// The running relay as a sync's local side.
struct RelayLocal<'a> {
    core: &'a Rc<Core>,
    link: &'a LinkSession,
}

impl Local for RelayLocal<'_> {
    async fn items(&mut self, filter: &Filter) -> anyhow::Result<Vec<(u64, [u8; 32])>> {
        let max = self.core.config.peering.items_max;
        let privacy = self.core.privacy_for(self.link.conn);
        let scatter = self.core.scatter();
        let items =
            gather::ids_everywhere(scatter, Arc::new(filter.clone()), max + 1, crate::now_unix(), privacy).await;
        anyhow::ensure!(items.len() <= max, "the set is over peering.items_max ({max} events)");
        Ok(items)
    }

    async fn store(&mut self, events: Vec<String>, summary: &mut Summary) -> anyhow::Result<()> {
        for event in &events {
            self.link.publish(event).await;
        }
        let mut answered = 0;
        while answered < events.len() {
            let out = self.link.outbox.recv().await.ok_or_else(|| anyhow::anyhow!("the link's session was closed"))?;
            let Some((accepted, message)) = ok_of(out) else { continue };
            answered += 1;
            match (accepted, wire::prefix(&message)) {
                (true, "duplicate") => summary.duplicate += 1,
                (true, _) => summary.stored += 1,
                (false, prefix) => summary.reject(prefix),
            }
        }
        Ok(())
    }

    async fn events(&mut self, ids: &[[u8; 32]]) -> anyhow::Result<Vec<String>> {
        let privacy = self.core.privacy_for(self.link.conn);
        let mut events = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(READ_BATCH) {
            let filter = Filter { ids: Some(chunk.iter().map(|id| EventId(*id)).collect()), ..Filter::default() };
            let limits =
                QueryLimits { default: chunk.len(), max: chunk.len(), now: crate::now_unix(), bytes_max: usize::MAX };
            let hits = gather::hits_everywhere(self.core.scatter(), Arc::from([filter]), limits, privacy.clone()).await;
            events.extend(hits.into_iter().flatten().map(|hit| String::from_utf8_lossy(&hit.json).into_owned()));
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_filter_asks_for_new_events_only_and_keeps_the_rest() {
        let live: serde_json::Value = serde_json::from_str(&live_only(r#"{"kinds":[1],"since":5,"limit":9}"#)).unwrap();
        assert_eq!(live, serde_json::json!({"kinds": [1], "since": 5, "limit": 0}));
    }

    #[test]
    fn a_link_stays_on_its_core_whatever_else_is_listed() {
        let url = "ws://10.0.0.6:7777";
        assert_eq!(core_of(url, 4), core_of(url, 4));
        assert!((0..64).all(|n| core_of(&format!("ws://10.0.0.{n}:7777"), 3) < 3));
        let spread: std::collections::HashSet<usize> =
            (0..64).map(|n| core_of(&format!("ws://10.0.0.{n}:7777"), 4)).collect();
        assert_eq!(spread.len(), 4, "64 peers land on every one of 4 cores");
        assert_eq!(core_of(url, 1), 0);
    }

    #[test]
    fn recent_ids_keep_the_latest_only() {
        let mut recent = RecentIds::default();
        for n in 0..RECENT_IDS_MAX + 10 {
            recent.insert(n.to_string());
        }
        recent.insert("5000".into());
        assert!(!recent.contains("0") && !recent.contains("9"));
        assert!(recent.contains("10") && recent.contains(&(RECENT_IDS_MAX + 9).to_string()));
        assert_eq!((recent.set.len(), recent.order.len()), (RECENT_IDS_MAX, RECENT_IDS_MAX));
    }
}

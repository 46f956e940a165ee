//! `Peers`: what a core knows of the peer links it runs (`[[peers]]`, `peering`): each
//! link's state and counts, read by the metrics. The links themselves are tasks the core
//! owns (`peering`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use glommio::task::JoinHandle;

use crate::config::PeerConfig;
use crate::event::sign::Signer;
use crate::fleet::client::Connector;

/// One link's figures at scrape time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerFigures {
    pub url: String,
    /// Whether its live connection is up.
    pub connected: bool,
    /// Events it sent us that we stored (live and fetched by catch-up syncs).
    pub received: u64,
    /// Events of ours it took (live and published by catch-up syncs).
    pub sent: u64,
    /// Events refused either way.
    pub refused: u64,
    pub syncs: u64,
    pub syncs_failed: u64,
    pub reconnects: u64,
    /// When its last catch-up sync ended well (Unix seconds; 0: none yet).
    pub last_sync_unix: u64,
    /// What its last catch-up sync found: events only it held, events only we held.
    pub last_sync_need: u64,
    pub last_sync_have: u64,
}

/// One link's cells, written by its tasks.
#[derive(Default)]
pub struct PeerState {
    figures: RefCell<PeerFigures>,
    /// Set when a catch-up sync is due now (after a reconnect).
    pub sync_wanted: Cell<bool>,
}

impl PeerState {
    pub fn new(url: &str) -> PeerState {
        PeerState {
            figures: RefCell::new(PeerFigures { url: url.to_owned(), ..PeerFigures::default() }),
            sync_wanted: Cell::new(true),
        }
    }

    pub fn update(&self, change: impl FnOnce(&mut PeerFigures)) {
        change(&mut self.figures.borrow_mut());
    }

    pub fn figures(&self) -> PeerFigures {
        self.figures.borrow().clone()
    }
}

/// One running link: what it was started with, its cells, and its task.
struct Running {
    config: PeerConfig,
    state: Rc<PeerState>,
    task: JoinHandle<()>,
}

/// The peer links one core runs, and the key it meets other relays with.
pub struct Peers {
    links: RefCell<Vec<Running>>,
    /// This relay's identity toward other relays (`peering.key_file`, or made at start).
    pub identity: Arc<Signer>,
    /// How it connects to them: that identity, and the TLS roots it trusts.
    pub connector: Connector,
}

impl Peers {
    pub fn new(connector: Connector) -> Peers {
        let identity = connector.signer.clone().expect("a relay has an identity toward its peers");
        Peers { links: RefCell::new(Vec::new()), identity, connector }
    }

    /// Own a link's task, cancelled when the link is removed or the core stops.
    pub fn add(&self, config: PeerConfig, state: Rc<PeerState>, task: JoinHandle<()>) {
        self.links.borrow_mut().push(Running { config, state, task });
    }

    /// The settings of the links running now.
    pub fn running(&self) -> Vec<PeerConfig> {
        self.links.borrow().iter().map(|link| link.config.clone()).collect()
    }

    /// Stop the link started with `config`, if one runs.
    pub fn remove(&self, config: &PeerConfig) -> bool {
        let mut links = self.links.borrow_mut();
        let Some(at) = links.iter().position(|link| &link.config == config) else { return false };
        links.remove(at).task.cancel();
        true
    }

    /// Stop every link (the core is stopping).
    pub fn stop(&self) {
        for link in self.links.borrow_mut().drain(..) {
            link.task.cancel();
        }
    }

    pub fn figures(&self) -> Vec<PeerFigures> {
        self.links.borrow().iter().map(|link| link.state.figures()).collect()
    }
}

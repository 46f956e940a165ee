//! `NegSync`: one NIP-77 sync's state on its connection: the relay's side of a negentropy
//! reconciliation over the (created_at, id) set gathered at `NEG-OPEN`, counted in the
//! core's `neg_syncs` and `neg_items` for as long as it lives.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use negentropy::{Negentropy, NegentropyStorageVector};

use super::stats::Stats;

pub struct NegSync {
    /// None while it is lent out to answer a message off the core.
    state: Option<Negentropy<'static, NegentropyStorageVector>>,
    items: usize,
    /// Which sync this is, so that a state lent out comes back only to it.
    serial: u64,
    /// When the client last sent a message for it (`negentropy.idle_secs` counts from here).
    pub last_used: Instant,
    stats: Rc<Stats>,
}

/// The relay's side of a sync before it is counted: built off the core (`build` sorts the
/// whole set, ~40 ms at 500,000 events) and sent back.
pub struct Built {
    state: Negentropy<'static, NegentropyStorageVector>,
    items: usize,
}

impl Built {
    /// The relay's side over `items` (any order, duplicates allowed), each message at most
    /// `frame_size_max` bytes (0: no limit), and its answer to the client's first message.
    pub fn build(
        items: Vec<(u64, [u8; 32])>,
        frame_size_max: u64,
        first: &[u8],
    ) -> Result<(Built, Vec<u8>), negentropy::Error> {
        let count = items.len();
        let storage = crate::fleet::sync::sealed_set(items)?;
        let mut state = Negentropy::owned(storage, frame_size_max)?;
        let answer = state.reconcile(first)?;
        Ok((Built { state, items: count }, answer))
    }

    /// The answer to a later message, before the sync is counted (the fuzz target's way in).
    pub fn reconcile(&mut self, message: &[u8]) -> Result<Vec<u8>, negentropy::Error> {
        self.state.reconcile(message)
    }
}

/// The state of a sync lent out to answer one message on glommio's blocking thread.
pub struct Lent {
    state: Negentropy<'static, NegentropyStorageVector>,
    serial: u64,
}

impl Lent {
    pub fn reconcile(&mut self, message: &[u8]) -> Result<Vec<u8>, negentropy::Error> {
        self.state.reconcile(message)
    }
}

/// How a message of a sync is answered.
pub enum Turn {
    /// Here and now: the set is small.
    Now(Result<Vec<u8>, negentropy::Error>),
    /// Off the core, by the state lent out (given back with [`NegSync::give_back`]).
    Lend(Lent),
    /// The last message is still being answered: the client did not wait for it.
    Busy,
}

thread_local! {
    static NEXT_SERIAL: Cell<u64> = const { Cell::new(0) };
}

impl NegSync {
    /// A built sync, counted from now on.
    pub fn new(built: Built, stats: Rc<Stats>) -> NegSync {
        stats.neg_syncs.add(1);
        stats.neg_items.add(built.items as u64);
        let serial = NEXT_SERIAL.with(|next| next.replace(next.get() + 1));
        NegSync { state: Some(built.state), items: built.items, serial, last_used: Instant::now(), stats }
    }

    /// Answer `message` here if the set holds fewer than `lend_from` events, else lend the
    /// state out to answer it off the core.
    pub fn turn(&mut self, message: &[u8], lend_from: usize) -> Turn {
        self.last_used = Instant::now();
        match self.state.as_mut() {
            None => Turn::Busy,
            Some(state) if self.items < lend_from => Turn::Now(state.reconcile(message)),
            Some(_) => Turn::Lend(Lent { state: self.state.take().expect("just seen"), serial: self.serial }),
        }
    }

    /// Take back a state lent out; `false` (and it is dropped) when it is another sync's:
    /// this one was closed and replaced meanwhile.
    pub fn give_back(&mut self, lent: Lent) -> bool {
        if lent.serial != self.serial || self.state.is_some() {
            return false;
        }
        self.state = Some(lent.state);
        true
    }
}

impl Drop for NegSync {
    fn drop(&mut self) {
        self.stats.neg_syncs.sub(1);
        self.stats.neg_items.sub(self.items as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use negentropy::Id;

    /// A message answered here (the set is never lent out).
    fn answered(sync: &mut NegSync, message: &[u8]) -> Result<Vec<u8>, negentropy::Error> {
        match sync.turn(message, usize::MAX) {
            Turn::Now(answer) => answer,
            _ => panic!("a sync never lent out answers here"),
        }
    }

    fn id(n: u8) -> [u8; 32] {
        [n; 32]
    }

    /// Against the crate's own client: the relay's side tells the client what each has
    /// that the other lacks, and its items are counted while it lives.
    #[test]
    fn a_sync_finds_what_each_side_lacks_and_is_counted_while_it_lives() {
        let stats = Rc::new(Stats::default());
        let relay_items = vec![(10, id(1)), (20, id(2)), (30, id(3)), (20, id(2))];

        let mut client_storage = NegentropyStorageVector::new();
        for (created_at, n) in [(10, 1), (40, 4)] {
            client_storage.insert(created_at, Id::from_byte_array(id(n))).unwrap();
        }
        client_storage.seal().unwrap();
        let mut client = Negentropy::owned(client_storage, 0).unwrap();
        let first = client.initiate().unwrap();
        let (built, mut answer) = Built::build(relay_items, 0, &first).unwrap();
        let mut sync = NegSync::new(built, stats.clone());
        assert_eq!((stats.neg_syncs.get(), stats.neg_items.get()), (1, 4));
        let (mut have, mut need) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            match client.reconcile_with_ids(&answer, &mut have, &mut need).unwrap() {
                Some(next) => answer = answered(&mut sync, &next).unwrap(),
                None => break,
            }
        }
        let bytes = |ids: Vec<Id>| {
            let mut ids: Vec<[u8; 32]> = ids.into_iter().map(Id::to_bytes).collect();
            ids.sort();
            ids
        };
        assert_eq!(bytes(have), vec![id(4)]);
        assert_eq!(bytes(need), vec![id(2), id(3)]);
        drop(sync);
        assert_eq!((stats.neg_syncs.get(), stats.neg_items.get()), (0, 0));
    }

    /// A large set's state is lent out and must come back to the same sync before the next
    /// message; a message while it is out is `Busy`; another sync does not take it.
    #[test]
    fn a_lent_state_comes_back_only_to_its_sync() {
        let stats = Rc::new(Stats::default());
        let build = || Built::build(vec![(1, id(1)), (2, id(2))], 0, &[0x61]).unwrap().0;
        let (mut sync, mut other) = (NegSync::new(build(), stats.clone()), NegSync::new(build(), stats));
        assert!(matches!(sync.turn(&[0x61], 10), Turn::Now(Ok(_))), "a small set is answered here");
        let Turn::Lend(mut lent) = sync.turn(&[0x61], 2) else { panic!("a set of 2 is lent from 2") };
        assert!(matches!(sync.turn(&[0x61], 2), Turn::Busy));
        assert!(lent.reconcile(&[0x61]).is_ok());
        let Turn::Lend(others) = other.turn(&[0x61], 0) else { panic!("lent") };
        assert!(!sync.give_back(others), "not its state");
        assert!(sync.give_back(lent));
        assert!(matches!(sync.turn(&[0x61], 10), Turn::Now(Ok(_))));
    }

    /// A message that is not negentropy is an error, not a panic; one claiming a huge id
    /// list is refused without allocating it.
    #[test]
    fn a_malformed_message_is_an_error() {
        assert!(Built::build(vec![(1, id(1))], 0, b"").is_err(), "no version byte");
        let (built, _) = Built::build(vec![(1, id(1))], 0, &[0x61]).unwrap();
        let mut sync = NegSync::new(built, Rc::new(Stats::default()));
        assert!(answered(&mut sync, b"").is_err(), "no version byte");
        assert!(answered(&mut sync, &[0x20]).is_err(), "not a version");
        let huge_id_list = [0x61, 0x00, 0x00, 0x02, 0x81, 0x80, 0x80, 0x80, 0x80, 0x00];
        assert!(answered(&mut sync, &huge_id_list).is_err());
        // An overlong varint: whatever the answer, no panic.
        let _ = answered(&mut sync, &[0x61, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        // A newer protocol version: answered with the one this side speaks (0x61).
        assert_eq!(answered(&mut sync, &[0x62]).unwrap(), vec![0x61]);
    }
}

//! Connections per client address, counted across every core.
//!
//! Connections from one address land on any core (SO_REUSEPORT hashes the 4-tuple), so the
//! count is shared. It is touched once when a connection opens and once when it closes,
//! never on the event path, so a mutex is the simple and sufficient tool.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// The relay-wide table of open connections per address.
#[derive(Clone, Default)]
pub struct IpSlots {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place in [`IpSlots`]; given back when dropped.
pub struct IpSlot {
    ip: IpAddr,
    slots: IpSlots,
}

impl IpSlot {
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl IpSlots {
    /// Take a slot for `ip`, or `None` when it already holds `max` connections.
    pub fn take(&self, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(IpSlot { ip, slots: self.clone() })
    }

    /// How many connections `ip` holds now.
    pub fn open(&self, ip: IpAddr) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_address_and_given_back() {
        let slots = IpSlots::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = slots.take(a, 2).unwrap();
        let _second = slots.take(a, 2).unwrap();
        assert!(slots.take(a, 2).is_none());
        let _other = slots.take(b, 2).unwrap();
        drop(first);
        assert_eq!(slots.open(a), 1);
        assert!(slots.take(a, 2).is_some());
    }
}

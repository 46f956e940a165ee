//! Rate limits: token buckets (a rate and a burst) for EVENTs, queries (REQ and COUNT) and
//! new connections, keyed by the client's address, or by its authenticated pubkey once it
//! has one (so that users behind one address do not share a bucket).
//!
//! State is per core: no lock, no shared cache line. The kernel spreads one address's
//! connections over the cores, so a client with connections on k cores can reach k times
//! a rate (at most `cores` times); one connection always meets the configured rate. Each
//! core tracks at most `tracked_max` keys: the once-a-second sweep forgets keys idle long
//! enough for their buckets to have refilled (forgetting them changes nothing), and while
//! the table is full, new keys share one overflow bucket per kind of work, so a flood of
//! fresh addresses is limited as one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use crate::config::{Rate, RateLimitConfig};
use crate::event::Pubkey;

/// Whose bucket a request is taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RateKey {
    Ip(IpAddr),
    Pubkey([u8; 32]),
}

/// What is being limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    Event,
    Query,
    Connection,
}

impl Work {
    pub const ALL: [Work; 3] = [Work::Event, Work::Query, Work::Connection];

    pub fn label(self) -> &'static str {
        match self {
            Work::Event => "event",
            Work::Query => "query",
            Work::Connection => "connection",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(rate: &Rate, now: Instant) -> Bucket {
        Bucket { tokens: f64::from(rate.burst), updated: now }
    }

    /// Refill for the time since the last take, then take one token if there is one.
    fn take(&mut self, rate: &Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second()).min(f64::from(rate.burst));
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket would be full by `now` (its key can be forgotten).
    fn refilled(&self, rate: &Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        rate.per_minute == 0 || self.tokens + elapsed * rate.per_second() >= f64::from(rate.burst)
    }
}

/// One core's buckets.
pub struct RateLimiter {
    config: RateLimitConfig,
    exempt_ips: Vec<IpAddr>,
    exempt_pubkeys: Vec<[u8; 32]>,
    buckets: HashMap<(RateKey, usize), Bucket>,
    overflow: [Option<Bucket>; 3],
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig) -> RateLimiter {
        RateLimiter {
            config: config.clone(),
            exempt_ips: config.exempt_ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
            exempt_pubkeys: config
                .exempt_pubkeys
                .iter()
                .filter_map(|key| Pubkey::from_hex(key))
                .map(|key| key.0)
                .collect(),
            buckets: HashMap::new(),
            overflow: [None; 3],
        }
    }

    fn rate(&self, work: Work) -> &Rate {
        match work {
            Work::Event => &self.config.events,
            Work::Query => &self.config.queries,
            Work::Connection => &self.config.connections,
        }
    }

    /// The key for a connection from `ip` authenticated as `pubkeys` (the first of them),
    /// or `None` when it is exempt.
    pub fn key(&self, ip: IpAddr, pubkeys: &[Pubkey]) -> Option<RateKey> {
        if !self.config.enabled
            || self.exempt_ips.contains(&ip)
            || pubkeys.iter().any(|key| self.exempt_pubkeys.contains(&key.0))
        {
            return None;
        }
        Some(pubkeys.first().map_or(RateKey::Ip(ip), |key| RateKey::Pubkey(key.0)))
    }

    /// Take one token for `work` from `key`'s bucket; `false`: over the limit.
    pub fn admit(&mut self, key: RateKey, work: Work, now: Instant) -> bool {
        let rate = *self.rate(work);
        if rate.burst == 0 {
            return true;
        }
        let full = self.buckets.len() >= self.config.tracked_max;
        match self.buckets.get_mut(&(key, work.index())) {
            Some(bucket) => bucket.take(&rate, now),
            None if full => {
                self.overflow[work.index()].get_or_insert_with(|| Bucket::full(&rate, now)).take(&rate, now)
            }
            None => {
                let mut bucket = Bucket::full(&rate, now);
                let admitted = bucket.take(&rate, now);
                self.buckets.insert((key, work.index()), bucket);
                admitted
            }
        }
    }

    /// Forget keys whose buckets have refilled (the sweep, once a second).
    pub fn forget_idle(&mut self, now: Instant) {
        let config = &self.config;
        self.buckets.retain(|(_, work), bucket| {
            let rate = match Work::ALL[*work] {
                Work::Event => &config.events,
                Work::Query => &config.queries,
                Work::Connection => &config.connections,
            };
            !bucket.refilled(rate, now)
        });
    }

    /// Keys tracked now (for `/metrics`).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config() -> RateLimitConfig {
        RateLimitConfig {
            events: Rate { per_minute: 120, burst: 3 },
            tracked_max: 2,
            exempt_ips: vec!["10.0.0.9".into()],
            ..RateLimitConfig::default()
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut limiter = RateLimiter::new(&config());
        let key = limiter.key("10.0.0.1".parse().unwrap(), &[]).unwrap();
        let start = Instant::now();
        let admitted = (0..5).filter(|_| limiter.admit(key, Work::Event, start)).count();
        assert_eq!(admitted, 3, "the burst");
        assert!(!limiter.admit(key, Work::Event, start + Duration::from_millis(400)));
        assert!(limiter.admit(key, Work::Event, start + Duration::from_millis(600)), "2 a second refill");
    }

    #[test]
    fn exempt_addresses_and_authenticated_keys() {
        let limiter = RateLimiter::new(&config());
        assert_eq!(limiter.key("10.0.0.9".parse().unwrap(), &[]), None);
        let user = Pubkey([7; 32]);
        assert_eq!(limiter.key("10.0.0.1".parse().unwrap(), &[user]), Some(RateKey::Pubkey([7; 32])));
    }

    #[test]
    fn the_table_is_bounded_and_idle_keys_are_forgotten() {
        let mut limiter = RateLimiter::new(&config());
        let start = Instant::now();
        for last in 1..=5u8 {
            let key = RateKey::Ip(IpAddr::from([10, 0, 0, last]));
            limiter.admit(key, Work::Event, start);
        }
        assert_eq!(limiter.tracked(), 2, "at most tracked_max keys");
        limiter.forget_idle(start + Duration::from_secs(10));
        assert_eq!(limiter.tracked(), 0);
    }
}

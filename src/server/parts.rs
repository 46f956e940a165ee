//! What a query asks of a core and what a core answers, as plain data: the limits a scan
//! runs under, a stored event on its way to a client, a count. The mesh carries them and
//! `scan` makes them; neither needs the other for it.

use std::sync::Arc;

use crate::store::query::Ordered;

#[derive(Clone, Copy, Debug)]
pub struct QueryLimits {
    pub default: usize,
    pub max: usize,
    pub now: u64,
    /// The most event JSON, in bytes, one core's part of an answer carries
    /// (`query_answer_bytes_max`); past it the part is cut, newest events kept.
    pub bytes_max: usize,
}

/// A stored event on its way to a client.
#[derive(Clone, Debug)]
pub struct WireHit {
    pub created_at: u64,
    pub id: [u8; 32],
    pub json: Arc<[u8]>,
    /// A search hit's relevance (NIP-50), best highest; 0 for other filters' hits.
    pub score: f32,
}

impl Ordered for WireHit {
    fn created_at(&self) -> u64 {
        self.created_at
    }
    fn id(&self) -> &[u8; 32] {
        &self.id
    }
}

/// One core's count: exact unless a filter's scan stopped at its limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountPart {
    pub count: u64,
    pub approximate: bool,
}

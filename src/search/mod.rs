//! NIP-50 full-text search: the text model and query language ([`text`], sans-IO) and a
//! shard's index ([`index`], tantivy). The server's side (feeding the index from the
//! shards, running a filter's search on every core) is `server::search`.

pub mod index;
pub mod text;

pub use index::{Doc, LogPosition, SearchFigures, Searching, ShardSearch};
pub use text::{QueryError, SearchQuery};

use serde::{Deserialize, Serialize};

/// `[search]`: NIP-50.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// Keep a full-text index per shard and answer `search` filters (and list 50 in NIP-11).
    /// An encrypted store keeps none: the index would hold its text in the clear.
    pub enabled: bool,
    /// The kinds indexed; a search finds events of these kinds only. Private kinds
    /// (`policy.private_kinds`) are never indexed.
    pub kinds: Vec<u16>,
    /// tantivy's indexing arena per shard (at least 15 MB): what it holds before it writes a
    /// segment of the index.
    pub writer_memory_bytes: usize,
    /// Bytes of events queued to a shard's indexer; past it, feeding waits (ingest does not).
    pub queue_bytes_max: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            enabled: true,
            kinds: vec![0, 1, 30023, 9802],
            writer_memory_bytes: crate::limits::SEARCH_WRITER_MEMORY_MIN,
            queue_bytes_max: 8 << 20,
        }
    }
}

impl SearchConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.writer_memory_bytes >= crate::limits::SEARCH_WRITER_MEMORY_MIN,
            "search.writer_memory_bytes must be at least 15000000 (tantivy's smallest arena)"
        );
        anyhow::ensure!(self.queue_bytes_max >= 64 * 1024, "search.queue_bytes_max must be at least 65536");
        Ok(())
    }
}

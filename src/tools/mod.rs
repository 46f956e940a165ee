//! The offline commands an operator runs against a data directory: [`import`], [`export`],
//! [`verify`], [`compact`], [`repair`], [`sync`]. They share the data directory lock with the server, so they never
//! run beside it (export and verify may run beside each other).

pub mod bench_store;
pub mod compact;
pub mod export;
pub mod import;
pub mod repair;
pub mod sync;
pub mod verify;

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::store::crypto::SegmentKey;
use crate::store::{Access, DataDir, OpenMode, ShardConfig, ShardId, ShardState};

/// What every offline command needs to find and open the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub data_dir: PathBuf,
    pub key_file: Option<PathBuf>,
    pub segment_size: usize,
}

impl StoreOptions {
    pub fn key(&self) -> anyhow::Result<Option<SegmentKey>> {
        self.key_file.as_deref().map(SegmentKey::from_file).transpose().context("loading the at-rest key")
    }

    pub fn shard_config(&self) -> anyhow::Result<ShardConfig> {
        Ok(ShardConfig::new(self.segment_size, self.key()?))
    }
}

/// Open every shard of an existing data directory without changing anything on disk, and
/// apply what the relay applies at start (gift wraps to a pubkey that vanished, banned
/// events and banned pubkeys' events are retired), so a tool sees what the relay serves.
pub fn open_read_only(options: &StoreOptions) -> anyhow::Result<(DataDir, Vec<ShardState>)> {
    let dir = DataDir::open(&options.data_dir, Access::Shared)?;
    let config = options.shard_config()?;
    let mut shards = ShardId::all(dir.shard_count)
        .map(|shard| ShardState::open(&dir.shard_dir(shard), shard, config.clone(), OpenMode::ReadOnly))
        .collect::<Result<Vec<_>, _>>()?;
    let requests: Vec<([u8; 32], u64)> = shards.iter().flat_map(|state| state.index.vanish_requests()).collect();
    let retirements = retirements(&options.data_dir)?;
    for state in &mut shards {
        retire_wraps_to_vanished(state, &requests);
        retirements.apply(&mut state.index);
    }
    Ok((dir, shards))
}

/// What the data directory's `policy.toml` retires (NIP-86 bans); none without the file.
pub fn retirements(data_dir: &Path) -> anyhow::Result<crate::store::Retirements> {
    Ok(crate::config::PolicyLists::load(data_dir)?.retirements())
}

/// NIP-62 across shards: retire from `state` the gift wraps to each pubkey of `requests`
/// (author, date) dated up to its request.
pub fn retire_wraps_to_vanished(state: &mut ShardState, requests: &[([u8; 32], u64)]) {
    for (pubkey, until) in requests {
        state.index.kill_wraps_to(crate::hex::encode(pubkey).as_bytes(), *until);
    }
}

/// Run `work` on a single glommio executor on this thread's core set.
pub fn run_local<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> anyhow::Result<T> {
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name(name)
        .io_memory(crate::limits::IO_MEMORY_SIZE)
        .spawn(work)
        .map_err(|error| {
            anyhow::anyhow!("starting a glommio executor: {error} (is `ulimit -l` at least 8 MiB? see tuning/)")
        })?;
    handle.join().map_err(|error| anyhow::anyhow!("executor {name} failed: {error}"))
}

pub fn display(path: &Path) -> String {
    path.display().to_string()
}

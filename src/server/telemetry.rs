//! A core's figures for `/metrics` and `/stats`: its own, read from its subsystems, and
//! every core's, gathered through the mesh.

use std::rc::Rc;

use super::core::Core;
use super::mesh::Ask;
use super::metrics::{CoreMetrics, ProcessMetrics, Scrape};
use super::stats::StatsSnapshot;

/// This core's figures for a scrape: a copy of its cells, what its subsystems hold now, and
/// one pass over its shards.
pub fn local_metrics(core: &Core) -> CoreMetrics {
    let stats = &core.stats;
    let limits = &core.config.limits;
    let plugin = core.gate.plugin.as_ref();
    let mut snapshot = stats.snapshot();
    snapshot.subscriptions = core.sessions.subscription_count() as u64;
    snapshot.shards_refusing_writes = core.storage.refusing_count() as u64;
    snapshot.rate_keys = core.gate.rate_keys() as u64;
    snapshot.plugin_starts = plugin.map_or(0, |plugin| plugin.figures.starts.get());
    snapshot.plugin_failures = plugin.map_or(0, |plugin| plugin.figures.failures.get());
    let search = core.storage.search_figures();
    (snapshot.search_indexed, snapshot.search_queue_bytes, snapshot.search_failures, snapshot.search_documents) =
        search;
    CoreMetrics {
        core: core.id(),
        stats: snapshot,
        labelled: stats.labelled(),
        events: stats.events.borrow().clone(),
        histograms: stats.histograms(),
        busy_seconds: glommio::executor().executor_stats().executor_runtime().as_secs_f64(),
        budget_limits: vec![
            ("outbound_bytes", limits.outbound_bytes_per_core_max as u64),
            ("queries", limits.queries_per_core_max as u64),
            ("handshakes", crate::limits::HANDSHAKES_PER_CORE_MAX as u64),
            ("neg_items", core.config.negentropy.items_per_core_max as u64),
            ("deflate_connections", core.config.compression.connections_per_core_max as u64),
            ("deflate_contexts", core.config.compression.contexts_per_core_max as u64),
        ],
        shards: core.storage.figures(),
        peers: core.peers.figures(),
    }
}

/// Every core's figures, through the mesh's bounded gather.
pub async fn metrics_everywhere(core: &Rc<Core>) -> Vec<CoreMetrics> {
    let answers = core.mesh.gather(Ask::Metrics, async { Box::new(local_metrics(core)) }).await;
    let mut cores: Vec<CoreMetrics> = answers.into_iter().map(|part| *part).collect();
    cores.sort_by_key(|core| core.core);
    cores
}

/// `/metrics`: every core's figures, with the process's read off the cores.
pub async fn scrape(core: &Rc<Core>) -> String {
    let cores = metrics_everywhere(core).await;
    let data_dir = core.config.data_dir.clone();
    let process = glommio::executor().spawn_blocking(move || ProcessMetrics::read(&data_dir)).await;
    super::metrics::render(Scrape { cores, process, storage_reserve_bytes: core.config.storage_reserve_bytes })
}

/// Every core's counters, summed, with the process's.
pub async fn stats_everywhere(core: &Rc<Core>) -> StatsSnapshot {
    let mut total = StatsSnapshot { cores: 0, ..StatsSnapshot::default() };
    for core in metrics_everywhere(core).await {
        total.merge(&core.stats);
    }
    total.rss_bytes = super::stats::resident_bytes();
    total
}

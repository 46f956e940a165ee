//! What a core does on its own, besides serving its connections: the messages other cores
//! send it, its long-lived tasks, and what it settles before it serves.

use std::rc::Rc;
use std::sync::Arc;

use super::core::Core;
use super::mesh::{Answer, Ask, CoreMsg, RequestId, ScanAsk};
use super::parts::QueryLimits;
use super::{fanout, ingest, scan, telemetry};
use crate::store::Privacy;

/// Start the core's long-lived tasks: a backlog pump per peer, an ack pipeline's task per
/// shard, and the once-a-second sweep.
pub fn start_tasks(core: &Rc<Core>) {
    for peer in core.mesh.peers() {
        core.own_task(glommio::spawn_local(core.mesh.clone().pump(peer)).detach());
    }
    for pipeline in core.storage.pipelines() {
        core.own_task(glommio::spawn_local(ingest::answer_appends(core.clone(), pipeline.clone())).detach());
    }
    core.own_task(glommio::spawn_local(sweep(core.clone())).detach());
}

/// Once a second, `Core::sweep_once`; and on the core that watches for SIGHUP, when one came,
/// the lists and the `[[peers]]` reloaded everywhere.
async fn sweep(core: Rc<Core>) {
    loop {
        glommio::timer::sleep(std::time::Duration::from_secs(1)).await;
        if core.gate.take_reload_request() {
            core.reload_lists().await;
            super::peering::reload(&core).await;
        }
        core.sweep_once();
    }
}

/// A message from another core. Never waits (see `mesh`).
pub fn handle_message(core: &Rc<Core>, message: CoreMsg) {
    match message {
        CoreMsg::Append { routed, reply } => ingest::append_owned(core, *routed, reply),
        CoreMsg::Ack { reply, outcome, reason } => ingest::deliver_ok(core, &reply, outcome, &reason),
        CoreMsg::Live(event) => fanout::fan_out(core, &event),
        CoreMsg::Ask { request, ask: Ask::Metrics } => {
            let answer = Answer::Metrics(Box::new(telemetry::local_metrics(core)));
            core.mesh.post(request.core, CoreMsg::Answer { request, answer });
        }
        CoreMsg::Ask { request, ask: Ask::Lists(lists) } => {
            core.apply_lists(lists);
            core.mesh.post(request.core, CoreMsg::Answer { request, answer: Answer::Applied });
        }
        CoreMsg::Ask { request, ask: Ask::Peers(peers) } => {
            super::peering::apply(core, &peers);
            core.mesh.post(request.core, CoreMsg::Answer { request, answer: Answer::Applied });
        }
        CoreMsg::Ask { request, ask: Ask::Scan(scan) } => start_remote_scan(core, request, scan),
        CoreMsg::Cancel { request } => core.queries.cancel_remote(request),
        CoreMsg::Answer { request, answer } => core.mesh.on_answer(request, answer),
    }
}

/// Scan this core's shards for another core's gather; the asker bounds how many it has in
/// flight, and may cancel.
fn start_remote_scan(core: &Rc<Core>, request: RequestId, ask: ScanAsk) {
    let owner = core.clone();
    core.queries.start_remote(request, async move {
        let (storage, queries) = (&owner.storage, &owner.queries);
        let answer = match ask {
            ScanAsk::Hits { filters, limits, privacy } => {
                Answer::Hits(scan::hits(storage, queries, &filters, limits, &privacy).await)
            }
            ScanAsk::Count { filters, limits, privacy } => {
                Answer::Count(scan::count(storage, queries, &owner.stats, &filters, limits, &privacy).await)
            }
            ScanAsk::Ids { filter, limit, now, privacy } => {
                Answer::Ids(scan::ids(storage, queries, &filter, limit, now, &privacy).await)
            }
        };
        if owner.queries.finish_remote(request) {
            owner.mesh.post(request.core, CoreMsg::Answer { request, answer });
        }
    });
}

/// At start, before serving: every stored request to vanish, from every core, retires the
/// gift wraps to its author from this core's shards (replay retires the author's own events
/// on its shard; the wraps to it live on any shard).
pub async fn apply_stored_vanish_requests(core: &Rc<Core>) {
    let filter = crate::filter::Filter { kinds: Some(vec![crate::event::kind::KIND_VANISH]), ..Default::default() };
    let every = crate::limits::SHARD_EVENT_COUNT_MAX;
    let limits = QueryLimits { default: every, max: every, now: crate::now_unix(), bytes_max: usize::MAX };
    let found = super::gather::hits_everywhere(core.scatter(), Arc::from([filter]), limits, Privacy::default()).await;
    for hit in found.into_iter().flatten() {
        let Ok(event) = serde_json::from_slice::<serde_json::Value>(&hit.json) else { continue };
        let pubkey = event["pubkey"].as_str().and_then(|key| crate::hex::decode_lower::<32>(key.as_bytes()));
        if let Some(pubkey) = pubkey {
            core.storage.note_vanish(&pubkey, hit.created_at);
        }
    }
}

//! History queries: the preloaded store, what each query must return, the open-loop
//! REQ schedule and the checks at EOSE.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketReceiver;
use futures_lite::StreamExt;
use futures_util::SinkExt;
use glommio::{LocalExecutorBuilder, Placement};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::plan::QueryPlan;
use crate::stats::{Metric, Sample};
use crate::wire::{self, Inflater, Reply};
use crate::workload::{self, status, EventTable};

use super::known::{newest_first, Entry};
use super::net::{connect, next_text, Stream, Target, Ws};
use super::shared::{lost, Shared, IO_MEMORY_SIZE};

/// Answered query subscriptions a connection remembers, to tell late live events from strays.
pub(super) const FINISHED_QUERIES_KEPT: usize = 4_096;
/// Preload: EVENTs in flight per connection.
pub(super) const PRELOAD_WINDOW: usize = 256;

/// Publish the preload events (untimed, a window of EVENTs in flight per connection) and
/// wait for their OKs; returns how many were accepted.
pub(super) fn preload_store(
    target: &Target,
    table: &EventTable,
    range: Range<usize>,
    connections: usize,
) -> anyhow::Result<usize> {
    let target = target.clone();
    // The executor needs 'static data; the table outlives the thread because we join it.
    let events: Vec<(usize, [u8; 32], async_tungstenite::tungstenite::Utf8Bytes)> =
        range.clone().map(|i| (i, table.events[i].id, table.events[i].message.clone())).collect();
    let results = LocalExecutorBuilder::new(Placement::Unbound)
        .name("loadgen-preload")
        .io_memory(IO_MEMORY_SIZE)
        .spawn(move || async move {
            let events = Rc::new(events);
            let mut tasks = Vec::new();
            for conn in 0..connections.max(1) {
                let ws = connect(&target).await?;
                let events = events.clone();
                tasks.push(glommio::spawn_local(preload_connection(ws, events, conn, connections.max(1))));
            }
            let mut results = Vec::new();
            for task in tasks {
                results.extend(task.await?);
            }
            Ok::<_, anyhow::Error>(results)
        })
        .map_err(|e| anyhow::anyhow!("cannot start the preload thread: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("preload thread failed: {e}"))??;
    let mut accepted = 0;
    for (index, ok) in results {
        table.set_status(index, if ok { status::ACCEPTED } else { status::REJECTED });
        accepted += usize::from(ok);
    }
    Ok(accepted)
}

pub(super) async fn preload_connection(
    ws: Ws,
    events: Rc<Vec<(usize, [u8; 32], async_tungstenite::tungstenite::Utf8Bytes)>>,
    conn: usize,
    connections: usize,
) -> anyhow::Result<Vec<(usize, bool)>> {
    let mine: Vec<usize> = (conn..events.len()).step_by(connections).collect();
    let by_id: HashMap<[u8; 32], usize> = mine.iter().map(|&i| (events[i].1, events[i].0)).collect();
    let (mut sender, mut receiver) = ws.split();
    let mut results = Vec::with_capacity(mine.len());
    let mut sent = 0;
    while results.len() < mine.len() {
        while sent < mine.len() && sent - results.len() < PRELOAD_WINDOW {
            sender.feed(Message::Text(events[mine[sent]].2.clone())).await?;
            sent += 1;
        }
        sender.flush().await?;
        let next = glommio::timer::timeout(Duration::from_secs(30), async { Ok(receiver.next().await) }).await;
        match next {
            Ok(Some(Ok(Message::Text(text)))) => {
                if let Ok(Reply::Ok { id, accepted, .. }) = wire::parse(&text) {
                    if let Some(&index) = by_id.get(&id) {
                        // Stored before, by an earlier run: as good as accepted now.
                        results.push((index, accepted || wire::reason_prefix(&reason_of(&text)) == "duplicate"));
                    }
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => bail!("preload connection failed: {e}"),
            Ok(None) => bail!("the relay closed a preload connection"),
            Err(_) => bail!("no OK for a preloaded event within 30 s"),
        }
    }
    let _ = sender.close(None).await;
    Ok(results)
}

pub(super) fn reason_of(text: &str) -> String {
    match wire::parse(text) {
        Ok(Reply::Ok { reason, .. }) => reason,
        _ => String::new(),
    }
}

/// A history query and what it must return.
pub(super) enum Shape {
    Ids(Vec<[u8; 32]>),
    Author(u32),
    Kind(u16),
    Tag(u32),
}

pub(super) struct Pending {
    due: u64,
    shape: Shape,
    /// `None` for an ids query, which has no limit and no required order.
    limit: Option<usize>,
    events: Vec<Entry>,
    mismatched: bool,
}

impl Shape {
    fn filter(&self, shared: &Shared, limit: Option<usize>) -> serde_json::Value {
        let seed = shared.plan.run.seed;
        match self {
            Shape::Ids(ids) => json!({"ids": ids.iter().map(|id| workload::hex(id)).collect::<Vec<_>>()}),
            Shape::Author(a) => {
                json!({"authors": [workload::pubkey_hex(&shared.history_authors[*a as usize])], "limit": limit})
            }
            Shape::Kind(k) => json!({"kinds": [k], "limit": limit}),
            Shape::Tag(t) => json!({"#t": [workload::query_tag(seed, *t)], "limit": limit}),
        }
    }

    fn matches(&self, shared: &Shared, event: &wire::EventFields<'_>) -> bool {
        match self {
            Shape::Ids(ids) => workload::decode_id(event.id.as_bytes()).is_some_and(|id| ids.contains(&id)),
            Shape::Author(a) => event.pubkey == workload::pubkey_hex(&shared.history_authors[*a as usize]),
            Shape::Kind(k) => event.kind == u64::from(*k),
            Shape::Tag(t) => {
                let tag = workload::query_tag(shared.plan.run.seed, *t);
                event.tags.iter().any(|pair| pair.len() >= 2 && pair[0] == "t" && pair[1] == tag)
            }
        }
    }

    /// The acknowledged preload events this query must see, newest first.
    fn expected(&self, shared: &Shared) -> Vec<Entry> {
        let known = &shared.known;
        match self {
            Shape::Ids(ids) => {
                let mut entries: Vec<Entry> = ids
                    .iter()
                    .filter_map(|id| shared.table.by_id.get(id))
                    .map(|&i| (shared.table.events[i as usize].created_at, shared.table.events[i as usize].id))
                    .collect();
                entries.sort_by(newest_first);
                entries
            }
            Shape::Author(a) => known.by_author.get(a).cloned().unwrap_or_default(),
            Shape::Kind(k) => known.by_kind.get(k).cloned().unwrap_or_default(),
            Shape::Tag(t) => known.by_tag.get(t).cloned().unwrap_or_default(),
        }
    }
}

/// The errors a query's answer shows. With a `limit` (NIP-01 orders only those): not newest
/// first (`query.order`), equal `created_at` not by lowest id first (`query.tie_order`), more
/// than the limit (`query.over_limit`). Always: missing an acknowledged event it must return
/// (`query.incomplete`); with a limit that was reached, those ranking above the last one
/// returned, otherwise all of them.
pub fn check_answer(got: &[Entry], expected: &[Entry], limit: Option<usize>) -> Vec<&'static str> {
    let mut errors = Vec::new();
    if let Some(limit) = limit {
        if got.windows(2).any(|pair| pair[0].0 < pair[1].0) {
            errors.push("query.order");
        }
        if got.windows(2).any(|pair| pair[0].0 == pair[1].0 && pair[0].1 >= pair[1].1) {
            errors.push("query.tie_order");
        }
        if got.len() > limit {
            errors.push("query.over_limit");
        }
    }
    let returned: HashSet<&[u8; 32]> = got.iter().map(|(_, id)| id).collect();
    let must_have = |entry: &&Entry| match (limit, got.last()) {
        (Some(limit), Some(last)) if got.len() >= limit => newest_first(entry, last) == std::cmp::Ordering::Less,
        _ => true,
    };
    if expected.iter().filter(must_have).any(|(_, id)| !returned.contains(id)) {
        errors.push("query.incomplete");
    }
    errors
}

/// The shapes of a connection's queries, drawn by the plan's weights from a seeded stream.
struct ShapePicker {
    rng: StdRng,
    weights: [u32; 4],
    limit: usize,
}

impl ShapePicker {
    fn new(seed: u64, conn: usize, plan: &QueryPlan) -> ShapePicker {
        ShapePicker {
            rng: StdRng::seed_from_u64(seed ^ (conn as u64) << 32 ^ 0x7175),
            weights: [plan.ids, plan.author, plan.kind, plan.tag],
            limit: plan.limit,
        }
    }

    /// The next query's shape and its `limit` (none for ids).
    fn pick(&mut self, shared: &Shared) -> (Shape, Option<usize>) {
        let rng = &mut self.rng;
        let mut pick = rng.gen_range(0..self.weights.iter().sum::<u32>());
        let shape_index = self
            .weights
            .iter()
            .position(|w| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .unwrap_or(0);
        match shape_index {
            0 => {
                let accepted = &shared.known.accepted;
                let ids: HashSet<_> = (0..rng.gen_range(1..=5))
                    .map(|_| shared.table.events[accepted[rng.gen_range(0..accepted.len())] as usize].id)
                    .collect();
                (Shape::Ids(ids.into_iter().collect()), None)
            }
            1 => (Shape::Author(rng.gen_range(0..shared.history_authors.len()) as u32), Some(self.limit)),
            2 => (Shape::Kind(if rng.gen_bool(0.75) { 1 } else { 7 }), Some(self.limit)),
            _ => (Shape::Tag(rng.gen_range(0..workload::QUERY_TAGS)), Some(self.limit)),
        }
    }
}

/// A query connection: REQs on an open-loop schedule, answers checked at EOSE, then CLOSE.
pub(super) async fn run_queries(shared: Arc<Shared>, stats: Rc<RefCell<Sample>>, ws: Ws, conn: usize) {
    let plan = shared.plan.query.as_ref().expect("query plan");
    let (mut sender, receiver) = ws.split();
    let pending: Rc<RefCell<HashMap<String, Pending>>> = Rc::new(RefCell::new(HashMap::new()));
    let (close_tx, close_rx) = glommio::channels::local_channel::new_unbounded::<String>();
    glommio::spawn_local(read_answers(shared.clone(), stats.clone(), receiver, pending.clone(), close_tx)).detach();
    let interval = 1e9 * plan.connections as f64 / plan.rate;
    let phase = interval * conn as f64 / plan.connections as f64;
    let due = |i: u64| (phase + interval * i as f64) as u64;
    let mut shapes = ShapePicker::new(shared.plan.run.seed, conn, plan);
    let mut next = 0u64;
    enum Step {
        Due,
        Close(Option<String>),
    }
    while !shared.finishing() {
        let sending = due(next) < shared.end_ns;
        let step = futures_lite::future::or(
            async {
                if sending {
                    shared.sleep_until(due(next)).await;
                } else {
                    while !shared.finishing() {
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                    }
                }
                Step::Due
            },
            async { Step::Close(close_rx.recv().await) },
        )
        .await;
        let result = match step {
            Step::Close(Some(sub)) => sender.send(Message::text(json!(["CLOSE", sub]).to_string())).await,
            Step::Close(None) => break,
            Step::Due if !sending => continue,
            Step::Due => {
                let now = shared.elapsed_ns();
                let mut result = Ok(());
                while due(next) <= now && due(next) < shared.end_ns {
                    let scheduled = due(next);
                    let (shape, limit) = shapes.pick(&shared);
                    let sub = format!("q{conn}-{next}");
                    let request = json!(["REQ", sub, shape.filter(&shared, limit)]).to_string();
                    {
                        let mut sample = stats.borrow_mut();
                        sample.count("query.sent", 1);
                        if shared.measured(scheduled) {
                            sample.offered[Metric::Query as usize] += 1;
                            sample.record(Metric::SendLag, (now - scheduled) / 1_000);
                        }
                    }
                    pending
                        .borrow_mut()
                        .insert(sub, Pending { due: scheduled, shape, limit, events: Vec::new(), mismatched: false });
                    result = sender.feed(Message::text(request)).await;
                    if result.is_err() {
                        break;
                    }
                    next += 1;
                }
                match result {
                    Ok(()) => sender.flush().await,
                    error => error,
                }
            }
        };
        if result.is_err() {
            lost(&shared, &stats);
            return;
        }
    }
    let _ = sender.close(None).await;
}

pub(super) async fn read_answers(
    shared: Arc<Shared>,
    stats: Rc<RefCell<Sample>>,
    mut receiver: WebSocketReceiver<Stream>,
    pending: Rc<RefCell<HashMap<String, Pending>>>,
    closes: glommio::channels::local_channel::LocalSender<String>,
) {
    // After EOSE a subscription is live until the relay has read our CLOSE: events for it
    // in between are the relay doing its job, not errors.
    let mut finished: (HashSet<String>, std::collections::VecDeque<String>) = Default::default();
    let mut inflater = Inflater::default();
    while let Some(text) = next_text(&mut receiver, &mut inflater).await {
        let now = shared.elapsed_ns();
        let mut sample = stats.borrow_mut();
        match wire::parse(&text) {
            Ok(Reply::Event { sub, event, .. }) => {
                let mut pending = pending.borrow_mut();
                let Some(query) = pending.get_mut(sub.as_ref()) else {
                    if finished.0.contains(sub.as_ref()) {
                        sample.count("query.live_after_eose", 1);
                    } else {
                        sample.error("query.unexpected");
                    }
                    continue;
                };
                match wire::event_fields(event).and_then(|fields| {
                    let id = workload::decode_id(fields.id.as_bytes())?;
                    Some((fields.created_at, id, query.shape.matches(&shared, &fields)))
                }) {
                    Some((created_at, id, matches)) => {
                        query.events.push((created_at, id));
                        query.mismatched |= !matches;
                    }
                    None => sample.error("unreadable"),
                }
            }
            Ok(Reply::Eose { sub }) => {
                let Some(query) = pending.borrow_mut().remove(&sub) else {
                    sample.error("query.unexpected");
                    continue;
                };
                sample.count("query.done", 1);
                sample.count("query.events", query.events.len() as u64);
                if shared.measured(query.due) {
                    sample.count("query.measured_events", query.events.len() as u64);
                    sample.complete(Metric::Query, query.due, now, shared.end_ns);
                }
                if query.mismatched {
                    sample.error("query.mismatch");
                }
                for error in check_answer(&query.events, &query.shape.expected(&shared), query.limit) {
                    sample.error(error);
                }
                if finished.1.len() >= FINISHED_QUERIES_KEPT {
                    if let Some(oldest) = finished.1.pop_front() {
                        finished.0.remove(&oldest);
                    }
                }
                finished.0.insert(sub.clone());
                finished.1.push_back(sub.clone());
                let _ = closes.try_send(sub);
            }
            Ok(Reply::Closed { sub, reason }) => {
                if pending.borrow_mut().remove(&sub).is_some() {
                    sample.count("query.done", 1);
                    sample.error(&format!("query.closed.{}", wire::reason_prefix(&reason)));
                }
            }
            Ok(Reply::Notice(_)) => sample.count("notices", 1),
            Ok(_) => {}
            Err(_) => sample.error("unreadable"),
        }
    }
    lost(&shared, &stats);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn answers_are_checked_for_order_limit_and_completeness() {
        let expected = vec![(30, id(1)), (20, id(2)), (20, id(3)), (10, id(4))];
        assert!(check_answer(&expected, &expected, Some(10)).is_empty());
        assert!(check_answer(&expected[..2], &expected, Some(2)).is_empty(), "the newest two, in order");
        assert_eq!(
            check_answer(&[(20, id(3)), (20, id(2))], &expected, Some(2)),
            ["query.tie_order", "query.incomplete"]
        );
        assert_eq!(check_answer(&[(20, id(2)), (30, id(1))], &expected, Some(2)), ["query.order"]);
        assert_eq!(check_answer(&[(30, id(1)), (10, id(4))], &expected, Some(2)), ["query.incomplete"]);
        assert_eq!(check_answer(&expected, &expected, Some(3)), ["query.over_limit"]);
        // Events the relay has from elsewhere may rank in between; ours must still be there.
        let foreign = vec![(40, id(9)), (30, id(1))];
        assert!(check_answer(&foreign, &expected, Some(2)).is_empty());
        assert_eq!(check_answer(&[(30, id(1))], &expected, Some(5)), ["query.incomplete"]);
        // Without a limit (an ids query) any order will do, but all must be there.
        let reversed: Vec<Entry> = expected.iter().rev().copied().collect();
        assert!(check_answer(&reversed, &expected, None).is_empty());
        assert_eq!(check_answer(&reversed[1..], &expected, None), ["query.incomplete"]);
    }
}

//! Open-loop EVENT senders and their OK readers (the `publish` scenario and fan-out
//! publishers).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::tungstenite::Message;
use async_tungstenite::{WebSocketReceiver, WebSocketSender};
use futures_util::SinkExt;

use crate::stats::{Metric, Sample};
use crate::wire::{self, Inflater, Reply};
use crate::workload::status;

use super::net::{next_text, Stream, Ws};
use super::shared::{lost, Shared};

/// Connection `conn` of `connections` sending the scenario's events at its share of `rate`:
/// events `conn`, `conn + connections`, ... of the scenario's range, staggered by `conn`.
pub(super) fn start_publisher(
    shared: &Arc<Shared>,
    stats: &Rc<RefCell<Sample>>,
    ws: Ws,
    conn: usize,
    (connections, rate): (usize, f64),
    scenario: Feed,
) {
    let range = match scenario {
        Feed::Publish => shared.publish.clone(),
        Feed::Fanout => shared.fanout.clone(),
    };
    let events: Vec<u32> = (range.start + conn..range.end).step_by(connections).map(|i| i as u32).collect();
    let interval = 1e9 * connections as f64 / rate;
    let phase = interval * conn as f64 / connections as f64;
    let (sender, receiver) = ws.split();
    glommio::spawn_local(send_events(shared.clone(), stats.clone(), sender, events, interval, phase, scenario))
        .detach();
    glommio::spawn_local(read_replies(shared.clone(), stats.clone(), receiver, scenario)).detach();
}

/// Which events a publisher sends, and which counters and latency it records them under:
/// the `publish` scenario's, or the fan-out scenario's.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Feed {
    Publish,
    Fanout,
}

impl Feed {
    fn metric(self) -> Metric {
        match self {
            Feed::Publish => Metric::Publish,
            Feed::Fanout => Metric::Fanout,
        }
    }

    fn key(self, what: &'static str) -> &'static str {
        match (self, what) {
            (Feed::Publish, "sent") => "publish.sent",
            (Feed::Publish, "replies") => "publish.replies",
            (Feed::Publish, "accepted") => "publish.accepted",
            (Feed::Fanout, "sent") => "fanout.sent",
            (Feed::Fanout, "replies") => "fanout.replies",
            (Feed::Fanout, "accepted") => "fanout.accepted",
            _ => "other",
        }
    }

    fn name(self) -> &'static str {
        self.metric().name()
    }
}

/// Open-loop sender: event `i` of `events` is due at `phase + i * interval` ns after t0.
/// Whatever is due is sent at once (a late sender catches up in one batch), and its due
/// time, not the moment it left, is what latency is measured from.
pub(super) async fn send_events(
    shared: Arc<Shared>,
    stats: Rc<RefCell<Sample>>,
    mut sender: WebSocketSender<Stream>,
    events: Vec<u32>,
    interval: f64,
    phase: f64,
    scenario: Feed,
) {
    let due = |i: usize| (phase + interval * i as f64) as u64;
    let mut next = 0;
    while next < events.len() && due(next) < shared.end_ns && !shared.finishing() {
        shared.sleep_until(due(next)).await;
        let now = shared.elapsed_ns();
        while next < events.len() && due(next) <= now && due(next) < shared.end_ns {
            let index = events[next] as usize;
            let scheduled = due(next);
            shared.table.mark_sent(index, scheduled);
            {
                let mut sample = stats.borrow_mut();
                sample.count(scenario.key("sent"), 1);
                if shared.measured(scheduled) {
                    sample.record(Metric::SendLag, (now - scheduled) / 1_000);
                    if scenario == Feed::Publish {
                        sample.offered[Metric::Publish as usize] += 1;
                    }
                }
            }
            if sender.feed(Message::Text(shared.table.events[index].message.clone())).await.is_err() {
                lost(&shared, &stats);
                return;
            }
            next += 1;
        }
        if sender.flush().await.is_err() {
            lost(&shared, &stats);
            return;
        }
    }
    // Keep the sender: dropping it would not close the socket, but finishing cleanly does.
    while !shared.finishing() {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    let _ = sender.close(None).await;
}

/// OKs for a publishing connection.
pub(super) async fn read_replies(
    shared: Arc<Shared>,
    stats: Rc<RefCell<Sample>>,
    mut receiver: WebSocketReceiver<Stream>,
    scenario: Feed,
) {
    let mut inflater = Inflater::default();
    while let Some(text) = next_text(&mut receiver, &mut inflater).await {
        let now = shared.elapsed_ns();
        let mut sample = stats.borrow_mut();
        match wire::parse(&text) {
            Ok(Reply::Ok { id, accepted, reason }) => {
                let Some(&index) = shared.table.by_id.get(&id) else {
                    sample.error("unknown_ok");
                    continue;
                };
                let index = index as usize;
                let due = shared.table.scheduled_ns(index).unwrap_or(0);
                sample.count(scenario.key("replies"), 1);
                if accepted {
                    shared.table.set_status(index, status::ACCEPTED);
                    sample.count(scenario.key("accepted"), 1);
                    if shared.measured(due) && scenario == Feed::Publish {
                        sample.complete(Metric::Publish, due, now, shared.end_ns);
                    }
                } else {
                    shared.table.set_status(index, status::REJECTED);
                    if shared.measured(due) {
                        sample.error(&format!("{}.rejected.{}", scenario.name(), wire::reason_prefix(&reason)));
                    }
                }
            }
            Ok(Reply::Notice(_)) => sample.count("notices", 1),
            Ok(Reply::Other) => {}
            Ok(_) => sample.error("unexpected_reply"),
            Err(_) => sample.error("unreadable"),
        }
    }
    drop(receiver);
    lost(&shared, &stats);
}

//! Fan-out subscribers: every delivery checked against what it follows, counted once,
//! timed from the publish's due time; what never came is counted at the end.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::tungstenite::Message;
use futures_lite::StreamExt;

use crate::stats::{Metric, Sample};
use crate::wire::{self, Inflater, Reply};
use crate::workload::{status, Follow};

use super::net::Ws;
use super::shared::{lost, Shared};

/// One fanout subscriber: every delivery is checked against what it follows, counted once,
/// and timed from the publish's due time.
pub(super) async fn read_deliveries(
    shared: Arc<Shared>,
    stats: Rc<RefCell<Sample>>,
    mut ws: Ws,
    subscriber: usize,
    received: Rc<RefCell<Vec<u64>>>,
) {
    let sub_id = format!("f{subscriber}");
    let follow = shared.follows[subscriber];
    let mut inflater = Inflater::default();
    while !shared.finishing() {
        let message = futures_lite::future::or(async { Some(ws.next().await) }, async {
            while !shared.finishing() {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            None
        })
        .await;
        let text = match message {
            None => break,
            Some(Some(Ok(Message::Close(_)) | Err(_)) | None) => {
                lost(&shared, &stats);
                return;
            }
            Some(Some(Ok(message))) => match inflater.text(message) {
                Some(text) => text,
                None => continue,
            },
        };
        let now = shared.elapsed_ns();
        let mut sample = stats.borrow_mut();
        sample.count("fanout.wire_bytes", inflater.wire_size as u64);
        sample.count("fanout.bytes", text.len() as u64);
        match wire::parse(&text) {
            Ok(Reply::Event { sub, id, .. }) if sub == sub_id.as_str() => {
                let Some(&index) = shared.table.by_id.get(&id) else {
                    sample.error("fanout.unexpected");
                    continue;
                };
                let index = index as usize;
                if !follow.wants(&shared.table.events[index]) {
                    sample.error("fanout.unexpected");
                    continue;
                }
                let offset = index - shared.fanout.start;
                let mut bits = received.borrow_mut();
                let (word, bit) = (offset / 64, 1u64 << (offset % 64));
                if bits[word] & bit != 0 {
                    sample.error("fanout.duplicate");
                    continue;
                }
                bits[word] |= bit;
                sample.count("fanout.delivered", 1);
                if let Some(due) = shared.table.scheduled_ns(index).filter(|due| shared.measured(*due)) {
                    sample.complete(Metric::Fanout, due, now, shared.end_ns);
                }
            }
            Ok(Reply::Closed { reason, .. }) => {
                sample.error(&format!("fanout.closed.{}", wire::reason_prefix(&reason)));
            }
            Ok(Reply::Notice(_)) => sample.count("notices", 1),
            Ok(Reply::Other) => {}
            Ok(_) => sample.error("unexpected_reply"),
            Err(_) => sample.error("unreadable"),
        }
    }
    let _ = ws.close(None).await;
}

/// Accepted fanout events that `subscribers` (index, received bits) wanted and never got.
pub(super) fn count_missing(shared: &Shared, subscribers: &[(usize, Rc<RefCell<Vec<u64>>>)]) -> u64 {
    let mut missing = 0;
    for (subscriber, received) in subscribers {
        let received = received.borrow();
        let list = match shared.follows[*subscriber] {
            Follow::Topic(topic) => &shared.topic_events[topic as usize],
            Follow::Author(author) => &shared.author_events[author as usize],
            Follow::Nothing => continue,
        };
        for &offset in list {
            let offset = offset as usize;
            let accepted = shared.table.status(shared.fanout.start + offset) == status::ACCEPTED;
            if accepted && received[offset / 64] & (1 << (offset % 64)) == 0 {
                missing += 1;
            }
        }
    }
    missing
}

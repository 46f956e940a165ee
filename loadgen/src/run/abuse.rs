//! Hostile clients beside the measured scenarios: COUNT flooders, REQ churners and readers
//! that never read. They are not measured; what they sent and whether the relay closed them
//! are counted (`abuse.*`), so a report shows the relay held them off rather than that they
//! never ran. With `reading`, flooders and churners read (and drop) what comes back, as a
//! hostile client that means to keep flooding would; otherwise the relay holds them back
//! by their outbound budget.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::tungstenite::Message;
use futures_lite::StreamExt;
use serde_json::{json, Value};

use crate::plan::AbusePlan;
use crate::stats::Sample;

use super::net::Ws;
use super::shared::Shared;

/// What an abuser does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Abuser {
    CountFlooder,
    ReqChurner,
    StalledReader,
}

/// Abuser `index` of `plan`'s connections, in the order flooders, churners, stalled readers.
pub(super) fn kind_of(plan: &AbusePlan, index: usize) -> Abuser {
    if index < plan.count_flooders {
        Abuser::CountFlooder
    } else if index < plan.count_flooders + plan.req_churners {
        Abuser::ReqChurner
    } else {
        Abuser::StalledReader
    }
}

pub(super) fn total(plan: &AbusePlan) -> usize {
    plan.count_flooders + plan.req_churners + plan.stalled_readers
}

/// The one message an abuser sends over and over (a stalled reader sends it once).
fn message(plan: &AbusePlan, kind: Abuser) -> String {
    match kind {
        Abuser::CountFlooder => json!(["COUNT", "flood", {"kinds": [1], "since": 1}]).to_string(),
        Abuser::ReqChurner => {
            let mut message = vec![json!("REQ"), json!("churn")];
            message.extend((0..plan.churn_filters).map(|i| json!({"kinds": [1], "limit": 500 + i})));
            Value::Array(message).to_string()
        }
        Abuser::StalledReader => json!(["REQ", "stalled", {"limit": 0}]).to_string(),
    }
}

/// Run one abuser from t0 until the run finishes: a stalled reader never reads; the others
/// drop what they read when the plan says `reading`.
pub(super) async fn abuse(shared: Arc<Shared>, stats: Rc<RefCell<Sample>>, ws: Ws, kind: Abuser) {
    let (mut sender, mut receiver) = ws.split();
    let reading = shared.plan.abuse.as_ref().is_some_and(|plan| plan.reading);
    let draining = reading && kind != Abuser::StalledReader;
    let drain = async move {
        while draining && receiver.next().await.is_some_and(|read| read.is_ok()) {}
        // A stalled reader (or a closed socket) waits here for the run's end; `receiver`
        // stays held, so the socket stays open.
        std::future::pending::<()>().await
    };
    futures_lite::future::or(drain, send_until_finished(shared, stats, &mut sender, kind)).await;
}

async fn send_until_finished(
    shared: Arc<Shared>,
    stats: Rc<RefCell<Sample>>,
    ws: &mut async_tungstenite::WebSocketSender<super::net::Stream>,
    kind: Abuser,
) {
    let plan = shared.plan.abuse.clone().unwrap_or_default();
    let text = message(&plan, kind);
    let repeat = kind != Abuser::StalledReader;
    let sent_counter = match kind {
        Abuser::CountFlooder => "abuse.count_sent",
        Abuser::ReqChurner => "abuse.req_sent",
        Abuser::StalledReader => "abuse.stalled_subscribed",
    };
    loop {
        // A send the relay holds back (it stops reading a client over its budgets) waits
        // here, but never past the end of the run.
        let sent =
            futures_lite::future::or(async { Some(ws.send(Message::text(text.clone())).await.is_ok()) }, async {
                while !shared.finishing() {
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                }
                None
            })
            .await;
        match sent {
            None => return,
            Some(false) => {
                stats.borrow_mut().count("abuse.closed_by_relay", 1);
                return;
            }
            Some(true) => stats.borrow_mut().count(sent_counter, 1),
        }
        if !repeat {
            break;
        }
        // A send the kernel takes at once (its buffers hold megabytes) does not yield: give
        // the measured clients on this thread their turn.
        glommio::yield_if_needed().await;
    }
    while !shared.finishing() {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
}

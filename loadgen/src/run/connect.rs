//! The `connect` ramp: new connections on a schedule, timed, then held.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::tungstenite::Message;
use futures_lite::StreamExt;

use crate::stats::{Metric, Sample};

use super::net::connect;
use super::shared::Shared;

/// The `connect` ramp of this thread: `count` connections, one every `interval` ns from
/// `phase`, each timed from its due time and then held open until the run ends.
pub(super) async fn ramp_connections(
    shared: Arc<Shared>,
    stats: Rc<RefCell<Sample>>,
    count: usize,
    interval: f64,
    phase: f64,
) {
    for i in 0..count {
        let scheduled = (phase + interval * i as f64) as u64;
        if scheduled >= shared.end_ns || shared.finishing() {
            break;
        }
        shared.sleep_until(scheduled).await;
        let shared = shared.clone();
        let stats = stats.clone();
        glommio::spawn_local(async move {
            let measured = shared.measured(scheduled);
            if measured {
                stats.borrow_mut().offered[Metric::Connect as usize] += 1;
            }
            let mut ws = match connect(&shared.target).await {
                Ok(ws) => ws,
                Err(_) => {
                    if measured {
                        stats.borrow_mut().error("connect.failed");
                    }
                    return;
                }
            };
            {
                let mut sample = stats.borrow_mut();
                sample.count("connect.open", 1);
                if measured {
                    sample.complete(Metric::Connect, scheduled, shared.elapsed_ns(), shared.end_ns);
                }
            }
            // Hold: the relay may send nothing; a close before the end is a dropped connection.
            let closed = futures_lite::future::or(
                async {
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Close(_)) | Err(_)) | None => break true,
                            Some(Ok(_)) => {}
                        }
                    }
                },
                async {
                    while !shared.finishing() {
                        glommio::timer::sleep(Duration::from_millis(50)).await;
                    }
                    false
                },
            )
            .await;
            if closed {
                let mut sample = stats.borrow_mut();
                sample.count("connect.dropped", 1);
                sample.error("connect.dropped");
            } else {
                let _ = ws.close(None).await;
            }
        })
        .detach();
    }
}

//! Restart without refusing connections: `serve --takeover` beside a running relay while
//! clients connect and publish in a loop. No connection is refused, every acknowledged event
//! is served by the new relay, and clients of the old one are told 1012 (service restart).

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

use crate::relay::{id_of, Relay};
use crate::support::{keys, now, signed};

/// What one looping client saw.
#[derive(Default)]
struct Seen {
    /// Connections refused or reset before the WebSocket handshake finished.
    refused: Vec<String>,
    /// Ids acknowledged (`OK true`), with when.
    acked: Vec<(String, Instant)>,
    /// Close frames with code 1012.
    restarts: usize,
    /// The longest wait from a connect to its OK.
    slowest: Duration,
}

/// The kernel moves connections waiting in a closed listener's accept queue to another
/// listener of its SO_REUSEPORT group only with `net.ipv4.tcp_migrate_req = 1`, which
/// tuning/sysctl.conf sets. Without it, the few connections queued at the old relay at the
/// moment it closes its listeners are reset.
fn ensure_tcp_migrate_req() {
    let path = "/proc/sys/net/ipv4/tcp_migrate_req";
    let value = std::fs::read_to_string(path).expect("Linux 5.14 or later has net.ipv4.tcp_migrate_req");
    if value.trim() != "1" {
        std::fs::write(path, "1").unwrap_or_else(|error| {
            panic!("this test needs net.ipv4.tcp_migrate_req = 1 (tuning/sysctl.conf), and could not set it: {error}")
        });
    }
}

/// Connect, publish one event, read its OK, close; over and over until `stop`.
fn publish_in_a_loop(port: u16, client: u32, stop: &AtomicBool) -> Seen {
    let mut seen = Seen::default();
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let base = now() - 5_000;
    let mut sequence = 0u64;
    while !stop.load(Ordering::SeqCst) {
        sequence += 1;
        let event = signed(&keys(5000 + client), 1, base + sequence, &[], &format!("handover {client} {sequence}"));
        let started = Instant::now();
        let stream = match TcpStream::connect_timeout(&address, Duration::from_secs(10)) {
            Ok(stream) => stream,
            Err(error) => {
                seen.refused.push(format!("connect: {error}"));
                continue;
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut ws = match tungstenite::client(format!("ws://127.0.0.1:{port}"), MaybeTlsStream::Plain(stream)) {
            Ok((ws, _)) => ws,
            Err(error) => {
                seen.refused.push(format!("handshake: {error}"));
                continue;
            }
        };
        let message = json!(["EVENT", serde_json::from_str::<Value>(&event).unwrap()]).to_string();
        if ws.send(Message::text(message)).is_err() {
            continue;
        }
        loop {
            match ws.read() {
                Ok(Message::Text(text)) => {
                    let reply: Value = serde_json::from_str(&text).unwrap();
                    if reply[0] == "OK" {
                        if reply[2] == true {
                            seen.acked.push((id_of(&event), Instant::now()));
                        }
                        seen.slowest = seen.slowest.max(started.elapsed());
                        break;
                    }
                }
                Ok(Message::Close(frame)) => {
                    if frame.is_some_and(|frame| u16::from(frame.code) == 1012) {
                        seen.restarts += 1;
                    }
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let _ = ws.close(None);
        let _ = ws.flush();
    }
    seen
}

#[test]
fn a_relay_taking_over_refuses_no_connection_and_loses_no_acknowledged_event() {
    ensure_tcp_migrate_req();
    let dir = tempfile::tempdir().unwrap();
    let old = Relay::start(dir.path(), 2);
    let port = old.port;
    // A client that holds a subscription across the handover is told to reconnect. It reads
    // the live events as they come, as a subscriber does: one that reads nothing fills its
    // socket's buffers within a second of this load, and then no close frame can reach it.
    let mut subscriber = old.connect();
    subscriber.send(&json!(["REQ", "s", {"kinds": [1], "limit": 0}]).to_string());
    subscriber.until_eose("s");
    let subscriber = std::thread::spawn(move || subscriber.read_until_close());

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let stop = stop.clone();
            std::thread::spawn(move || publish_in_a_loop(port, client, &stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let new = Relay::start_takeover(dir.path(), 2, "", port);
    let status = old.wait_exit(Duration::from_secs(20));
    let handed_over = Instant::now();
    assert!(status.success(), "the old relay exits cleanly after handing over: {status}");
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::SeqCst);
    let seen: Vec<Seen> = clients.into_iter().map(|client| client.join().unwrap()).collect();

    let refused: Vec<&String> = seen.iter().flat_map(|s| &s.refused).collect();
    assert!(refused.is_empty(), "connections refused across the handover: {refused:?}");
    let acked: Vec<&(String, Instant)> = seen.iter().flat_map(|s| &s.acked).collect();
    assert!(acked.iter().any(|(_, at)| *at < handed_over), "events acknowledged by the old relay");
    assert!(acked.iter().any(|(_, at)| *at > handed_over), "events acknowledged by the new relay");
    let slowest = seen.iter().map(|s| s.slowest).max().unwrap();
    eprintln!(
        "handover: {} events acknowledged, {} clients told 1012, slowest connect-to-OK {slowest:?}",
        acked.len(),
        seen.iter().map(|s| s.restarts).sum::<usize>()
    );
    // The subscriber of the old relay got a close frame saying why.
    let (live, close) = subscriber.join().unwrap();
    assert!(!live.is_empty(), "the subscriber saw live events before the handover");
    assert_eq!(close.map(|(code, _)| code), Some(1012));

    // Every acknowledged event is served by the new relay.
    let mut reader = new.connect();
    let ids: Vec<String> = acked.iter().map(|(id, _)| id.clone()).collect();
    for chunk in ids.chunks(200) {
        let found = reader.req("check", &[json!({"ids": chunk})]);
        assert_eq!(found.len(), chunk.len(), "acknowledged events missing after the handover");
    }
    // Search works on the new relay, for what either relay took: it opens each shard's
    // index once the old one lets go of it, and goes on from its checkpoint.
    let deadline = Instant::now() + Duration::from_secs(15);
    let expected = ids.len().min(5000);
    let filter = json!({"search": "handover", "limit": expected});
    let searched = loop {
        let found = reader.req("search", std::slice::from_ref(&filter)).len();
        if found >= expected || Instant::now() >= deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(searched, expected, "acknowledged notes found by a search");
}

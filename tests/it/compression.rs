//! permessage-deflate (RFC 7692) from outside: a client that negotiates it over a real
//! socket, reads compressed frames by inflating them itself (a fresh inflater per message,
//! or one kept for the connection when the relay keeps a context), and sends compressed
//! messages, hostile ones included. The JavaScript side (Node's `ws`, as nostr-tools uses
//! it) is in tests/clients/deflate.mjs.

use std::net::TcpStream;
use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::{Data as OpData, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::relay::{id_of, Relay};
use crate::support::{keys, now, signed};

const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// A client that offers `offer` (or nothing) and reads what the relay compresses.
struct Deflating {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    /// The relay's `Sec-WebSocket-Extensions` answer.
    agreed: Option<String>,
    /// Kept across messages when the relay keeps a context (no server_no_context_takeover).
    inflater: Decompress,
    /// Messages that came compressed, and their sizes: (compressed, inflated).
    compressed: Vec<(usize, usize)>,
    /// Sizes of the messages that came uncompressed.
    plain: Vec<usize>,
}

impl Deflating {
    fn connect(relay: &Relay, offer: Option<&str>) -> Deflating {
        let mut request = format!("ws://127.0.0.1:{}", relay.port).into_client_request().unwrap();
        if let Some(offer) = offer {
            request.headers_mut().insert("Sec-WebSocket-Extensions", offer.parse().unwrap());
        }
        let stream = TcpStream::connect(("127.0.0.1", relay.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let config = WebSocketConfig::default().accept_compressed(true);
        let (ws, response) =
            tungstenite::client::client_with_config(request, MaybeTlsStream::Plain(stream), Some(config)).unwrap();
        let agreed = response.headers().get("Sec-WebSocket-Extensions").map(|value| value.to_str().unwrap().to_owned());
        Deflating { ws, agreed, inflater: Decompress::new(false), compressed: Vec::new(), plain: Vec::new() }
    }

    fn context_kept(&self) -> bool {
        self.agreed.as_deref().is_some_and(|agreed| !agreed.contains("server_no_context_takeover"))
    }

    fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).unwrap();
    }

    /// Send `text` compressed on its own, as a client that agreed to
    /// client_no_context_takeover does.
    fn send_compressed(&mut self, text: &[u8]) {
        self.send_frame(deflate(text), true);
    }

    fn send_frame(&mut self, payload: Vec<u8>, rsv1: bool) {
        let mut frame = Frame::message(payload, OpCode::Data(OpData::Text), true);
        frame.header_mut().rsv1 = rsv1;
        self.ws.send(Message::Frame(frame)).unwrap();
    }

    fn recv(&mut self) -> Value {
        loop {
            let text = match self.ws.read().expect("a message within the timeout") {
                Message::Text(text) => {
                    self.plain.push(text.len());
                    text.as_str().to_owned()
                }
                Message::Frame(frame) => {
                    assert!(frame.header().rsv1 && self.agreed.is_some(), "only what was agreed comes compressed");
                    if !self.context_kept() {
                        self.inflater.reset(false);
                    }
                    let mut input = frame.payload().to_vec();
                    input.extend_from_slice(&TAIL);
                    let mut out = Vec::with_capacity(1 << 20);
                    self.inflater.decompress_vec(&input, &mut out, FlushDecompress::Sync).unwrap();
                    self.compressed.push((frame.payload().len(), out.len()));
                    String::from_utf8(out).unwrap()
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            };
            let message: Value = serde_json::from_str(&text).unwrap();
            // The NIP-42 challenge every connection gets first.
            if message[0] != "AUTH" {
                return message;
            }
        }
    }

    fn publish(&mut self, event: &str, compressed: bool) -> Value {
        let message = format!(r#"["EVENT",{event}]"#);
        if compressed {
            self.send_compressed(message.as_bytes());
        } else {
            self.send(&message);
        }
        let ok = self.recv();
        assert_eq!((ok[0].as_str(), ok[2].as_bool()), (Some("OK"), Some(true)), "{ok}");
        ok
    }

    fn req(&mut self, sub: &str, filter: Value) -> Vec<Value> {
        self.send(&json!(["REQ", sub, filter]).to_string());
        let mut events = Vec::new();
        loop {
            let message = self.recv();
            match message[0].as_str() {
                Some("EVENT") if message[1] == sub => events.push(message[2].clone()),
                Some("EOSE") if message[1] == sub => return events,
                _ => panic!("unexpected {message}"),
            }
        }
    }

    /// What the relay says before it closes: its NOTICE and its close code.
    fn until_close(&mut self) -> (Vec<Value>, Option<u16>) {
        let mut notices = Vec::new();
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => notices.push(serde_json::from_str::<Value>(text.as_str()).unwrap()),
                Ok(Message::Close(frame)) => return (notices, frame.map(|f| u16::from(f.code))),
                Ok(_) => {}
                Err(_) => return (notices, None),
            }
        }
    }
}

fn deflate(text: &[u8]) -> Vec<u8> {
    let mut compress = Compress::new(Compression::new(6), false);
    let mut out = Vec::with_capacity(text.len() + 1024);
    compress.compress_vec(text, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - TAIL.len());
    out
}

fn stat(relay: &Relay, name: &str) -> u64 {
    relay.stats()[name].as_u64().unwrap_or_else(|| panic!("no {name} in /stats"))
}

#[test]
fn compressed_and_plain_clients_read_the_same_broadcasts_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 2);
    let mut plain = Deflating::connect(&relay, None);
    let mut shared = Deflating::connect(&relay, Some("permessage-deflate; client_max_window_bits"));
    let mut narrow = Deflating::connect(&relay, Some("x-unknown, permessage-deflate; server_max_window_bits=9"));
    assert_eq!(plain.agreed, None);
    assert_eq!(
        shared.agreed.as_deref(),
        Some("permessage-deflate; client_no_context_takeover; server_no_context_takeover")
    );
    assert!(narrow.agreed.as_deref().unwrap().ends_with("; server_max_window_bits=9"), "{:?}", narrow.agreed);
    let filter = json!({"kinds": [1], "#t": ["deflate"]});
    for (sub, client) in [("feed", &mut plain), ("a-much-longer-subscription-id", &mut shared), ("n", &mut narrow)] {
        assert!(client.req(sub, filter.clone()).is_empty());
    }
    // Notes of every size, published compressed and not; one is far over the narrow
    // client's 512-byte window.
    let mut publisher = Deflating::connect(&relay, Some("permessage-deflate"));
    let notes: Vec<String> = [10, 200, 600, 3000, 40_000, 1]
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            signed(&keys(1500), 1, now(), &[&["t", "deflate"]], &format!("{i} {}", "words ".repeat(size / 6)))
        })
        .collect();
    for (i, note) in notes.iter().enumerate() {
        publisher.publish(note, i % 2 == 0);
    }
    let published: Vec<Value> = notes.iter().map(|note| serde_json::from_str(note).unwrap()).collect();
    for client in [&mut plain, &mut shared, &mut narrow] {
        let live: Vec<Value> = (0..notes.len()).map(|_| client.recv()[2].clone()).collect();
        assert!(live == published, "every subscriber reads each event as published");
    }
    assert!(plain.compressed.is_empty());
    // Every live event but the shortest came compressed to the shared client, and smaller.
    assert!(shared.compressed.len() >= notes.len() - 1, "{:?}", shared.compressed);
    assert!(shared.compressed.iter().all(|(wire, size)| wire < size), "{:?}", shared.compressed);
    // The narrow client: compressed only within its window.
    assert!(narrow.compressed.iter().all(|&(_, size)| size <= 512), "{:?}", narrow.compressed);
    assert!(narrow.plain.iter().any(|&size| size > 40_000), "{:?}", narrow.plain);
    // Stored answers are compressed too, and read back the same (one second: by id).
    let mut stored = published.clone();
    stored.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    for client in [&mut shared, &mut narrow, &mut plain] {
        assert!(client.req("stored", filter.clone()) == stored, "the stored notes, as published");
    }
    let stats = relay.stats();
    assert_eq!(stats["compressed_connections"], 3, "{stats}");
    let (sent, wire) = (stats["sent_bytes"].as_u64().unwrap(), stats["sent_wire_bytes"].as_u64().unwrap());
    // The counters say what the clients saw: every byte saved was saved on a compressed frame.
    let saved: usize = [&shared, &narrow, &publisher]
        .iter()
        .flat_map(|client| client.compressed.iter())
        .map(|(wire, size)| size - wire)
        .sum();
    assert_eq!(sent - wire, saved as u64, "sent {sent} bytes as {wire} on the wire");
    let (received, received_wire) =
        (stats["received_bytes"].as_u64().unwrap(), stats["received_wire_bytes"].as_u64().unwrap());
    assert!(received_wire < received, "received {received} bytes as {received_wire}");
}

#[test]
fn a_deflate_context_per_connection_within_the_cores_budget() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[compression]\nmode = \"context\"\nwindow_bits = 11\nconnections_per_core_max = 2\ncontexts_per_core_max = 1\n";
    let relay = Relay::start_with_config(dir.path(), 1, config);
    let mut first = Deflating::connect(&relay, Some("permessage-deflate"));
    let mut second = Deflating::connect(&relay, Some("permessage-deflate"));
    assert_eq!(
        first.agreed.as_deref(),
        Some("permessage-deflate; client_no_context_takeover; server_max_window_bits=11")
    );
    assert!(second.agreed.as_deref().unwrap().contains("server_no_context_takeover"), "{:?}", second.agreed);
    // Past the core's compressed connections, an offer is declined: served uncompressed.
    let mut extra = Deflating::connect(&relay, Some("permessage-deflate"));
    assert_eq!(extra.agreed, None);
    assert!(extra.req("x", json!({"kinds": [1]})).is_empty());
    drop(extra);
    let stats = relay.stats();
    assert_eq!((stats["deflate_contexts"].as_u64(), stats["deflate_contexts_declined"].as_u64()), (Some(1), Some(1)));
    assert_eq!((stats["deflate_connections"].as_u64(), stats["deflate_declined"].as_u64()), (Some(2), Some(1)));
    // Later messages refer back to earlier ones: the first client's inflater keeps its
    // window, and what it reads is every note, each smaller than the one alone would be.
    let notes: Vec<String> = (0..30)
        .map(|i| signed(&keys(1510), 1, now(), &[&["t", "context"]], &format!("a note about compression, number {i}")))
        .collect();
    for note in &notes {
        first.publish(note, false);
    }
    let filter = json!({"kinds": [1], "#t": ["context"]});
    let from_first = first.req("all", filter.clone());
    assert_eq!(from_first, second.req("all", filter));
    assert_eq!(from_first.len(), notes.len());
    let ratio = |client: &Deflating| {
        let (wire, size) = client.compressed.iter().fold((0, 0), |(w, s), (cw, cs)| (w + cw, s + cs));
        wire as f64 / size as f64
    };
    assert!(ratio(&first) < ratio(&second), "a context saves more: {} vs {}", ratio(&first), ratio(&second));
    // Closing the first frees its context for the next connection.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while stat(&relay, "deflate_contexts") != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let third = Deflating::connect(&relay, Some("permessage-deflate"));
    assert!(third.context_kept(), "{:?}", third.agreed);
    drop(relay);
    // Compression turned off: every offer is declined.
    let off = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_config(off.path(), 1, "[compression]\nenabled = false\n");
    let mut declined = Deflating::connect(&relay, Some("permessage-deflate"));
    assert_eq!(declined.agreed, None);
    assert!(declined.req("x", json!({"kinds": [1]})).is_empty());
}

#[test]
fn hostile_compressed_messages_are_refused_and_the_relay_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 1);
    let offer = Some("permessage-deflate");
    // A bomb: 20 MiB of one letter in a few KiB, over the 512 KiB message limit.
    let mut bomb = Deflating::connect(&relay, offer);
    bomb.send_compressed(&vec![b'['; 20 << 20]);
    let (notices, code) = bomb.until_close();
    assert_eq!(code, Some(1009), "{notices:?}");
    assert!(notices.iter().any(|n| n[1].as_str().unwrap().starts_with("invalid: message too large")), "{notices:?}");
    // Bytes that are not deflate.
    let mut garbage = Deflating::connect(&relay, offer);
    garbage.send_frame(vec![0xff, 0xfe, 0xfd, 0x01, 0x02, 0x03], true);
    let (notices, code) = garbage.until_close();
    assert_eq!(code, Some(1007), "{notices:?}");
    // Valid deflate of bytes that are not UTF-8, in a text message.
    let mut not_text = Deflating::connect(&relay, offer);
    not_text.send_compressed(&[b'"', 0xff, 0xfe, b'"']);
    assert_eq!(not_text.until_close().1, Some(1007));
    // RSV1 from a client that agreed to nothing.
    let mut unagreed = Deflating::connect(&relay, None);
    unagreed.send_frame(deflate(br#"["REQ","x",{}]"#), true);
    assert_eq!(unagreed.until_close().1, Some(1002));
    // A compressed message in fragments (RSV1 on the first only) is read whole; RSV1 on a
    // continuation is a protocol error.
    let mut fragmented = Deflating::connect(&relay, offer);
    let note = signed(&keys(1521), 1, now(), &[], &"fragments ".repeat(50));
    let payload = deflate(format!(r#"["EVENT",{note}]"#).as_bytes());
    let (head, tail) = payload.split_at(payload.len() / 2);
    let mut first = Frame::message(head.to_vec(), OpCode::Data(OpData::Text), false);
    first.header_mut().rsv1 = true;
    fragmented.ws.send(Message::Frame(first)).unwrap();
    fragmented.ws.send(Message::Frame(Frame::message(tail.to_vec(), OpCode::Data(OpData::Continue), true))).unwrap();
    let ok = fragmented.recv();
    assert_eq!((ok[0].as_str(), ok[2].as_bool()), (Some("OK"), Some(true)), "{ok}");
    let mut bad = Frame::message(head.to_vec(), OpCode::Data(OpData::Text), false);
    bad.header_mut().rsv1 = true;
    fragmented.ws.send(Message::Frame(bad)).unwrap();
    let mut continuation = Frame::message(tail.to_vec(), OpCode::Data(OpData::Continue), true);
    continuation.header_mut().rsv1 = true;
    fragmented.ws.send(Message::Frame(continuation)).unwrap();
    assert_eq!(fragmented.until_close().1, Some(1002));
    // Everyone else is served, compressed or not.
    let mut fine = Deflating::connect(&relay, offer);
    let note = signed(&keys(1520), 1, now(), &[], &"fine ".repeat(100));
    fine.publish(&note, true);
    assert_eq!(fine.req("back", json!({"ids": [id_of(&note)]})).len(), 1);
    assert!(stat(&relay, "protocol_error_closes") >= 5);
}

//! Bounded work: hostile and slow clients against the real binary over real sockets. Each
//! test asserts boundedness through the counters the relay exposes (`GET /stats`), never
//! through wall-clock timings.

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};

use crate::relay::{ids, Relay};
use crate::support::{keys, now, signed};

fn count_of(stats: &Value, key: &str) -> u64 {
    stats[key].as_u64().unwrap_or_else(|| panic!("no {key} in {stats}"))
}

/// `count` kind-1 events from a few authors, half of them tagged `t`=`flood`.
fn events(count: u64, content_size: usize) -> Vec<String> {
    let base = now() - 10_000;
    let padding = "p".repeat(content_size);
    (0..count)
        .map(|i| {
            let tags: &[&[&str]] = if i % 2 == 0 { &[&["t", "flood"]] } else { &[] };
            signed(&keys(1200 + (i % 8) as u32), 1, base + i, tags, &format!("{i} {padding}"))
        })
        .collect()
}

#[test]
fn a_count_flood_runs_a_bounded_number_of_scans_and_is_cancelled_when_its_client_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_config(dir.path(), 2, "[limits]\nqueries_per_connection_max = 3\n");
    let mut publisher = relay.connect();
    assert_eq!(publisher.publish_all(&events(3000, 0)), 3000);

    // One connection sends 10,000 COUNTs that each need a scan, and never reads.
    let flooder = relay.connect_small();
    let mut raw = flooder.raw();
    let count = json!(["COUNT", "c", {"kinds": [1], "#t": ["flood"]}]).to_string();
    let flood: Vec<u8> = (0..10_000).flat_map(|_| masked_text_frame(&count)).collect();
    raw.write_all(&flood).expect("the relay's socket takes the flood");
    // Another client is served meanwhile, and correctly.
    let mut healthy = relay.connect();
    for _ in 0..5 {
        let found = healthy.req("h", &[json!({"kinds": [1], "#t": ["flood"], "limit": 10})]);
        assert_eq!(found.len(), 10);
    }
    let busy = relay.stats();
    assert!(count_of(&busy, "queries_max_seen") <= 3 + 1, "per-connection cap: {busy}");
    assert!(count_of(&busy, "queries") <= 3 + 1, "{busy}");
    // The flooder goes away at once (a reset): the scans it has running and the COUNTs it
    // sent are dropped with it.
    socket2::SockRef::from(&raw).set_linger(Some(Duration::ZERO)).unwrap();
    drop((raw, flooder));
    // Left: the publisher and the healthy client.
    // The cancels reach the other core a moment after the connection is gone.
    let after = relay.stats_until(Duration::from_secs(10), |s| {
        count_of(s, "connections") == 2 && count_of(s, "queries") == 0 && count_of(s, "remote_scans") == 0
    });
    assert_eq!(count_of(&after, "connections"), 2, "{after}");
    assert_eq!(count_of(&after, "queries"), 0, "{after}");
    assert_eq!(count_of(&after, "remote_scans"), 0, "{after}");
    assert!(count_of(&after, "queries_max_seen") <= 3 + 1, "{after}");
    // Each COUNT run is a scan on each of the two cores.
    assert!(count_of(&after, "counts_scanned") < 2 * 10_000, "the flood was held back, not queued: {after}");
    // And the relay answers COUNT correctly after it.
    healthy.send(&json!(["COUNT", "n", {"kinds": [1], "#t": ["flood"]}]).to_string());
    let answer = healthy.expect("COUNT");
    assert_eq!(answer[2]["count"], 1500, "{answer}");
}

#[test]
fn a_count_of_one_key_is_answered_from_the_index_and_matches_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 2);
    let mut client = relay.connect();
    let base = now() - 1000;
    let mut published = Vec::new();
    for i in 0..40u32 {
        published.push(signed(&keys(1300 + i % 4), 1 + (i % 3) as u16, base + u64::from(i), &[], &i.to_string()));
    }
    // A replaceable event and its newer version count once; a deleted event not at all.
    published.push(signed(&keys(1300), 0, base, &[], "old profile"));
    published.push(signed(&keys(1300), 0, base + 1, &[], "new profile"));
    assert_eq!(client.publish_all(&published), published.len());
    let victim =
        ids(&client.req("v", &[json!({"authors": [keys(1301).public_key().to_hex()], "kinds": [1], "limit": 1})]));
    let deletion = signed(&keys(1301), 5, base + 100, &[&["e", &victim[0]]], "");
    assert!(client.publish(&deletion).0);

    let count = |client: &mut crate::relay::Client, filter: Value| {
        client.send(&json!(["COUNT", "q", filter]).to_string());
        client.expect("COUNT")[2]["count"].as_u64().unwrap()
    };
    let before = relay.stats();
    let author0 = keys(1300).public_key().to_hex();
    let author1 = keys(1301).public_key().to_hex();
    let cases = [
        (json!({"kinds": [1]}), json!({"kinds": [1], "since": 0})),
        (json!({"kinds": [0, 2, 2]}), json!({"kinds": [0, 2], "since": 0})),
        (json!({"authors": [author0]}), json!({"authors": [author0], "since": 0})),
        (json!({"authors": [author1, author1]}), json!({"authors": [author1], "since": 0})),
        (json!({"kinds": [7]}), json!({"kinds": [7], "since": 0})),
    ];
    for (indexed, scanned) in cases {
        let from_index = count(&mut client, indexed.clone());
        let from_scan = count(&mut client, scanned);
        let naive = client.req("all", std::slice::from_ref(&indexed)).len() as u64;
        assert_eq!(from_index, from_scan, "{indexed}");
        assert_eq!(from_index, naive, "{indexed}");
    }
    assert_eq!(count(&mut client, json!({"kinds": [1]})), 40 / 3 + 1 - 1);
    let after = relay.stats();
    assert_eq!(count_of(&after, "counts_from_index") - count_of(&before, "counts_from_index"), 6 * 2);
}

#[test]
fn req_churn_cancels_each_replaced_query_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 2);
    let mut publisher = relay.connect();
    assert_eq!(publisher.publish_all(&events(2000, 200)), 2000);
    let rss_before = count_of(&relay.stats(), "rss_bytes");
    // Three clients each replace one subscription 3,000 times (10 filters each), never reading.
    let filters: Vec<Value> = (0..10).map(|i| json!({"kinds": [1], "limit": 500 + i})).collect();
    let mut message = vec![json!("REQ"), json!("churn")];
    message.extend(filters);
    let frame = masked_text_frame(&Value::Array(message).to_string());
    let clients: Vec<_> = (0..3).map(|_| relay.connect_small()).collect();
    let churners: Vec<_> = clients
        .iter()
        .map(|client| {
            let mut raw = client.raw();
            let frame = frame.clone();
            std::thread::spawn(move || {
                for _ in 0..3_000 {
                    if raw.write_all(&frame).is_err() {
                        break;
                    }
                }
                raw
            })
        })
        .collect();
    let raws: Vec<_> = churners.into_iter().map(|thread| thread.join().unwrap()).collect();
    // The relay may still be reading the last REQs the threads wrote: give it a moment.
    let during = relay.stats_until(Duration::from_secs(5), |s| count_of(s, "queries_cancelled") > 0);
    assert!(count_of(&during, "subscriptions") <= 3, "one subscription each: {during}");
    assert!(count_of(&during, "queries_max_seen") <= 3 * 4, "{during}");
    assert!(count_of(&during, "queries_cancelled") > 0, "replaced queries were cancelled: {during}");
    // They leave at once (a reset): what they sent and never had answered goes with them.
    for raw in &raws {
        socket2::SockRef::from(raw).set_linger(Some(Duration::ZERO)).unwrap();
    }
    drop((raws, clients));
    let after = relay.stats_until(Duration::from_secs(10), |s| count_of(s, "connections") == 1);
    assert_eq!(count_of(&after, "queries"), 0, "{after}");
    assert_eq!(count_of(&after, "subscriptions"), 0, "{after}");
    assert_eq!(count_of(&after, "outbound_bytes"), 0, "{after}");
    // Per connection at most its queries' answers and its byte budget: far below what
    // 9,000 answers of 5,000 events held at once would take.
    let grown = count_of(&after, "rss_bytes").saturating_sub(rss_before);
    assert!(grown < 200 * 1024 * 1024, "resident memory grew by {grown} bytes: {after}");
}

#[test]
fn stalled_readers_are_closed_and_a_healthy_subscriber_beside_them_gets_everything() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        "[limits]\noutbound_bytes_max = 262144\nsocket_send_buffer_size = 16384\nconnections_per_ip_max = 1000\n";
    let relay = Relay::start_with_config(dir.path(), 2, config);
    raise_open_files();
    let stalled: Vec<_> = (0..500)
        .map(|_| {
            let mut client = relay.connect_small();
            client.send(&json!(["REQ", "s", {"kinds": [1]}]).to_string());
            client
        })
        .collect();
    let mut healthy = relay.connect();
    assert!(healthy.req("live", &[json!({"kinds": [1]})]).is_empty());
    let mut publisher = relay.connect();
    let published = events(800, 1000);
    let reading = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while seen.len() < 800 {
            let message = healthy.recv();
            if message[0] == "EVENT" {
                seen.push(message[2]["id"].as_str().unwrap().to_owned());
            }
        }
        seen
    });
    // In bursts of 50 (~55 KB, well inside a reader's 256 KiB budget), 880 KB in all: more
    // than a reader that never reads can absorb (its budget, the kernel's buffers and the
    // WebSocket's write buffer).
    for chunk in published.chunks(50) {
        assert_eq!(publisher.publish_all(chunk), chunk.len());
    }
    let seen = reading.join().expect("the healthy subscriber is never dropped");
    assert_eq!(seen.len(), 800);
    let stats = relay.stats_until(Duration::from_secs(15), |s| count_of(s, "connections") <= 3);
    let closed = count_of(&stats, "slow_consumer_closes") + count_of(&stats, "write_stall_closes");
    assert!(closed >= 500, "every stalled reader is closed: {stats}");
    // Never more than every connection's budget plus one message each.
    assert!(count_of(&stats, "outbound_bytes_max_seen") <= 502 * (262_144 + 2_000), "{stats}");
    // Their sockets are gone too, not left ESTABLISHED with unsent data.
    let mut established = relay.established_count();
    for _ in 0..100 {
        if established <= 3 + 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        established = relay.established_count();
    }
    assert!(established <= 3 + 1, "{established} sockets still established");
    drop(stalled);
}

#[test]
fn a_reader_whose_socket_takes_nothing_is_closed_after_the_write_stall_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[limits]\nwrite_stall_secs = 1\nsocket_send_buffer_size = 16384\noutbound_bytes_max = 8388608\n";
    let relay = Relay::start_with_config(dir.path(), 1, config);
    let mut stalled = relay.connect_small();
    assert!(stalled.req("s", &[json!({"kinds": [1]})]).is_empty());
    let mut publisher = relay.connect();
    assert_eq!(publisher.publish_all(&events(60, 30_000)), 60);
    let stats = relay.stats_until(Duration::from_secs(10), |s| count_of(s, "write_stall_closes") >= 1);
    assert_eq!(count_of(&stats, "write_stall_closes"), 1, "{stats}");
    assert_eq!(count_of(&stats, "connections"), 1, "{stats}");
}

#[test]
fn client_sockets_get_the_configured_kernel_buffers() {
    // The kernel doubles what it is asked for, for its bookkeeping.
    assert_eq!(relay_socket_buffers(24_576, 20_480), (2 * 24_576, 2 * 20_480));
    // With 0, autotuning is left alone: the buffers start at the kernel's defaults
    // (net.ipv4.tcp_rmem and tcp_wmem, whose second field is the initial size).
    let initial = |path: &str| -> usize {
        let text = std::fs::read_to_string(path).unwrap();
        text.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let (receive, send) = relay_socket_buffers(0, 0);
    assert!(receive >= initial("/proc/sys/net/ipv4/tcp_rmem") && receive != 2 * 24_576, "{receive}");
    assert!(send >= initial("/proc/sys/net/ipv4/tcp_wmem") && send != 2 * 20_480, "{send}");
}

/// The kernel buffers of the relay's socket for a client, with these sizes configured.
fn relay_socket_buffers(receive: usize, send: usize) -> (usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[limits]\nsocket_receive_buffer_size = {receive}\nsocket_send_buffer_size = {send}\n");
    let relay = Relay::start_with_config(dir.path(), 1, &config);
    let mut client = relay.connect();
    assert!(client.req("s", &[json!({"kinds": [1]})]).is_empty());
    relay.socket_buffers_of(&client)
}

/// A client text frame (masked with the all-zero key), written raw beside the client library.
fn masked_text_frame(text: &str) -> Vec<u8> {
    let payload = text.as_bytes();
    let mut frame = vec![0x81];
    if payload.len() < 126 {
        frame.push(0x80 | payload.len() as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

fn raise_open_files() {
    // SAFETY: get/setrlimit on a local struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// Each protocol violation closes with its own code, after a NOTICE saying why.
#[test]
fn each_violation_closes_with_its_code_after_a_notice() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_config(dir.path(), 1, "[limits]\nmessage_size_max = 300000\n");
    let check = |frame: &[u8], code: u16, words: &str| {
        let mut client = relay.connect();
        client.raw().write_all(frame).unwrap();
        let (texts, close) = client.read_until_close();
        let (got, reason) = close.unwrap_or_else(|| panic!("a close frame for {code}, after {texts:?}"));
        assert_eq!(got, code, "{reason}");
        assert!(texts.iter().any(|t| t.starts_with("[\"NOTICE\"") && t.contains(words)), "{texts:?}");
    };
    // Invalid UTF-8 in a text frame: 1007.
    check(&[0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe], 1007, "UTF-8");
    // A reserved bit set: 1002.
    check(&[0xc1, 0x80, 0, 0, 0, 0], 1002, "protocol");
    // An unknown opcode: 1002.
    check(&[0x83, 0x80, 0, 0, 0, 0], 1002, "protocol");
    // Over the message size: 1009.
    let mut big = vec![0x81, 0x80 | 127];
    big.extend_from_slice(&(400_000u64).to_be_bytes());
    big.extend_from_slice(&[0, 0, 0, 0]);
    check(&big, 1009, "too large");
    // The relay still serves.
    assert!(relay.connect().req("x", &[json!({"kinds": [1]})]).is_empty());
}

/// One connection over its per-address cap is refused with 1013 and a NOTICE.
#[test]
fn a_connection_over_its_address_cap_is_closed_with_1013() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_config(dir.path(), 1, "[limits]\nconnections_per_ip_max = 1\n");
    let _first = relay.connect();
    let (texts, close) = relay.connect().read_until_close();
    assert_eq!(close.map(|c| c.0), Some(1013));
    assert!(texts.iter().any(|t| t.contains("rate-limited:")), "{texts:?}");
}

/// A slow consumer gets 1008.
#[test]
fn a_slow_consumer_is_closed_with_1008() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[limits]\noutbound_bytes_max = 16384\nsocket_send_buffer_size = 8192\n";
    let relay = Relay::start_with_config(dir.path(), 1, config);
    let mut slow = relay.connect_small();
    assert!(slow.req("s", &[json!({"kinds": [1]})]).is_empty());
    let mut publisher = relay.connect();
    assert_eq!(publisher.publish_all(&events(200, 2000)), 200);
    relay.stats_until(Duration::from_secs(10), |s| count_of(s, "slow_consumer_closes") >= 1);
    let (_, close) = slow.read_until_close();
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("slow consumer"), "{reason}");
}

/// A REQ's answer holds at most `query_answer_bytes_max` of event JSON: the newest events
/// that fit, then EOSE.
#[test]
fn a_large_answer_is_cut_to_its_byte_budget_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_config(dir.path(), 2, "[limits]\nquery_answer_bytes_max = 300000\n");
    let mut client = relay.connect();
    let published = events(60, 10_000);
    assert_eq!(client.publish_all(&published), 60);
    let answer = client.req("big", &[json!({"kinds": [1]})]);
    let size: usize = answer.iter().map(|event| event.to_string().len()).sum();
    assert!(size <= 300_000 && size > 250_000, "{} events, {size} bytes", answer.len());
    let mut newest: Vec<Value> = published.iter().map(|json| serde_json::from_str(json).unwrap()).collect();
    newest.reverse();
    assert_eq!(ids(&answer), ids(&newest[..answer.len()]));
}

#[test]
fn sockets_that_never_finish_their_handshake_are_counted_and_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 1);
    // Connected, a request head begun and never finished: each holds a task on the core.
    let mut idle: Vec<std::net::TcpStream> = (0..40)
        .map(|_| {
            let mut socket = std::net::TcpStream::connect(("127.0.0.1", relay.port)).unwrap();
            socket.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
            socket
        })
        .collect();
    // The /stats request itself is one more handshake while it is served.
    let stats = relay.stats_until(Duration::from_secs(10), |s| count_of(s, "handshakes") >= 40);
    assert_eq!(count_of(&stats, "handshakes"), 41, "{stats}");
    assert_eq!(count_of(&stats, "handshakes_shed"), 0, "{stats}");
    idle.clear();
    let stats = relay.stats_until(Duration::from_secs(10), |s| count_of(s, "handshakes") == 1);
    assert_eq!(count_of(&stats, "handshakes"), 1, "only the /stats request: {stats}");
    assert!(count_of(&stats, "handshakes_max_seen") >= 41, "{stats}");
    // A session is no longer a handshake.
    let _client = relay.connect();
    let stats = relay.stats_until(Duration::from_secs(10), |s| count_of(s, "connections") == 1);
    assert_eq!(count_of(&stats, "handshakes"), 1, "{stats}");
}

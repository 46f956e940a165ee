//! A small load client for any NIP-01 relay, with pre-signed events, until loadgen exists.
//!
//! cargo bench --bench relay_load -- MODE URL [options]
//!   ingest  URL [events] [connections] [pid]    unique events as fast as OKs come back;
//!                                               with the relay's pid, also per relay CPU-second
//!   fanout  URL [subscribers] [events]          deliveries per second to N subscribers
//!   latency URL [rate/s] [seconds]              publish->OK latency at a fixed offered rate
//!   idle    URL PID [connections] [subs]        resident memory per idle connection holding
//!                                               `subs` open subscriptions (default 0)
//!   acked   URL FILE [events] [connections]     publish until done or the relay goes away,
//!                                               appending every acknowledged id to FILE
//!   check   URL FILE                            every id in FILE is served (exit 1 if not)
//! Runs are bounded in count and time and connect only to URL.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nostr::{EventBuilder, JsonUtil, Keys, Kind, Tag, Timestamp};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

fn connect(url: &str) -> Socket {
    let (mut ws, _) = tungstenite::connect(url).expect("connect to the relay");
    if let MaybeTlsStream::Plain(stream) = ws.get_mut() {
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        stream.set_nodelay(true).unwrap();
    }
    ws
}

/// `count` signed kind-1 notes from 64 authors, ~300 bytes of content, tagged `tag`.
fn presign(count: usize, tag: &str) -> Vec<String> {
    let keys: Vec<Keys> = (0..64).map(|_| Keys::generate()).collect();
    let now = Timestamp::now().as_secs();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        let chunks: Vec<_> = (0..threads)
            .map(|t| {
                let keys = &keys;
                scope.spawn(move || {
                    (t..count)
                        .step_by(threads)
                        .map(|i| {
                            let content = format!("bench {i} {}", "lorem ipsum dolor sit amet ".repeat(11));
                            let event = EventBuilder::new(Kind::TextNote, content)
                                .tags([Tag::parse(["t", tag]).unwrap()])
                                .custom_created_at(Timestamp::from(now - (i % 600) as u64))
                                .sign_with_keys(&keys[i % keys.len()])
                                .unwrap();
                            format!(r#"["EVENT",{}]"#, event.as_json())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        chunks.into_iter().flat_map(|c| c.join().unwrap()).collect()
    })
}

fn read_text(ws: &mut Socket) -> Option<String> {
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => return Some(text.to_string()),
            Ok(Message::Close(_)) => return None,
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => return None,
            Err(_) => return None,
        }
    }
}

fn ingest(url: &str, count: usize, connections: usize, relay_pid: Option<u32>) {
    eprintln!("signing {count} events...");
    let events = Arc::new(presign(count, "bench-ingest"));
    // Wall-clock rates swing ±10% between runs on a shared VM; the relay's CPU time per event
    // is the steadier figure.
    let pass = |what: &str| {
        let before = relay_pid.map(cpu_seconds);
        let (elapsed, ok) = ingest_pass(url, &events, connections);
        let per_cpu = match (before, relay_pid.map(cpu_seconds)) {
            (Some(before), Some(after)) => format!(
                ", relay {:.2} CPU-s: {:.0} events per relay CPU-second",
                after - before,
                count as f64 / (after - before)
            ),
            _ => String::new(),
        };
        println!("{what} in {elapsed:.2} s: {:.0} events/s, {ok} OK true{per_cpu}", count as f64 / elapsed);
    };
    pass(&format!("ingest: {count} events over {connections} connections"));
    // The same events again: every one is a duplicate, answered before verification when the
    // receiving core owns the author's shard, after it otherwise.
    pass(&format!("duplicates: the same {count} events again"));
}

/// User + system CPU time of process `pid` so far, in seconds (/proc/PID/stat fields 14, 15).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the relay's /proc stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').expect("a stat line").1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Send every event over `connections` connections, 64 in flight each; (seconds, OK true).
fn ingest_pass(url: &str, events: &Arc<Vec<String>>, connections: usize) -> (f64, usize) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(connections + 1));
    let workers: Vec<_> = (0..connections)
        .map(|c| {
            let (events, accepted, barrier, url) = (events.clone(), accepted.clone(), barrier.clone(), url.to_owned());
            std::thread::spawn(move || {
                let mut ws = connect(&url);
                let mine: Vec<&String> = events.iter().skip(c).step_by(connections).collect();
                barrier.wait();
                const WINDOW: usize = 64;
                let (mut sent, mut done) = (0, 0);
                while done < mine.len() {
                    while sent < mine.len() && sent - done < WINDOW {
                        ws.write(Message::text(mine[sent].clone())).unwrap();
                        sent += 1;
                    }
                    ws.flush().unwrap();
                    let Some(reply) = read_text(&mut ws) else { break };
                    if reply.starts_with("[\"OK\"") {
                        done += 1;
                        if reply.contains(",true,") {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    workers.into_iter().for_each(|w| w.join().unwrap());
    (started.elapsed().as_secs_f64(), accepted.load(Ordering::Relaxed))
}

/// Publish `count` fresh events over `connections` connections (64 in flight each) until
/// done or the relay goes away (kill -9), appending the id of every `OK true` to `file` as it
/// arrives: what the file holds was acknowledged.
fn acked(url: &str, file: &str, count: usize, connections: usize) {
    let events = Arc::new(presign(count, "bench-acked"));
    let out = Arc::new(std::sync::Mutex::new(
        std::fs::OpenOptions::new().create(true).append(true).open(file).expect("the ids file opens"),
    ));
    let accepted = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..connections)
        .map(|c| {
            let (events, out, accepted, url) = (events.clone(), out.clone(), accepted.clone(), url.to_owned());
            std::thread::spawn(move || {
                let Ok((mut ws, _)) = tungstenite::connect(&url) else { return };
                let mine: Vec<&String> = events.iter().skip(c).step_by(connections).collect();
                const WINDOW: usize = 64;
                let (mut sent, mut done) = (0, 0);
                while done < mine.len() {
                    while sent < mine.len() && sent - done < WINDOW {
                        if ws.write(Message::text(mine[sent].clone())).is_err() {
                            return;
                        }
                        sent += 1;
                    }
                    if ws.flush().is_err() {
                        return;
                    }
                    let Some(reply) = read_text(&mut ws) else { return };
                    if let Some(rest) = reply.strip_prefix("[\"OK\",\"") {
                        done += 1;
                        if rest.get(64..71) == Some("\",true,") {
                            use std::io::Write;
                            writeln!(out.lock().unwrap(), "{}", &rest[..64]).expect("the ids file takes the id");
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    workers.into_iter().for_each(|w| w.join().unwrap());
    println!("acknowledged {}", accepted.load(Ordering::Relaxed));
}

/// Ask for every id in `file`, 500 at a time: how many are missing. Exits 1 when any is.
fn check(url: &str, file: &str) {
    let text = std::fs::read_to_string(file).expect("the ids file");
    let ids: Vec<&str> = text.lines().filter(|l| l.len() == 64).collect();
    let mut ws = connect(url);
    let mut missing = 0;
    for (n, chunk) in ids.chunks(500).enumerate() {
        let sub = format!("check{n}");
        let req = serde_json::json!(["REQ", sub, {"ids": chunk}]).to_string();
        ws.send(Message::text(req)).expect("the relay takes the REQ");
        let mut served = std::collections::HashSet::new();
        loop {
            let reply = read_text(&mut ws).expect("the relay answers");
            if reply.starts_with("[\"EOSE\"") {
                // Each REQ stays open for live events: close it, or the per-connection
                // subscription cap refuses the 201st.
                ws.send(Message::text(serde_json::json!(["CLOSE", sub]).to_string())).expect("CLOSE sent");
                break;
            }
            assert!(!reply.starts_with("[\"CLOSED\""), "the check's REQ was refused: {reply}");
            if let Some(at) = reply.find("\"id\":\"") {
                served.insert(reply[at + 6..at + 70].to_owned());
            }
        }
        missing += chunk.iter().filter(|id| !served.contains(**id)).count();
    }
    println!("checked {} acknowledged ids: {missing} missing", ids.len());
    if missing > 0 {
        std::process::exit(1);
    }
}

fn fanout(url: &str, subscribers: usize, count: usize) {
    let events = presign(count, "bench-fanout");
    let delivered = Arc::new(AtomicUsize::new(0));
    let ready = Arc::new(Barrier::new(subscribers + 1));
    let threads: Vec<_> = (0..subscribers)
        .map(|s| {
            let (delivered, ready, url) = (delivered.clone(), ready.clone(), url.to_owned());
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    let mut ws = connect(&url);
                    ws.send(Message::text(format!(
                        r##"["REQ","f{s}",{{"kinds":[1],"#t":["bench-fanout"],"limit":0}}]"##
                    )))
                    .unwrap();
                    while read_text(&mut ws).is_some_and(|m| !m.starts_with("[\"EOSE\"")) {}
                    ready.wait();
                    let mut got = 0;
                    while got < count {
                        match read_text(&mut ws) {
                            Some(m) if m.starts_with("[\"EVENT\"") => got += 1,
                            Some(_) => {}
                            None => break,
                        }
                    }
                    delivered.fetch_add(got, Ordering::Relaxed);
                })
                .unwrap()
        })
        .collect();
    ready.wait();
    let mut publisher = connect(url);
    let started = Instant::now();
    for event in &events {
        publisher.write(Message::text(event.clone())).unwrap();
    }
    publisher.flush().unwrap();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let elapsed = started.elapsed().as_secs_f64();
    let total = delivered.load(Ordering::Relaxed);
    println!(
        "fanout: {count} events to {subscribers} subscribers: {total} of {} deliveries in {elapsed:.2} s: {:.0} deliveries/s",
        count * subscribers,
        total as f64 / elapsed
    );
}

fn latency(url: &str, rate: f64, seconds: f64) {
    let count = (rate * seconds) as usize;
    let events = presign(count, "bench-latency");
    let connections = 4;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let results: Vec<Histogram<u64>> = std::thread::scope(|scope| {
        let started = Instant::now() + Duration::from_millis(200);
        let workers: Vec<_> = (0..connections)
            .map(|c| {
                let events = &events;
                scope.spawn(move || {
                    let mut ws = connect(url);
                    if let MaybeTlsStream::Plain(stream) = ws.get_mut() {
                        stream.set_read_timeout(Some(Duration::from_micros(200))).unwrap();
                    }
                    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                    let mine: Vec<(usize, &String)> = events.iter().enumerate().skip(c).step_by(connections).collect();
                    let mut pending = std::collections::VecDeque::new();
                    let mut next = 0;
                    let deadline = started + Duration::from_secs_f64(seconds + 30.0);
                    while (next < mine.len() || !pending.is_empty()) && Instant::now() < deadline {
                        // Open loop: send everything whose intended time has come.
                        while next < mine.len() {
                            let intended = started + Duration::from_secs_f64(mine[next].0 as f64 / rate);
                            if Instant::now() < intended {
                                break;
                            }
                            ws.send(Message::text(mine[next].1.clone())).unwrap();
                            pending.push_back(intended);
                            next += 1;
                        }
                        if let Some(reply) = read_text(&mut ws) {
                            if reply.starts_with("[\"OK\"") {
                                let intended = pending.pop_front().expect("an OK answers a sent event");
                                histogram.record(intended.elapsed().as_micros().max(1) as u64).unwrap();
                            }
                        }
                    }
                    histogram
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for part in results {
        histogram.add(part).unwrap();
    }
    println!(
        "latency: {count} events offered at {rate:.0}/s: publish->OK p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} OKs)",
        histogram.value_at_quantile(0.5) as f64 / 1000.0,
        histogram.value_at_quantile(0.9) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
        histogram.max() as f64 / 1000.0,
        histogram.len()
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the relay's /proc status");
    status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

fn idle(url: &str, pid: u32, connections: usize, subs: usize) {
    let open = |url: &str| {
        let mut ws = connect(url);
        for n in 0..subs {
            // A live subscription with nothing stored to send: its EOSE comes at once.
            let req = format!(r#"["REQ","idle{n}",{{"kinds":[1],"authors":["{:064x}"],"limit":0}}]"#, n + 1);
            ws.send(Message::Text(req.into())).expect("send REQ");
            loop {
                match ws.read().expect("the REQ's answer") {
                    Message::Text(text) if text.starts_with("[\"EOSE\"") => break,
                    Message::Text(text) if text.starts_with("[\"CLOSED\"") => panic!("REQ refused: {text}"),
                    _ => {}
                }
            }
        }
        ws
    };
    // Warm up allocator pools with one round, then measure a second.
    let warm: Vec<Socket> = (0..64).map(|_| open(url)).collect();
    drop(warm);
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(pid);
    let sockets: Vec<Socket> = (0..connections).map(|_| open(url)).collect();
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_kib(pid);
    println!(
        "idle: {connections} connections, {subs} subscriptions each: RSS {before} KiB -> {after} KiB: {:.1} KiB per idle connection",
        (after.saturating_sub(before)) as f64 / connections as f64
    );
    drop(sockets);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_owned());
    match args.first().map(String::as_str) {
        Some("ingest") => {
            let pid = args.get(4).map(|pid| pid.parse().expect("a pid"));
            ingest(&arg(1, "ws://127.0.0.1:7777"), arg(2, "20000").parse().unwrap(), arg(3, "8").parse().unwrap(), pid)
        }
        Some("fanout") => {
            fanout(&arg(1, "ws://127.0.0.1:7777"), arg(2, "1000").parse().unwrap(), arg(3, "200").parse().unwrap())
        }
        Some("latency") => {
            latency(&arg(1, "ws://127.0.0.1:7777"), arg(2, "5000").parse().unwrap(), arg(3, "10").parse().unwrap())
        }
        Some("idle") => {
            let (url, pid) = (arg(1, "ws://127.0.0.1:7777"), arg(2, "0").parse().unwrap());
            idle(&url, pid, arg(3, "2000").parse().unwrap(), arg(4, "0").parse().unwrap())
        }
        Some("acked") => acked(
            &arg(1, "ws://127.0.0.1:7777"),
            &arg(2, "acked.ids"),
            arg(3, "200000").parse().unwrap(),
            arg(4, "4").parse().unwrap(),
        ),
        Some("check") => check(&arg(1, "ws://127.0.0.1:7777"), &arg(2, "acked.ids")),
        _ => eprintln!("usage: relay_load ingest|fanout|latency|idle|acked|check URL ... (see the file header)"),
    }
}

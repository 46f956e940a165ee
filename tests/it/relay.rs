//! The relay as clients see it: the real binary, real sockets, messages built and parsed by
//! the `nostr` client library, real restarts and `kill -9`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nostr::{ClientMessage, Filter as NostrFilter, JsonUtil, Kind, RelayMessage, SubscriptionId};
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::support::{keys, now, signed, verified};

const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Relay {
    child: Child,
    pub port: u16,
    /// Every line the relay wrote to stderr so far (its log).
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// How the relay's process is set up before it starts.
#[derive(Clone, Copy, Default)]
struct Process {
    /// A soft limit on open descriptors.
    open_files: Option<u64>,
    /// The one CPU the process may run on.
    cpu: Option<usize>,
    /// `serve --takeover`: take over from a relay on the same port and data directory.
    takeover: bool,
}

impl Relay {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start(data_dir: &Path, cores: usize) -> Relay {
        Relay::start_with_config(data_dir, cores, "")
    }

    /// Start with a config file holding `config` (TOML); flags set address, cores and data.
    pub fn start_with_config(data_dir: &Path, cores: usize, config: &str) -> Relay {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Relay::start_on(data_dir, cores, config, port)
    }

    /// Start on a given port (a restart on the port a stopped relay used).
    pub fn start_on(data_dir: &Path, cores: usize, config: &str, port: u16) -> Relay {
        Relay::spawn(data_dir, cores, config, port, Process::default())
    }

    /// Start with a soft limit of `open_files` descriptors, as a fresh login shell has.
    pub fn start_with_open_files(data_dir: &Path, cores: usize, config: &str, open_files: u64) -> Relay {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Relay::spawn(data_dir, cores, config, port, Process { open_files: Some(open_files), ..Process::default() })
    }

    /// Start one core, with the process allowed to run on `cpu` only (as `taskset -c CPU`).
    pub fn start_on_cpu(data_dir: &Path, cpu: usize) -> Relay {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Relay::spawn(data_dir, 1, "", port, Process { cpu: Some(cpu), ..Process::default() })
    }

    /// `serve --takeover` on the port and data directory of a running relay; returns once it
    /// serves (after the running relay has handed over).
    pub fn start_takeover(data_dir: &Path, cores: usize, config: &str, port: u16) -> Relay {
        Relay::spawn(data_dir, cores, config, port, Process { takeover: true, ..Process::default() })
    }

    fn spawn(data_dir: &Path, cores: usize, config: &str, port: u16, process: Process) -> Relay {
        use std::os::unix::process::CommandExt;
        std::fs::create_dir_all(data_dir).unwrap();
        let config_path = data_dir.join("test-config.toml");
        // Not rewritten when it is already there: a restart on a full disk must not need space.
        if std::fs::read_to_string(&config_path).ok().as_deref() != Some(config) {
            std::fs::write(&config_path, config).unwrap();
        }
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringrelay"));
        // SAFETY: only async-signal-safe calls (getrlimit, setrlimit, sched_setaffinity)
        // between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if let Some(soft) = process.open_files {
                    let mut limit: libc::rlimit = std::mem::zeroed();
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
                    limit.rlim_cur = soft;
                    libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                }
                match process.cpu {
                    Some(cpu) => run_only_on(cpu),
                    None => Ok(()),
                }
            });
        }
        let mut child = command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--cores", &cores.to_string()])
            .arg("--config")
            .arg(&config_path)
            .arg("--data-dir")
            .arg(data_dir)
            .args(process.takeover.then_some("--takeover"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the relay starts");
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = ready_tx.send(());
                }
                eprintln!("relay: {line}");
                kept.lock().unwrap().push(line);
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(30)).expect("the relay reports it is listening");
        Relay { child, port, log }
    }

    /// How many lines of the relay's log so far contain `text`.
    pub fn log_lines_with(&self, text: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|line| line.contains(text)).count()
    }

    /// A WebSocket client; the TCP connect and the handshake are bounded by `READ_TIMEOUT`.
    pub fn connect(&self) -> Client {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let stream = TcpStream::connect_timeout(&address, READ_TIMEOUT).expect("TCP connects");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        let (ws, _) = tungstenite::client(format!("ws://127.0.0.1:{}", self.port), MaybeTlsStream::Plain(stream))
            .expect("websocket handshake within the read timeout");
        Client { ws, challenge: None }
    }

    /// A WebSocket client from another loopback address (`127.0.0.2`...): a client the relay
    /// tells apart from the test's others by address.
    pub fn connect_from(&self, source: std::net::Ipv4Addr) -> Client {
        self.connect_socket(|socket| socket.bind(&std::net::SocketAddr::from((source, 0)).into()).unwrap())
    }

    /// A WebSocket client whose socket receives into a small kernel buffer, so that a
    /// client that stops reading is felt by the relay at once rather than after megabytes.
    pub fn connect_small(&self) -> Client {
        self.connect_socket(|socket| socket.set_recv_buffer_size(4096).unwrap())
    }

    /// A WebSocket client whose upgrade request carries `X-Forwarded-For: forwarded_for`,
    /// as a reverse proxy's does (from `source`, another loopback address, when given).
    pub fn connect_forwarded(&self, forwarded_for: &str, source: Option<std::net::Ipv4Addr>) -> Client {
        use tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://127.0.0.1:{}", self.port).into_client_request().unwrap();
        request.headers_mut().insert("X-Forwarded-For", forwarded_for.parse().unwrap());
        self.connect_request(request, |socket| {
            if let Some(source) = source {
                socket.bind(&std::net::SocketAddr::from((source, 0)).into()).unwrap();
            }
        })
    }

    /// A WebSocket client on a socket `prepare` sets up before it connects.
    fn connect_socket(&self, prepare: impl FnOnce(&socket2::Socket)) -> Client {
        use tungstenite::client::IntoClientRequest;
        self.connect_request(format!("ws://127.0.0.1:{}", self.port).into_client_request().unwrap(), prepare)
    }

    fn connect_request(
        &self,
        request: tungstenite::handshake::client::Request,
        prepare: impl FnOnce(&socket2::Socket),
    ) -> Client {
        connect_request(self.port, request, prepare)
    }

    /// The relay's counters (`GET /stats`), summed over its cores.
    pub fn stats(&self) -> Value {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.write_all(b"GET /stats HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_else(|| panic!("no body: {response}"));
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    /// Poll the counters until `done` holds, for at most `within`; returns the last seen.
    pub fn stats_until(&self, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let stats = self.stats();
            if done(&stats) || Instant::now() >= deadline {
                return stats;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The kernel buffer sizes (SO_RCVBUF, SO_SNDBUF) of the relay's own socket for
    /// `client`'s connection, read from a copy of the relay's descriptor (pidfd_getfd).
    pub fn socket_buffers_of(&self, client: &Client) -> (usize, usize) {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let client_address = client.raw().local_addr().unwrap();
        // SAFETY: pidfd_open and pidfd_getfd on our own child; each descriptor they return
        // is owned here and closed on drop.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.child.id() as libc::c_int, 0) };
        assert!(pidfd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
        for entry in std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).unwrap().flatten() {
            let is_socket =
                std::fs::read_link(entry.path()).is_ok_and(|link| link.to_string_lossy().starts_with("socket:"));
            let Some(number) = entry.file_name().to_str().and_then(|name| name.parse::<libc::c_int>().ok()) else {
                continue;
            };
            if !is_socket {
                continue;
            }
            let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), number, 0) };
            if copy < 0 {
                continue;
            }
            let copy = unsafe { OwnedFd::from_raw_fd(copy as i32) };
            let socket = socket2::SockRef::from(&copy);
            if socket.peer_addr().ok().and_then(|peer| peer.as_socket()) == Some(client_address) {
                return (socket.recv_buffer_size().unwrap(), socket.send_buffer_size().unwrap());
            }
        }
        panic!("the relay holds no socket connected to {client_address}");
    }

    /// Client sockets the relay holds ESTABLISHED on its port (from /proc/net/tcp and tcp6).
    pub fn established_count(&self) -> usize {
        let port = format!(":{:04X} ", self.port);
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .flat_map(|table| table.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 3 && format!("{} ", fields[1]).ends_with(&port) && fields[3] == "01"
            })
            .count()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the relay did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the relay to exit by itself (after a handover), for at most `within`.
    pub fn wait_exit(mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the relay did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Client {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    /// The NIP-42 challenge the relay sent, once `recv` has seen it (it is not returned).
    pub challenge: Option<String>,
}

impl Client {
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        if let MaybeTlsStream::Plain(stream) = self.ws.get_mut() {
            stream.set_read_timeout(Some(timeout)).unwrap();
        }
    }

    /// The next message other than a NOTICE (the relay says why before it closes), or `None`
    /// when nothing arrives within the read timeout.
    pub fn read_within(&mut self) -> Option<tungstenite::Result<Message>> {
        loop {
            match self.ws.read() {
                Err(tungstenite::Error::Io(error))
                    if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return None
                }
                Ok(Message::Text(text)) if text.starts_with("[\"NOTICE\"") || text.starts_with("[\"AUTH\"") => continue,
                other => return Some(other),
            }
        }
    }

    pub fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    /// Queue a message without flushing (a client pipelining many).
    pub fn feed(&mut self, text: &str) {
        self.ws.write(Message::text(text)).expect("write");
    }

    pub fn flush(&mut self) {
        self.ws.flush().expect("flush");
    }

    /// The raw TCP stream under the WebSocket, for frames no client library would send.
    pub fn raw(&self) -> TcpStream {
        let MaybeTlsStream::Plain(stream) = self.ws.get_ref() else { unreachable!("plain") };
        stream.try_clone().unwrap()
    }

    /// Read until the relay's close frame; returns the texts before it and the close frame's
    /// code and reason (`None` when the connection ended without one).
    pub fn read_until_close(&mut self) -> (Vec<String>, Option<(u16, String)>) {
        let mut texts = Vec::new();
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => texts.push(text.to_string()),
                Ok(Message::Close(frame)) => {
                    return (texts, frame.map(|frame| (u16::from(frame.code), frame.reason.to_string())))
                }
                Ok(_) => {}
                Err(_) => return (texts, None),
            }
        }
    }

    /// Publish every event without waiting, then read their OKs; returns how many were accepted.
    pub fn publish_all(&mut self, events: &[String]) -> usize {
        for (index, json) in events.iter().enumerate() {
            let event: Value = serde_json::from_str(json).unwrap();
            self.feed(&json!(["EVENT", event]).to_string());
            if index % 64 == 63 {
                self.flush();
            }
        }
        self.flush();
        let mut accepted = 0;
        let mut answered = 0;
        while answered < events.len() {
            let message = self.recv();
            if message[0] == "OK" {
                answered += 1;
                accepted += usize::from(message[2] == true);
            }
        }
        accepted
    }

    /// The NIP-42 challenge: the one already seen, or the next message, which on a fresh
    /// connection is the relay's `["AUTH", challenge]`.
    pub fn wait_challenge(&mut self) -> String {
        if let Some(challenge) = &self.challenge {
            return challenge.clone();
        }
        match self.ws.read().expect("a message before the timeout") {
            Message::Text(text) => {
                let message: Value = serde_json::from_str(text.as_str()).unwrap();
                assert_eq!(message[0], "AUTH", "expected the challenge first: {message}");
                let challenge = message[1].as_str().expect("a challenge string").to_owned();
                self.challenge = Some(challenge.clone());
                challenge
            }
            other => panic!("expected the challenge first: {other:?}"),
        }
    }

    /// The next relay message, parsed by the nostr library (so it must be well-formed) and as JSON.
    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read().expect("a message before the timeout") {
                Message::Text(text) => {
                    RelayMessage::from_json(text.as_str()).unwrap_or_else(|e| panic!("nostr rejects {text}: {e}"));
                    let message: Value = serde_json::from_str(text.as_str()).unwrap();
                    if message[0] == "AUTH" {
                        self.challenge = message[1].as_str().map(str::to_owned);
                        continue;
                    }
                    return message;
                }
                Message::Close(frame) => panic!("closed by the relay: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Publish and return the OK's (accepted, reason).
    pub fn publish(&mut self, event_json: &str) -> (bool, String) {
        let event = nostr::Event::from_json(event_json).unwrap();
        self.send(&ClientMessage::event(event.clone()).as_json());
        loop {
            let message = self.recv();
            if message[0] == "OK" && message[1] == event.id.to_hex() {
                return (message[2].as_bool().unwrap(), message[3].as_str().unwrap().to_owned());
            }
        }
    }

    /// Send a REQ with raw filter JSON and collect its stored events until EOSE.
    pub fn req(&mut self, sub: &str, filters: &[Value]) -> Vec<Value> {
        let mut message = vec![json!("REQ"), json!(sub)];
        message.extend(filters.iter().cloned());
        self.send(&Value::Array(message).to_string());
        self.until_eose(sub)
    }

    pub fn until_eose(&mut self, sub: &str) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let message = self.recv();
            match message[0].as_str().unwrap() {
                "EVENT" if message[1] == sub => events.push(message[2].clone()),
                "EOSE" if message[1] == sub => return events,
                "CLOSED" if message[1] == sub => panic!("subscription closed: {message}"),
                _ => {}
            }
        }
    }

    /// The next message that is not an EVENT of another subscription.
    pub fn expect(&mut self, verb: &str) -> Value {
        let message = self.recv();
        assert_eq!(message[0], verb, "{message}");
        message
    }
}

/// The NIP-11 document served on `port`.
/// A WebSocket client to whatever listens on `port` (a relay, or a proxy in front of
/// several), from another loopback address when `source` is given.
pub fn connect_to(port: u16, source: Option<std::net::Ipv4Addr>) -> Client {
    use tungstenite::client::IntoClientRequest;
    let request = format!("ws://127.0.0.1:{port}").into_client_request().unwrap();
    connect_request(port, request, |socket| {
        if let Some(source) = source {
            socket.bind(&std::net::SocketAddr::from((source, 0)).into()).unwrap();
        }
    })
}

fn connect_request(
    port: u16,
    request: tungstenite::handshake::client::Request,
    prepare: impl FnOnce(&socket2::Socket),
) -> Client {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    prepare(&socket);
    socket.connect_timeout(&address.into(), READ_TIMEOUT).expect("TCP connects");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    let (ws, _) = tungstenite::client(request, MaybeTlsStream::Plain(stream))
        .expect("websocket handshake within the read timeout");
    Client { ws, challenge: None }
}

pub fn nip11(port: u16) -> Value {
    let mut http = TcpStream::connect(("127.0.0.1", port)).unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nAccept: application/nostr+json\r\n\r\n").unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).unwrap();
    serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

pub fn ids(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
}

pub fn id_of(json: &str) -> String {
    verified(json).id().to_hex()
}

#[test]
fn publish_duplicate_and_query() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 2);
    let mut client = relay.connect();
    let note = signed(&keys(900), 1, now(), &[&["t", "hello"]], "hello relay");
    assert_eq!(client.publish(&note), (true, String::new()));
    let (accepted, reason) = client.publish(&note);
    assert!(accepted && reason.starts_with("duplicate:"), "{reason}");
    let events = client.req("by-id", &[json!({"ids": [id_of(&note)]})]);
    assert_eq!(events, vec![serde_json::from_str::<Value>(&note).unwrap()]);
    // A filter built by the client library itself.
    let filter = NostrFilter::new().kind(Kind::TextNote).hashtag("hello");
    client.send(&ClientMessage::req(SubscriptionId::new("lib"), vec![filter]).as_json());
    assert_eq!(ids(&client.until_eose("lib")), vec![id_of(&note)]);
}

#[test]
fn live_events_reach_every_matching_subscriber_once_across_cores() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 2);
    let mut subscribers: Vec<Client> = (0..8).map(|_| relay.connect()).collect();
    for subscriber in &mut subscribers {
        assert!(subscriber.req("live", &[json!({"kinds": [1], "#t": ["live"]})]).is_empty());
    }
    let mut bystander = relay.connect();
    assert!(bystander.req("other", &[json!({"kinds": [7]})]).is_empty());
    let mut publishers: Vec<Client> = (0..4).map(|_| relay.connect()).collect();
    let mut published = Vec::new();
    for (p, publisher) in publishers.iter_mut().enumerate() {
        for i in 0..5 {
            let json = signed(&keys(940 + p as u32), 1, now(), &[&["t", "live"]], &format!("live {p} {i}"));
            assert!(publisher.publish(&json).0);
            published.push(id_of(&json));
        }
    }
    published.sort();
    for subscriber in &mut subscribers {
        let mut got = Vec::new();
        while got.len() < published.len() {
            let message = subscriber.expect("EVENT");
            assert_eq!(message[1], "live");
            got.push(message[2]["id"].as_str().unwrap().to_owned());
        }
        got.sort();
        assert_eq!(got, published, "each event exactly once");
    }
    // Nothing more arrives, and the bystander gets nothing else: each publisher's author sends
    // a marker (kind 9) after its events, fanned out after them by the same owner core, and
    // every reader must see the four markers and nothing before them.
    for client in subscribers.iter_mut().chain([&mut bystander]) {
        assert!(client.req("marker", &[json!({"kinds": [9]})]).is_empty());
    }
    for (p, publisher) in publishers.iter_mut().enumerate() {
        assert!(publisher.publish(&signed(&keys(940 + p as u32), 9, now(), &[], "marker")).0);
    }
    for client in subscribers.iter_mut().chain([&mut bystander]) {
        for _ in 0..publishers.len() {
            assert_eq!(client.expect("EVENT")[1], "marker", "nothing but the markers");
        }
    }
}

#[test]
fn bad_input_gets_an_answer_and_the_relay_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 2);
    let mut client = relay.connect();
    let check_notice = |client: &mut Client, text: &str| {
        client.send(text);
        let message = client.expect("NOTICE");
        assert!(message[1].as_str().unwrap().starts_with("invalid:"), "{text}: {message}");
    };
    check_notice(&mut client, "not json");
    check_notice(&mut client, "{}");
    check_notice(&mut client, r#"["HELLO"]"#);
    check_notice(&mut client, r#"["REQ",""]"#);
    check_notice(&mut client, &format!(r#"["REQ","{}",{{}}]"#, "x".repeat(65)));
    check_notice(&mut client, r#"["EVENT",{"kind":1}]"#);
    client.ws.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert!(client.expect("NOTICE")[1].as_str().unwrap().contains("binary"));
    client.send(r#"["REQ","bad",{"kinds":"one"}]"#);
    let closed = client.expect("CLOSED");
    assert!(closed[1] == "bad" && closed[2].as_str().unwrap().starts_with("invalid:"), "{closed}");
    // A bad signature with a readable id gets an OK false.
    let good = signed(&keys(960), 1, now(), &[], "tampered");
    let tampered = good.replace("tampered", "Tampered");
    client.send(&format!(r#"["EVENT",{tampered}]"#));
    let ok = client.expect("OK");
    assert!(ok[2] == false && ok[3].as_str().unwrap().starts_with("invalid:"), "{ok}");
    // An EVENT that is not JSON (a literal control character in its content) still gets
    // its OK false when its id can be read.
    let control = good.replace("tampered", "tamp\u{1}ered");
    client.send(&format!(r#"["EVENT",{control}]"#));
    let ok = client.expect("OK");
    assert!(ok[1] == id_of(&good).as_str() && ok[2] == false, "{ok}");
    assert!(ok[3].as_str().unwrap().starts_with("invalid: malformed message"), "{ok}");
    // An id in uppercase is refused with an OK carrying the id as the client sent it.
    let upper_id = id_of(&good).to_uppercase();
    client.send(&format!(r#"["EVENT",{}]"#, good.replace(&id_of(&good), &upper_id)));
    let ok = client.expect("OK");
    assert!(ok[1] == upper_id.as_str() && ok[2] == false, "{ok}");
    assert!(ok[3].as_str().unwrap().starts_with("invalid:"), "{ok}");
    // 10,000 subscriptions: the first 200 open, every other one is refused, nothing breaks.
    let mut refused = 0;
    for i in 0..10_000 {
        client.send(&format!(r#"["REQ","sub{i}",{{"kinds":[{}]}}]"#, 40_000 + i % 100));
    }
    let mut eose = 0;
    while eose + refused < 10_000 {
        let message = client.recv();
        match message[0].as_str().unwrap() {
            "EOSE" => eose += 1,
            "CLOSED" => {
                assert!(message[2].as_str().unwrap().starts_with("error: too many subscriptions"), "{message}");
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(eose, 200);
    // A message over the size limit closes that connection.
    let mut big = relay.connect();
    big.send(&format!(r#"["EVENT",{{"content":"{}"}}]"#, "x".repeat(300_000)));
    assert!(matches!(big.read_within(), Some(Ok(Message::Close(_)) | Err(_))));
    // Half a frame, then gone.
    let mut raw = TcpStream::connect(("127.0.0.1", relay.port)).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
    raw.write_all(&[0x81, 0xfe, 0x01]).unwrap();
    drop(raw);
    // Everyone else is still served.
    let mut fresh = relay.connect();
    assert!(fresh.publish(&signed(&keys(961), 1, now(), &[], "still here")).0);
    assert_eq!(fresh.req("after", &[json!({"authors": [keys(961).public_key().to_hex()]})]).len(), 1);
}

/// A copy of an event that is not yet on disk is acknowledged only once the original is: its
/// `duplicate:` OK never comes before the original's OK (which waits for the fsync).
#[test]
fn a_duplicate_is_acknowledged_only_after_the_original_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 2);
    let mut client = relay.connect();
    for i in 0..20 {
        let json = signed(&keys(700 + i % 4), 1, now() - 5, &[], &format!("twice {i}"));
        let id = id_of(&json);
        let message = ClientMessage::event(nostr::Event::from_json(&json).unwrap()).as_json();
        // Both in one write, so the copy arrives while the original waits for its commit.
        client.ws.write(Message::text(message.clone())).unwrap();
        client.ws.write(Message::text(message)).unwrap();
        client.ws.flush().unwrap();
        let replies: Vec<(bool, String)> = (0..2)
            .map(|_| {
                let ok = client.expect("OK");
                assert_eq!(ok[1], id.as_str());
                (ok[2].as_bool().unwrap(), ok[3].as_str().unwrap().to_owned())
            })
            .collect();
        assert_eq!(replies[0], (true, String::new()), "event {i}: the original's OK comes first");
        assert!(replies[1].0 && replies[1].1.starts_with("duplicate:"), "event {i}: {replies:?}");
    }
}

#[test]
fn close_frames_are_answered_both_ways() {
    use tungstenite::protocol::frame::coding::CloseCode;
    use tungstenite::protocol::CloseFrame;
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 2);
    // The client closes: the relay answers with a close frame (RFC 6455 §5.5.1), not a reset.
    let mut leaving = relay.connect();
    leaving.ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).unwrap();
    // The NIP-42 challenge sent on connect may come first.
    let answer = match leaving.ws.read() {
        Ok(Message::Text(text)) if text.starts_with("[\"AUTH\"") => leaving.ws.read(),
        other => other,
    };
    match answer {
        Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("the relay answers a close frame with its own: {other:?}"),
    }
    assert!(matches!(leaving.ws.read(), Err(tungstenite::Error::ConnectionClosed)));
    // The relay closes (here on SIGTERM): the code and reason say why.
    let mut staying = relay.connect();
    staying.req("before-shutdown", &[json!({"kinds": [1], "limit": 1})]);
    let stopping = std::thread::spawn(move || relay.terminate());
    match staying.read_within() {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!((frame.code, frame.reason.as_str()), (CloseCode::Away, "relay shutting down"))
        }
        other => panic!("a close frame before the connection ends: {other:?}"),
    }
    assert!(stopping.join().unwrap().success(), "SIGTERM exits 0");
}

#[test]
fn nip11_document_carries_the_real_limits() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 2);
    let mut http = TcpStream::connect(("127.0.0.1", relay.port)).unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nAccept: application/nostr+json\r\n\r\n").unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("Access-Control-Allow-Origin: *"));
    let body: Value = serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["limitation"]["max_subscriptions"], 200);
    assert_eq!(body["limitation"]["max_concurrent_queries"], 4);
    assert!(body["supported_nips"].as_array().unwrap().contains(&json!(11)));
    assert_eq!(nip11(relay.port)["limitation"]["restricted_writes"], false, "an open relay");
}

#[test]
fn kill_9_loses_nothing_acknowledged_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 2);
    let mut publishers: Vec<Client> = (0..3).map(|_| relay.connect()).collect();
    let mut acknowledged = Vec::new();
    for i in 0..60u32 {
        let json = signed(&keys(980 + i % 6), 1, now() - 5, &[&["t", "durable"]], &format!("durable {i}"));
        if publishers[i as usize % 3].publish(&json).0 {
            acknowledged.push(id_of(&json));
        }
    }
    assert_eq!(acknowledged.len(), 60);
    relay.kill9();
    let relay = Relay::start(dir.path(), 2);
    let mut client = relay.connect();
    let mut stored = ids(&client.req("after-crash", &[json!({"#t": ["durable"]})]));
    stored.sort();
    acknowledged.sort();
    assert_eq!(stored, acknowledged);
    drop(client);
    assert!(relay.terminate().success(), "SIGTERM exits 0");
}

#[test]
fn startup_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), 1);
    let other = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringrelay"))
        .args(["serve", "--cores", "1", "--listen", &format!("127.0.0.1:{}", relay.port)])
        .arg("--data-dir")
        .arg(other.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(&format!("cannot listen on 127.0.0.1:{}", relay.port)), "{stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_ringrelay"))
        .args(["serve", "--cores", "1"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("in use by another ringrelay process"), "{stderr}");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "listen = 7\n").unwrap();
    let output =
        Command::new(env!("CARGO_BIN_EXE_ringrelay")).arg("serve").arg("--config").arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("bad.toml") && stderr.contains("listen"), "{stderr}");
}

#[test]
fn a_slow_consumer_is_dropped_and_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_config(dir.path(), 1, "[limits]\noutbound_bytes_max = 16384\n");
    let mut slow = relay.connect();
    assert!(slow.req("all", &[json!({"kinds": [1]})]).is_empty());
    let mut fast = relay.connect();
    assert!(fast.req("all", &[json!({"kinds": [1]})]).is_empty());
    let mut publisher = relay.connect();
    let big = "x".repeat(60_000);
    let count = 200;
    for i in 0..count {
        assert!(publisher.publish(&signed(&keys(990), 1, now(), &[], &format!("{i} {big}"))).0);
        // The fast subscriber keeps up.
        assert_eq!(fast.expect("EVENT")[1], "all");
    }
    // The slow one never read: the relay dropped it once 12 MB did not fit in its queue
    // and the socket buffers. Reading now ends in a close, before all events.
    let mut received = 0;
    let closed = loop {
        match slow.ws.read() {
            Ok(Message::Text(_)) => received += 1,
            Ok(Message::Close(frame)) => break frame.map(|f| f.reason.to_string()).unwrap_or_default(),
            Ok(_) => {}
            Err(_) => break String::new(),
        }
    };
    assert!(received < count, "a slow consumer must not get everything: {received}");
    assert!(closed.is_empty() || closed.contains("slow consumer"), "{closed}");
    assert!(publisher.publish(&signed(&keys(991), 1, now(), &[], "still serving")).0);
}

#[test]
fn connections_per_ip_are_capped_across_cores() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_config(dir.path(), 2, "[limits]\nconnections_per_ip_max = 3\n");
    // The kernel spreads these over both cores; the cap holds for the address as a whole.
    let mut clients: Vec<Client> = (0..8).map(|_| relay.connect()).collect();
    let mut refused = 0;
    let mut kept = Vec::new();
    for mut client in clients.drain(..) {
        client.set_read_timeout(Duration::from_millis(300));
        match client.read_within() {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert!(frame.reason.contains("too many connections"), "{frame:?}");
                refused += 1;
            }
            None => kept.push(client),
            other => panic!("a connection is either kept or refused: {other:?}"),
        }
    }
    assert_eq!((kept.len(), refused), (3, 5));
    // A refused address gets its slots back as its connections close.
    drop(kept.pop());
    let mut retry = (0..50)
        .find_map(|_| {
            let mut client = relay.connect();
            client.set_read_timeout(Duration::from_millis(100));
            match client.read_within() {
                Some(Ok(Message::Close(_))) => None,
                _ => Some(client),
            }
        })
        .expect("a slot is free again after a connection closed");
    retry.set_read_timeout(READ_TIMEOUT);
    assert!(retry.publish(&signed(&keys(992), 1, now(), &[], "still works")).0);
}

#[test]
fn too_little_locked_memory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "ulimit -l 64 && exec {} serve --cores 1 --listen 127.0.0.1:0 --data-dir {}",
        env!("CARGO_BIN_EXE_ringrelay"),
        dir.path().display()
    );
    let output = Command::new("bash").args(["-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("ulimit -l"), "{stderr}");
}

#[test]
fn a_large_history_answer_reaches_a_reader_with_a_small_queue() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_config(dir.path(), 1, "[limits]\noutbound_bytes_max = 16384\n");
    let mut client = relay.connect();
    let mut published = Vec::new();
    for i in 0..120 {
        let json = signed(&keys(995 + i % 4), 1, now() - 100 + u64::from(i), &[&["t", "history"]], &format!("{i}"));
        assert!(client.publish(&json).0);
        published.push(id_of(&json));
    }
    published.reverse();
    assert_eq!(ids(&client.req("history", &[json!({"#t": ["history"]})])), published);
}

#[test]
fn a_restarted_relay_binds_its_port_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[limits]\nconnections_per_ip_max = 1\n";
    let relay = Relay::start_with_config(dir.path(), 2, config);
    let port = relay.port;
    let mut kept = relay.connect();
    assert!(kept.publish(&signed(&keys(993), 1, now(), &[], "before")).0);
    // Refused connections are closed by the relay first, which leaves its side of each in
    // TIME_WAIT: exactly what used to keep a restarted relay from binding for a minute.
    for _ in 0..10 {
        let mut refused = relay.connect();
        assert!(matches!(refused.read_within(), Some(Ok(Message::Close(_)))));
        while let Some(Ok(_)) = refused.read_within() {}
    }
    assert!(relay.terminate().success());
    let relay = Relay::start_on(dir.path(), 2, config, port);
    let mut client = relay.connect();
    assert!(client.publish(&signed(&keys(993), 1, now(), &[], "after")).0);
}

#[test]
fn the_relay_takes_the_open_files_it_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    // A soft limit of 128 (hard limit unchanged) would refuse the 200th connection.
    let relay = Relay::start_with_open_files(dir.path(), 1, "[limits]\nconnections_per_ip_max = 1000\n", 128);
    let mut clients: Vec<Client> = (0..200).map(|_| relay.connect()).collect();
    let last = clients.last_mut().unwrap();
    assert!(last.publish(&signed(&keys(996), 1, now(), &[], "the 200th connection works")).0);
}

/// Restrict the calling process to `cpu`, as `taskset -c CPU` does; async-signal-safe, for
/// use between fork and exec.
fn run_only_on(cpu: usize) -> std::io::Result<()> {
    // SAFETY: plain data, set with CPU_SET within CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        match libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }
}

/// The CPUs this test process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: plain data, and sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set), 0);
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect()
    }
}

/// More cores than the CPUs the process is given is a clear error, not executors sharing a
/// CPU (glommio's mesh join can hang then).
#[test]
fn more_cores_than_allowed_cpus_is_a_clear_error() {
    use std::os::unix::process::CommandExt;
    let cpu = *allowed_cpus().last().expect("this test runs somewhere");
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringrelay"));
    // SAFETY: only sched_setaffinity between fork and exec.
    unsafe {
        command.pre_exec(move || run_only_on(cpu));
    }
    let output = command
        .args(["serve", "--cores", "2", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("2 cores asked for, but this process may run on 1 CPU ({cpu})")), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing is created before the check");
}

/// An executor is pinned to a CPU the process may run on: the highest CPU this test may use
/// (not CPU 0, which a relay that ignored its affinity mask would often pick), and the
/// relay must still serve.
#[test]
fn executors_stay_on_the_cpus_the_process_is_given() {
    let cpu = *allowed_cpus().last().expect("this test runs somewhere");
    for attempt in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let relay = Relay::start_on_cpu(dir.path(), cpu);
        let mut client = relay.connect();
        assert!(client.publish(&signed(&keys(998), 1, now(), &[], &format!("on cpu {cpu}, {attempt}"))).0);
        let tasks = std::fs::read_dir(format!("/proc/{}/task", relay.pid())).unwrap();
        let executors: Vec<String> = tasks
            .filter_map(|task| {
                let path = task.unwrap().path();
                let name = std::fs::read_to_string(path.join("comm")).ok()?;
                let status = std::fs::read_to_string(path.join("status")).ok()?;
                let cpus = status.lines().find_map(|line| line.strip_prefix("Cpus_allowed_list:"))?.trim().to_owned();
                name.starts_with("core-").then_some(cpus)
            })
            .collect();
        // The executor and its helper threads carry the core's name.
        assert!(!executors.is_empty(), "no executor thread found");
        assert!(executors.iter().all(|cpus| *cpus == cpu.to_string()), "executor threads on {executors:?}, not {cpu}");
    }
}

#[test]
fn a_client_that_writes_faster_than_it_reads_is_slowed_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_config(dir.path(), 1, "[limits]\noutbound_bytes_max = 16384\n");
    let mut client = relay.connect();
    // The same event with its id broken: each copy is refused at once (no signature check)
    // with an OK false, about 150 bytes. 60,000 of them outgrow every socket buffer on the
    // way back while the client is not reading, and the relay's queue holds 16: the relay
    // must stop reading, then resume, and lose no reply. (OKs that arrive after an fsync,
    // which used to overflow the queue of a busy core, are held to the same rule; the outbox
    // unit tests check it and loadgen's overload runs showed it.)
    let mut event: Value = serde_json::from_str(&signed(&keys(997), 1, now(), &[], "x")).unwrap();
    event["id"] = json!("0".repeat(64));
    let payload = json!(["EVENT", event]).to_string().into_bytes();
    const COUNT: usize = 60_000;
    let MaybeTlsStream::Plain(stream) = client.ws.get_ref() else { unreachable!() };
    let mut writer = stream.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        // Client frames, masked with the (valid) all-zero key, written raw beside tungstenite.
        let mut frame = vec![0x81, 0x80 | 126];
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(&payload);
        for _ in 0..COUNT {
            writer.write_all(&frame).expect("the relay keeps reading, slowly");
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    let mut oks = 0;
    while oks < COUNT {
        match client.ws.read() {
            Ok(Message::Text(text)) if text.starts_with("[\"AUTH\",") => {}
            Ok(Message::Text(text)) => {
                assert!(text.starts_with("[\"OK\",") && text.contains("false"), "{text}");
                oks += 1;
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            other => panic!("after {oks} OKs: {other:?}"),
        }
    }
    sending.join().unwrap();
    assert!(client.publish(&signed(&keys(997), 1, now(), &[], "still connected")).0);
}

/// A restart maps the sealed segments' index parts instead of reading them, and what was
/// replaced or deleted after a part was written stays gone after a `kill -9`.
#[test]
fn a_restart_maps_index_parts_and_keeps_later_deletions() {
    let dir = tempfile::tempdir().unwrap();
    let config = "segment_size = 1048576\n";
    let relay = Relay::start_with_config(dir.path(), 1, config);
    let mut client = relay.connect();
    let alice = keys(1_100);
    let profile_1 = signed(&alice, 0, now() - 100, &[], "profile 1");
    let doomed = signed(&alice, 1, now() - 100, &[&["t", "doomed"]], "deleted later");
    assert!(client.publish(&profile_1).0 && client.publish(&doomed).0);
    let filler = "x".repeat(30_000);
    let mut fillers = Vec::new();
    for i in 0..60 {
        let json = signed(&keys(1_101), 1, now() - 50, &[&["t", "filler"]], &format!("{i} {filler}"));
        assert!(client.publish(&json).0);
        fillers.push(id_of(&json));
    }
    wait_for_first_part(dir.path());
    let profile_2 = signed(&alice, 0, now() - 10, &[], "profile 2");
    let deletion = signed(&alice, 5, now() - 10, &[&["e", &id_of(&doomed)]], "");
    assert!(client.publish(&profile_2).0 && client.publish(&deletion).0);
    drop(client);
    relay.kill9();

    let relay = Relay::start_with_config(dir.path(), 1, config);
    let mut client = relay.connect();
    assert_eq!(
        ids(&client.req("profile", &[json!({"kinds": [0], "authors": [alice.public_key().to_hex()]})])),
        vec![id_of(&profile_2)]
    );
    assert!(client.req("doomed", &[json!({"ids": [id_of(&doomed)]})]).is_empty());
    assert!(client.req("doomed-tag", &[json!({"#t": ["doomed"]})]).is_empty());
    let mut served = ids(&client.req("fillers", &[json!({"#t": ["filler"]})]));
    served.sort();
    fillers.sort();
    assert_eq!(served, fillers);
    let metrics = crate::metrics::scrape(relay.port);
    assert!(crate::metrics::total(&metrics, "ringrelay_index_parts", &[]) >= 1.0, "the restart mapped the part");
    assert_eq!(crate::metrics::total(&metrics, "ringrelay_shard_damaged_segments", &[]), 0.0);
    assert!(relay.terminate().success());
}

/// A record damaged in a segment that opens through its index part: the relay starts and
/// serves everything else, the scrub names the damaged segment in the metrics, and the
/// damaged event is not served.
#[test]
fn damage_behind_an_index_part_is_scrubbed_and_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let config = "segment_size = 1048576\n";
    let relay = Relay::start_with_config(dir.path(), 1, config);
    let mut client = relay.connect();
    let filler = "y".repeat(30_000);
    let mut stored = Vec::new();
    for i in 0..60 {
        let json = signed(&keys(1_120), 1, now() - 50 + i, &[&["t", "scrubbed"]], &format!("{i} {filler}"));
        assert!(client.publish(&json).0);
        stored.push(id_of(&json));
    }
    drop(client);
    let first = wait_for_first_part(dir.path());
    assert!(relay.terminate().success());
    let mut bytes = std::fs::read(&first).unwrap();
    let mut victim = None;
    ringrelay::store::segment::scan(&bytes, None, |span, record| {
        if victim.is_none() && span.offset > 4096 {
            victim = Some((span.payload_range().start, ringrelay::hex::encode(&record.id)));
        }
    })
    .unwrap();
    let (at, damaged_id) = victim.unwrap();
    bytes[at + 200] ^= 0x04;
    std::fs::write(&first, &bytes).unwrap();

    let relay = Relay::start_with_config(dir.path(), 1, config);
    // The scrub begins 5 s after the start.
    let deadline = Instant::now() + Duration::from_secs(30);
    while crate::metrics::total(&crate::metrics::scrape(relay.port), "ringrelay_shard_damaged_segments", &[]) < 1.0 {
        assert!(Instant::now() < deadline, "the scrub names the damaged segment");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut client = relay.connect();
    let mut served = ids(&client.req("all", &[json!({"#t": ["scrubbed"]})]));
    served.sort();
    let mut expected: Vec<String> = stored.into_iter().filter(|id| *id != damaged_id).collect();
    expected.sort();
    assert_eq!(served, expected);
    assert!(relay.terminate().success());
}

/// Wait (at most 20 s) until the first segment of shard 0 under `data` has its index part;
/// returns the segment's path.
fn wait_for_first_part(data: &Path) -> std::path::PathBuf {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let segments = ringrelay::store::segment::list_segments(&data.join("shard-000")).unwrap();
        if let Some((_, first)) = segments.first().filter(|(_, s)| ringrelay::store::part::part_path(s).exists()) {
            return first.clone();
        }
        assert!(Instant::now() < deadline, "the sealed segment gets its part");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `[retention]`: an event older than its kind's time is refused with `blocked:`, a stored
/// one is retired within seconds of outliving it (and stays retired across a restart),
/// and kinds kept for good stay.
#[test]
fn retention_refuses_and_retires_what_outlived_its_kinds_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[retention]\nmax_age_secs = 0\n\n[[retention.kinds]]\nkinds = [1]\nmax_age_secs = 3\n";
    let relay = Relay::start_with_config(dir.path(), 1, config);
    let mut client = relay.connect();
    let author = keys(1_130);
    let (accepted, message) = client.publish(&signed(&author, 1, now() - 10, &[], "too old"));
    assert!(!accepted);
    assert_eq!(message, "blocked: this relay keeps kind 1 events for 3 seconds");
    let young = signed(&author, 1, now(), &[], "young for now");
    let kept = signed(&author, 7, now() - 100_000, &[], "+");
    assert!(client.publish(&young).0 && client.publish(&kept).0);
    assert_eq!(ids(&client.req("notes", &[json!({"kinds": [1]})])), vec![id_of(&young)]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !client.req("notes", &[json!({"kinds": [1]})]).is_empty() {
        assert!(Instant::now() < deadline, "the note is retired once it is 3 s old");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ids(&client.req("reactions", &[json!({"kinds": [7]})])), vec![id_of(&kept)]);
    let metrics = crate::metrics::scrape(relay.port);
    assert_eq!(crate::metrics::total(&metrics, "ringrelay_retention_retired_total", &[]), 1.0);
    drop(client);
    assert!(relay.terminate().success());
    let relay = Relay::start_with_config(dir.path(), 1, config);
    let mut client = relay.connect();
    assert!(client.req("notes", &[json!({"kinds": [1]})]).is_empty(), "retired before anything is served");
    assert_eq!(ids(&client.req("reactions", &[json!({"kinds": [7]})])), vec![id_of(&kept)]);
    assert!(relay.terminate().success());
}

/// The relay's indexer merges the parts of four sealed segments into one in the
/// background, and a restart after `kill -9` serves every event through it.
#[test]
fn the_indexer_merges_parts_while_the_relay_serves() {
    let dir = tempfile::tempdir().unwrap();
    let config = "segment_size = 1048576\n";
    let relay = Relay::start_with_config(dir.path(), 1, config);
    let mut client = relay.connect();
    let filler = "z".repeat(30_000);
    let mut stored = Vec::new();
    for i in 0..170 {
        let json = signed(
            &keys(1_140 + i % 3),
            1,
            now() - 1_000 + u64::from(i),
            &[&["t", "merged"]],
            &format!("{i} {filler}"),
        );
        assert!(client.publish(&json).0);
        stored.push(id_of(&json));
    }
    let shard = dir.path().join("shard-000");
    let deadline = Instant::now() + Duration::from_secs(30);
    let merged = loop {
        let segments = ringrelay::store::segment::list_segments(&shard).unwrap();
        let first = ringrelay::store::part::part_path(&segments[0].1);
        let covered = ringrelay::store::part::Part::load(&first, 0, segments[0].0).map(|part| part.covered_count());
        if covered.as_ref().is_ok_and(|&count| count == 4) {
            break segments;
        }
        assert!(Instant::now() < deadline, "four sealed segments' parts are merged into one");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        merged[1..4].iter().all(|(_, path)| !ringrelay::store::part::part_path(path).exists()),
        "the parts it replaced are gone"
    );
    let mut served = ids(&client.req("merged", &[json!({"#t": ["merged"], "limit": 500})]));
    served.sort();
    stored.sort();
    assert_eq!(served, stored);
    drop(client);
    relay.kill9();
    let relay = Relay::start_with_config(dir.path(), 1, config);
    let mut client = relay.connect();
    let mut served = ids(&client.req("merged", &[json!({"#t": ["merged"], "limit": 500})]));
    served.sort();
    assert_eq!(served, stored);
    assert!(crate::metrics::total(&crate::metrics::scrape(relay.port), "ringrelay_index_parts", &[]) >= 1.0);
    assert!(relay.terminate().success());
}

/// What a reader saw wrong in one answer to "every note and every version", if anything:
/// an event twice, an acknowledged note missing, or two versions of one address.
fn answer_fault(answer: &[Value], acknowledged: &[String]) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    let mut addresses = std::collections::HashSet::new();
    for event in answer {
        let id = event["id"].as_str().unwrap_or_default().to_owned();
        if !seen.insert(id.clone()) {
            return Some(format!("{id} served twice"));
        }
        if event["kind"] == 30001 {
            let d = event["tags"][0][1].as_str().unwrap_or_default();
            if !addresses.insert((event["pubkey"].as_str().unwrap_or_default().to_owned(), d.to_owned())) {
                return Some(format!("two versions of one address ({id})"));
            }
        }
    }
    acknowledged.iter().find(|id| !seen.contains(*id)).map(|id| format!("acknowledged note {id} missing"))
}

/// Online compaction while the relay serves: addressable events replaced again and again
/// (their old versions dead) among notes that stay, published by one client while another
/// asks for all of them without pause. Sealed segments are rewritten without the dead
/// versions (the files shrink, `ringrelay_compactions_total` counts it), and no answer
/// ever lacks an acknowledged note, serves an event twice or two versions of one address;
/// after `kill -9` the restarted relay serves the same.
#[test]
fn online_compaction_while_serving_loses_nothing_that_is_kept() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    // Each answer is ~1.7 MB, and live events for the subscription just closed may still
    // be queued behind it: a budget that never takes the reader for a slow consumer.
    let config = "segment_size = 1048576\ncompaction_dead_percent = 50\n\n[limits]\noutbound_bytes_max = 67108864\noutbound_bytes_per_core_max = 268435456\n";
    let relay = Relay::start_with_config(dir.path(), 1, config);
    let mut client = relay.connect();
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let all = json!({"kinds": [1, 30001], "limit": 5000});
    let reader = {
        let (mut reader, acknowledged, stop, all) = (relay.connect(), acknowledged.clone(), stop.clone(), all.clone());
        std::thread::spawn(move || {
            let mut answers = 0;
            while !stop.load(Ordering::Relaxed) {
                let before = acknowledged.lock().unwrap().clone();
                // A subscription of its own each time: live events for an earlier one that
                // arrive after its EOSE are not part of this answer.
                let sub = format!("all-{answers}");
                let answer = reader.req(&sub, std::slice::from_ref(&all));
                reader.send(&json!(["CLOSE", sub]).to_string());
                if let Some(fault) = answer_fault(&answer, &before) {
                    return Err(fault);
                }
                answers += 1;
            }
            Ok(answers)
        })
    };
    let filler = "z".repeat(20_000);
    let mut latest = std::collections::HashMap::new();
    for i in 0..240u32 {
        let author = keys(1_150 + i % 3);
        let created_at = now() - 10_000 + u64::from(i);
        let json = match i % 3 {
            0 => signed(&author, 1, created_at, &[], &format!("{i} {filler}")),
            _ => signed(&author, 30001, created_at, &[&["d", &format!("slot{}", i % 2)]], &format!("{i} {filler}")),
        };
        assert!(client.publish(&json).0);
        match i % 3 {
            0 => acknowledged.lock().unwrap().push(id_of(&json)),
            _ => {
                latest.insert((i % 3, i % 2), id_of(&json));
            }
        }
    }
    let shard = dir.path().join("shard-000");
    let segment_bytes = || -> u64 {
        let segments = ringrelay::store::segment::list_segments(&shard).unwrap();
        segments.iter().map(|(_, path)| std::fs::metadata(path).map_or(0, |m| m.len())).sum()
    };
    let written = segment_bytes();
    let deadline = Instant::now() + Duration::from_secs(40);
    while crate::metrics::total(&crate::metrics::scrape(relay.port), "ringrelay_compactions_total", &[]) < 1.0 {
        assert!(Instant::now() < deadline, "sealed segments are compacted while the relay serves");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let answers = reader.join().unwrap().unwrap_or_else(|fault| panic!("a reader's answer: {fault}"));
    assert!(answers > 10, "the reader asked all along ({answers} answers)");
    assert!(segment_bytes() < written, "the segment files shrink: {} bytes from {written}", segment_bytes());
    let metrics = crate::metrics::scrape(relay.port);
    assert!(crate::metrics::total(&metrics, "ringrelay_compaction_reclaimed_bytes_total", &[]) > 1_000_000.0);
    let mut expected: Vec<String> = acknowledged.lock().unwrap().clone();
    expected.extend(latest.values().cloned());
    expected.sort();
    let check = |client: &mut Client, when: &str| {
        let answer = client.req("all", std::slice::from_ref(&all));
        assert_eq!(answer_fault(&answer, &expected), None, "{when}");
        let mut served = ids(&answer);
        served.sort();
        assert_eq!(served, expected, "{when}: every note and each address's latest version");
    };
    check(&mut client, "after compaction");
    drop(client);
    relay.kill9();
    let relay = Relay::start_with_config(dir.path(), 1, config);
    check(&mut relay.connect(), "after kill -9 and a restart");
    assert!(relay.terminate().success());
}

/// `[retention] max_store_bytes`: over it, the oldest events of the evictable kinds are
/// retired (counted in `ringrelay_retention_evicted_total`) and compaction gives their
/// space back, while the newest stay and kinds not evictable are kept whatever their age.
#[test]
fn a_store_over_its_size_evicts_the_oldest_evictable_events() {
    let dir = tempfile::tempdir().unwrap();
    let config = "segment_size = 1048576\n\n[retention]\nmax_store_bytes = 16777216\nevictable_kinds = [1]\n";
    let relay = Relay::start_with_config(dir.path(), 1, config);
    let mut client = relay.connect();
    let author = keys(1_160);
    let profile = signed(&author, 0, now() - 1_000_000, &[], "{\"name\":\"kept\"}");
    assert!(client.publish(&profile).0);
    let filler = "y".repeat(30_000);
    let mut notes = Vec::new();
    for i in 0..700u64 {
        let json = signed(&author, 1, now() - 100_000 + i, &[], &format!("{i} {filler}"));
        assert!(client.publish(&json).0);
        notes.push(id_of(&json));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let shard_size = loop {
        let metrics = crate::metrics::scrape(relay.port);
        let evicted = crate::metrics::total(&metrics, "ringrelay_retention_evicted_total", &[]);
        let size = crate::metrics::total(&metrics, "ringrelay_shard_size_bytes", &[]);
        if evicted > 0.0 && size <= 16_777_216.0 * 1.1 {
            break size;
        }
        assert!(Instant::now() < deadline, "evicted {evicted} events, {size} bytes of segments");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(shard_size > 8_000_000.0, "eviction stops once the store fits ({shard_size} bytes)");
    let served = ids(&client.req("notes", &[json!({"kinds": [1], "limit": 5000})]));
    assert!(served.len() < notes.len() && served.len() > 300, "{} notes of {} kept", served.len(), notes.len());
    let newest: Vec<String> = notes.iter().rev().take(served.len()).cloned().collect();
    assert_eq!(served, newest, "the newest notes are the ones kept");
    assert_eq!(ids(&client.req("profile", &[json!({"kinds": [0]})])), vec![id_of(&profile)], "kind 0 is not evictable");
    assert!(relay.terminate().success());
}

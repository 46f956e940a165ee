//! A write-policy plugin speaking strfry's protocol, so existing strfry plugins run unchanged:
//! for each event one JSON line in,
//! `{"type":"new","event":{…},"receivedAt":…,"sourceType":"IP4"|"IP6","sourceInfo":"…","authed":"…"}`,
//! and one line out, `{"id":"…","action":"accept"|"reject"|"shadowReject","msg":"…"}`.
//!
//! Each core has its own plugin process, as each strfry ingester thread has, driven by a
//! thread of its own (`ringrelay-plugin-N`): the core never waits on the process. The core
//! queues at most `write_plugin.queue_max` events (a FIFO semaphore; publishers wait past
//! it, each within its connection's budgets), and awaits each decision. The thread writes
//! what is queued at once (up to 64 requests) and reads the answers back in order, each
//! within `timeout_ms` (a plugin answers a line before it reads the next, so several lines
//! in its pipe change nothing for it; strfry writes one at a time). A plugin that times out,
//! dies, or answers with another event's id is killed (its process group) and started again
//! for the next event, at most once a second; the events in hand, and events that come while
//! it may not restart yet, get `on_failure`'s decision. A plugin whose file changes is
//! restarted before the next event (checked at most once a second), as strfry does.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use futures_channel::oneshot;
use serde_json::Value;

use crate::config::WritePluginConfig;

/// The least time between two starts of the plugin.
const RESTART_INTERVAL: Duration = Duration::from_secs(1);
/// How often the plugin's file is checked for a change.
const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Longest answer line accepted, in bytes.
const ANSWER_SIZE_MAX: usize = 64 * 1024;
/// Requests written to the plugin at once, before their answers are read.
const PIPELINE_COUNT_MAX: usize = 64;
/// How long a plugin asked to stop (stdin closed, SIGTERM) has before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// What the plugin decided, or why it could not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Reject(String),
    /// `OK true`, but neither stored nor broadcast.
    ShadowReject(String),
    /// The plugin did not judge the event; why (for the log).
    Failed(&'static str),
}

/// One core's counts of its plugin's work, kept by its thread.
#[derive(Debug, Default)]
pub struct PluginFigures {
    /// Processes started.
    pub starts: AtomicU64,
    /// Events the plugin failed to judge (each given `on_failure`'s decision).
    pub failures: AtomicU64,
}

struct Request {
    line: String,
    id: String,
    answer: oneshot::Sender<Verdict>,
}

/// One core's plugin: the thread that drives the process, and the core's queue bound.
pub struct Plugin {
    requests: Option<mpsc::Sender<Request>>,
    slots: glommio::sync::Semaphore,
    thread: Option<std::thread::JoinHandle<()>>,
    pub figures: Arc<PluginFigures>,
}

/// Who sent an event, as strfry tells its plugins.
pub struct Source<'a> {
    pub ip: std::net::IpAddr,
    /// The first pubkey the connection authenticated as (NIP-42).
    pub authed: Option<&'a crate::event::Pubkey>,
}

impl Plugin {
    /// Start core `core`'s plugin thread; the process starts with the first event.
    pub fn start(core: usize, config: &WritePluginConfig) -> std::io::Result<Plugin> {
        let (requests, receiver) = mpsc::channel();
        let figures = Arc::new(PluginFigures::default());
        let driver = Driver {
            command: config.command.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
            figures: figures.clone(),
            running: None,
            last_start: None,
            last_check: Instant::now(),
        };
        let thread =
            std::thread::Builder::new().name(format!("ringrelay-plugin-{core}")).spawn(move || driver.run(receiver))?;
        Ok(Plugin {
            requests: Some(requests),
            slots: glommio::sync::Semaphore::new(config.queue_max as u64),
            thread: Some(thread),
            figures,
        })
    }

    /// The plugin's decision on `event_json` (the event as served), waiting first for room
    /// in the core's queue.
    pub async fn judge(&self, event_json: &str, id: String, source: &Source<'_>) -> Verdict {
        let Ok(_slot) = self.slots.acquire_permit(1).await else { return Verdict::Failed("the plugin is stopping") };
        let line = request_line(event_json, source, crate::now_unix());
        let (answer, decided) = oneshot::channel();
        let sent = self.requests.as_ref().is_some_and(|requests| requests.send(Request { line, id, answer }).is_ok());
        if !sent {
            return Verdict::Failed("the plugin's thread has stopped");
        }
        decided.await.unwrap_or(Verdict::Failed("the plugin's thread has stopped"))
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        // The thread stops its process and ends once its queue is closed.
        self.requests.take();
        self.slots.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The request line strfry's plugins read. The event's JSON is the relay's compact form,
/// put in as is.
fn request_line(event_json: &str, source: &Source<'_>, now: u64) -> String {
    let ip = source.ip.to_canonical();
    let source_type = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let authed = source.authed.map(|pubkey| format!(",\"authed\":\"{}\"", pubkey.to_hex())).unwrap_or_default();
    format!(
        "{{\"type\":\"new\",\"event\":{event_json},\"receivedAt\":{now},\"sourceType\":\"{source_type}\",\"sourceInfo\":\"{ip}\"{authed}}}\n"
    )
}

/// The decision an answer line gives for event `id`; `Err` when the line is not an answer
/// for it. `Ok(None)`: not JSON, skipped (strfry skips such lines too).
fn parse_answer(line: &[u8], id: &str) -> Result<Option<Verdict>, &'static str> {
    let Ok(answer) = serde_json::from_slice::<Value>(line) else { return Ok(None) };
    if answer["id"].as_str() != Some(id) {
        return Err("the plugin answered for another event");
    }
    let msg = answer["msg"].as_str().unwrap_or("").to_owned();
    match answer["action"].as_str() {
        Some("accept") => Ok(Some(Verdict::Accept)),
        Some("reject") => Ok(Some(Verdict::Reject(msg))),
        Some("shadowReject") => Ok(Some(Verdict::ShadowReject(msg))),
        _ => Err("the plugin answered an unknown action"),
    }
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// Bytes read past the last answer line.
    pending: Vec<u8>,
    modified: Option<SystemTime>,
}

/// The plugin thread's state.
struct Driver {
    command: String,
    timeout: Duration,
    figures: Arc<PluginFigures>,
    running: Option<Running>,
    last_start: Option<Instant>,
    last_check: Instant,
}

impl Driver {
    fn run(mut self, requests: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(PIPELINE_COUNT_MAX);
        while let Ok(first) = requests.recv() {
            batch.push(first);
            while batch.len() < PIPELINE_COUNT_MAX {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let verdicts = self.judge(&batch);
            for (request, verdict) in batch.drain(..).zip(verdicts) {
                if let Verdict::Failed(why) = &verdict {
                    self.figures.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(command = %self.command, why, "the write plugin did not judge an event");
                }
                let _ = request.answer.send(verdict);
            }
        }
        if let Some(running) = self.running.take() {
            stop(running);
        }
    }

    /// The verdicts on `batch`, in order: the requests are written at once and the answers
    /// read back in the same order (a plugin reads a line and answers it, then the next).
    fn judge(&mut self, batch: &[Request]) -> Vec<Verdict> {
        let failed = |why| vec![Verdict::Failed(why); batch.len()];
        self.reload_if_changed();
        if self.running.is_none() {
            if self.last_start.is_some_and(|at| at.elapsed() < RESTART_INTERVAL) {
                return failed("the plugin is restarting");
            }
            self.last_start = Some(Instant::now());
            match start(&self.command) {
                Ok(running) => {
                    self.figures.starts.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(command = %self.command, pid = running.child.id(), "write plugin started");
                    self.running = Some(running);
                }
                Err(error) => {
                    tracing::error!(command = %self.command, %error, "the write plugin could not be started");
                    return failed("the plugin could not be started");
                }
            }
        }
        let running = self.running.as_mut().expect("started above");
        let mut verdicts = Vec::with_capacity(batch.len());
        let outcome = exchange(running, batch, self.timeout, &mut verdicts);
        if let Err(why) = outcome {
            if let Some(running) = self.running.take() {
                kill(running);
            }
            verdicts.resize(batch.len(), Verdict::Failed(why));
        }
        verdicts
    }

    /// Restart the plugin when its file changed (a command that is one path, as strfry).
    fn reload_if_changed(&mut self) {
        if self.last_check.elapsed() < RELOAD_CHECK_INTERVAL {
            return;
        }
        self.last_check = Instant::now();
        let changed = self.running.as_ref().is_some_and(|running| modified(&self.command) != running.modified);
        if changed {
            tracing::info!(command = %self.command, "the write plugin changed; restarting it");
            if let Some(running) = self.running.take() {
                stop(running);
            }
            // A changed plugin starts at once, whatever the restart interval.
            self.last_start = None;
        }
    }
}

/// The file's modification time, for a command that is a single path.
fn modified(command: &str) -> Option<SystemTime> {
    if command.contains(' ') {
        return None;
    }
    std::fs::metadata(command).and_then(|metadata| metadata.modified()).ok()
}

fn start(command: &str) -> std::io::Result<Running> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Its own process group, so that killing it kills what `sh -c` started too.
        .process_group(0)
        .spawn()?;
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    for fd in [stdin.as_raw_fd(), stdout.as_raw_fd()] {
        set_nonblocking(fd)?;
    }
    Ok(Running { child, stdin, stdout, pending: Vec::new(), modified: modified(command) })
}

fn set_nonblocking(fd: i32) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor this process owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Wait until `fd` is ready for `events`, at most until `deadline`.
fn wait_ready(fd: i32, events: libc::c_short, deadline: Instant) -> Result<(), &'static str> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("the plugin did not answer in time");
        }
        let mut poll = libc::pollfd { fd, events, revents: 0 };
        let millis = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        if ready > 0 {
            return Ok(());
        }
        if ready < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return Err("polling the plugin failed");
        }
    }
}

/// Send a batch of requests and read their answers in order into `verdicts`: each answer
/// within `timeout` of the one before (of the writes, for the first).
fn exchange(
    running: &mut Running,
    batch: &[Request],
    timeout: Duration,
    verdicts: &mut Vec<Verdict>,
) -> Result<(), &'static str> {
    let mut deadline = Instant::now() + timeout;
    let bytes: Vec<u8> = batch.iter().flat_map(|request| request.line.bytes()).collect();
    let mut written = 0;
    while written < bytes.len() {
        match running.stdin.write(&bytes[written..]) {
            Ok(0) => return Err("the plugin closed its input"),
            Ok(count) => written += count,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                wait_ready(running.stdin.as_raw_fd(), libc::POLLOUT, deadline)?
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err("the plugin has exited"),
        }
    }
    for request in batch {
        deadline = deadline.max(Instant::now() + timeout);
        verdicts.push(read_answer(running, &request.id, deadline)?);
    }
    Ok(())
}

/// The next answer line's verdict for event `id`, by `deadline`.
fn read_answer(running: &mut Running, id: &str, deadline: Instant) -> Result<Verdict, &'static str> {
    loop {
        while let Some(end) = running.pending.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = running.pending.drain(..=end).collect();
            if let Some(verdict) = parse_answer(&line[..end], id)? {
                return Ok(verdict);
            }
            tracing::warn!(line = %String::from_utf8_lossy(&line), "the write plugin wrote a line that is not JSON");
        }
        if running.pending.len() > ANSWER_SIZE_MAX {
            return Err("the plugin's answer is too long");
        }
        let mut buffer = [0u8; 4096];
        match running.stdout.read(&mut buffer) {
            Ok(0) => return Err("the plugin has exited"),
            Ok(count) => running.pending.extend_from_slice(&buffer[..count]),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                wait_ready(running.stdout.as_raw_fd(), libc::POLLIN, deadline)?
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err("reading the plugin failed"),
        }
    }
}

/// Kill the plugin's process group at once and reap it.
fn kill(mut running: Running) {
    // SAFETY: a signal to the process group this relay started.
    unsafe { libc::kill(-(running.child.id() as i32), libc::SIGKILL) };
    let _ = running.child.wait();
}

/// Ask the plugin to stop (its input closed, SIGTERM to its group); kill it after a grace.
fn stop(running: Running) {
    let Running { mut child, stdin, .. } = running;
    drop(stdin);
    // SAFETY: a signal to the process group this relay started.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_strfrys_lines() {
        let pubkey = crate::event::Pubkey([7; 32]);
        let source = Source { ip: "::ffff:192.0.2.1".parse().unwrap(), authed: Some(&pubkey) };
        let line = request_line(r#"{"id":"ab","kind":1}"#, &source, 1_700_000_000);
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        let request: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(request["type"], "new");
        assert_eq!(request["event"]["kind"], 1);
        assert_eq!(request["receivedAt"], 1_700_000_000);
        assert_eq!((request["sourceType"].as_str(), request["sourceInfo"].as_str()), (Some("IP4"), Some("192.0.2.1")));
        assert_eq!(request["authed"], "07".repeat(32));
        let anonymous = request_line("{}", &Source { ip: "2001:db8::1".parse().unwrap(), authed: None }, 1);
        let request: Value = serde_json::from_str(&anonymous).unwrap();
        assert_eq!(request["sourceType"], "IP6");
        assert!(request.get("authed").is_none());
    }

    fn driver(command: &str) -> Driver {
        Driver {
            command: command.to_owned(),
            timeout: Duration::from_secs(5),
            figures: Arc::default(),
            running: None,
            last_start: None,
            last_check: Instant::now(),
        }
    }

    fn batch(ids: &[&str]) -> Vec<Request> {
        let source = Source { ip: "127.0.0.1".parse().unwrap(), authed: None };
        ids.iter()
            .map(|id| Request {
                line: request_line(&format!(r#"{{"id":"{id}","content":"{id}"}}"#), &source, 1),
                id: (*id).to_owned(),
                answer: oneshot::channel().0,
            })
            .collect()
    }

    /// A batch is written at once and its answers read back in order; an answer for another
    /// event fails the rest of the batch and the plugin is started again.
    #[test]
    fn a_batch_is_answered_in_order() {
        let script = r#"python3 -c '
import json, sys
for line in sys.stdin:
    event = json.loads(line)["event"]
    action = "reject" if event["content"] == "b" else "accept"
    answer_id = "zz" if event["content"] == "lie" else event["id"]
    print(json.dumps({"id": answer_id, "action": action, "msg": "no b"}), flush=True)
'"#;
        let mut plugin = driver(script);
        let verdicts = plugin.judge(&batch(&["a", "b", "c"]));
        assert_eq!(verdicts, [Verdict::Accept, Verdict::Reject("no b".into()), Verdict::Accept]);
        let verdicts = plugin.judge(&batch(&["a", "lie", "c"]));
        assert_eq!(verdicts[0], Verdict::Accept);
        assert!(matches!(verdicts[1], Verdict::Failed(_)) && matches!(verdicts[2], Verdict::Failed(_)));
        assert!(plugin.running.is_none(), "a plugin that answered for another event is stopped");
        assert_eq!(plugin.figures.starts.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn answers_are_matched_to_their_event() {
        let answer = |line: &str| parse_answer(line.as_bytes(), "ab");
        assert_eq!(answer(r#"{"id":"ab","action":"accept"}"#), Ok(Some(Verdict::Accept)));
        assert_eq!(
            answer(r#"{"id":"ab","action":"reject","msg":"blocked: no"}"#),
            Ok(Some(Verdict::Reject("blocked: no".into())))
        );
        assert_eq!(answer(r#"{"id":"ab","action":"shadowReject"}"#), Ok(Some(Verdict::ShadowReject(String::new()))));
        assert_eq!(answer("debug output"), Ok(None));
        assert!(answer(r#"{"id":"cd","action":"accept"}"#).is_err());
        assert!(answer(r#"{"id":"ab","action":"maybe"}"#).is_err());
    }
}

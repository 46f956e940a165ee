//! A write-policy plugin speaking strfry's protocol, so existing strfry plugins run unchanged:
//! for each event one JSON line in,
//! `{"type":"new","event":{…},"receivedAt":…,"sourceType":"IP4"|"IP6","sourceInfo":"…","authed":"…"}`,
//! and one line out, `{"id":"…","action":"accept"|"reject"|"shadowReject","msg":"…"}`.
//!
//! Each core has its own plugin process, as each strfry ingester thread has, and drives it
//! from its own io_uring: the child's stdin and stdout are one end of a socket pair, the
//! core's end a glommio `UnixStream`, so the core never blocks on the process and no thread
//! stands between them. The core holds at most `write_plugin.queue_bytes_max` bytes of
//! requests for it (a FIFO semaphore counted in bytes; publishers wait past it, each within
//! its connection's budgets). One task, the
//! plugin's driver, writes what is queued at once (up to 64 requests) and reads the answers
//! back in order, each within `timeout_ms` (a plugin answers a line before it reads the
//! next, so several lines waiting change nothing for it; strfry writes one at a time). A
//! plugin that times out, dies, or answers with another event's id is killed (its process
//! group) and started again for the next event, at most once a second; the events in hand,
//! and events that come while it may not restart yet, get `on_failure`'s decision. A plugin
//! whose file changes is restarted before the next event (checked at most once a second),
//! as strfry does.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use futures_channel::oneshot;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::UnixStream;
use serde_json::Value;

use super::throttle::{LogThrottle, REPEATED_ERROR_LOG_INTERVAL};
use crate::config::WritePluginConfig;
use crate::limits::{PLUGIN_ANSWER_SIZE_MAX, PLUGIN_PIPELINE_COUNT_MAX};

/// Bytes a request line adds to its event's JSON, at most (type, receivedAt, source, authed).
const REQUEST_FRAMING_SIZE: usize = 256;
/// The least time between two starts of the plugin.
const RESTART_INTERVAL: Duration = Duration::from_secs(1);
/// How often the plugin's file is checked for a change.
const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a plugin asked to stop (its input closed, SIGTERM) has before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// How long a killed plugin is waited for, to be reaped.
const REAP_WAIT: Duration = Duration::from_millis(200);

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

/// One core's counts of its plugin's work.
#[derive(Debug, Default)]
pub struct PluginFigures {
    /// Processes started.
    pub starts: Cell<u64>,
    /// Events the plugin failed to judge (each given `on_failure`'s decision).
    pub failures: Cell<u64>,
}

struct Request {
    line: String,
    id: String,
    answer: oneshot::Sender<Verdict>,
}

/// The events waiting for the driver.
#[derive(Default)]
struct Queue {
    requests: RefCell<VecDeque<Request>>,
    driver: Cell<Option<Waker>>,
}

/// One core's plugin: its queue and the task that drives the process.
pub struct Plugin {
    queue: Rc<Queue>,
    /// Bytes of requests queued or in the driver's hands (`queue_bytes_max`).
    room: glommio::sync::Semaphore,
    room_size: usize,
    /// Owned: dropping it cancels the driver, which kills the process.
    driver: Option<glommio::Task<()>>,
    pub figures: Rc<PluginFigures>,
}

/// Who sent an event, as strfry tells its plugins.
pub struct Source<'a> {
    pub ip: std::net::IpAddr,
    /// The first pubkey the connection authenticated as (NIP-42).
    pub authed: Option<&'a crate::event::Pubkey>,
}

impl Plugin {
    /// Start the core's plugin driver (on the running executor); the process starts with
    /// the first event.
    pub fn start(config: &WritePluginConfig) -> Plugin {
        let queue = Rc::new(Queue::default());
        let figures = Rc::new(PluginFigures::default());
        let driver = Driver::new(&config.command, Duration::from_millis(config.timeout_ms), figures.clone());
        let driver = Some(glommio::spawn_local(driver.run(queue.clone())));
        let room_size = config.queue_bytes_max;
        Plugin { queue, room: glommio::sync::Semaphore::new(room_size as u64), room_size, driver, figures }
    }

    /// The plugin's decision on `event_json` (the event as served), waiting first for room
    /// in the core's queue: its request's bytes (one larger than the whole budget waits for
    /// all of it).
    pub async fn judge(&self, event_json: &str, id: String, source: &Source<'_>) -> Verdict {
        let size = (event_json.len() + REQUEST_FRAMING_SIZE).min(self.room_size);
        let Ok(_room) = self.room.acquire_permit(size as u64).await else {
            return Verdict::Failed("the plugin is stopping");
        };
        let line = request_line(event_json, source, crate::now_unix());
        let (answer, decided) = oneshot::channel();
        self.queue.requests.borrow_mut().push_back(Request { line, id, answer });
        if let Some(driver) = self.queue.driver.take() {
            driver.wake();
        }
        decided.await.unwrap_or(Verdict::Failed("the plugin's driver has stopped"))
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        // The driver owns the process: cancelled, it kills it.
        self.room.close();
        drop(self.driver.take());
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

/// A running plugin process; dropped, it is killed (its process group).
struct Running {
    child: Child,
    stream: UnixStream,
    /// Bytes read past the last answer line.
    pending: Vec<u8>,
    modified: Option<SystemTime>,
    /// Reaped: its process group id may belong to someone else by now.
    reaped: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped {
            signal_group(&self.child, libc::SIGKILL);
            let _ = self.child.try_wait();
        }
    }
}

fn signal_group(child: &Child, signal: libc::c_int) {
    // SAFETY: a signal to the process group this relay started for the plugin.
    unsafe { libc::kill(-(child.id() as i32), signal) };
}

/// The driver's state.
struct Driver {
    command: String,
    timeout: Duration,
    figures: Rc<PluginFigures>,
    running: Option<Running>,
    last_start: Option<Instant>,
    last_check: Instant,
    /// A plugin that fails every event, or prints junk between its answers, is logged once
    /// per interval (with the count held back), as every repeating error is.
    failures_logged: LogThrottle,
    junk_logged: LogThrottle,
}

impl Driver {
    fn new(command: &str, timeout: Duration, figures: Rc<PluginFigures>) -> Driver {
        Driver {
            command: command.to_owned(),
            timeout,
            figures,
            running: None,
            last_start: None,
            last_check: Instant::now(),
            failures_logged: LogThrottle::new(REPEATED_ERROR_LOG_INTERVAL),
            junk_logged: LogThrottle::new(REPEATED_ERROR_LOG_INTERVAL),
        }
    }

    async fn run(mut self, queue: Rc<Queue>) {
        loop {
            poll_fn(|cx| {
                if queue.requests.borrow().is_empty() {
                    queue.driver.set(Some(cx.waker().clone()));
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            let batch: Vec<Request> = {
                let mut requests = queue.requests.borrow_mut();
                let count = requests.len().min(PLUGIN_PIPELINE_COUNT_MAX);
                requests.drain(..count).collect()
            };
            let verdicts = self.judge(&batch).await;
            for (request, verdict) in batch.into_iter().zip(verdicts) {
                if let Verdict::Failed(why) = &verdict {
                    self.figures.failures.set(self.figures.failures.get() + 1);
                    if let Some(held_back) = self.failures_logged.admit() {
                        tracing::warn!(command = %self.command, why, held_back, "the write plugin did not judge an event");
                    }
                }
                let _ = request.answer.send(verdict);
            }
        }
    }

    /// The verdicts on `batch`, in order: the requests are written at once and the answers
    /// read back in the same order.
    async fn judge(&mut self, batch: &[Request]) -> Vec<Verdict> {
        let failed = |why| vec![Verdict::Failed(why); batch.len()];
        self.reload_if_changed().await;
        if self.running.is_none() {
            if self.last_start.is_some_and(|at| at.elapsed() < RESTART_INTERVAL) {
                return failed("the plugin is restarting");
            }
            self.last_start = Some(Instant::now());
            match start(&self.command) {
                Ok(running) => {
                    self.figures.starts.set(self.figures.starts.get() + 1);
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
        if let Err(why) = exchange(running, batch, self.timeout, &mut verdicts, &self.junk_logged).await {
            if let Some(running) = self.running.take() {
                kill(running).await;
            }
            verdicts.resize(batch.len(), Verdict::Failed(why));
        }
        verdicts
    }

    /// Restart the plugin when its file changed (a command that is one path, as strfry).
    async fn reload_if_changed(&mut self) {
        if self.last_check.elapsed() < RELOAD_CHECK_INTERVAL {
            return;
        }
        self.last_check = Instant::now();
        let changed = self.running.as_ref().is_some_and(|running| modified(&self.command) != running.modified);
        if changed {
            tracing::info!(command = %self.command, "the write plugin changed; restarting it");
            if let Some(running) = self.running.take() {
                stop(running).await;
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

/// Start the plugin with one end of a socket pair as its stdin and stdout.
fn start(command: &str) -> std::io::Result<Running> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let input = OwnedFd::from(theirs.try_clone()?);
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::from(input))
        .stdout(Stdio::from(OwnedFd::from(theirs)))
        .stderr(Stdio::inherit())
        // Its own process group, so that killing it kills what `sh -c` started too.
        .process_group(0)
        .spawn()?;
    ours.set_nonblocking(true)?;
    // SAFETY: a connected stream socket this function owns and gives to glommio.
    let stream = unsafe { UnixStream::from_raw_fd(ours.into_raw_fd()) };
    Ok(Running { child, stream, pending: Vec::new(), modified: modified(command), reaped: false })
}

/// `work`, or `Err` once `limit` has passed.
async fn within<T>(limit: Duration, work: impl Future<Output = Result<T, &'static str>>) -> Result<T, &'static str> {
    futures_lite::future::or(work, async {
        glommio::timer::sleep(limit).await;
        Err("the plugin did not answer in time")
    })
    .await
}

/// Send a batch of requests and read their answers in order into `verdicts`: the writes
/// within `timeout`, and each answer within `timeout` of the one before.
async fn exchange(
    running: &mut Running,
    batch: &[Request],
    timeout: Duration,
    verdicts: &mut Vec<Verdict>,
    junk_logged: &LogThrottle,
) -> Result<(), &'static str> {
    let bytes: Vec<u8> = batch.iter().flat_map(|request| request.line.bytes()).collect();
    within(timeout, async { running.stream.write_all(&bytes).await.map_err(|_| "the plugin has exited") }).await?;
    for request in batch {
        verdicts.push(within(timeout, read_answer(running, &request.id, junk_logged)).await?);
    }
    Ok(())
}

/// The next answer line's verdict for event `id`.
async fn read_answer(running: &mut Running, id: &str, junk_logged: &LogThrottle) -> Result<Verdict, &'static str> {
    loop {
        while let Some(end) = running.pending.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = running.pending.drain(..=end).collect();
            if let Some(verdict) = parse_answer(&line[..end], id)? {
                return Ok(verdict);
            }
            if let Some(held_back) = junk_logged.admit() {
                let line = String::from_utf8_lossy(&line);
                tracing::warn!(%line, held_back, "the write plugin wrote a line that is not JSON");
            }
        }
        if running.pending.len() > PLUGIN_ANSWER_SIZE_MAX {
            return Err("the plugin's answer is too long");
        }
        let mut buffer = [0u8; 4096];
        match running.stream.read(&mut buffer).await {
            Ok(0) => return Err("the plugin has exited"),
            Ok(count) => running.pending.extend_from_slice(&buffer[..count]),
            Err(_) => return Err("reading the plugin failed"),
        }
    }
}

/// Kill the plugin's process group at once, and reap it (waiting a little, off nothing:
/// the core sleeps between looks).
async fn kill(running: Running) {
    signal_group(&running.child, libc::SIGKILL);
    reap(running, REAP_WAIT).await;
}

/// Ask the plugin to stop (its input closed, SIGTERM to its group); killed after a grace.
async fn stop(running: Running) {
    let _ = running.stream.shutdown(std::net::Shutdown::Both).await;
    signal_group(&running.child, libc::SIGTERM);
    reap(running, STOP_GRACE).await;
}

/// Wait up to `limit` for the process to end, looking every few milliseconds; dropping
/// `running` kills it if it has not.
async fn reap(mut running: Running, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if running.child.try_wait().ok().flatten().is_some() {
            running.reaped = true;
            return;
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
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
        Driver::new(command, Duration::from_secs(5), Rc::default())
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
        let script = script.to_owned();
        let checked = crate::tools::run_local("plugin-test", move || {
            Box::pin(async move {
                let mut plugin = driver(&script);
                let verdicts = plugin.judge(&batch(&["a", "b", "c"])).await;
                assert_eq!(verdicts, [Verdict::Accept, Verdict::Reject("no b".into()), Verdict::Accept]);
                let verdicts = plugin.judge(&batch(&["a", "lie", "c"])).await;
                assert_eq!(verdicts[0], Verdict::Accept);
                assert!(matches!(verdicts[1], Verdict::Failed(_)) && matches!(verdicts[2], Verdict::Failed(_)));
                assert!(plugin.running.is_none(), "a plugin that answered for another event is stopped");
                plugin.figures.starts.get()
            })
        });
        assert_eq!(checked.unwrap(), 1);
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

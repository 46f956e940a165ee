//! One client connection: the HTTP head, then either a plain HTTP answer or a WebSocket
//! session that reads client messages and writes what the core queues for it.
//!
//! The session reads a client message only while the connection is within its budgets
//! (queued bytes and owed replies, running queries); otherwise TCP holds the client back.
//! Its writes must make progress within `write_stall_secs`, or the connection is cut. Every
//! close says why: a NOTICE, then a close frame whose code names the cause (1007 invalid
//! UTF-8, 1002 protocol error, 1009 too big, 1008 policy, 1013 overload, 1001 going away).

use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use async_tungstenite::tungstenite::error::ProtocolError;
use async_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use async_tungstenite::tungstenite::protocol::frame::Frame;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::WebSocketStream;
use futures_lite::{AsyncReadExt, AsyncWriteExt, StreamExt};
use futures_util::SinkExt;
use glommio::net::TcpStream;

use super::compression::Wire;
use super::core::Core;
use super::http::{self, Route};
use super::outbox::{Out, Outbox};
use super::rates::Work;
use super::stats::{CloseCause, Handshake, Verb};
use crate::deflate::InflateError;
use crate::proto;
use crate::subs::ConnId;

/// A client must finish its request head within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read at a time while the request head arrives.
const HEAD_READ_SIZE: usize = 2 * 1024;
/// A WebSocket's read buffer, in bytes, and the most read at once: it is touched whole and
/// kept for the connection's life, so it is most of what an idle connection costs. 4 KiB
/// put an idle connection holding one subscription at 14.3–14.8 KiB of relay RSS, 1 KiB at
/// 11.3 KiB (docs/benchmarks.md). A larger message grows the buffer while it is read, in
/// reads of this size (a 70 KiB follow list takes 70).
const CONNECTION_BUFFER_SIZE: usize = 1024;
/// Bytes of frames gathered before a `send()`; the buffer grows to this only on a
/// connection that has had that much queued at once.
const WRITE_FLUSH_SIZE: usize = 16 * 1024;
/// Messages written before one flush.
const WRITE_BATCH_COUNT: usize = 64;
/// After the relay's close frame, how long the client has to answer with its own (RFC 6455
/// §7.1.1: the server closes the TCP connection once the handshake is done).
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);

pub async fn serve_connection(core: Rc<Core>, mut stream: TcpStream, handshake: Handshake) {
    let peer = match stream.peer_addr() {
        Ok(peer) => peer,
        Err(_) => return,
    };
    if !set_socket_options(&core, &stream) {
        return;
    }
    let head = glommio::timer::timeout(HANDSHAKE_TIMEOUT, async { Ok(read_head(&mut stream).await) }).await;
    let Ok(Some((http::Head { route, forwarded_for }, mut leftover))) = head else { return };
    // The client's address: the peer's, or the one a trusted proxy forwards for.
    let ip = http::client_ip(peer.ip(), forwarded_for.as_deref(), &core.gate.trusted_proxies);
    if core.gate.policy().blocks(ip) {
        core.stats.closed(CloseCause::Blocked);
        let _ = stream.write_all(&http::response(&Route::Blocked, &core.config)).await;
        let _ = stream.close().await;
        return;
    }
    let mut wire = Wire::Plain;
    let response = match &route {
        Route::Upgrade { accept_key, extensions, .. } => {
            let (extension, agreed) = core.compression.agree(extensions.as_deref());
            wire = agreed;
            http::upgrade_response(accept_key, extension.as_deref())
        }
        Route::Stats => http::stats_response(&super::telemetry::stats_everywhere(&core).await),
        Route::Metrics if core.config.metrics_listen.is_some() => http::not_found(),
        Route::Metrics => http::metrics_response(&super::telemetry::scrape(&core).await),
        Route::Nip11 => http::nip11_response(&core.config, &core.gate.policy(), &core.gate.lists().lists),
        Route::Page => http::page_response(&core.config, &core.gate.lists().lists),
        Route::Manage(request) => {
            let Some(body) = read_body(&mut stream, &mut leftover, request.body_size).await else { return };
            super::manage::serve(&core, ip, request, &body).await
        }
        _ => http::response(&route, &core.config),
    };
    if stream.write_all(&response).await.is_err() {
        return;
    }
    // Not kept in the connection's future for its life.
    drop(response);
    let Route::Upgrade { host, .. } = route else {
        let _ = stream.close().await;
        return;
    };
    let rate_key = core.gate.rate_key(ip, &[]);
    if rate_key.is_some_and(|key| core.gate.over_rate_of(key, Work::Connection)) {
        core.stats.closed(CloseCause::RateLimited);
        let mut ws = WebSocketStream::from_partially_read(stream, leftover, Role::Server, None).await;
        close_with_notice(&mut ws, CloseCode::Again, "rate-limited: too many new connections from your address", None)
            .await;
        return;
    }
    let Some((conn, outbound)) = core.sessions.open(ip, host) else {
        core.stats.closed(CloseCause::AddressLimit);
        let mut ws = WebSocketStream::from_partially_read(stream, leftover, Role::Server, None).await;
        close_with_notice(&mut ws, CloseCode::Again, "rate-limited: too many connections from your address", None)
            .await;
        return;
    };
    drop(handshake);
    let config = websocket_config(&core.config.limits).accept_compressed(wire.is_compressed());
    let ws = WebSocketStream::from_partially_read(stream, leftover, Role::Server, Some(config)).await;
    tracing::debug!(core = core.id().0, conn = conn.0, %peer, client = %ip, "websocket open");
    if core.config.auth.challenge == crate::config::ChallengeWhen::OnConnect {
        core.sessions.send_challenge(conn);
    }
    let cause = socket_loop(&core, conn, ws, outbound, wire).await;
    core.stats.closed(cause);
    core.sessions.close(conn);
    tracing::debug!(core = core.id().0, conn = conn.0, "websocket closed");
}

/// tungstenite reserves 128 KiB each way by default; Nostr messages are small, and the
/// buffers grow on demand, so an idle connection stays light.
fn websocket_config(limits: &crate::config::RelayLimits) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(CONNECTION_BUFFER_SIZE)
        .write_buffer_size(WRITE_FLUSH_SIZE)
        .max_write_buffer_size(limits.message_size_max + WRITE_FLUSH_SIZE)
        .max_message_size(Some(limits.message_size_max))
        .max_frame_size(Some(limits.message_size_max))
}

/// A connection to the admin listener (`metrics_listen`): `/metrics`, `/stats`, `/healthz`
/// and the management API, nothing else.
pub async fn serve_admin(core: Rc<Core>, mut stream: TcpStream, _handshake: Handshake) {
    let Ok(peer) = stream.peer_addr() else { return };
    let head = glommio::timer::timeout(HANDSHAKE_TIMEOUT, async { Ok(read_head(&mut stream).await) }).await;
    let Ok(Some((http::Head { route, forwarded_for }, mut leftover))) = head else { return };
    let ip = http::client_ip(peer.ip(), forwarded_for.as_deref(), &core.gate.trusted_proxies);
    let response = match &route {
        Route::Metrics => http::metrics_response(&super::telemetry::scrape(&core).await),
        Route::Stats => http::stats_response(&super::telemetry::stats_everywhere(&core).await),
        Route::Health => http::response(&route, &core.config),
        Route::Manage(request) => {
            let Some(body) = read_body(&mut stream, &mut leftover, request.body_size).await else { return };
            super::manage::serve(&core, ip, request, &body).await
        }
        _ => http::not_found(),
    };
    if stream.write_all(&response).await.is_ok() {
        let _ = stream.close().await;
    }
}

/// Read until a complete request head; returns it and the bytes after it.
async fn read_head(stream: &mut TcpStream) -> Option<(http::Head, Vec<u8>)> {
    // Read straight into the heap buffer: a stack array here would live in every
    // connection's future (twice, inside the handshake timeout) for the connection's life.
    let mut buffer = Vec::with_capacity(HEAD_READ_SIZE);
    loop {
        let filled = buffer.len();
        buffer.resize(filled + HEAD_READ_SIZE, 0);
        let read = stream.read(&mut buffer[filled..]).await.ok()?;
        buffer.truncate(filled + read);
        if read == 0 {
            return None;
        }
        match http::parse_request(&buffer) {
            Ok(Some((head, consumed))) => return Some((head, buffer.split_off(consumed))),
            Ok(None) => continue,
            Err(reason) => {
                let _ = stream.write_all(&http::response(&Route::BadRequest(reason), &Default::default())).await;
                return None;
            }
        }
    }
}

/// A request body of `size` bytes: what came with the head, then the rest, within the
/// handshake's time.
async fn read_body(stream: &mut TcpStream, leftover: &mut Vec<u8>, size: usize) -> Option<Vec<u8>> {
    let mut body = std::mem::take(leftover);
    let read = glommio::timer::timeout(HANDSHAKE_TIMEOUT, async {
        while body.len() < size {
            let filled = body.len();
            body.resize(size, 0);
            let read = stream.read(&mut body[filled..]).await?;
            body.truncate(filled + read);
            if read == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        }
        Ok(())
    })
    .await;
    body.truncate(size);
    read.ok().map(|()| body)
}

enum Next {
    Incoming(Option<Result<Message, WsError>>),
    Outgoing(Option<Out>),
    /// Something the session waits on changed (a query finished): look again.
    Changed,
}

/// The connection's socket loop, until it ends; returns why it did.
async fn socket_loop(
    core: &Rc<Core>,
    conn: ConnId,
    mut ws: WebSocketStream<TcpStream>,
    outbound: Outbox,
    mut wire: Wire,
) -> CloseCause {
    loop {
        // A read that finds data ready does not yield, so a client that keeps its socket full
        // would otherwise hold the core: other clients, and the group commit whose fsync has
        // finished, would wait until it paused.
        glommio::yield_if_needed().await;
        // A client over its budgets is not read until its replies drain and its queries
        // finish, nor for a while after a rate limit refused it; what it is sent goes on.
        let held = outbound.input_held();
        let next = if held.is_none() && outbound.accepts_input() {
            futures_lite::future::race(async { Next::Incoming(ws.next().await) }, async {
                Next::Outgoing(outbound.recv().await)
            })
            .await
        } else {
            futures_lite::future::race(async { Next::Outgoing(outbound.recv().await) }, async {
                match held {
                    Some(pause) => glommio::timer::sleep(pause).await,
                    None => outbound.changed().await,
                }
                Next::Changed
            })
            .await
        };
        match next {
            Next::Changed => {}
            Next::Incoming(Some(Ok(Message::Text(text)))) => {
                core.stats.received_wire_bytes.add(text.len() as u64);
                take_text(core, conn, &ws, text.as_str()).await;
            }
            Next::Incoming(Some(Ok(Message::Binary(data)))) => {
                core.stats.received_wire_bytes.add(data.len() as u64);
                refuse_binary(core, conn, data.len());
            }
            // A compressed message (permessage-deflate): tungstenite hands it over whole.
            Next::Incoming(Some(Ok(Message::Frame(frame)))) => {
                if let Err((code, reason)) = take_compressed(core, conn, &ws, &frame).await {
                    core.stats.protocol_error_closes.inc();
                    close_with_notice(&mut ws, code, reason, Some(&outbound)).await;
                    return CloseCause::ProtocolError;
                }
            }
            Next::Incoming(Some(Ok(Message::Close(_)))) => {
                // tungstenite has queued the answering close frame; it goes out on a flush.
                let _ = glommio::timer::timeout(CLOSE_REPLY_WAIT, async { Ok(ws.flush().await) }).await;
                return CloseCause::Client;
            }
            Next::Incoming(None) => return CloseCause::Client,
            // Pings are answered by tungstenite; a pong gets no answer.
            Next::Incoming(Some(Ok(_))) => ack_now(ws.get_ref()),
            Next::Incoming(Some(Err(error))) => {
                let Some((code, reason)) = close_for(&error) else { return CloseCause::Client };
                core.stats.protocol_error_closes.inc();
                close_with_notice(&mut ws, code, &reason, Some(&outbound)).await;
                return CloseCause::ProtocolError;
            }
            Next::Outgoing(Some(Out::Close(code, reason))) => {
                close_with_notice(&mut ws, code, &reason, Some(&outbound)).await;
                return relay_close_cause(code, &reason);
            }
            Next::Outgoing(Some(out)) => {
                if let Err(cause) = write_or_stall(core, conn, &mut ws, &outbound, &mut wire, out).await {
                    return cause;
                }
            }
            // The core let go of the session. Every path that does (a slow consumer,
            // shutdown) queues its close first, so this is reached only after that close.
            Next::Outgoing(None) => return CloseCause::SlowConsumer,
        }
    }
}

/// Write `out` and what is queued behind it. Most batches go straight into the socket; a
/// write that has to wait is timed by the core's once-a-second sweep (`write_stall_secs`),
/// not by a timer of its own. `Err` once the connection is over, with why.
async fn write_or_stall(
    core: &Rc<Core>,
    conn: ConnId,
    ws: &mut WebSocketStream<TcpStream>,
    outbound: &Outbox,
    wire: &mut Wire,
    out: Out,
) -> Result<(), CloseCause> {
    let written = {
        let mut batch = std::pin::pin!(write_batch(core, ws, outbound, wire, out));
        match futures_lite::future::poll_once(&mut batch).await {
            Some(done) => Some(done),
            None => {
                outbound.begin_write();
                let waited = futures_lite::future::or(async { Some(batch.await) }, async {
                    outbound.stalled().await;
                    None
                });
                let done = waited.await;
                outbound.end_write();
                done
            }
        }
    };
    match written {
        Some(Ok(())) => Ok(()),
        Some(Err(WriteEnd::Closed(cause))) => Err(cause),
        Some(Err(WriteEnd::Failed)) => Err(CloseCause::Client),
        None => {
            // The client has taken nothing for `write_stall`: it is gone or will not read. A
            // close frame could not get through either.
            tracing::info!(core = core.id().0, conn = conn.0, "closing a connection whose writes stalled");
            core.stats.write_stall_closes.inc();
            reset_on_close(ws.get_ref());
            Err(CloseCause::WriteStall)
        }
    }
}

/// Why the relay closed a connection, from the close it queued: the code, and for a policy
/// close the reason's prefix (`blocked:` for a blocked address, else a slow consumer).
fn relay_close_cause(code: CloseCode, reason: &str) -> CloseCause {
    match code {
        CloseCode::Away | CloseCode::Restart => CloseCause::Shutdown,
        CloseCode::Policy if reason.starts_with("blocked:") => CloseCause::Blocked,
        _ => CloseCause::SlowConsumer,
    }
}

/// How a batch of writes ended the connection.
enum WriteEnd {
    /// A close the relay queued, sent; why.
    Closed(CloseCause),
    /// The socket failed.
    Failed,
}

/// The close code and reason for an error reading the client, `None` when the connection is
/// simply gone.
fn close_for(error: &WsError) -> Option<(CloseCode, String)> {
    match error {
        WsError::Utf8(_) => Some((CloseCode::Invalid, "invalid: a text frame is not valid UTF-8".to_owned())),
        WsError::Capacity(error) => Some((CloseCode::Size, format!("invalid: message too large: {error}"))),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(error) => Some((CloseCode::Protocol, format!("invalid: websocket protocol error: {error}"))),
        _ => None,
    }
}

/// Tell the client why in a NOTICE it can read, then close with `code`. Boxed, like
/// [`close_socket`]: it runs once per connection.
fn close_with_notice<'a>(
    ws: &'a mut WebSocketStream<TcpStream>,
    code: CloseCode,
    reason: &'a str,
    outbound: Option<&'a Outbox>,
) -> Pin<Box<impl Future<Output = ()> + 'a>> {
    Box::pin(async move {
        let notice = glommio::timer::timeout(CLOSE_REPLY_WAIT, async {
            Ok(ws.feed(Message::text(proto::frame_notice(reason))).await)
        });
        if !matches!(notice.await, Ok(Ok(()))) {
            reset_on_close(ws.get_ref());
            return;
        }
        // A close reason is at most 123 bytes (RFC 6455 §5.5).
        let short: String = reason
            .chars()
            .scan(0, |size, c| {
                *size += c.len_utf8();
                (*size <= 123).then_some(c)
            })
            .collect();
        close_socket(ws, code, &short, outbound).await;
    })
}

/// Send the relay's close frame, then read (and drop) what the client still sends until its
/// own close frame or [`CLOSE_REPLY_WAIT`], so the client sees a clean close with the code
/// and reason rather than a reset.
///
/// Boxed: a connection closes once, and its future would otherwise carry this state (two
/// timeouts, ~0.9 KiB) for its whole life.
fn close_socket<'a>(
    ws: &'a mut WebSocketStream<TcpStream>,
    code: CloseCode,
    reason: &'a str,
    outbound: Option<&'a Outbox>,
) -> Pin<Box<impl Future<Output = ()> + 'a>> {
    Box::pin(async move {
        let close = ws.close(Some(CloseFrame { code, reason: reason.into() }));
        let closed = glommio::timer::timeout(CLOSE_REPLY_WAIT, async { Ok(close.await) }).await;
        if !matches!(closed, Ok(Ok(()))) {
            // The client is not taking what was sent: drop the socket's unsent bytes now
            // rather than leave the kernel retrying them.
            reset_on_close(ws.get_ref());
            return;
        }
        if let Some(outbound) = outbound {
            outbound.farewell_sent();
        }
        let _ = glommio::timer::timeout(CLOSE_REPLY_WAIT, async {
            while let Some(Ok(_)) = ws.next().await {}
            Ok(())
        })
        .await;
    })
}

/// Write `first` (a message, not a close) and whatever else is queued, up to a batch, with
/// one flush.
async fn write_batch(
    core: &Core,
    ws: &mut WebSocketStream<TcpStream>,
    outbound: &Outbox,
    wire: &mut Wire,
    first: Out,
) -> Result<(), WriteEnd> {
    let mut next = Some(first);
    for _ in 0..WRITE_BATCH_COUNT {
        let Some(out) = next.take().or_else(|| outbound.try_recv()) else { break };
        match out {
            Out::Close(code, reason) => {
                ws.flush().await.map_err(|_| WriteEnd::Failed)?;
                close_with_notice(ws, code, &reason, Some(outbound)).await;
                return Err(WriteEnd::Closed(relay_close_cause(code, &reason)));
            }
            message => {
                if let Some(encoded) = core.compression.encode(wire, message) {
                    core.stats.sent_bytes.add(encoded.size as u64);
                    core.stats.sent_wire_bytes.add(encoded.wire_size as u64);
                    ws.feed(encoded.message).await.map_err(|_| WriteEnd::Failed)?;
                }
            }
        }
    }
    ws.flush().await.map_err(|_| WriteEnd::Failed)
}

/// A client's text message, handled; then the other sessions' turn: a client that keeps
/// its socket full (a flood of REQs) gets one message in per round, not a time slice.
async fn take_text(core: &Rc<Core>, conn: ConnId, ws: &WebSocketStream<TcpStream>, text: &str) {
    core.stats.received_bytes.add(text.len() as u64);
    if !super::verbs::handle_text(core, conn, text).await {
        ack_now(ws.get_ref());
    }
    futures_lite::future::yield_now().await;
}

/// A compressed message, inflated and handled; `Err` with the close it calls for when it
/// does not inflate within the message limit or is not UTF-8 text.
async fn take_compressed(
    core: &Rc<Core>,
    conn: ConnId,
    ws: &WebSocketStream<TcpStream>,
    frame: &Frame,
) -> Result<(), (CloseCode, &'static str)> {
    core.stats.received_wire_bytes.add(frame.payload().len() as u64);
    let inflated = core.compression.inflate(frame.payload(), core.config.limits.message_size_max);
    let data = inflated.map_err(|error| match error {
        InflateError::TooLarge => (CloseCode::Size, "invalid: message too large once inflated"),
        InflateError::Invalid => (CloseCode::Invalid, "invalid: a compressed message did not inflate"),
    })?;
    if frame.header().opcode != OpCode::Data(OpData::Text) {
        refuse_binary(core, conn, data.len());
        return Ok(());
    }
    let text = String::from_utf8(data).map_err(|_| (CloseCode::Invalid, "invalid: a text frame is not valid UTF-8"))?;
    take_text(core, conn, ws, &text).await;
    Ok(())
}

fn refuse_binary(core: &Core, conn: ConnId, size: usize) {
    core.stats.received_bytes.add(size as u64);
    core.stats.message(Verb::Binary);
    core.sessions.send(conn, proto::frame_notice("invalid: binary messages are not supported; send text frames"));
}

/// Acknowledge what the client sent now rather than after the kernel's delayed-ACK timer
/// (~40 ms). A client that leaves Nagle's algorithm on (tokio-tungstenite's default, so
/// nostr-bench and many Rust clients) and writes a CLOSE then a REQ holds the REQ back until
/// the CLOSE is acknowledged, and a CLOSE has no reply to carry that acknowledgement.
fn ack_now(stream: &TcpStream) {
    with_socket(stream, |socket| socket.set_quickack(true));
}

/// Close with a reset (SO_LINGER 0) rather than a FIN queued behind unsent data: for a client
/// that does not read, whose unsent bytes would otherwise hold kernel memory while the
/// kernel retries them.
fn reset_on_close(stream: &TcpStream) {
    with_socket(stream, |socket| socket.set_linger(Some(Duration::ZERO)));
}

/// The client socket's options: no Nagle, and kernel buffers within the configured sizes.
/// `false` when the socket is already unusable.
fn set_socket_options(core: &Core, stream: &TcpStream) -> bool {
    // Replies are small frames written as soon as they are ready; Nagle would hold them
    // back behind the client's delayed ACKs.
    if stream.set_nodelay(true).is_err() {
        return false;
    }
    // A reader that stops reading holds at most this much in the kernel (autotuning would
    // let it grow to megabytes per socket).
    let send_buffer_size = core.config.limits.socket_send_buffer_size;
    if send_buffer_size > 0 {
        with_socket(stream, |socket| socket.set_send_buffer_size(send_buffer_size));
    }
    // A client the relay stops reading (over its rate, or its outbound budget) fills this
    // buffer, and a full one is compacted by the kernel under the socket's lock, in the
    // sender's softirq: at autotuning's megabytes that took 20 ms, and this core's next
    // send or read on the socket spun on the lock meanwhile.
    let receive_buffer_size = core.config.limits.socket_receive_buffer_size;
    if receive_buffer_size > 0 {
        with_socket(stream, |socket| socket.set_recv_buffer_size(receive_buffer_size));
    }
    true
}

/// Set a socket option glommio does not expose, through socket2; a failure changes nothing
/// that matters for correctness.
fn with_socket(stream: &TcpStream, set: impl FnOnce(socket2::SockRef<'_>) -> std::io::Result<()>) {
    // SAFETY: the descriptor belongs to `stream`, which outlives this borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let _ = set(socket2::SockRef::from(&fd));
}

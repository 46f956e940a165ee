//! One client connection: the HTTP head, then either a plain HTTP answer or a WebSocket
//! session that reads client messages and writes what the core queues for it.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::WebSocketStream;
use futures_lite::{AsyncReadExt, AsyncWriteExt, StreamExt};
use futures_util::SinkExt;
use glommio::net::TcpStream;

use super::core::{Core, Out};
use super::http::{self, Route};
use super::outbox::Outbox;
use crate::event::kind::KIND_DELETION;
use crate::event::parse_event;
use crate::proto::{self, ClientMessage, MessageLimits, Refusal};
use crate::subs::ConnId;

/// A client must finish its request head within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read at a time while the request head arrives.
const HEAD_READ_SIZE: usize = 2 * 1024;
/// Initial read buffer of a WebSocket, in bytes.
const CONNECTION_BUFFER_SIZE: usize = 4 * 1024;
/// Bytes of frames gathered before a `send()`; the buffer grows to this only on a
/// connection that has had that much queued at once.
const WRITE_FLUSH_SIZE: usize = 16 * 1024;
/// Messages written before one flush.
const WRITE_BATCH_COUNT: usize = 64;
/// After the relay's close frame, how long the client has to answer with its own (RFC 6455
/// §7.1.1: the server closes the TCP connection once the handshake is done).
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);

pub async fn serve_connection(core: Rc<Core>, mut stream: TcpStream) {
    let peer = match stream.peer_addr() {
        Ok(peer) => peer,
        Err(_) => return,
    };
    // Replies are small frames written as soon as they are ready; Nagle would hold them
    // back behind the client's delayed ACKs.
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let head = glommio::timer::timeout(HANDSHAKE_TIMEOUT, async { Ok(read_head(&mut stream).await) }).await;
    let Ok(Some((route, leftover))) = head else { return };
    let response = http::response(&route, &core.config);
    if stream.write_all(&response).await.is_err() {
        return;
    }
    let Route::Upgrade { .. } = route else {
        let _ = stream.close().await;
        return;
    };
    let Some((conn, outbound)) = core.open_conn(peer.ip()) else {
        let mut ws = WebSocketStream::from_partially_read(stream, leftover, Role::Server, None).await;
        close_session(&mut ws, CloseCode::Again, "too many connections from your address").await;
        return;
    };
    let limits = &core.config.limits;
    // tungstenite reserves 128 KiB each way by default; Nostr messages are small, and the
    // buffers grow on demand, so an idle connection stays light.
    let config = WebSocketConfig::default()
        .read_buffer_size(CONNECTION_BUFFER_SIZE)
        .write_buffer_size(WRITE_FLUSH_SIZE)
        .max_write_buffer_size(limits.message_size_max + WRITE_FLUSH_SIZE)
        .max_message_size(Some(limits.message_size_max))
        .max_frame_size(Some(limits.message_size_max));
    let ws = WebSocketStream::from_partially_read(stream, leftover, Role::Server, Some(config)).await;
    tracing::debug!(core = core.id, conn = conn.0, %peer, "websocket open");
    session(&core, conn, ws, outbound).await;
    core.close_conn(conn);
    tracing::debug!(core = core.id, conn = conn.0, "websocket closed");
}

/// Read until a complete request head; returns the route and the bytes after the head.
async fn read_head(stream: &mut TcpStream) -> Option<(Route, Vec<u8>)> {
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
            Ok(Some((route, consumed))) => return Some((route, buffer.split_off(consumed))),
            Ok(None) => continue,
            Err(reason) => {
                let _ = stream.write_all(&http::response(&Route::BadRequest(reason), &Default::default())).await;
                return None;
            }
        }
    }
}

enum Next {
    Incoming(Option<Result<Message, WsError>>),
    Outgoing(Option<Out>),
}

async fn session(core: &Rc<Core>, conn: ConnId, mut ws: WebSocketStream<TcpStream>, outbound: Outbox) {
    loop {
        // A read that finds data ready does not yield, so a client that keeps its socket full
        // would otherwise hold the core: other clients, and the group commit whose fsync has
        // finished, would wait until it paused.
        glommio::yield_if_needed().await;
        // A client that sends faster than it reads is not read until its replies drain.
        let next = if outbound.accepts_input() {
            futures_lite::future::race(async { Next::Incoming(ws.next().await) }, async {
                Next::Outgoing(outbound.recv().await)
            })
            .await
        } else {
            Next::Outgoing(outbound.recv().await)
        };
        match next {
            Next::Incoming(Some(Ok(Message::Text(text)))) => {
                if !handle_text(core, conn, text.as_str()) {
                    ack_now(ws.get_ref());
                }
            }
            Next::Incoming(Some(Ok(Message::Binary(_)))) => {
                core.send(conn, proto::frame_notice("invalid: binary messages are not supported; send text frames"));
            }
            Next::Incoming(Some(Ok(Message::Close(_)))) => {
                // tungstenite has queued the answering close frame; it goes out on a flush.
                let _ = glommio::timer::timeout(CLOSE_REPLY_WAIT, async { Ok(ws.flush().await) }).await;
                break;
            }
            Next::Incoming(None) => break,
            // Pings are answered by tungstenite; a pong gets no answer.
            Next::Incoming(Some(Ok(_))) => ack_now(ws.get_ref()),
            Next::Incoming(Some(Err(WsError::Capacity(error)))) => {
                close_session(&mut ws, CloseCode::Size, &format!("message too large: {error}")).await;
                break;
            }
            Next::Incoming(Some(Err(_))) => break,
            Next::Outgoing(Some(Out::Close(reason))) => {
                close_session(&mut ws, CloseCode::Away, &reason).await;
                break;
            }
            Next::Outgoing(Some(out)) => {
                if write_batch(&mut ws, &outbound, out).await.is_err() {
                    break;
                }
            }
            Next::Outgoing(None) => {
                close_session(&mut ws, CloseCode::Policy, "slow consumer: the outbound queue is full").await;
                break;
            }
        }
    }
}

/// Send the relay's close frame, then read (and drop) what the client still sends until its
/// own close frame or [`CLOSE_REPLY_WAIT`], so the client sees a clean close with the code
/// and reason rather than a reset.
///
/// Boxed: a connection closes once, and its future would otherwise carry this state (two
/// timeouts, ~0.9 KiB) for its whole life.
fn close_session<'a>(
    ws: &'a mut WebSocketStream<TcpStream>,
    code: CloseCode,
    reason: &'a str,
) -> Pin<Box<impl Future<Output = ()> + 'a>> {
    Box::pin(async move {
        let close = ws.close(Some(CloseFrame { code, reason: reason.into() }));
        let closed = glommio::timer::timeout(CLOSE_REPLY_WAIT, async { Ok(close.await) }).await;
        if !matches!(closed, Ok(Ok(()))) {
            return;
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
async fn write_batch(ws: &mut WebSocketStream<TcpStream>, outbound: &Outbox, first: Out) -> Result<(), WsError> {
    let mut next = Some(first);
    for _ in 0..WRITE_BATCH_COUNT {
        let Some(out) = next.take().or_else(|| outbound.try_recv()) else { break };
        match out {
            Out::Close(reason) => {
                ws.flush().await?;
                close_session(ws, CloseCode::Away, &reason).await;
                return Err(WsError::ConnectionClosed);
            }
            message => {
                if let Some(text) = message.into_text() {
                    ws.feed(Message::text(text)).await?;
                }
            }
        }
    }
    ws.flush().await
}

/// Handle one text message; `false` when nothing will be sent back for it (CLOSE).
fn handle_text(core: &Rc<Core>, conn: ConnId, text: &str) -> bool {
    let limits = MessageLimits { filter_count_max: core.config.limits.filters_per_req_max };
    let message = match proto::parse_client_message(text, &limits) {
        Ok(message) => message,
        Err(Refusal::Notice(reason)) => {
            core.send(conn, proto::frame_notice(&reason));
            return true;
        }
        Err(Refusal::Closed { sub_id, reason }) => {
            core.send(conn, proto::frame_closed(&sub_id, &reason));
            return true;
        }
    };
    match message {
        ClientMessage::Event(raw) => handle_event(core, conn, raw),
        ClientMessage::Req { sub_id, filters } => match core.subscribe(conn, &sub_id, &filters) {
            Ok(token) => {
                glommio::spawn_local(core.clone().serve_req(conn, sub_id, filters, token)).detach();
            }
            Err(reason) => {
                core.send(conn, proto::frame_closed(&sub_id, &reason));
            }
        },
        ClientMessage::Count { sub_id, filters } => {
            let core = core.clone();
            glommio::spawn_local(async move {
                let count = core.clone().count(filters).await;
                core.send(conn, proto::frame_count(&sub_id, count));
            })
            .detach();
        }
        ClientMessage::Close { sub_id } => {
            core.unsubscribe(conn, &sub_id);
            return false;
        }
        ClientMessage::Auth(_) => {
            core.send(conn, proto::frame_notice("unsupported: AUTH (NIP-42) is not supported yet"));
        }
    }
    true
}

/// Acknowledge what the client sent now rather than after the kernel's delayed-ACK timer
/// (~40 ms). A client that leaves Nagle's algorithm on (tokio-tungstenite's default, so
/// nostr-bench and many Rust clients) and writes a CLOSE then a REQ holds the REQ back until
/// the CLOSE is acknowledged, and a CLOSE has no reply to carry that acknowledgement.
fn ack_now(stream: &TcpStream) {
    // SAFETY: the descriptor belongs to `stream`, which outlives this borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let _ = socket2::SockRef::from(&fd).set_quickack(true);
}

/// EVENT: bounded parse, id, policy, duplicate fast path, signature; then to the owner core.
fn handle_event(core: &Rc<Core>, conn: ConnId, raw: &serde_json::value::RawValue) {
    let limits = core.config.limits.event_limits();
    let parsed = match parse_event(raw.get().as_bytes(), &limits) {
        Ok(parsed) => parsed,
        Err(error) => {
            let reply = match proto::event_id_hint(raw) {
                Some(id) => proto::frame_ok(&id, false, &error.reason()),
                None => proto::frame_notice(&error.reason()),
            };
            core.send(conn, reply);
            return;
        }
    };
    let id = parsed.id.to_hex();
    if let Some(reason) = policy_refusal(core, &parsed) {
        core.send(conn, proto::frame_ok(&id, false, &reason));
        return;
    }
    let shard = core.owner_shard(&parsed.pubkey.0);
    if core.is_known_duplicate(&parsed.id, shard) {
        core.send(conn, proto::frame_ok(&id, true, super::core::DUPLICATE));
        return;
    }
    match core.verify(parsed) {
        Ok(event) if event.kind() == KIND_DELETION => core.publish_deletion(conn, event, shard),
        Ok(event) => core.publish(conn, event, shard),
        Err(error) => {
            core.send(conn, proto::frame_ok(&id, false, &error.reason()));
        }
    }
}

/// What the relay refuses before looking at the signature: protected events (no NIP-42
/// yet) and dates outside the configured window.
fn policy_refusal(core: &Core, event: &crate::event::ParsedEvent) -> Option<String> {
    let limits = &core.config.limits;
    let now = crate::now_unix();
    if event.protected {
        return Some("auth-required: this event may only be published by its author".to_owned());
    }
    if event.created_at > now.saturating_add(limits.created_at_future_max_secs) {
        return Some(format!(
            "invalid: created_at is more than {} seconds in the future",
            limits.created_at_future_max_secs
        ));
    }
    if limits.created_at_past_max_secs > 0 && event.created_at < now.saturating_sub(limits.created_at_past_max_secs) {
        return Some(format!(
            "invalid: created_at is more than {} seconds in the past",
            limits.created_at_past_max_secs
        ));
    }
    None
}

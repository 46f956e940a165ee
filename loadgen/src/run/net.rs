//! Connecting: the relay URL, the WebSocket handshake, and reading why a relay closed.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::{Message, Utf8Bytes};
use async_tungstenite::{WebSocketReceiver, WebSocketStream};
use futures_lite::StreamExt;
use glommio::net::TcpStream;

use crate::wire::{self, Reply};

pub type Ws = WebSocketStream<TcpStream>;

/// A connection or its handshake that takes longer than this has failed.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to connect: a `ws://` URL, resolved once.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    /// The relay's process, when it runs on this host: its CPU time is then reported.
    pub pid: Option<u32>,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let parsed = url::Url::parse(url).with_context(|| format!("not a relay URL: {url}"))?;
        match parsed.scheme() {
            "ws" => {}
            "wss" => bail!("wss:// is not supported yet: point loadgen at the relay's plain ws:// listener"),
            other => bail!("unsupported scheme {other}:// (use ws://HOST:PORT)"),
        }
        let host = parsed.host_str().context("the URL has no host")?;
        let port = parsed.port_or_known_default().unwrap_or(80);
        let addr = (host, port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        Ok(Target { url: url.to_owned(), addr, pid: None })
    }
}

pub(super) async fn connect(target: &Target) -> anyhow::Result<Ws> {
    let handshake = async {
        let stream = TcpStream::connect(target.addr).await.map_err(|e| anyhow::anyhow!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| anyhow::anyhow!("TCP_NODELAY: {e}"))?;
        // Small buffers that grow on demand: a connect run holds many idle sockets.
        let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
        let (ws, _) = async_tungstenite::client_async_with_config(target.url.as_str(), stream, Some(config))
            .await
            .map_err(|e| anyhow::anyhow!("WebSocket handshake: {e}"))?;
        Ok::<_, anyhow::Error>(ws)
    };
    match glommio::timer::timeout(CONNECT_TIMEOUT, async { Ok(handshake.await) }).await {
        Ok(result) => result,
        Err(_) => bail!("no WebSocket handshake within {CONNECT_TIMEOUT:?}"),
    }
}

/// Why the relay closed a connection we failed to write to: its close frame's reason when it
/// sent one (e.g. a per-address connection limit), else the write error.
pub(super) async fn closed_reason(ws: &mut Ws, error: anyhow::Error) -> String {
    let read = glommio::timer::timeout(Duration::from_secs(1), async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Close(Some(frame)) = message {
                return Ok(Some(frame.reason.to_string()));
            }
        }
        Ok(None)
    });
    match read.await {
        Ok(Some(reason)) => format!("the relay closed the connection: {reason:?}"),
        _ => format!("{error:#}"),
    }
}

pub(super) async fn await_eose(ws: &mut Ws, sub: &str) -> anyhow::Result<()> {
    let wait = async {
        while let Some(message) = ws.next().await {
            match message? {
                Message::Text(text) => match wire::parse(&text) {
                    Ok(Reply::Eose { sub: s }) if s == sub => return Ok(()),
                    Ok(Reply::Closed { sub: s, reason }) if s == sub => bail!("subscription {sub} refused: {reason}"),
                    _ => {}
                },
                Message::Close(Some(frame)) => bail!("the relay closed subscriber {sub}: {:?}", frame.reason.as_str()),
                _ => {}
            }
        }
        bail!("the relay closed subscriber {sub}")
    };
    match glommio::timer::timeout(CONNECT_TIMEOUT, async { Ok(wait.await) }).await {
        Ok(result) => result,
        Err(_) => bail!("no EOSE for subscription {sub} within {CONNECT_TIMEOUT:?}"),
    }
}

/// The next text message; `None` once the connection is closed or broken. Pings, pongs
/// and binary frames are skipped.
pub(super) async fn next_text(receiver: &mut WebSocketReceiver<TcpStream>) -> Option<Utf8Bytes> {
    loop {
        match receiver.next().await? {
            Ok(Message::Text(text)) => return Some(text),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

//! A WebSocket connection to another relay, on the calling glommio executor: connect over
//! `ws://` or `wss://` (rustls, the Mozilla roots and any CA the operator adds) with a
//! deadline, send frames, read [`RelayMessage`]s (with a deadline), answer the relay's NIP-42
//! challenge when it has a [`Signer`], and count the bytes each way.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::stream::Stream;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::WebSocketStream;
use futures_rustls::rustls::{ClientConfig, RootCertStore};
use futures_util::{SinkExt, StreamExt};
use glommio::net::TcpStream;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use super::wire::{self, RelayMessage};
use crate::event::sign::Signer;

/// The largest message read from a relay: an event is at most 256 KiB, a NEG-MSG at most
/// twice its frame size in hex.
const MESSAGE_SIZE_MAX: usize = 4 << 20;

/// `ws://` or `wss://host[:port][/path]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
    pub tls: bool,
}

impl RelayUrl {
    pub fn parse(text: &str) -> Result<RelayUrl, String> {
        let (rest, tls) = match text.split_once("://") {
            Some(("ws", rest)) => (rest, false),
            Some(("wss", rest)) => (rest, true),
            _ => return Err(format!("{text}: not a ws:// or wss:// URL")),
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                (host, port.parse().map_err(|_| format!("{text}: the port is not a number"))?)
            }
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{text}: no host"));
        }
        Ok(RelayUrl { host: host.to_owned(), port, path: path.to_owned(), tls })
    }

    /// Where to connect: an address as is, a name resolved on glommio's blocking thread.
    async fn socket_addr(&self) -> std::io::Result<SocketAddr> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let target = (self.host.clone(), self.port);
        let resolved = glommio::executor().spawn_blocking(move || target.to_socket_addrs()).await?;
        resolved.into_iter().next().ok_or_else(|| std::io::Error::other("the name resolves to no address"))
    }
}

impl std::fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "wss" } else { "ws" };
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => write!(f, "{scheme}://[{ip}]:{}{}", self.port, self.path),
            _ => write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path),
        }
    }
}

/// How connections to other relays are made: the key that answers their NIP-42
/// challenges, and the TLS roots trusted for `wss://` (the Mozilla roots, and the operator's
/// own CA when given).
#[derive(Clone)]
pub struct Connector {
    pub signer: Option<Arc<Signer>>,
    tls: Arc<ClientConfig>,
}

impl Connector {
    pub fn new(signer: Option<Arc<Signer>>, extra_ca: Option<&Path>) -> anyhow::Result<Connector> {
        let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(path) = extra_ca {
            let mut added = 0;
            let certificates = CertificateDer::pem_file_iter(path)
                .map_err(|error| anyhow::anyhow!("reading {}: {error}", path.display()))?;
            for certificate in certificates {
                let certificate = certificate.map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
                roots.add(certificate).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
                added += 1;
            }
            anyhow::ensure!(added > 0, "{} holds no PEM certificate", path.display());
        }
        let provider = Arc::new(futures_rustls::rustls::crypto::ring::default_provider());
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Connector { signer, tls: Arc::new(tls) })
    }

    /// A connection to `url`, its handshakes (TCP, TLS, WebSocket) done within `deadline`.
    pub async fn connect(&self, url: &RelayUrl, deadline: Duration) -> Result<Client, ClientError> {
        let opened = glommio::timer::timeout(deadline, async { Ok(self.open(url).await) }).await;
        match opened {
            Ok(Ok(ws)) => Ok(Client {
                ws,
                url: url.clone(),
                signer: self.signer.clone(),
                auth: AuthState::None,
                traffic: Traffic::default(),
                last_heard: std::time::Instant::now(),
            }),
            Ok(Err(error)) => Err(ClientError::Connect(error)),
            Err(_) => Err(ClientError::Timeout(deadline, "connecting")),
        }
    }

    async fn open(&self, url: &RelayUrl) -> Result<WebSocketStream<Socket>, String> {
        let addr = url.socket_addr().await.map_err(|error| error.to_string())?;
        let tcp = TcpStream::connect(addr).await.map_err(|error| error.to_string())?;
        tcp.set_nodelay(true).map_err(|error| error.to_string())?;
        let stream = match url.tls {
            false => Stream::Plain(tcp),
            true => {
                let name = ServerName::try_from(url.host.clone())
                    .map_err(|error| format!("{} is not a TLS server name: {error}", url.host))?;
                let connector = futures_rustls::TlsConnector::from(self.tls.clone());
                let tls = connector.connect(name, tcp).await.map_err(|error| format!("TLS: {error}"))?;
                Stream::Tls(Box::new(tls))
            }
        };
        let config =
            WebSocketConfig::default().max_message_size(Some(MESSAGE_SIZE_MAX)).max_frame_size(Some(MESSAGE_SIZE_MAX));
        let (ws, _response) = async_tungstenite::client_async_with_config(url.to_string(), stream, Some(config))
            .await
            .map_err(|error| error.to_string())?;
        Ok(ws)
    }
}

/// A connection's socket: plain TCP, or TLS over it.
type Socket = Stream<TcpStream, Box<futures_rustls::client::TlsStream<TcpStream>>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting: {0}")]
    Connect(String),
    #[error("no answer within {0:?} ({1})")]
    Timeout(Duration, &'static str),
    #[error("the relay closed the connection: {0}")]
    Closed(String),
    #[error(transparent)]
    Malformed(#[from] wire::Malformed),
}

impl From<WsError> for ClientError {
    fn from(error: WsError) -> ClientError {
        ClientError::Closed(error.to_string())
    }
}

/// Bytes and messages each way on one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
}

/// Where NIP-42 stands on this connection.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthState {
    None,
    /// Our AUTH event (this id) awaits its OK.
    Sent(String),
    Accepted,
    Refused(String),
}

pub struct Client {
    ws: WebSocketStream<Socket>,
    url: RelayUrl,
    signer: Option<Arc<Signer>>,
    pub auth: AuthState,
    pub traffic: Traffic,
    /// When the relay last sent anything (a pong included).
    last_heard: std::time::Instant,
}

impl Client {
    pub fn url(&self) -> &RelayUrl {
        &self.url
    }

    pub async fn send(&mut self, frame: String) -> Result<(), ClientError> {
        self.traffic.bytes_sent += frame.len() as u64;
        self.traffic.messages_sent += 1;
        self.ws.send(Message::text(frame)).await?;
        Ok(())
    }

    /// Queue a frame without flushing: `flush` (or the next `send` or `recv`) sends it.
    pub async fn feed(&mut self, frame: String) -> Result<(), ClientError> {
        self.traffic.bytes_sent += frame.len() as u64;
        self.traffic.messages_sent += 1;
        self.ws.feed(Message::text(frame)).await?;
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.ws.flush().await?;
        Ok(())
    }

    /// The next message for the caller, waiting at most `deadline` for each. A NIP-42
    /// challenge is answered here when the client has a signer, and its OK taken here.
    pub async fn recv(&mut self, deadline: Duration, waiting_for: &'static str) -> Result<RelayMessage, ClientError> {
        loop {
            if let Some(message) = self.next_message(deadline, waiting_for).await? {
                return Ok(message);
            }
        }
    }

    /// With a signer: wait up to `challenge_wait` for the relay's challenge (one already
    /// answered counts), then for the OK to our AUTH. True once the relay took it; false
    /// without a signer, without a challenge in time, or when it refused ours.
    pub async fn authenticate(&mut self, challenge_wait: Duration, deadline: Duration) -> Result<bool, ClientError> {
        if self.signer.is_none() {
            return Ok(false);
        }
        let until = std::time::Instant::now() + challenge_wait;
        while self.auth == AuthState::None {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match self.next_message(left.max(Duration::from_millis(1)), "an AUTH challenge").await {
                Err(ClientError::Timeout(..)) => return Ok(false),
                Err(error) => return Err(error),
                Ok(Some(message)) => tracing::debug!(?message, "ignored while waiting for an AUTH challenge"),
                Ok(None) => {}
            }
        }
        while matches!(self.auth, AuthState::Sent(_)) {
            if let Some(message) = self.next_message(deadline, "the OK to our AUTH").await? {
                tracing::debug!(?message, "ignored while waiting for the OK to our AUTH");
            }
        }
        if let AuthState::Refused(reason) = &self.auth {
            tracing::warn!(url = %self.url, reason, "the relay refused our AUTH");
        }
        Ok(self.auth == AuthState::Accepted)
    }

    /// One message: the caller's, or None when the client took it (NIP-42).
    async fn next_message(
        &mut self,
        deadline: Duration,
        waiting_for: &'static str,
    ) -> Result<Option<RelayMessage>, ClientError> {
        self.ws.flush().await?;
        let next = glommio::timer::timeout(deadline, async { Ok(self.ws.next().await) }).await;
        let message = match next {
            Err(_) => return Err(ClientError::Timeout(deadline, waiting_for)),
            Ok(None) => return Err(ClientError::Closed("end of stream".into())),
            Ok(Some(message)) => message?,
        };
        self.last_heard = std::time::Instant::now();
        let text = match message {
            Message::Text(text) => text,
            Message::Close(frame) => {
                return Err(ClientError::Closed(frame.map_or_else(|| "no reason".into(), |f| f.reason.to_string())))
            }
            _ => return Ok(None),
        };
        self.traffic.bytes_received += text.len() as u64;
        self.traffic.messages_received += 1;
        match RelayMessage::parse(&text)? {
            RelayMessage::Auth { challenge } => self.answer_challenge(&challenge).await?,
            RelayMessage::Ok { id, accepted, message } if self.auth == AuthState::Sent(id.clone()) => {
                self.auth = if accepted { AuthState::Accepted } else { AuthState::Refused(message) };
            }
            message => return Ok(Some(message)),
        }
        Ok(None)
    }

    async fn answer_challenge(&mut self, challenge: &str) -> Result<(), ClientError> {
        let Some(signer) = self.signer.clone() else { return Ok(()) };
        let event = signer.auth_event(&self.url.to_string(), challenge, crate::now_unix());
        let id =
            serde_json::from_str::<serde_json::Value>(&event).ok().and_then(|e| e["id"].as_str().map(str::to_owned));
        self.auth = AuthState::Sent(id.unwrap_or_default());
        self.send(wire::auth(&event)).await
    }

    /// How long since the relay last sent anything.
    pub fn silent_for(&self) -> Duration {
        self.last_heard.elapsed()
    }

    /// A WebSocket ping: a connection with nothing to say shows it is still there.
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.ws.send(Message::Ping(Vec::new().into())).await?;
        Ok(())
    }

    pub async fn close(mut self) {
        let _ = glommio::timer::timeout(Duration::from_secs(1), async { Ok(self.ws.close(None).await) }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_url_is_ws_with_host_port_and_path() {
        let url = RelayUrl::parse("ws://127.0.0.1:7777").expect("valid");
        assert_eq!(url, RelayUrl { host: "127.0.0.1".into(), port: 7777, path: "/".into(), tls: false });
        assert_eq!(url.to_string(), "ws://127.0.0.1:7777/");
        let url = RelayUrl::parse("ws://relay.example/nostr").expect("valid");
        assert_eq!((url.port, url.path.as_str()), (80, "/nostr"));
        let url = RelayUrl::parse("ws://[::1]:9000/").expect("valid");
        assert_eq!((url.host.as_str(), url.port), ("::1", 9000));
        assert_eq!(url.to_string(), "ws://[::1]:9000/");
        let url = RelayUrl::parse("wss://relay.example").expect("valid");
        assert_eq!((url.port, url.tls, url.to_string().as_str()), (443, true, "wss://relay.example:443/"));
        for bad in ["http://x", "ws://", "ws://host:port", "relay.example"] {
            assert!(RelayUrl::parse(bad).is_err(), "{bad}");
        }
    }
}

//! Connecting: the relay URL (`ws://` or `wss://`), TLS, the WebSocket handshake, and
//! reading why a relay closed.

use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{bail, Context};
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::{Message, Utf8Bytes};
use async_tungstenite::{WebSocketReceiver, WebSocketStream};
use futures_lite::{AsyncRead, AsyncWrite, StreamExt};
use futures_rustls::rustls::pki_types::{CertificateDer, ServerName};
use futures_rustls::rustls::{ClientConfig, RootCertStore};
use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use rustls_pki_types::pem::PemObject;

use crate::wire::{self, Inflater, Reply};

pub type Ws = WebSocketStream<Stream>;

/// A relay connection: plain TCP for `ws://`, TLS over TCP for `wss://`.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_close(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_close(cx),
        }
    }
}

/// TLS for a `wss://` target: the server name to verify and the trusted roots.
#[derive(Clone)]
pub struct Tls {
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls({:?})", self.server_name)
    }
}

/// A connection or its handshake that takes longer than this has failed.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to connect: a `ws://` or `wss://` URL, resolved once.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    /// For `wss://`.
    pub tls: Option<Tls>,
    /// The relay's process, when it runs on this host: its CPU time is then reported.
    pub pid: Option<u32>,
    /// The key every connection authenticates as (NIP-42), when the run authenticates.
    pub auth: Option<secp256k1::Keypair>,
    /// Offer permessage-deflate on every connection (`--deflate`).
    pub deflate: bool,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        Target::parse_trusting(url, None)
    }

    /// As [`Target::parse`]; a `wss://` relay may also present a certificate signed by (or
    /// equal to) one in the PEM file `ca_file`, besides the usual web roots.
    pub fn parse_trusting(url: &str, ca_file: Option<&std::path::Path>) -> anyhow::Result<Target> {
        let parsed = url::Url::parse(url).with_context(|| format!("not a relay URL: {url}"))?;
        let secure = match parsed.scheme() {
            "ws" => false,
            "wss" => true,
            other => bail!("unsupported scheme {other}:// (use ws://HOST:PORT or wss://HOST)"),
        };
        let host = parsed.host_str().context("the URL has no host")?;
        let port = parsed.port_or_known_default().unwrap_or(if secure { 443 } else { 80 });
        let addr = (host, port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        let tls = if secure { Some(tls_for(host, ca_file)?) } else { None };
        Ok(Target { url: url.to_owned(), addr, tls, pid: None, auth: None, deflate: false })
    }
}

fn tls_for(host: &str, ca_file: Option<&std::path::Path>) -> anyhow::Result<Tls> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        let mut added = 0;
        let certificates =
            CertificateDer::pem_file_iter(path).with_context(|| format!("cannot read {}", path.display()))?;
        for certificate in certificates {
            let certificate = certificate.with_context(|| format!("a certificate in {}", path.display()))?;
            roots.add(certificate).with_context(|| format!("a certificate in {}", path.display()))?;
            added += 1;
        }
        anyhow::ensure!(added > 0, "{} holds no PEM certificate", path.display());
    }
    let provider = Arc::new(futures_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let server_name =
        ServerName::try_from(host.to_owned()).with_context(|| format!("{host} is not a TLS server name"))?;
    Ok(Tls { server_name, config: Arc::new(config) })
}

pub(super) async fn connect(target: &Target) -> anyhow::Result<Ws> {
    connect_with(target, None, None).await
}

/// A socket buffer to cap.
#[derive(Clone, Copy, Debug)]
pub(super) enum SocketBuffer {
    /// A client that then stops reading is felt by the relay after kilobytes, not megabytes.
    Receive(usize),
    /// A client that writes as fast as it can goes as fast as the relay reads, rather than
    /// into megabytes of kernel buffers (which loopback would take at once, and whose
    /// filling would keep this thread from the measured clients).
    Send(usize),
}

/// [`connect`], with one of the socket's buffers capped, and from the local address `source`
/// when given.
pub(super) async fn connect_with(
    target: &Target,
    buffer: Option<SocketBuffer>,
    source: Option<std::net::IpAddr>,
) -> anyhow::Result<Ws> {
    let handshake = async {
        let tcp = match source {
            None => TcpStream::connect(target.addr).await.map_err(|e| anyhow::anyhow!("connect: {e}"))?,
            Some(source) => connect_from(target.addr, source)?,
        };
        tcp.set_nodelay(true).map_err(|e| anyhow::anyhow!("TCP_NODELAY: {e}"))?;
        match buffer {
            Some(SocketBuffer::Receive(size)) => set_buffer(&tcp, libc::SO_RCVBUF, size)?,
            Some(SocketBuffer::Send(size)) => set_buffer(&tcp, libc::SO_SNDBUF, size)?,
            None => {}
        }
        let stream = match &target.tls {
            None => Stream::Plain(tcp),
            Some(tls) => {
                let connector = TlsConnector::from(tls.config.clone());
                let stream = connector
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .map_err(|e| anyhow::anyhow!("TLS handshake: {e}"))?;
                Stream::Tls(Box::new(stream))
            }
        };
        // Small buffers that grow on demand: a connect run holds many idle sockets.
        let config =
            WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0).accept_compressed(target.deflate);
        let mut request = target.url.as_str().into_client_request()?;
        if target.deflate {
            request.headers_mut().insert("Sec-WebSocket-Extensions", "permessage-deflate".parse()?);
        }
        let (mut ws, _) = async_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| anyhow::anyhow!("WebSocket handshake: {e}"))?;
        if let Some(keypair) = &target.auth {
            authenticate(&mut ws, keypair, &target.url).await?;
        }
        Ok::<_, anyhow::Error>(ws)
    };
    match glommio::timer::timeout(CONNECT_TIMEOUT, async { Ok(handshake.await) }).await {
        Ok(result) => result,
        Err(_) => bail!("no WebSocket handshake within {CONNECT_TIMEOUT:?}"),
    }
}

/// How long a connection waits for the relay's challenge before going on without one.
const CHALLENGE_WAIT: Duration = Duration::from_secs(2);

/// NIP-42: wait for the relay's `["AUTH", challenge]`, answer it signed by `keypair`, and wait
/// for its `OK`. A relay that sends no challenge on connect is used as it is.
async fn authenticate(ws: &mut Ws, keypair: &secp256k1::Keypair, url: &str) -> anyhow::Result<()> {
    let challenge = glommio::timer::timeout(CHALLENGE_WAIT, async {
        while let Some(Ok(message)) = ws.next().await {
            let Message::Text(text) = message else { continue };
            let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if value[0] == "AUTH" {
                return Ok(value[1].as_str().map(str::to_owned));
            }
        }
        Ok(None)
    })
    .await
    .unwrap_or(None);
    let Some(challenge) = challenge else { return Ok(()) };
    let draft = crate::workload::Draft {
        role: crate::workload::Role::Publish,
        author: 0,
        kind: 22_242,
        topic: None,
        created_at: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        tags: vec![vec!["relay".to_owned(), url.to_owned()], vec!["challenge".to_owned(), challenge]],
        content: String::new(),
    };
    let signed = crate::workload::sign(draft, keypair);
    let message = signed.message.as_str().replacen("[\"EVENT\",", "[\"AUTH\",", 1);
    ws.send(Message::text(message)).await.map_err(|e| anyhow::anyhow!("sending AUTH: {e}"))?;
    let id = crate::workload::hex(&signed.id);
    let answer = glommio::timer::timeout(CONNECT_TIMEOUT, async {
        while let Some(Ok(message)) = ws.next().await {
            let Message::Text(text) = message else { continue };
            let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if value[0] == "OK" && value[1] == id.as_str() {
                return Ok(Some((value[2] == true, value[3].as_str().unwrap_or("").to_owned())));
            }
        }
        Ok(None)
    })
    .await
    .unwrap_or(None);
    match answer {
        Some((true, _)) => Ok(()),
        Some((false, reason)) => bail!("the relay refused our AUTH: {reason}"),
        None => bail!("no answer to our AUTH within {CONNECT_TIMEOUT:?}"),
    }
}

/// A TCP connection from the local address `source`: bound, then connected (blocking, at
/// setup only), then handed to glommio.
fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> anyhow::Result<TcpStream> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source, 0).into()).map_err(|e| anyhow::anyhow!("bind {source}: {e}"))?;
    socket.connect_timeout(&addr.into(), CONNECT_TIMEOUT).map_err(|e| anyhow::anyhow!("connect: {e}"))?;
    // SAFETY: a connected TCP socket this function owns and gives away.
    Ok(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) })
}

fn set_buffer(tcp: &TcpStream, option: libc::c_int, size: usize) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt on the stream's own descriptor with a c_int value of its size.
    let done = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    anyhow::ensure!(done == 0, "setting a socket buffer: {}", std::io::Error::last_os_error());
    Ok(())
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
pub(super) async fn next_text(receiver: &mut WebSocketReceiver<Stream>, inflater: &mut Inflater) -> Option<Utf8Bytes> {
    loop {
        match receiver.next().await? {
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(message) => {
                if let Some(text) = inflater.text(message) {
                    return Some(text);
                }
            }
        }
    }
}

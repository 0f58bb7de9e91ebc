//! WebSocket transport of the client: dial (optionally from a chosen source address), upgrade,
//! send ops as JSON text, read server messages.
//!
//! Owns the socket and the upgrade; it knows nothing of rooms or seqs (that is `session.rs`) and
//! does not parse messages (that is `protocol.rs`): [`WsTransport::recv`] hands back the text
//! frame as a [`tokio_websockets::Message`] so the caller decodes it in place, borrowing from it.
//! Binding a source address (127.0.0.2, 127.0.0.3, …) before connect is how `linkcast bench`
//! gets more than one ephemeral port range on loopback.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_websockets::{ClientBuilder, Limits, Message, WebSocketStream};

use super::session::Disconnect;
use crate::tls::Trust;

/// Largest server message accepted (replays of big payloads fit well below).
pub(crate) const MAX_SERVER_MESSAGE: usize = 2 * 1024 * 1024;

/// Why a WebSocket connection failed or ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    /// The URL is not `ws://host:port/path`.
    #[error("bad WebSocket URL {0:?}")]
    BadUrl(String),
    /// TCP connect/bind failed.
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    /// The upgrade was refused (HTTP status) or the WebSocket protocol failed.
    #[error("websocket: {0}")]
    Protocol(#[from] tokio_websockets::Error),
    /// The connect did not finish in time.
    #[error("connect timed out")]
    Timeout,
    /// TLS could not be set up (trust, or a server not verified).
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The server closed the connection.
    #[error("closed by server ({code:?}: {reason})")]
    Closed {
        /// Close code, if the server sent one.
        code: Option<u16>,
        /// Close reason.
        reason: String,
    },
}

impl WsError {
    /// What the session needs to know to schedule (or refuse) a retry.
    pub(crate) fn to_disconnect(&self) -> Disconnect {
        match self {
            WsError::Closed { code, reason } => Disconnect { close_code: *code, reason: reason.clone(), ..Disconnect::default() },
            WsError::Protocol(tokio_websockets::Error::Upgrade(e)) => {
                let http_status = match e {
                    tokio_websockets::upgrade::Error::DidNotSwitchProtocols(status) => Some(*status),
                    _ => None,
                };
                Disconnect { http_status, reason: e.to_string(), ..Disconnect::default() }
            }
            other => Disconnect::io(other.to_string()),
        }
    }
}

/// A parsed `ws://host:port/path?query` or `wss://…` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WsUrl {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The full URL, for the upgrade request.
    pub url: String,
    /// `wss://`: the host name the certificate must name.
    pub tls_host: Option<String>,
}

impl WsUrl {
    /// Parses `url`, appending `token` as the `token` query parameter if given.
    pub(crate) fn parse(url: &str, token: Option<&str>) -> Result<WsUrl, WsError> {
        let (rest, tls) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
            (Some(rest), _) => (rest, false),
            (None, Some(rest)) => (rest, true),
            (None, None) => return Err(WsError::BadUrl(url.into())),
        };
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        let addr = super::http::resolve(authority).ok_or_else(|| WsError::BadUrl(url.into()))?;
        let tls_host = tls.then(|| super::http::host_of(authority).to_owned());
        let mut full = url.to_owned();
        if !rest.contains('/') {
            full.push('/');
        }
        if let Some(token) = token {
            full.push(if full.contains('?') { '&' } else { '?' });
            full.push_str("token=");
            full.push_str(token);
        }
        Ok(WsUrl { addr, url: full, tls_host })
    }
}

/// One WebSocket connection.
#[derive(Debug)]
pub(crate) struct WsTransport {
    stream: WebSocketStream<MaybeTls>,
}

impl WsTransport {
    /// Dials `url` (from source address `bind`, if given) and upgrades, within `timeout`; a
    /// `wss://` server's certificate is checked by `trust`.
    pub(crate) async fn connect(url: &WsUrl, bind: Option<IpAddr>, timeout: Duration, trust: &Trust) -> Result<WsTransport, WsError> {
        tokio::time::timeout(timeout, Self::connect_inner(url, bind, trust)).await.map_err(|_| WsError::Timeout)?
    }

    async fn connect_inner(url: &WsUrl, bind: Option<IpAddr>, trust: &Trust) -> Result<WsTransport, WsError> {
        let socket = match url.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(ip) = bind {
            bind_address_no_port(&socket);
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let tcp = socket.connect(url.addr).await?;
        tcp.set_nodelay(true)?;
        let tcp = match &url.tls_host {
            None => MaybeTls::Plain(tcp),
            Some(host) => MaybeTls::Tls(Box::new(tls_connect(tcp, host, url.addr, trust).await?)),
        };
        let uri = url.url.parse::<http::Uri>().map_err(|_| WsError::BadUrl(url.url.clone()))?;
        let limits = Limits::default().max_payload_len(Some(MAX_SERVER_MESSAGE));
        let (stream, _response) = ClientBuilder::from_uri(uri).limits(limits).connect_on(tcp).await?;
        Ok(WsTransport { stream })
    }

    /// Sends one text message (and flushes).
    pub(crate) async fn send_text(&mut self, text: String) -> Result<(), WsError> {
        self.stream.send(Message::text(text)).await?;
        Ok(())
    }

    /// Queues one text message without flushing (follow with [`WsTransport::flush`]). The bench
    /// batches a subscriber's opening ops this way.
    #[cfg(feature = "bench")]
    pub(crate) async fn feed_text(&mut self, text: String) -> Result<(), WsError> {
        self.stream.feed(Message::text(text)).await?;
        Ok(())
    }

    /// Flushes queued messages.
    #[cfg(feature = "bench")]
    pub(crate) async fn flush(&mut self) -> Result<(), WsError> {
        self.stream.flush().await?;
        Ok(())
    }

    /// The next text or binary message. Pings are answered inside tokio-websockets; a close
    /// becomes [`WsError::Closed`], end of stream `Closed { code: None }`.
    pub(crate) async fn recv(&mut self) -> Result<Message, WsError> {
        loop {
            match self.stream.next().await {
                Some(Ok(msg)) if msg.is_text() || msg.is_binary() => return Ok(msg),
                Some(Ok(msg)) if msg.is_close() => {
                    let (code, reason) = msg
                        .as_close()
                        .map(|(code, reason)| (Some(u16::from(code)), reason.to_owned()))
                        .unwrap_or((None, String::new()));
                    return Err(WsError::Closed { code, reason });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(WsError::Closed { code: None, reason: "end of stream".into() }),
            }
        }
    }

    /// Closes politely (code 1000), bounded by a short timeout.
    pub(crate) async fn close(mut self) {
        let close = Message::close(Some(tokio_websockets::CloseCode::NORMAL_CLOSURE), "bye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.send(close)).await;
    }
}

/// Lets the kernel pick the source port at `connect` (by the 4-tuple) instead of at `bind`: a
/// `bind(ip, 0)` searches that address's bound ports and gets slower with every connection
/// (≈ 2 CPU-ms per connect at 16k connections per source address, measured with perf while
/// `scripts/bench-100k` ran). Best effort: without it, binding still works, only slower.
pub(crate) fn bind_address_no_port(socket: &tokio::net::TcpSocket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;
        let one: libc::c_int = 1;
        // SAFETY: a valid socket fd, a pointer to a c_int and its exact size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_tokens() {
        let u = WsUrl::parse("ws://127.0.0.1:7080/ws", Some("abc")).expect("url");
        assert_eq!(u.addr, "127.0.0.1:7080".parse::<SocketAddr>().expect("addr"));
        assert_eq!(u.url, "ws://127.0.0.1:7080/ws?token=abc");
        let bare = WsUrl::parse("ws://127.0.0.1:9001", None).expect("url");
        assert_eq!(bare.url, "ws://127.0.0.1:9001/");
        assert!(WsUrl::parse("http://x", None).is_err());
    }
}


/// Opens TLS on `tcp` to `host` (at `addr`), checking its certificate by `trust` (shared with the
/// HTTP client, `http.rs`).
pub(crate) async fn tls_connect(
    tcp: TcpStream,
    host: &str,
    addr: SocketAddr,
    trust: &Trust,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, WsError> {
    trust.check_target(addr)?;
    let config = trust.client_config(&[b"http/1.1"])?;
    let name = crate::tls::server_name(host.parse::<IpAddr>().is_err().then_some(host), addr);
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await?)
}

/// A client socket: plain TCP or TLS over it.
#[derive(Debug)]
pub(crate) enum MaybeTls {
    /// `ws://`, `http://`.
    Plain(TcpStream),
    /// `wss://`, `https://`.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for MaybeTls {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for MaybeTls {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

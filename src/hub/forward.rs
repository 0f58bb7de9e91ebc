//! Forwarding between hubs, and the minimal HTTP/1.1 client it uses.
//!
//! Each room has one owner hub (`linkcast_core::hub_directory`), the only one that sequences it. A hub
//! that receives a request for a room it does not own — publish, room info, history, locate —
//! passes it on to the owner's HTTP address (from `[[hubs]]`) with the same method, path, query,
//! API key, `X-Linkcast-From` and body, and returns the owner's status and JSON body unchanged.
//! The forwarded request carries `X-Linkcast-Forwarded: <hub id>`; a hub receiving one for a
//! room it does not own answers 503 instead of forwarding again (hubs disagreeing about
//! ownership means their configs differ), so a publish is never sequenced twice and never
//! loops.
//!
//! The request goes out with hyper's HTTP/1.1 client, one connection per request (forwarding
//! happens only when a publisher talks to the wrong hub), bounded in response size and time —
//! over TLS when the hubs serve `https://`, the owner's certificate checked by `[tls]`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Header marking a request forwarded by another hub.
pub(crate) const FORWARDED_HEADER: &str = "x-linkcast-forwarded";

/// Largest response body accepted from the owner (a full history answer fits).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Time a forwarded request may take end to end.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// The owner hub's answer.
#[derive(Debug)]
pub(crate) struct Forwarded {
    /// Status code.
    pub(crate) status: u16,
    /// Its `Content-Type`, if any.
    pub(crate) content_type: Option<String>,
    /// The whole body.
    pub(crate) body: Bytes,
}

/// How to reach other hubs' API ports: plain, or TLS checked by the cluster's `[tls]` trust.
#[derive(Clone)]
pub(crate) enum Dialer {
    /// `http://`.
    Plain,
    /// `https://`, the certificate checked against the name from `[[hubs]] tls_name` or the IP.
    Tls(tokio_rustls::TlsConnector),
}

/// Sends one request to `addr` and reads the whole answer (bounded by [`MAX_RESPONSE_BYTES`] and
/// [`FORWARD_TIMEOUT`]). `target` is the path with query.
pub(crate) async fn request(
    dialer: &Dialer,
    addr: SocketAddr,
    tls_name: Option<&str>,
    method: http::Method,
    target: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> std::io::Result<Forwarded> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let request = build(addr, method, target, headers, body)?;
        match dialer {
            Dialer::Plain => exchange(stream, request).await,
            Dialer::Tls(connector) => {
                let name = crate::tls::server_name(tls_name, addr);
                let stream = connector.connect(name, stream).await?;
                exchange(stream, request).await
            }
        }
    };
    tokio::time::timeout(FORWARD_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "forwarded request timed out"))?
}

fn build(
    addr: SocketAddr,
    method: http::Method,
    target: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> std::io::Result<hyper::Request<Full<Bytes>>> {
    let mut request = hyper::Request::builder().method(method).uri(target).header(http::header::HOST, addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::new(body)).map_err(other)
}

async fn exchange<S>(stream: S, request: hyper::Request<Full<Bytes>>) -> std::io::Result<Forwarded>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(other)?;
    // The connection future ends when the connection closes; errors surface on the request.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender.send_request(request).await.map_err(other)?;
    let status = response.status().as_u16();
    let content_type = response.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES).collect().await.map_err(|e| other(&*e))?.to_bytes();
    Ok(Forwarded { status, content_type, body })
}

fn other(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(error.to_string())
}

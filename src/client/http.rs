//! The hub's HTTP API, client side: `GET /v1/locate` and `POST /v1/rooms/{room}/messages`.
//!
//! One [`HttpApi`] holds one HTTP/1.1 keep-alive connection (hyper's low-level `client::conn`,
//! no pool) and reopens it when it breaks; requests on it go one at a time, so a publisher that
//! wants more in flight opens several. Used by [`super::Client`] to locate a room's Link before
//! each (re)connect, by `linkcast bench` to publish, and by tests.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use super::ws::{tls_connect, MaybeTls};
use crate::tls::Trust;

/// Largest response body read (locate answers and acks are small).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Why an HTTP call failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The base URL is not `http://host:port[/]`.
    #[error("bad HTTP base URL {0:?} (want http://HOST:PORT)")]
    BadUrl(String),
    /// Connecting or talking failed.
    #[error("http transport: {0}")]
    Transport(String),
    /// The server answered with an error status.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The response body (the JSON error).
        body: String,
        /// `Retry-After` in seconds, if sent.
        retry_after: Option<Duration>,
    },
    /// The answer was not the documented JSON.
    #[error("unexpected answer: {0}")]
    Body(String),
}

/// One Link of a locate answer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct LinkAddr {
    /// The Link's id.
    pub id: u32,
    /// Its WebSocket URL.
    pub ws: String,
    /// Its QUIC address (`host:port`).
    pub quic: String,
}

#[derive(Deserialize)]
struct LocateAnswer {
    links: Vec<LinkAddr>,
}

#[derive(Deserialize)]
struct PublishAnswer {
    seq: u64,
}

/// A client of one hub's HTTP API over one keep-alive connection.
#[derive(Debug)]
pub struct HttpApi {
    addr: SocketAddr,
    authority: String,
    api_key: Option<String>,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// `https://`: how the server's certificate is checked.
    tls: Option<Trust>,
}

impl HttpApi {
    /// A client for `base` (`http://127.0.0.1:7070`), sending `api_key` as a Bearer token if given.
    /// Connects lazily at the first request. An `https://` base is checked by
    /// [`Trust::LoopbackDev`] (loopback only); see [`HttpApi::with_trust`].
    pub fn new(base: &str, api_key: Option<String>) -> Result<HttpApi, HttpError> {
        HttpApi::with_trust(base, api_key, Trust::LoopbackDev)
    }

    /// As [`HttpApi::new`], checking an `https://` server's certificate by `trust`.
    pub fn with_trust(base: &str, api_key: Option<String>, trust: Trust) -> Result<HttpApi, HttpError> {
        let (rest, tls) = match (base.strip_prefix("http://"), base.strip_prefix("https://")) {
            (Some(rest), _) => (rest, None),
            (None, Some(rest)) => (rest, Some(trust)),
            (None, None) => return Err(HttpError::BadUrl(base.into())),
        };
        let authority = Some(rest.trim_end_matches('/')).filter(|rest| !rest.contains('/')).ok_or_else(|| HttpError::BadUrl(base.into()))?;
        let addr = resolve(authority).ok_or_else(|| HttpError::BadUrl(base.into()))?;
        Ok(HttpApi { addr, authority: authority.to_owned(), api_key, sender: None, tls })
    }

    /// The Links to connect to for `room`, best first.
    pub async fn locate(&mut self, room: &str) -> Result<Vec<LinkAddr>, HttpError> {
        let (_, body) = self.call(hyper::Method::GET, &format!("/v1/locate?room={room}"), Bytes::new(), &[]).await?;
        let answer: LocateAnswer = serde_json::from_slice(&body).map_err(|e| HttpError::Body(e.to_string()))?;
        Ok(answer.links)
    }

    /// Publishes `body` to `room` (as sender `from`, if given); returns its seq.
    pub async fn publish(&mut self, room: &str, body: Bytes, from: Option<&str>) -> Result<u64, HttpError> {
        let headers: &[(&str, &str)] = match from {
            Some(from) => &[("x-linkcast-from", from)],
            None => &[],
        };
        let (_, answer) = self.call(hyper::Method::POST, &format!("/v1/rooms/{room}/messages"), body, headers).await?;
        let answer: PublishAnswer = serde_json::from_slice(&answer).map_err(|e| HttpError::Body(e.to_string()))?;
        Ok(answer.seq)
    }

    /// Any GET; returns the body of a 2xx answer.
    pub async fn get(&mut self, path: &str) -> Result<Bytes, HttpError> {
        Ok(self.call(hyper::Method::GET, path, Bytes::new(), &[]).await?.1)
    }

    /// Any POST with extra headers (the hub's hooks to a backend); returns the body of a 2xx
    /// answer.
    pub async fn post(&mut self, path: &str, body: Bytes, headers: &[(&str, &str)]) -> Result<Bytes, HttpError> {
        Ok(self.call(hyper::Method::POST, path, body, headers).await?.1)
    }

    async fn call(
        &mut self,
        method: hyper::Method,
        path: &str,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Bytes), HttpError> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.authority.as_str());
        if let Some(key) = &self.api_key {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body)).map_err(|e| HttpError::Transport(e.to_string()))?;
        let sender = self.connection().await?;
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(e) => {
                self.sender = None;
                return Err(HttpError::Transport(e.to_string()));
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let limited = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES);
        let bytes = match limited.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                self.sender = None;
                return Err(HttpError::Transport(e.to_string()));
            }
        };
        if !(200..300).contains(&status) {
            return Err(HttpError::Status { status, body: String::from_utf8_lossy(&bytes).into_owned(), retry_after });
        }
        Ok((status, bytes))
    }

    async fn connection(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, HttpError> {
        if let Some(sender) = &self.sender {
            if sender.is_closed() {
                self.sender = None;
            }
        }
        if self.sender.is_none() {
            let stream = tokio::net::TcpStream::connect(self.addr).await.map_err(|e| HttpError::Transport(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            let stream = match &self.tls {
                None => MaybeTls::Plain(stream),
                Some(trust) => MaybeTls::Tls(Box::new(
                    tls_connect(stream, host_of(&self.authority), self.addr, trust).await.map_err(|e| HttpError::Transport(e.to_string()))?,
                )),
            };
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| HttpError::Transport(e.to_string()))?;
            // The connection future ends when the connection closes; errors surface on requests.
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().ok_or_else(|| HttpError::Transport("no connection".into()))?;
        sender.ready().await.map_err(|e| HttpError::Transport(e.to_string()))?;
        Ok(sender)
    }
}

/// The host part of `host:port` (`[v6]:port` → `v6`).
pub(crate) fn host_of(authority: &str) -> &str {
    let host = authority.rsplit_once(':').map(|(host, _)| host).unwrap_or(authority);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// `host:port` → the first address (loopback names resolve without DNS).
pub(crate) fn resolve(authority: &str) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    authority.parse().ok().or_else(|| authority.to_socket_addrs().ok()?.next())
}

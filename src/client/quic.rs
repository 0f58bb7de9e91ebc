//! QUIC transport of the client: one bidirectional stream to a Link carrying frames
//! (`frame.rs`, ALPN `linkcast/1`, docs/protocol.md "QUIC").
//!
//! Owns the endpoint, the connection and the stream. Outgoing [`ClientOp`]s become `Join`/`Leave`/
//! `Publish`/`Heartbeat` frames; incoming frames become the same [`ServerMsg`] values the
//! WebSocket path decodes from JSON, so the driver in `client/mod.rs` treats both transports
//! alike. The first frame sent is `Hello` with the token in `secret` (empty in dev mode).
//!
//! Two differences from WebSocket are absorbed here so that the driver sees the same thing:
//! - the Link says why it drops a client with a QUIC *application close* (a WebSocket close code
//!   such as 1008/4100, or an HTTP-like status such as 401/503 for a refusal before the
//!   session), usually right after finishing its stream. An ended stream therefore waits briefly
//!   for that close, and [`QuicError::to_disconnect`] reports 1000–4999 as a close code and
//!   100–599 as an HTTP status — so a refused token is fatal and 503/1013 back off, as on
//!   WebSocket;
//! - the Link does not confirm a `Leave` on QUIC (docs/protocol.md lists no such frame); the
//!   leave is complete once the frame is written, so [`QuicTransport::send_op`] queues the `Left`.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use linkcast_core::frame::{ArchivedBody, Body, Frame, FrameBuilder, Kind, DEFAULT_MAX_FRAME_LEN, FLAG_JSON};
use crate::tls::Trust;
use crate::quic::{client_endpoint, FrameReader, QuicSetupError, StreamError, ALPN_CLIENT};

use super::session::Disconnect;
use linkcast_core::protocol::{self, ClientOp, ServerMsg};

/// Why a QUIC connection failed or ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QuicError {
    /// Endpoint setup failed.
    #[error("quic setup: {0}")]
    Setup(#[from] QuicSetupError),
    /// Connecting failed.
    #[error("quic connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed.
    #[error("quic connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing failed.
    #[error("quic write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading failed or the Link sent a bad frame.
    #[error("quic read: {0}")]
    Read(#[from] StreamError),
    /// The Link ended the stream.
    #[error("stream ended by the Link")]
    Ended,
    /// The connect did not finish in time.
    #[error("connect timed out")]
    Timeout,
}

/// How long an ended stream waits for the Link's application close (which says why). The Link
/// closes right after finishing its stream, or 50 ms later after a refused `Hello`.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

impl QuicError {
    /// What the session needs to know to schedule a retry: the Link's application close code
    /// as a close code (1000–4999, WebSocket codes) or an HTTP status (100–599, refusals such
    /// as 401 bad token or 503 too many connections); anything else is a transport failure.
    pub(crate) fn to_disconnect(&self) -> Disconnect {
        let Some(close) = self.application_close() else { return Disconnect::io(self.to_string()) };
        let reason = String::from_utf8_lossy(&close.reason).into_owned();
        match u16::try_from(close.error_code.into_inner()) {
            Ok(code @ 100..=599) => Disconnect { http_status: Some(code), reason, ..Disconnect::default() },
            Ok(code @ 1000..=4999) => Disconnect { close_code: Some(code), reason, ..Disconnect::default() },
            _ => Disconnect::io(format!("quic application close {}: {reason}", close.error_code)),
        }
    }

    /// The peer's application close behind this error, if that is what it is.
    fn application_close(&self) -> Option<&quinn::ApplicationClose> {
        let lost = match self {
            QuicError::Connection(e)
            | QuicError::Write(quinn::WriteError::ConnectionLost(e))
            | QuicError::Read(StreamError::Read(quinn::ReadError::ConnectionLost(e))) => e,
            _ => return None,
        };
        match lost {
            quinn::ConnectionError::ApplicationClosed(close) => Some(close),
            _ => None,
        }
    }
}

/// One QUIC connection to a Link.
#[derive(Debug)]
pub(crate) struct QuicTransport {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    reader: FrameReader,
    /// Messages made up on this side (`Left`), handed out before the next frame.
    pending: VecDeque<ServerMsg<'static, serde_json::Value>>,
}

impl QuicTransport {
    /// Connects to `addr` from `bind` (any port), says `Hello` with `token`, within `timeout`.
    /// The Link's certificate is checked by `trust` (unverified only for a loopback Link).
    pub(crate) async fn connect(
        addr: SocketAddr,
        token: Option<&str>,
        bind: Option<IpAddr>,
        timeout: Duration,
        trust: &Trust,
    ) -> Result<QuicTransport, QuicError> {
        tokio::time::timeout(timeout, Self::connect_inner(addr, token, bind, trust)).await.map_err(|_| QuicError::Timeout)?
    }

    async fn connect_inner(addr: SocketAddr, token: Option<&str>, bind: Option<IpAddr>, trust: &Trust) -> Result<QuicTransport, QuicError> {
        trust.check_target(addr).map_err(|e| QuicError::Setup(e.into()))?;
        let endpoint = client_endpoint(local_addr(addr, bind), trust, ALPN_CLIENT)?;
        let name = crate::tls::server_name(None, addr);
        let conn = endpoint.connect(addr, &name.to_str())?.await?;
        let (mut send, recv) = conn.open_bi().await?;
        let hello = FrameBuilder::new("").build(&Body::Hello { link: 0, secret: token.unwrap_or("").to_owned(), ws: String::new(), quic: String::new(), admin: String::new() });
        send.write_all(hello.as_bytes()).await?;
        Ok(QuicTransport { endpoint, conn, send, reader: FrameReader::new(recv, DEFAULT_MAX_FRAME_LEN), pending: VecDeque::new() })
    }

    /// Sends one op as a frame.
    pub(crate) async fn send_op(&mut self, op: &ClientOp) -> Result<(), QuicError> {
        let frame = match op {
            ClientOp::Join { room, since, epoch, .. } => {
                FrameBuilder::new(room).build(&Body::Join { request: 0, since: *since, epoch: *epoch })
            }
            ClientOp::Leave { room } => FrameBuilder::new(room).build(&Body::Leave { request: 0 }),
            // The key is the id's text, as a WebSocket publish's key is its id's JSON text: the
            // hub dedupes a retry of either.
            ClientOp::Publish { room, data, id } => FrameBuilder::new(room).flags(FLAG_JSON).build(&Body::Publish {
                request: op.publish_id().unwrap_or(0),
                key: id.as_ref().map(protocol::publish_key).unwrap_or_default(),
                data: data.to_vec(),
            }),
            ClientOp::Ping => FrameBuilder::new("").build(&Body::Heartbeat { nonce: 0 }),
            // QUIC has no refresh frame: the token is the `Hello`'s (a new one serves reconnects).
            ClientOp::Auth { .. } | ClientOp::Refresh { .. } => return Ok(()),
        };
        self.send.write_all(frame.as_bytes()).await?;
        if let ClientOp::Leave { room } = op {
            // No confirmation comes on QUIC: frames are processed in stream order, so the leave
            // is done for the Link once written; the session ignores the room's stragglers.
            self.pending.push_back(ServerMsg::Left { room: Cow::Owned(room.clone()) });
        }
        Ok(())
    }

    /// The next server message (heartbeats, the Link's answers to our pings, are skipped).
    /// Cancel-safe: a partly read frame stays buffered in the reader.
    pub(crate) async fn recv(&mut self) -> Result<ServerMsg<'static, serde_json::Value>, QuicError> {
        loop {
            if let Some(msg) = self.pending.pop_front() {
                return Ok(msg);
            }
            let frame = match self.reader.next().await {
                Ok(Some(frame)) => frame,
                Ok(None) => return Err(self.why_ended(QuicError::Ended).await),
                Err(e @ StreamError::Read(_)) => return Err(self.why_ended(QuicError::Read(e)).await),
                Err(e) => return Err(QuicError::Read(e)),
            };
            if frame.kind() == Kind::Heartbeat {
                continue;
            }
            if let Some(msg) = to_server_msg(&frame) {
                return Ok(msg);
            }
        }
    }

    /// The stream ended or failed: the Link finishes its stream and then closes the connection
    /// with the code that says why (e.g. 401 after a refused token, 1013 for a slow consumer).
    /// Wait briefly for that close and report it; `fallback` if none comes.
    async fn why_ended(&self, fallback: QuicError) -> QuicError {
        match tokio::time::timeout(CLOSE_WAIT, self.conn.closed()).await {
            Ok(quinn::ConnectionError::LocallyClosed) | Err(_) => fallback,
            Ok(closed) => QuicError::Connection(closed),
        }
    }

    /// Closes the connection (code 0) and the endpoint.
    pub(crate) async fn close(self) {
        self.conn.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// A frame's meaning for a client; `None` for kinds a Link never sends to clients.
fn to_server_msg(frame: &Frame) -> Option<ServerMsg<'static, serde_json::Value>> {
    let room = Cow::Owned(frame.room().to_owned());
    Some(match frame.body() {
        ArchivedBody::Message { .. } | ArchivedBody::Replay { .. } => ServerMsg::Message {
            room,
            seq: frame.seq(),
            from: Cow::Owned(frame.sender().to_owned()),
            ts: frame.ts_micros(),
            data: payload_value(frame.payload(), frame.flags()),
        },
        ArchivedBody::Gap { first_lost, last_lost, resume_from, .. } => ServerMsg::Gap {
            room,
            first_lost: first_lost.to_native(),
            last_lost: last_lost.to_native(),
            resume_from: resume_from.to_native(),
        },
        ArchivedBody::Joined { epoch, .. } => ServerMsg::Joined { room, epoch: epoch.to_native(), last_seq: frame.seq() },
        ArchivedBody::Reset { epoch, .. } => ServerMsg::Reset { room, epoch: epoch.to_native(), last_seq: frame.seq() },
        ArchivedBody::PublishAck { request, epoch } => {
            ServerMsg::Published { room, seq: frame.seq(), epoch: epoch.to_native(), id: Some(request.to_native()) }
        }
        ArchivedBody::Error { request, code, reason, retry_after_ms } => {
            let (request, retry_after_ms) = (request.to_native(), retry_after_ms.to_native());
            ServerMsg::Error {
                code: code.to_native(),
                reason: Cow::Owned(reason.as_str().to_owned()),
                room: (!frame.room().is_empty()).then_some(room),
                id: (request != 0).then_some(request),
                retry_after_ms: (retry_after_ms != 0).then_some(retry_after_ms),
            }
        }
        _ => return None,
    })
}

/// The local address to connect from: `bind` (any port), or the unspecified address of the
/// Link's family — an IPv4 socket cannot reach an IPv6 Link (`localhost` may resolve to `::1`).
fn local_addr(link: SocketAddr, bind: Option<IpAddr>) -> SocketAddr {
    let ip = bind.unwrap_or(match link {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    SocketAddr::new(ip, 0)
}

/// A payload as JSON: parsed when flagged JSON (and valid), else as a string.
fn payload_value(payload: &[u8], flags: u16) -> serde_json::Value {
    if flags & FLAG_JSON != 0 {
        if let Ok(value) = serde_json::from_slice(payload) {
            return value;
        }
    }
    serde_json::Value::String(String::from_utf8_lossy(payload).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_map_to_server_messages() {
        let m = Frame::message("r", 4, 10, "u", FLAG_JSON, br#"{"a":1}"#);
        match to_server_msg(&m) {
            Some(ServerMsg::Message { seq: 4, ts: 10, data, .. }) => assert_eq!(data["a"], 1),
            other => panic!("{other:?}"),
        }
        let gap = FrameBuilder::new("r").build(&Body::Gap { request: 0, first_lost: 1, last_lost: 2, resume_from: 3 });
        assert!(matches!(to_server_msg(&gap), Some(ServerMsg::Gap { resume_from: 3, .. })));
        let ack = FrameBuilder::new("r").seq(9).build(&Body::PublishAck { request: 5, epoch: 77 });
        assert_eq!(to_server_msg(&ack), Some(ServerMsg::Published { room: "r".into(), seq: 9, epoch: 77, id: Some(5) }));
        let joined = FrameBuilder::new("r").seq(4).build(&Body::Joined { request: 0, epoch: u64::MAX });
        assert_eq!(to_server_msg(&joined), Some(ServerMsg::Joined { room: "r".into(), epoch: u64::MAX, last_seq: 4 }));
        let reset = FrameBuilder::new("r").seq(2).build(&Body::Reset { request: 0, epoch: 9 });
        assert_eq!(to_server_msg(&reset), Some(ServerMsg::Reset { room: "r".into(), epoch: 9, last_seq: 2 }));
        let refused = FrameBuilder::new("r")
            .build(&Body::Error { request: 5, code: 503, reason: "hub connection lost".into(), retry_after_ms: 1000 });
        assert_eq!(
            to_server_msg(&refused),
            Some(ServerMsg::Error {
                code: 503,
                reason: "hub connection lost".into(),
                room: Some("r".into()),
                id: Some(5),
                retry_after_ms: Some(1000)
            })
        );
        let join_refused = FrameBuilder::new("r").build(&Body::Error { request: 0, code: 403, reason: "no".into(), retry_after_ms: 0 });
        assert!(matches!(to_server_msg(&join_refused), Some(ServerMsg::Error { id: None, retry_after_ms: None, .. })));
        assert_eq!(payload_value(b"hi", 0), serde_json::Value::String("hi".into()));
    }

    #[test]
    fn application_closes_map_to_close_codes_or_http_statuses() {
        let closed = |code: u32, reason: &'static [u8]| {
            QuicError::Connection(quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: quinn::VarInt::from_u32(code),
                reason: bytes::Bytes::from_static(reason),
            }))
        };
        let refused = closed(401, b"bad token signature").to_disconnect();
        assert_eq!((refused.http_status, refused.close_code, refused.reason.as_str()), (Some(401), None, "bad token signature"));
        assert!(refused.is_fatal());
        let slow = closed(4100, b"slow consumer; retry_after_ms=1000").to_disconnect();
        assert_eq!((slow.close_code, slow.http_status), (Some(4100), None));
        assert!(slow.is_retry_later() && !slow.is_fatal());
        assert!(closed(4001, b"banned").to_disconnect().is_fatal());
        let expired = closed(1008, b"token expired").to_disconnect();
        assert!(expired.is_fatal());
        let bye = closed(0, b"").to_disconnect();
        assert_eq!((bye.close_code, bye.http_status), (None, None));
        assert!(!bye.is_fatal());
        let full = quinn::ApplicationClose {
            error_code: quinn::VarInt::from_u32(503),
            reason: bytes::Bytes::from_static(b"too many connections"),
        };
        let lost = QuicError::Write(quinn::WriteError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(full)));
        assert_eq!(lost.to_disconnect().http_status, Some(503));
        assert_eq!(QuicError::Ended.to_disconnect(), Disconnect::io("stream ended by the Link"));
    }

    #[test]
    fn the_local_address_follows_the_links_family() {
        let v4: SocketAddr = "127.0.0.1:7443".parse().expect("v4");
        let v6: SocketAddr = "[::1]:7443".parse().expect("v6");
        assert_eq!(local_addr(v4, None), SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        assert_eq!(local_addr(v6, None), SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)));
        let bind: IpAddr = "127.0.0.2".parse().expect("ip");
        assert_eq!(local_addr(v4, Some(bind)), SocketAddr::new(bind, 0));
    }
}

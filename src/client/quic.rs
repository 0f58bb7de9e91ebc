//! QUIC transport of the client: one bidirectional stream to a Link carrying frames
//! (`frame.rs`, ALPN `linkcast/1`, docs/protocol.md "QUIC").
//!
//! Owns the endpoint, the connection and the stream. Outgoing [`Op`]s become `Join`/`Leave`/
//! `Publish`/`Heartbeat` frames; incoming frames become the same [`ServerMsg`] values the
//! WebSocket path decodes from JSON, so the driver in `client/mod.rs` treats both transports
//! alike. The first frame sent is `Hello` with the token in `secret` (empty in dev mode).

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::frame::{ArchivedBody, Body, Frame, FrameBuilder, Kind, DEFAULT_MAX_FRAME_LEN, FLAG_JSON};
use crate::quic::{client_endpoint, FrameReader, QuicSetupError, StreamError, ALPN_CLIENT};

use super::session::{Disconnect, Op};
use super::wire::ServerMsg;

/// Why a QUIC connection failed or ended.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
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

impl QuicError {
    /// What the session needs to know to schedule a retry.
    pub fn to_disconnect(&self) -> Disconnect {
        match self {
            QuicError::Connection(quinn::ConnectionError::ApplicationClosed(close)) => Disconnect {
                close_code: u16::try_from(close.error_code.into_inner()).ok(),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
                ..Disconnect::default()
            },
            other => Disconnect::io(other.to_string()),
        }
    }
}

/// One QUIC connection to a Link.
#[derive(Debug)]
pub struct QuicConn {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    reader: FrameReader,
}

impl QuicConn {
    /// Connects to `addr` from `bind` (any port), says `Hello` with `token`, within `timeout`.
    pub async fn connect(addr: SocketAddr, token: Option<&str>, bind: Option<IpAddr>, timeout: Duration) -> Result<QuicConn, QuicError> {
        tokio::time::timeout(timeout, Self::connect_inner(addr, token, bind)).await.map_err(|_| QuicError::Timeout)?
    }

    async fn connect_inner(addr: SocketAddr, token: Option<&str>, bind: Option<IpAddr>) -> Result<QuicConn, QuicError> {
        let local = SocketAddr::new(bind.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), 0);
        let endpoint = client_endpoint(local, ALPN_CLIENT)?;
        let conn = endpoint.connect(addr, "localhost")?.await?;
        let (mut send, recv) = conn.open_bi().await?;
        let hello = FrameBuilder::new("").build(&Body::Hello { link: 0, secret: token.unwrap_or("").to_owned() });
        send.write_all(hello.as_bytes()).await?;
        Ok(QuicConn { endpoint, conn, send, reader: FrameReader::new(recv, DEFAULT_MAX_FRAME_LEN) })
    }

    /// Sends one op as a frame.
    pub async fn send_op(&mut self, op: &Op) -> Result<(), QuicError> {
        let frame = match op {
            Op::Join { room, since } => FrameBuilder::new(room).build(&Body::Join { conn: 0, since: *since }),
            Op::Leave { room } => FrameBuilder::new(room).build(&Body::Leave { conn: 0 }),
            Op::Publish { room, data, id } => {
                FrameBuilder::new(room).flags(FLAG_JSON).build(&Body::Publish { request: *id, data: data.to_vec() })
            }
            Op::Ping => FrameBuilder::new("").build(&Body::Heartbeat { nonce: 0 }),
        };
        self.send.write_all(frame.as_bytes()).await?;
        Ok(())
    }

    /// The next server message (heartbeats are answered here and skipped).
    pub async fn recv(&mut self) -> Result<ServerMsg<'static, serde_json::Value>, QuicError> {
        loop {
            let frame = self.reader.next().await?.ok_or(QuicError::Ended)?;
            if frame.kind() == Kind::Heartbeat {
                continue;
            }
            if let Some(msg) = to_server_msg(&frame) {
                return Ok(msg);
            }
        }
    }

    /// Closes the connection (code 0) and the endpoint.
    pub async fn close(self) {
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
        ArchivedBody::Joined { .. } => ServerMsg::Joined { room, last_seq: frame.seq() },
        ArchivedBody::Leave { .. } => ServerMsg::Left { room },
        ArchivedBody::PublishAck { request } => ServerMsg::Published { room, seq: frame.seq(), id: Some(request.to_native()) },
        ArchivedBody::Error { request, code, reason } => {
            let request = request.to_native();
            ServerMsg::Error {
                code: code.to_native(),
                reason: Cow::Owned(reason.as_str().to_owned()),
                room: (!frame.room().is_empty()).then_some(room),
                id: (request != 0).then_some(request),
            }
        }
        _ => return None,
    })
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
        let gap = FrameBuilder::new("r").build(&Body::Gap { conn: 0, first_lost: 1, last_lost: 2, resume_from: 3 });
        assert!(matches!(to_server_msg(&gap), Some(ServerMsg::Gap { resume_from: 3, .. })));
        let ack = FrameBuilder::new("r").seq(9).build(&Body::PublishAck { request: 5 });
        assert!(matches!(to_server_msg(&ack), Some(ServerMsg::Published { seq: 9, id: Some(5), .. })));
        assert_eq!(payload_value(b"hi", 0), serde_json::Value::String("hi".into()));
    }
}

//! The frame: the one message representation that travels hub → Link → shard → QUIC client.
//!
//! A frame is one contiguous `bytes::Bytes`:
//!
//! ```text
//! 0      2        3     4           8      16          24         26           28     30     32
//! | "LC" | version | kind | total_len | seq  | ts_micros | room_len | sender_len | flags | rsvd |
//! | room (room_len bytes, UTF-8) | sender (sender_len bytes, UTF-8) | body (rkyv 0.8 archive) |
//! ```
//!
//! All integers are little-endian. The 32-byte plain header plus the room and sender strings are
//! everything a Link needs to route a frame, so the hot path never touches the body. The body is
//! an rkyv archive of [`Body`] (feature `unaligned`, so it can be read in place at any offset of
//! the buffer). `total_len` doubles as the length prefix on streams: [`decode`] reads it first and
//! rejects an oversize frame before buffering its body.
//!
//! Data flow: the hub builds a frame once with [`FrameBuilder`] (or [`Frame::message`]); a Link
//! validates it once at ingress with [`Frame::from_bytes`] (header, strings, archive, and that the
//! body variant matches the header kind) and from then on reads fields in place. Cloning a
//! [`Frame`] clones the `Bytes` handle, never the payload.
//!
//! This module is sans-IO: no sockets, no clocks. Time comes in as `ts_micros` from the caller.

use bytes::{Buf, Bytes, BytesMut};
use rkyv::rancor;

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"LC";
/// Wire version this code writes and accepts (2: request ids, room epochs, `Reset`, publish keys).
pub const VERSION: u8 = 2;
/// Size of the fixed plain header.
pub const HEADER_LEN: usize = 32;
/// Longest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 128;
/// Longest sender (user id), in bytes.
pub const MAX_SENDER_LEN: usize = 128;
/// Default upper bound of a whole frame: 1 MiB payload plus header room.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1024 * 1024 + 4096;

/// Header flag: the payload of a `Message`/`Replay`/`Publish` is valid JSON (else UTF-8 text).
pub const FLAG_JSON: u16 = 1;

/// Header flag on a `Join`: the sender pages long replays (it continues a cut one with a new
/// `Join` from its last replayed seq), so the hub may cut its answer at its per-join replay cap.
/// A Link sets it on its connections' joins, not on its own rejoins after a reconnect.
pub const FLAG_PAGED: u16 = 2;

/// Header flag on a `Joined`: the hub cut the replay before the room's last seq (the join had
/// [`FLAG_PAGED`]); the rest is asked for with a new `Join` from the last replayed seq.
pub const FLAG_PARTIAL: u16 = 2;

/// What a frame is for. The header carries it so a Link can route without reading the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A sequenced room message (hub → Links → members).
    Message = 1,
    /// A missed message re-sent to one connection after a `join since` (hub → Link).
    Replay = 2,
    /// Messages were lost for one connection: which ones and where it continues.
    Gap = 3,
    /// A client's publish, relayed by its Link to the room's owner hub.
    Publish = 4,
    /// The hub's answer to a `Publish`: the seq it was given (in the header).
    PublishAck = 5,
    /// A connection asks for a room's frames after `since` (client → Link → hub).
    Join = 6,
    /// The hub's answer to a `Join`: the room's last seq (in the header).
    Joined = 7,
    /// A connection leaves a room.
    Leave = 8,
    /// A Link gained its first member of a room.
    InterestAdd = 9,
    /// A Link lost its last member of a room.
    InterestRemove = 10,
    /// Liveness probe in either direction.
    Heartbeat = 11,
    /// A request was refused: code and reason.
    Error = 12,
    /// First frame of a Link on a hub connection: who it is.
    Hello = 13,
    /// A position belongs to another epoch of the room (its history was lost): start over.
    Reset = 14,
    /// The hubs that are alive and the map's version (hub → Link only): a room is owned by the
    /// first live hub on its ring (`HubDirectory::owner_among`).
    OwnerMap = 15,
    /// A room's member count changed (hub → Link): every member of the room on the Link is told
    /// `presence`; `events` says whether join/leave events are on for the room.
    Presence = 16,
    /// A user joined or left a room (sender = the user). Link → hub: the user's first connection
    /// on this Link entered the room, or its last one left. Hub → Link: the user's first
    /// connection in the whole cluster entered, or its last one left (for members with presence).
    Member = 17,
    /// Every distinct user of the header's room on this Link (Link → hub): replaces what the hub
    /// knew of the room's users on that Link (sent when the hub turns join/leave events on).
    MemberList = 18,
    /// An operator's action on a user (hub → Link; sender = the user; room = the room for a
    /// removal, else empty): disconnect, ban, revoke tokens, remove from a room.
    Moderate = 19,
    /// Which connections does the sender (a user) have on this Link? (hub → Link; no room)
    UserQuery = 20,
    /// The answer to a `UserQuery` (Link → hub; no room): the user's connections as JSON.
    UserInfo = 21,
    /// The Link is draining (Link → hub; no room): stop offering it in `locate`; it stays
    /// connected and its members keep receiving until it closes them.
    Draining = 22,
}

/// `Moderate` action: close every connection of the user (close code in the body, 4000).
pub const MODERATE_DISCONNECT: u8 = 1;
/// `Moderate` action: ban the user until `until_secs` (refused at the upgrade) and close every
/// connection of it (4001).
pub const MODERATE_BAN: u8 = 2;
/// `Moderate` action: refuse the user's tokens issued (`iat`) before `until_secs`, and close its
/// connections holding such a token (4002).
pub const MODERATE_REVOKE: u8 = 3;
/// `Moderate` action: take the user out of the header's room (the client gets `removed`).
pub const MODERATE_REMOVE: u8 = 4;

impl Kind {
    /// The kind for a header byte, if it names one.
    pub fn from_u8(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Message,
            2 => Kind::Replay,
            3 => Kind::Gap,
            4 => Kind::Publish,
            5 => Kind::PublishAck,
            6 => Kind::Join,
            7 => Kind::Joined,
            8 => Kind::Leave,
            9 => Kind::InterestAdd,
            10 => Kind::InterestRemove,
            11 => Kind::Heartbeat,
            12 => Kind::Error,
            13 => Kind::Hello,
            14 => Kind::Reset,
            15 => Kind::OwnerMap,
            16 => Kind::Presence,
            17 => Kind::Member,
            18 => Kind::MemberList,
            19 => Kind::Moderate,
            20 => Kind::UserQuery,
            21 => Kind::UserInfo,
            22 => Kind::Draining,
            _ => return None,
        })
    }
}

pub use body::{ArchivedBody, Body};

// rkyv's derive generates archived and resolver types whose fields carry no docs; the module
// keeps `missing_docs` quiet for those generated items only.
#[allow(missing_docs)]
mod body {
    /// The archived part of a frame: what a kind needs beyond the header.
    ///
    /// Only ever read in place (as [`ArchivedBody`]); never deserialized on the hot path.
    #[derive(rkyv::Archive, rkyv::Serialize, Debug, Clone, PartialEq)]
    pub enum Body {
        /// Payload of a room message.
        Message {
            /// The message payload as the publisher gave it.
            data: Vec<u8>,
        },
        /// One missed message, answering join `request`.
        Replay {
            /// The join request this replay answers.
            request: u64,
            /// The message payload.
            data: Vec<u8>,
        },
        /// Lost messages `first_lost..=last_lost`; delivery continues at `resume_from`.
        Gap {
            /// Join request concerned (0: every member of the room on that Link).
            request: u64,
            /// First seq that will never be delivered.
            first_lost: u64,
            /// Last seq that will never be delivered.
            last_lost: u64,
            /// Next seq that will be delivered.
            resume_from: u64,
        },
        /// A client publish.
        Publish {
            /// Correlates the `PublishAck` or `Error` with this request.
            request: u64,
            /// Idempotency key (empty: none): a retry with the same sender, room and key is
            /// acknowledged with the first publish's seq instead of being sequenced again.
            key: String,
            /// The payload.
            data: Vec<u8>,
        },
        /// Acknowledges `Publish` `request`; the seq is in the header.
        PublishAck {
            /// The request being answered.
            request: u64,
            /// The room's epoch the seq belongs to.
            epoch: u64,
        },
        /// Join a room, optionally replaying everything after `since` of `epoch`.
        Join {
            /// Request id of this join (Link-issued; 0 from a QUIC client).
            request: u64,
            /// Last seq the member has; `None` for live only.
            since: Option<u64>,
            /// The room epoch `since` belongs to; `None`: the current one.
            epoch: Option<u64>,
        },
        /// Answer to a join; header seq = the room's last seq.
        Joined {
            /// The join request answered.
            request: u64,
            /// The room's epoch.
            epoch: u64,
        },
        /// Leave a room.
        Leave {
            /// Request id (0 when none is needed).
            request: u64,
        },
        /// Interest change of a Link in the header's room.
        Interest {
            /// The Link whose interest changed.
            link: u32,
            /// Local members after the change.
            members: u64,
        },
        /// Liveness probe.
        Heartbeat {
            /// Echoed back by the peer.
            nonce: u64,
        },
        /// A refusal.
        Error {
            /// Request it answers (0: none, e.g. a refused handshake).
            request: u64,
            /// Machine-readable code (HTTP-like: 400, 401, 403, 404, 413, 429, 503).
            code: u16,
            /// Human-readable reason.
            reason: String,
            /// For retryable refusals (503, 429): retry after this many milliseconds (0: no hint).
            retry_after_ms: u32,
        },
        /// A Link introduces itself to a hub (or a QUIC client to a Link, with its token as
        /// `secret` and no addresses).
        Hello {
            /// The Link's id.
            link: u32,
            /// Shared secret proving the Link belongs to the cluster (empty in dev mode).
            secret: String,
            /// The WebSocket URL clients should use (`ws://` or `wss://`); empty = not announced.
            /// Checked by [`is_valid_public_ws`] at ingress.
            ws: String,
            /// The QUIC `host:port` clients should use; empty = none. [`is_valid_public_quic`].
            quic: String,
            /// The Link's admin listener `ip:port`; empty = none. [`is_valid_admin_addr`].
            admin: String,
        },
        /// The position of join `request` (0: of every member of the room on that Link) belongs
        /// to another epoch: forget it. The room is now at `epoch`, header seq = its last seq;
        /// what follows is the epoch's history from its start (after a `Gap` if not all held).
        Reset {
            /// Join request concerned (0: every member of the room on that Link).
            request: u64,
            /// The room's current epoch.
            epoch: u64,
        },
        /// Which hubs are alive (hub → Link; no room): a room belongs to the first live hub on
        /// its ring. A Link keeps the map of the largest `version` it has seen, from any hub.
        OwnerMap {
            /// The map's version: larger is newer; versions from different hubs compare (they
            /// come from one shared counter).
            version: u64,
            /// Ids of the live hubs, sorted.
            hubs: Vec<u32>,
        },
        /// The room has `members` members in the whole cluster (hub → Link).
        Presence {
            /// Members (connections) in the room, all Links together.
            members: u64,
            /// Join/leave events are on for the room (at most `hub.presence_events_max_members`
            /// members): Links report `Member` changes and members with presence get events.
            events: bool,
        },
        /// The sender (a user) joined (`true`) or left the header's room.
        Member {
            /// Joined, else left.
            joined: bool,
        },
        /// Every distinct user of the header's room on the sending Link.
        MemberList {
            /// User ids, each once.
            users: Vec<String>,
        },
        /// An operator's action on the sender (a user); see the `MODERATE_*` constants.
        Moderate {
            /// `MODERATE_DISCONNECT`, `MODERATE_BAN`, `MODERATE_REVOKE` or `MODERATE_REMOVE`.
            action: u8,
            /// WebSocket close code for the closed connections (4000 kicked, 4001 banned, 4002
            /// token revoked); 0 for a removal.
            code: u16,
            /// Operator's reason, shown to the client.
            reason: String,
            /// Ban: banned until (seconds since the Unix epoch). Revoke: tokens issued before this
            /// (seconds) are refused. Otherwise 0.
            until_secs: u64,
        },
        /// Asks a Link for the sender's (a user's) connections.
        UserQuery {
            /// Correlates the `UserInfo`.
            request: u64,
        },
        /// A Link's answer to `UserQuery` `request`.
        UserInfo {
            /// The query answered.
            request: u64,
            /// The answering Link.
            link: u32,
            /// JSON array of the user's connections on this Link (docs/protocol.md).
            json: Vec<u8>,
        },
        /// The Link stops taking new rooms and closes its clients after `drain_ms` (Link → hub).
        Draining {
            /// How long the Link keeps its clients before closing them, milliseconds.
            drain_ms: u32,
        },
    }
}

impl Body {
    /// The header kind that goes with this body.
    pub fn kind(&self) -> Kind {
        match self {
            Body::Message { .. } => Kind::Message,
            Body::Replay { .. } => Kind::Replay,
            Body::Gap { .. } => Kind::Gap,
            Body::Publish { .. } => Kind::Publish,
            Body::PublishAck { .. } => Kind::PublishAck,
            Body::Join { .. } => Kind::Join,
            Body::Joined { .. } => Kind::Joined,
            Body::Leave { .. } => Kind::Leave,
            Body::Interest { .. } => Kind::InterestAdd,
            Body::Heartbeat { .. } => Kind::Heartbeat,
            Body::Error { .. } => Kind::Error,
            Body::Hello { .. } => Kind::Hello,
            Body::Reset { .. } => Kind::Reset,
            Body::OwnerMap { .. } => Kind::OwnerMap,
            Body::Presence { .. } => Kind::Presence,
            Body::Member { .. } => Kind::Member,
            Body::MemberList { .. } => Kind::MemberList,
            Body::Moderate { .. } => Kind::Moderate,
            Body::UserQuery { .. } => Kind::UserQuery,
            Body::UserInfo { .. } => Kind::UserInfo,
            Body::Draining { .. } => Kind::Draining,
        }
    }
}

impl ArchivedBody {
    /// Whether this body may travel under header kind `kind`.
    fn matches(&self, kind: Kind) -> bool {
        matches!(
            (self, kind),
            (ArchivedBody::Message { .. }, Kind::Message)
                | (ArchivedBody::Replay { .. }, Kind::Replay)
                | (ArchivedBody::Gap { .. }, Kind::Gap)
                | (ArchivedBody::Publish { .. }, Kind::Publish)
                | (ArchivedBody::PublishAck { .. }, Kind::PublishAck)
                | (ArchivedBody::Join { .. }, Kind::Join)
                | (ArchivedBody::Joined { .. }, Kind::Joined)
                | (ArchivedBody::Leave { .. }, Kind::Leave)
                | (ArchivedBody::Interest { .. }, Kind::InterestAdd | Kind::InterestRemove)
                | (ArchivedBody::Heartbeat { .. }, Kind::Heartbeat)
                | (ArchivedBody::Error { .. }, Kind::Error)
                | (ArchivedBody::Hello { .. }, Kind::Hello)
                | (ArchivedBody::Reset { .. }, Kind::Reset)
                | (ArchivedBody::OwnerMap { .. }, Kind::OwnerMap)
                | (ArchivedBody::Presence { .. }, Kind::Presence)
                | (ArchivedBody::Member { .. }, Kind::Member)
                | (ArchivedBody::MemberList { .. }, Kind::MemberList)
                | (ArchivedBody::Moderate { .. }, Kind::Moderate)
                | (ArchivedBody::UserQuery { .. }, Kind::UserQuery)
                | (ArchivedBody::UserInfo { .. }, Kind::UserInfo)
                | (ArchivedBody::Draining { .. }, Kind::Draining)
        )
    }
}

/// Everything that can be wrong with bytes that claim to be a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the header or than `total_len` says.
    #[error("frame truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the frame needs.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The first two bytes are not `LC`.
    #[error("bad magic")]
    BadMagic,
    /// A version this code does not speak.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// The kind byte names no kind.
    #[error("unknown kind {0}")]
    UnknownKind(u8),
    /// `total_len` is larger than the configured maximum.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// Claimed length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// `total_len` disagrees with the buffer or the header's parts.
    #[error("frame length fields are inconsistent")]
    BadLength,
    /// The room name is empty, too long, not UTF-8 or has forbidden characters.
    #[error("invalid room name")]
    BadRoom,
    /// The sender is too long or not UTF-8.
    #[error("invalid sender")]
    BadSender,
    /// Reserved header bits are set.
    #[error("reserved header bits set")]
    Reserved,
    /// The rkyv archive failed validation.
    #[error("malformed frame body")]
    BadBody,
    /// The body variant does not belong to the header's kind.
    #[error("frame body does not match kind {0:?}")]
    KindMismatch(Kind),
    /// A `Hello` announces an address that is too long or does not parse.
    #[error("invalid announced address")]
    BadAddress,
}

impl FrameError {
    /// The short, static reason sent to a peer with a close or error (principle 7).
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Truncated { .. } => "truncated frame",
            FrameError::BadMagic => "bad magic",
            FrameError::UnsupportedVersion(_) => "unsupported version",
            FrameError::UnknownKind(_) => "unknown frame kind",
            FrameError::TooLong { .. } => "frame too long",
            FrameError::BadLength => "inconsistent frame length",
            FrameError::BadRoom => "invalid room name",
            FrameError::BadSender => "invalid sender",
            FrameError::Reserved => "reserved bits set",
            FrameError::BadBody => "malformed frame body",
            FrameError::KindMismatch(_) => "frame body does not match kind",
            FrameError::BadAddress => "invalid announced address",
        }
    }
}

/// Longest address a `Hello` may announce, in bytes.
pub const MAX_ADDRESS_LEN: usize = 256;

/// A `host:port` with a non-empty host of `A-Z a-z 0-9 - .` (a DNS name or IPv4 address) or a
/// bracketed IPv6 address, and a port 1..=65535.
fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else { return false };
    if !matches!(port.parse::<u16>(), Ok(1..)) || port.starts_with('+') {
        return false;
    }
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.')),
    }
}

/// Checks a WebSocket URL a Link announces: empty (none), or at most [`MAX_ADDRESS_LEN`] bytes of
/// `ws://` or `wss://`, a [`host:port`](is_host_port) and an optional path of URL-safe
/// characters. Kept strict: hubs hand it to clients as it is.
pub fn is_valid_public_ws(url: &str) -> bool {
    if url.is_empty() {
        return true;
    }
    if url.len() > MAX_ADDRESS_LEN {
        return false;
    }
    let Some(rest) = url.strip_prefix("ws://").or_else(|| url.strip_prefix("wss://")) else { return false };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    is_host_port(authority)
        && path.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~' | b'%' | b'?' | b'=' | b'&'))
}

/// Checks a QUIC address a Link announces: empty (none), or a [`host:port`](is_host_port) of at
/// most [`MAX_ADDRESS_LEN`] bytes.
pub fn is_valid_public_quic(addr: &str) -> bool {
    addr.is_empty() || addr.len() <= MAX_ADDRESS_LEN && is_host_port(addr)
}

/// Checks an admin address a Link announces: empty (none) or an `ip:port` socket address.
pub fn is_valid_admin_addr(addr: &str) -> bool {
    addr.is_empty() || addr.len() <= MAX_ADDRESS_LEN && addr.parse::<std::net::SocketAddr>().is_ok()
}

/// Checks a room name: 1..=128 bytes of `A-Z a-z 0-9 _ - . : @ #`.
///
/// Kept strict so a room name is safe in URLs, logs, metrics labels and JSON without escaping.
pub fn is_valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM_LEN
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'#'))
}

/// A validated frame: one `Bytes`, read in place.
///
/// Invariant: `bytes` passed [`Frame::from_bytes`] (or was built by [`FrameBuilder`], which
/// produces only valid frames), so accessors never re-check.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
    kind: Kind,
    room_end: u16,
    sender_end: u16,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("kind", &self.kind)
            .field("room", &self.room())
            .field("seq", &self.seq())
            .field("sender", &self.sender())
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl Frame {
    /// The same frame in a buffer of its own (a copy of its bytes, already validated): for a
    /// reader on another core, so the two do not share one reference count. See
    /// [`crate::shard_rooms::RoomMessage::copy_for_shard`].
    pub fn copied(&self) -> Frame {
        Frame { bytes: Bytes::copy_from_slice(&self.bytes), kind: self.kind, room_end: self.room_end, sender_end: self.sender_end }
    }

    /// Validates `bytes` as one whole frame, with the default maximum length.
    pub fn from_bytes(bytes: Bytes) -> Result<Frame, FrameError> {
        Frame::from_bytes_limited(bytes, DEFAULT_MAX_FRAME_LEN)
    }

    /// Validates `bytes` as one whole frame of at most `max_len` bytes.
    ///
    /// This is the single ingress check: header, lengths, strings, archive and kind agreement.
    pub fn from_bytes_limited(bytes: Bytes, max_len: usize) -> Result<Frame, FrameError> {
        let header = check_header(&bytes, max_len)?;
        if header.total_len != bytes.len() {
            return Err(FrameError::BadLength);
        }
        let room_end = HEADER_LEN + header.room_len;
        let sender_end = room_end + header.sender_len;
        if sender_end > bytes.len() {
            return Err(FrameError::BadLength);
        }
        let room = std::str::from_utf8(&bytes[HEADER_LEN..room_end]).map_err(|_| FrameError::BadRoom)?;
        // Heartbeat, Hello, Error, OwnerMap, UserQuery and UserInfo are connection-level, and a
        // Moderate names a room only for a removal: they may carry no room.
        let roomless = matches!(
            header.kind,
            Kind::Heartbeat
                | Kind::Hello
                | Kind::Error
                | Kind::OwnerMap
                | Kind::Moderate
                | Kind::UserQuery
                | Kind::UserInfo
                | Kind::Draining
        );
        if !(is_valid_room(room) || roomless && room.is_empty()) {
            return Err(FrameError::BadRoom);
        }
        std::str::from_utf8(&bytes[room_end..sender_end]).map_err(|_| FrameError::BadSender)?;
        let body = rkyv::access::<ArchivedBody, rancor::Error>(&bytes[sender_end..])
            .map_err(|_| FrameError::BadBody)?;
        if !body.matches(header.kind) {
            return Err(FrameError::KindMismatch(header.kind));
        }
        if let ArchivedBody::Hello { ws, quic, admin, .. } = body {
            if !(is_valid_public_ws(ws) && is_valid_public_quic(quic) && is_valid_admin_addr(admin)) {
                return Err(FrameError::BadAddress);
            }
        }
        Ok(Frame {
            kind: header.kind,
            room_end: room_end as u16,
            sender_end: sender_end as u16,
            bytes,
        })
    }

    /// Builds a room message frame: the hub's hot path, once per publish.
    pub fn message(room: &str, seq: u64, ts_micros: u64, sender: &str, flags: u16, data: &[u8]) -> Frame {
        FrameBuilder::new(room)
            .seq(seq)
            .ts_micros(ts_micros)
            .sender(sender)
            .flags(flags)
            .build(&Body::Message { data: data.to_vec() })
    }

    /// The frame's kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The room, read in place.
    pub fn room(&self) -> &str {
        // SAFETY: checked to be UTF-8 by `from_bytes_limited` or written from a `&str` by
        // `FrameBuilder`; the bytes are immutable.
        unsafe { std::str::from_utf8_unchecked(&self.bytes[HEADER_LEN..self.room_end as usize]) }
    }

    /// The sender (user id), read in place.
    pub fn sender(&self) -> &str {
        // SAFETY: as for `room`.
        unsafe { std::str::from_utf8_unchecked(&self.bytes[self.room_end as usize..self.sender_end as usize]) }
    }

    /// The room sequence number (0 where the kind has none).
    pub fn seq(&self) -> u64 {
        read_u64(&self.bytes, 8)
    }

    /// Hub time stamp in microseconds since the Unix epoch (0 where the kind has none).
    pub fn ts_micros(&self) -> u64 {
        read_u64(&self.bytes, 16)
    }

    /// Header flags ([`FLAG_JSON`]).
    pub fn flags(&self) -> u16 {
        u16::from_le_bytes([self.bytes[28], self.bytes[29]])
    }

    /// The archived body, read in place.
    pub fn body(&self) -> &ArchivedBody {
        // SAFETY: `from_bytes_limited` validated exactly this slice with `rkyv::access`, or
        // `FrameBuilder::build` serialized it; `Bytes` is immutable, so it is still valid.
        unsafe { rkyv::access_unchecked::<ArchivedBody>(&self.bytes[self.sender_end as usize..]) }
    }

    /// The message payload of `Message`, `Replay` and `Publish` frames; empty for others.
    pub fn payload(&self) -> &[u8] {
        match self.body() {
            ArchivedBody::Message { data } => data.as_slice(),
            ArchivedBody::Replay { data, .. } => data.as_slice(),
            ArchivedBody::Publish { data, .. } => data.as_slice(),
            _ => &[],
        }
    }

    /// The whole frame as it goes on the wire (also its own length prefix).
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Gives up the frame, returning its bytes.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Wire size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true: a frame has at least its header. Present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Builds frames. Produces only valid frames; panics only on programmer error (a room or
/// sender that the caller failed to validate), never on peer data, which never reaches it
/// unchecked.
#[derive(Debug, Clone)]
pub struct FrameBuilder<'a> {
    room: &'a str,
    sender: &'a str,
    seq: u64,
    ts_micros: u64,
    flags: u16,
    kind_override: Option<Kind>,
}

impl<'a> FrameBuilder<'a> {
    /// Starts a frame for `room` (empty for connection-level kinds).
    pub fn new(room: &'a str) -> Self {
        FrameBuilder { room, sender: "", seq: 0, ts_micros: 0, flags: 0, kind_override: None }
    }

    /// Sets the sequence number.
    pub fn seq(mut self, seq: u64) -> Self {
        self.seq = seq;
        self
    }

    /// Sets the time stamp.
    pub fn ts_micros(mut self, ts: u64) -> Self {
        self.ts_micros = ts;
        self
    }

    /// Sets the sender.
    pub fn sender(mut self, sender: &'a str) -> Self {
        self.sender = sender;
        self
    }

    /// Sets header flags.
    pub fn flags(mut self, flags: u16) -> Self {
        self.flags = flags;
        self
    }

    /// Marks an `Interest` body as a removal (`InterestRemove`) instead of an addition.
    pub fn interest_remove(mut self) -> Self {
        self.kind_override = Some(Kind::InterestRemove);
        self
    }

    /// Serializes header, strings and body into one buffer and freezes it.
    pub fn build(self, body: &Body) -> Frame {
        assert!(self.room.len() <= MAX_ROOM_LEN, "room validated by caller");
        assert!(self.sender.len() <= MAX_SENDER_LEN, "sender validated by caller");
        let kind = match (self.kind_override, body) {
            (Some(Kind::InterestRemove), Body::Interest { .. }) => Kind::InterestRemove,
            _ => body.kind(),
        };
        let estimate = HEADER_LEN + self.room.len() + self.sender.len() + body_size_hint(body);
        let mut buf: Vec<u8> = Vec::with_capacity(estimate);
        buf.extend_from_slice(&MAGIC);
        buf.push(VERSION);
        buf.push(kind as u8);
        buf.extend_from_slice(&0u32.to_le_bytes()); // total_len, patched below
        buf.extend_from_slice(&self.seq.to_le_bytes());
        buf.extend_from_slice(&self.ts_micros.to_le_bytes());
        buf.extend_from_slice(&(self.room.len() as u16).to_le_bytes());
        buf.extend_from_slice(&(self.sender.len() as u16).to_le_bytes());
        buf.extend_from_slice(&self.flags.to_le_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(self.room.as_bytes());
        buf.extend_from_slice(self.sender.as_bytes());
        let room_end = HEADER_LEN + self.room.len();
        let sender_end = room_end + self.sender.len();
        // With `unaligned`, rkyv needs no padding, so the archive can follow the strings in
        // the same buffer: one allocation per frame.
        let mut buf = match rkyv::api::high::to_bytes_in::<_, rancor::Error>(body, buf) {
            Ok(buf) => buf,
            // Serializing plain owned data into a Vec cannot fail except on allocation.
            Err(e) => panic!("rkyv serialization into Vec failed: {e}"),
        };
        let total = buf.len() as u32;
        buf[4..8].copy_from_slice(&total.to_le_bytes());
        Frame { bytes: Bytes::from(buf), kind, room_end: room_end as u16, sender_end: sender_end as u16 }
    }
}

fn body_size_hint(body: &Body) -> usize {
    let data = match body {
        Body::Message { data } | Body::Replay { data, .. } | Body::Publish { data, .. } => data.len(),
        Body::Error { reason, .. } => reason.len(),
        Body::Hello { secret, ws, quic, admin, .. } => secret.len() + ws.len() + quic.len() + admin.len(),
        Body::OwnerMap { hubs, .. } => hubs.len() * 4,
        Body::MemberList { users } => users.iter().map(|u| u.len() + 8).sum(),
        Body::Moderate { reason, .. } => reason.len(),
        Body::UserInfo { json, .. } => json.len(),
        _ => 0,
    };
    data + 48
}

/// The fixed header fields, as read before anything else.
#[derive(Debug, Clone, Copy)]
struct Header {
    kind: Kind,
    total_len: usize,
    room_len: usize,
    sender_len: usize,
}

/// Reads and checks the header; `buf` may hold more or less than the whole frame.
fn check_header(buf: &[u8], max_len: usize) -> Result<Header, FrameError> {
    if buf.len() < HEADER_LEN {
        return Err(FrameError::Truncated { need: HEADER_LEN, have: buf.len() });
    }
    if buf[0..2] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    if buf[2] != VERSION {
        return Err(FrameError::UnsupportedVersion(buf[2]));
    }
    let kind = Kind::from_u8(buf[3]).ok_or(FrameError::UnknownKind(buf[3]))?;
    let total_len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if total_len > max_len {
        return Err(FrameError::TooLong { len: total_len, max: max_len });
    }
    let room_len = u16::from_le_bytes([buf[24], buf[25]]) as usize;
    let sender_len = u16::from_le_bytes([buf[26], buf[27]]) as usize;
    if room_len > MAX_ROOM_LEN {
        return Err(FrameError::BadRoom);
    }
    if sender_len > MAX_SENDER_LEN {
        return Err(FrameError::BadSender);
    }
    // Known flags: FLAG_JSON on any kind; FLAG_PAGED / FLAG_PARTIAL (one bit) on Join / Joined.
    let known = match kind {
        Kind::Join | Kind::Joined => FLAG_JSON | FLAG_PAGED,
        _ => FLAG_JSON,
    };
    if buf[30] != 0 || buf[31] != 0 || u16::from_le_bytes([buf[28], buf[29]]) & !known != 0 {
        return Err(FrameError::Reserved);
    }
    if total_len < HEADER_LEN + room_len + sender_len {
        return Err(FrameError::BadLength);
    }
    Ok(Header { kind, total_len, room_len, sender_len })
}

fn read_u64(buf: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// Splits one frame off the front of a stream buffer.
///
/// `Ok(None)` means "incomplete, read more" (capacity for the rest is reserved); an error means
/// the stream is corrupt and the connection should end with [`FrameError::reason`]. The length
/// is checked against `max_len` before the body is buffered, and the frame's bytes are split
/// off and frozen without copying.
pub fn decode(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let header = check_header(buf, max_len)?;
    if buf.len() < header.total_len {
        buf.reserve(header.total_len - buf.len());
        return Ok(None);
    }
    let bytes = buf.split_to(header.total_len).freeze();
    Frame::from_bytes_limited(bytes, max_len).map(Some)
}

/// Reads the whole-frame length from a buffer that holds at least the first 8 header bytes.
pub fn peek_total_len(mut buf: &[u8]) -> Option<usize> {
    if buf.len() < 8 {
        return None;
    }
    buf.advance(4);
    Some(buf.get_u32_le() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Frame {
        Frame::message("lobby", 42, 1_700_000_000_000_000, "alice", FLAG_JSON, br#"{"text":"hi"}"#)
    }

    #[test]
    fn message_round_trip_reads_in_place() {
        let frame = sample();
        let again = Frame::from_bytes(frame.as_bytes().clone()).expect("valid");
        assert_eq!(again.kind(), Kind::Message);
        assert_eq!(again.room(), "lobby");
        assert_eq!(again.sender(), "alice");
        assert_eq!(again.seq(), 42);
        assert_eq!(again.ts_micros(), 1_700_000_000_000_000);
        assert_eq!(again.flags(), FLAG_JSON);
        assert_eq!(again.payload(), br#"{"text":"hi"}"#);
        assert_eq!(peek_total_len(again.as_bytes()), Some(again.len()));
    }

    #[test]
    fn hello_addresses_are_checked_at_ingress() {
        let hello = |ws: &str, quic: &str, admin: &str| {
            let body = Body::Hello { link: 4, secret: "s".into(), ws: ws.into(), quic: quic.into(), admin: admin.into() };
            Frame::from_bytes(FrameBuilder::new("").build(&body).into_bytes())
        };
        assert!(hello("", "", "").is_ok(), "nothing announced (a QUIC client's hello)");
        assert!(hello("ws://127.0.0.1:7080/ws", "127.0.0.1:7443", "127.0.0.1:9100").is_ok());
        assert!(hello("wss://link-4.links.chat.svc:443/ws", "link-4.example:7443", "").is_ok());
        assert!(hello("wss://[::1]:8443", "[2001:db8::1]:7443", "[::1]:9100").is_ok());
        for (ws, quic, admin) in [
            ("http://127.0.0.1:7080/ws", "", ""),
            ("ws://127.0.0.1/ws", "", ""),
            ("ws://:7080/ws", "", ""),
            ("ws://127.0.0.1:0/ws", "", ""),
            ("ws://127.0.0.1:99999/ws", "", ""),
            ("ws://127.0.0.1:7080/ws\"><script>", "", ""),
            ("ws://user@host:7080/ws", "", ""),
            ("", "not an address", ""),
            ("", "host:7443 ", ""),
            ("", "[::g]:7443", ""),
            ("", "", "localhost:9100"),
        ] {
            assert_eq!(hello(ws, quic, admin), Err(FrameError::BadAddress), "{ws:?} {quic:?} {admin:?}");
        }
        let long = format!("ws://{}.example:80/ws", "a".repeat(MAX_ADDRESS_LEN));
        assert_eq!(hello(&long, "", ""), Err(FrameError::BadAddress), "too long");
    }

    #[test]
    fn clone_shares_the_buffer() {
        let frame = sample();
        let copy = frame.clone();
        assert_eq!(frame.as_bytes().as_ptr(), copy.as_bytes().as_ptr());
        assert_eq!(frame.payload().as_ptr(), copy.payload().as_ptr());
    }

    #[test]
    fn every_control_body_round_trips() {
        let bodies = vec![
            Body::Replay { request: 7, data: b"x".to_vec() },
            Body::Gap { request: 7, first_lost: 1, last_lost: 9, resume_from: 10 },
            Body::Publish { request: 3, key: "k-1".into(), data: b"{}".to_vec() },
            Body::PublishAck { request: 3, epoch: u64::MAX },
            Body::Join { request: 9, since: Some(5), epoch: Some(77) },
            Body::Join { request: 9, since: None, epoch: None },
            Body::Joined { request: 9, epoch: 1 },
            Body::Reset { request: 0, epoch: 2 },
            Body::Leave { request: 9 },
            Body::Interest { link: 2, members: 1 },
            Body::Presence { members: 48_213, events: false },
            Body::Member { joined: true },
            Body::MemberList { users: vec!["alice".into(), "bob".into()] },
            Body::Moderate { action: MODERATE_REMOVE, code: 0, reason: "spam".into(), until_secs: 0 },
        ];
        for body in bodies {
            let frame = FrameBuilder::new("r").build(&body);
            let again = Frame::from_bytes(frame.into_bytes()).expect("valid");
            assert_eq!(again.kind(), body.kind());
            assert!(again.body().matches(body.kind()));
        }
        let remove = FrameBuilder::new("r").interest_remove().build(&Body::Interest { link: 2, members: 0 });
        assert_eq!(Frame::from_bytes(remove.into_bytes()).map(|f| f.kind()), Ok(Kind::InterestRemove));
        for body in [
            Body::Heartbeat { nonce: 1 },
            Body::Hello { link: 1, secret: "s".into(), ws: "wss://link-1.example:443/ws".into(), quic: "10.0.0.1:7443".into(), admin: String::new() },
            Body::Draining { drain_ms: 5000 },
            Body::Error { request: 1, code: 403, reason: "no".into(), retry_after_ms: 0 },
            Body::OwnerMap { version: 1, hubs: vec![] },
            Body::Moderate { action: MODERATE_BAN, code: 4001, reason: "spam".into(), until_secs: 1_800_000_000 },
            Body::UserQuery { request: 4 },
            Body::UserInfo { request: 4, link: 2, json: b"[]".to_vec() },
        ] {
            let frame = FrameBuilder::new("").sender("alice").build(&body);
            assert!(Frame::from_bytes(frame.into_bytes()).is_ok());
        }
        for body in [Body::Presence { members: 1, events: true }, Body::Member { joined: false }, Body::MemberList { users: vec![] }] {
            let frame = FrameBuilder::new("").build(&body);
            assert_eq!(Frame::from_bytes(frame.into_bytes()), Err(FrameError::BadRoom), "{body:?} needs a room");
        }
    }

    #[test]
    fn owner_map_round_trips_and_is_roomless() {
        let body = Body::OwnerMap { version: u64::MAX - 1, hubs: vec![0, 2, 7] };
        let frame = FrameBuilder::new("").build(&body);
        assert_eq!(frame.as_bytes()[3], 15, "kind byte");
        let again = Frame::from_bytes(frame.into_bytes()).expect("valid");
        assert_eq!(again.kind(), Kind::OwnerMap);
        assert_eq!(again.room(), "");
        match again.body() {
            ArchivedBody::OwnerMap { version, hubs } => {
                assert_eq!(version.to_native(), u64::MAX - 1);
                assert_eq!(hubs.iter().map(|h| h.to_native()).collect::<Vec<u32>>(), vec![0, 2, 7]);
            }
            _ => panic!("wrong body for {again:?}"),
        }
        assert!(again.payload().is_empty());
        // Another kind's body under the OwnerMap kind byte, and the reverse, are refused.
        let mut bad = FrameBuilder::new("").build(&Body::Heartbeat { nonce: 1 }).into_bytes().to_vec();
        bad[3] = Kind::OwnerMap as u8;
        assert_eq!(Frame::from_bytes(bad.into()), Err(FrameError::KindMismatch(Kind::OwnerMap)));
        let mut bad = FrameBuilder::new("").build(&body).into_bytes().to_vec();
        bad[3] = Kind::Heartbeat as u8;
        assert_eq!(Frame::from_bytes(bad.into()), Err(FrameError::KindMismatch(Kind::Heartbeat)));
        assert_eq!(Kind::from_u8(15), Some(Kind::OwnerMap));
        assert_eq!(Kind::from_u8(21), Some(Kind::UserInfo));
        assert_eq!(Kind::from_u8(22), Some(Kind::Draining));
        assert_eq!(Kind::from_u8(23), None);
    }

    #[test]
    fn header_errors_are_typed() {
        let good = sample().into_bytes().to_vec();
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(Frame::from_bytes(bad.into()), Err(FrameError::BadMagic));
        let mut bad = good.clone();
        bad[2] = 9;
        assert_eq!(Frame::from_bytes(bad.into()), Err(FrameError::UnsupportedVersion(9)));
        let mut bad = good.clone();
        bad[3] = 200;
        assert_eq!(Frame::from_bytes(bad.into()), Err(FrameError::UnknownKind(200)));
        let mut bad = good.clone();
        bad[3] = Kind::Gap as u8;
        assert_eq!(Frame::from_bytes(bad.into()), Err(FrameError::KindMismatch(Kind::Gap)));
        let mut bad = good.clone();
        bad[HEADER_LEN] = b' ';
        assert_eq!(Frame::from_bytes(bad.into()), Err(FrameError::BadRoom));
        let mut bad = good.clone();
        bad[31] = 1;
        assert_eq!(Frame::from_bytes(bad.into()), Err(FrameError::Reserved));
        let mut bad = good.clone();
        bad[28] |= FLAG_PAGED as u8;
        assert_eq!(Frame::from_bytes(bad.into()), Err(FrameError::Reserved), "FLAG_PAGED only on Join and Joined");
        let paged = FrameBuilder::new("r").flags(FLAG_PAGED).build(&Body::Join { request: 1, since: None, epoch: None });
        assert_eq!(Frame::from_bytes(paged.as_bytes().clone()).map(|f| f.flags()), Ok(FLAG_PAGED));
        assert_eq!(
            Frame::from_bytes(good[..10].to_vec().into()),
            Err(FrameError::Truncated { need: HEADER_LEN, have: 10 })
        );
        assert_eq!(Frame::from_bytes(good[..good.len() - 1].to_vec().into()), Err(FrameError::BadLength));
        assert!(matches!(
            Frame::from_bytes_limited(good.clone().into(), 40),
            Err(FrameError::TooLong { max: 40, .. })
        ));
    }

    #[test]
    fn decode_handles_partial_and_concatenated_frames() {
        let a = sample();
        let b = Frame::message("lobby", 43, 1, "bob", 0, b"second");
        let mut stream = BytesMut::new();
        stream.extend_from_slice(a.as_bytes());
        stream.extend_from_slice(b.as_bytes());
        let whole = stream.clone();
        // Byte by byte: incomplete is never an error.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in whole.iter() {
            buf.extend_from_slice(&[*byte]);
            if let Some(frame) = decode(&mut buf, DEFAULT_MAX_FRAME_LEN).expect("valid stream") {
                got.push(frame);
            }
        }
        assert_eq!(got, vec![a, b]);
        assert!(buf.is_empty());
    }

    #[test]
    fn decode_rejects_oversize_before_buffering() {
        let mut header = sample().into_bytes()[..HEADER_LEN].to_vec();
        header[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut buf = BytesMut::from(&header[..]);
        assert!(matches!(decode(&mut buf, 4096), Err(FrameError::TooLong { .. })));
    }

    #[test]
    fn room_names() {
        assert!(is_valid_room("lobby"));
        assert!(is_valid_room("event:2026-11-25@main#1"));
        assert!(!is_valid_room(""));
        assert!(!is_valid_room("a b"));
        assert!(!is_valid_room("ünï"));
        assert!(!is_valid_room(&"x".repeat(MAX_ROOM_LEN + 1)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Frame::from_bytes(Bytes::from(data.clone()));
            let mut buf = BytesMut::from(&data[..]);
            let _ = decode(&mut buf, 4096);
        }

        #[test]
        fn truncations_are_errors(cut in 0usize..200) {
            let frame = sample().into_bytes();
            let cut = cut.min(frame.len() - 1);
            prop_assert!(Frame::from_bytes(frame.slice(..cut)).is_err());
            let mut buf = BytesMut::from(&frame[..cut]);
            prop_assert_eq!(decode(&mut buf, DEFAULT_MAX_FRAME_LEN), Ok(None));
        }

        #[test]
        fn bit_flips_never_panic_and_are_caught_or_harmless(byte in 0usize..200, bit in 0u8..8) {
            let frame = sample().into_bytes().to_vec();
            let byte = byte % frame.len();
            let mut flipped = frame.clone();
            flipped[byte] ^= 1 << bit;
            if let Ok(f) = Frame::from_bytes(Bytes::from(flipped)) {
                // A flip that survives validation must still read consistently in place.
                let _ = (f.room(), f.sender(), f.seq(), f.payload(), f.body());
            }
        }

        #[test]
        fn oversize_lengths_are_rejected(len in (DEFAULT_MAX_FRAME_LEN as u32 + 1)..u32::MAX) {
            let mut bytes = sample().into_bytes().to_vec();
            bytes[4..8].copy_from_slice(&len.to_le_bytes());
            let is_too_long = matches!(Frame::from_bytes(Bytes::from(bytes)), Err(FrameError::TooLong { .. }));
            prop_assert!(is_too_long);
        }

        #[test]
        fn arbitrary_messages_round_trip(
            room in "[a-z0-9_:-]{1,128}",
            sender in "\\PC{0,32}",
            seq in any::<u64>(),
            ts in any::<u64>(),
            data in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            prop_assume!(sender.len() <= MAX_SENDER_LEN);
            let frame = Frame::message(&room, seq, ts, &sender, 0, &data);
            let again = Frame::from_bytes(frame.into_bytes()).expect("built frames are valid");
            prop_assert_eq!(again.room(), room.as_str());
            prop_assert_eq!(again.sender(), sender.as_str());
            prop_assert_eq!(again.seq(), seq);
            prop_assert_eq!(again.ts_micros(), ts);
            prop_assert_eq!(again.payload(), &data[..]);
        }
    }
}

//! The lean linkcast subscriber: one idle member of a big room for a few hundred bytes.
//!
//! Why: the full subscriber (`fleet.rs`: a client-library [`crate::client::Session`] and a
//! tokio-websockets stream per connection) cost ≈ 13 KB of worker RSS per connection at 300k —
//! its read buffer alone is 8 KiB for the connection's whole life, plus the write buffer, the
//! session's maps and a large future. A million-connection run cannot afford that on the machine
//! that also runs the Links. This subscriber keeps, per connection, only:
//! - a small task whose future holds the socket, a 16-byte state and (rarely) a partial frame;
//! - one [`Track`] slot (16 B) in the fleet's shared table: the last seq seen and the unique
//!   deliveries, which is what late-vs-lost accounting reads at the end.
//!
//! Bytes are read into one per-thread scratch buffer ([`SCRATCH`]) and decoded in place; only a
//! frame cut in half by a read is copied into the connection's `partial` buffer, freed once the
//! frame is complete. The upgrade is written by hand (`GET … Upgrade: websocket`, fixed key; the
//! 101's accept header is not checked: this is a load generator on loopback), the join is one
//! masked text frame, pings are answered with a pong by a non-blocking write (an idle member of a
//! 1 M run lives for minutes, longer than the Link's idle timeout). It does not reconnect: a
//! connection that ends early is counted (`ended`) and its owed messages show up as lost.
//!
//! Accounting per connection: the `joined` answer carries the room's last seq; every delivery
//! must be last + 1. Lower is a duplicate, higher a hole (messages skipped with no `gap` — silent
//! loss, counted as `holes`); a `gap` op moves the position past what it reports lost (`gaps`,
//! `lost` = messages it covers). What never arrived by the end of the bounded drain is lost;
//! what arrived after the bench's window is late (`fleet.rs` snapshots the counters at the window).

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use linkcast_core::protocol::ServerMsg;
use linkcast_core::ws_read::client_frame;

use super::super::payload::Stamp;
use super::Ctx;
use crate::client::ws::{bind_address_no_port, WsUrl};

/// Bytes of the per-thread read buffer every lean connection of a thread reads into.
const SCRATCH_BYTES: usize = 64 * 1024;

/// Largest server frame accepted (a partial frame is buffered up to this).
const MAX_FRAME: usize = 2 * 1024 * 1024;

/// Largest upgrade response head.
const MAX_HEAD: usize = 4096;

/// Reads per readiness event at most before yielding (fairness between connections).
const READS_PER_WAKE: usize = 8;

thread_local! {
    /// The read buffer shared by every lean connection this thread runs (never held across an
    /// await: each read is decoded before the task yields).
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice());
}

/// One connection's slot in the fleet's shared table (16 bytes).
#[derive(Debug, Default)]
pub(super) struct Track {
    /// Last seq seen (the room's last seq at join, then every delivery's).
    pub last_seq: AtomicU64,
    /// Unique deliveries.
    pub got: AtomicU32,
    /// [`JOINED`], [`ENDED`] bits.
    pub state: AtomicU32,
}

/// The connection joined its room.
pub(super) const JOINED: u32 = 1;
/// The connection ended before the fleet stopped it.
pub(super) const ENDED: u32 = 2;

/// What the frame decoder asks of the connection after a read.
#[derive(Debug, Default, Clone, Copy)]
struct After {
    /// A ping came: answer with a pong.
    pong: bool,
    /// The joined answer came.
    joined: bool,
    /// The server closed (or sent something this client cannot read).
    end: Option<&'static str>,
}

/// Per-connection state the task keeps between reads.
#[derive(Debug, Default)]
struct Conn {
    /// Bytes of a frame cut by a read (empty, unallocated, between frames).
    partial: Vec<u8>,
}

impl Conn {
    /// Appends `fresh` to the partial frame, decodes what is whole and keeps the rest (the
    /// buffer is freed when nothing is left over).
    fn decode_partial(&mut self, fresh: &[u8], ctx: &Ctx, index: u64, track: &Track, after: &mut After) {
        let mut bytes = std::mem::take(&mut self.partial);
        bytes.extend_from_slice(fresh);
        let used = decode(&bytes, ctx, index, track, after);
        bytes.drain(..used);
        if !bytes.is_empty() {
            self.partial = bytes;
        }
    }
}

/// Runs subscriber `index` (slot `local` of the fleet) with up to `retries` extra attempts to
/// connect and join; then reads until the connection ends (the fleet aborts the task at Stop).
pub(super) async fn subscriber(ctx: Arc<Ctx>, local: usize, index: u64, retries: u32) {
    let spec = &ctx.spec;
    let url = &ctx.urls[(index % ctx.urls.len() as u64) as usize];
    let room = spec.rooms[(index % spec.rooms.len() as u64) as usize].as_str();
    let bind = (!spec.bind.is_empty()).then(|| spec.bind[(index % spec.bind.len() as u64) as usize]);
    let timeout = Duration::from_millis(spec.connect_timeout_ms);
    let Some(track) = ctx.track.get(local) else { return };
    let mut opened = None;
    for attempt in 0..=retries {
        if let Ok(permit) = ctx.connect_slots.acquire().await {
            permit.forget();
        }
        let started = Instant::now();
        let mut conn = Conn::default();
        // Boxed: the connect phase (its timer, the upgrade's buffers) lives on the heap only
        // while it runs, so the task's future stays small for the connection's idle life.
        match Box::pin(tokio::time::timeout(timeout, open(url, bind, room, &ctx, index, track, &mut conn))).await {
            Ok(Ok(stream)) => {
                ctx.joined(index, started);
                opened = Some((stream, conn));
                break;
            }
            Ok(Err(why)) if attempt == retries => ctx.failed(why),
            Err(_) if attempt == retries => ctx.failed("join timed out".into()),
            _ => {
                // Give the slot back, wait a little, try again (counted).
                ctx.connect_slots.add_permits(1);
                ctx.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt + 1))).await;
            }
        }
    }
    let Some((stream, mut conn)) = opened else { return };
    track.state.fetch_or(JOINED, Ordering::Relaxed);
    let why = read_loop(&stream, &ctx, index, track, &mut conn).await;
    track.state.fetch_or(ENDED, Ordering::Relaxed);
    ctx.connected.fetch_sub(1, Ordering::Relaxed);
    ctx.ended.fetch_add(1, Ordering::Relaxed);
    let mut first = ctx.first_end.lock().unwrap_or_else(|p| p.into_inner());
    first.get_or_insert_with(|| why.to_owned());
}

/// Connects, upgrades and joins `room`; returns once the `joined` answer came.
async fn open(url: &WsUrl, bind: Option<IpAddr>, room: &str, ctx: &Ctx, index: u64, track: &Track, conn: &mut Conn) -> Result<TcpStream, String> {
    let socket = match url.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("connect: {e}"))?;
    if let Some(ip) = bind {
        bind_address_no_port(&socket);
        socket.bind(SocketAddr::new(ip, 0)).map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let mut stream = socket.connect(url.addr).await.map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| format!("connect: {e}"))?;
    stream.write_all(upgrade_request(url).as_bytes()).await.map_err(|e| format!("upgrade: {e}"))?;
    // The response head, read into the scratch buffer and copied out (a few hundred bytes, freed
    // once the upgrade is done).
    let mut head: Vec<u8> = Vec::new();
    let body_at = loop {
        stream.readable().await.map_err(|e| format!("upgrade: {e}"))?;
        let read = SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            match stream.try_read(&mut s) {
                Ok(0) => Err("upgrade: closed".to_string()),
                Ok(n) => {
                    head.extend_from_slice(&s[..n]);
                    Ok(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
                Err(e) => Err(format!("upgrade: {e}")),
            }
        });
        read?;
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if head.len() > MAX_HEAD {
            return Err("upgrade: response head too long".into());
        }
    };
    if !head.starts_with(b"HTTP/1.1 101") {
        let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
        return Err(format!("upgrade refused: {}", String::from_utf8_lossy(line)));
    }
    conn.partial = head.split_off(body_at);
    drop(head);
    let join = format!(r#"{{"op":"join","room":{}}}"#, serde_json::Value::from(room));
    let mask = (index as u32).wrapping_mul(0x9E37_79B9).to_le_bytes();
    stream.write_all(&client_frame(0x1, true, join.as_bytes(), mask)).await.map_err(|e| format!("join: {e}"))?;
    // Whatever came with the head, then reads until `joined`.
    let mut after = After::default();
    if !conn.partial.is_empty() {
        conn.decode_partial(&[], ctx, index, track, &mut after);
    }
    loop {
        if let Some(why) = after.end {
            return Err(why.to_string());
        }
        if after.pong {
            pong(&stream);
        }
        if after.joined {
            return Ok(stream);
        }
        after = read_some(&stream, ctx, index, track, conn).await?;
    }
}

/// Reads and decodes until the connection ends; returns why.
async fn read_loop(stream: &TcpStream, ctx: &Ctx, index: u64, track: &Track, conn: &mut Conn) -> &'static str {
    loop {
        match read_some(stream, ctx, index, track, conn).await {
            Ok(after) => {
                if after.pong {
                    pong(stream);
                }
                if let Some(why) = after.end {
                    return why;
                }
            }
            Err(_) => return "read error",
        }
    }
}

/// Waits until the socket is readable, reads what is there (a few reads at most) into the
/// thread's scratch buffer and decodes it.
async fn read_some(stream: &TcpStream, ctx: &Ctx, index: u64, track: &Track, conn: &mut Conn) -> Result<After, String> {
    stream.readable().await.map_err(|e| e.to_string())?;
    let mut after = After::default();
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        for _ in 0..READS_PER_WAKE {
            match stream.try_read(&mut s) {
                Ok(0) => {
                    after.end = Some("closed by server");
                    break;
                }
                Ok(n) => {
                    if conn.partial.is_empty() {
                        let used = decode(&s[..n], ctx, index, track, &mut after);
                        if used < n && after.end.is_none() {
                            conn.partial.extend_from_slice(&s[used..n]);
                        }
                    } else {
                        conn.decode_partial(&s[..n], ctx, index, track, &mut after);
                    }
                    if after.end.is_some() || n < s.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    after.end = Some("read error");
                    break;
                }
            }
        }
    });
    if conn.partial.len() > MAX_FRAME + 16 {
        after.end = Some("server frame too large");
    }
    Ok(after)
}

/// Decodes the whole frames at the start of `buf`, handling each; returns the bytes used (the
/// caller keeps the rest as the connection's partial frame).
fn decode(buf: &[u8], ctx: &Ctx, index: u64, track: &Track, after: &mut After) -> usize {
    let mut used = 0;
    while after.end.is_none() {
        match server_frame(&buf[used..]) {
            Frame::Incomplete => break,
            Frame::Bad(why) => after.end = Some(why),
            Frame::Whole { opcode, start, len } => {
                let payload = &buf[used + start..used + start + len];
                match opcode {
                    0x1 => on_text(payload, ctx, index, track, after),
                    0x8 => after.end = Some("closed by server"),
                    0x9 => after.pong = true,
                    _ => {}
                }
                used += start + len;
            }
        }
    }
    used
}

/// Handles one text message. Only the bench room's messages count: the Link also joins every
/// connection to its personal room `user:{sub}` and to `all`, each with a `joined` of its own.
fn on_text(payload: &[u8], ctx: &Ctx, index: u64, track: &Track, after: &mut After) {
    let Ok(text) = std::str::from_utf8(payload) else {
        ctx.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let rooms = &ctx.spec.rooms;
    let mine = rooms.get((index % rooms.len().max(1) as u64) as usize).map_or("", String::as_str);
    match ServerMsg::<Stamp>::decode(text) {
        Ok(ServerMsg::Message { room, .. } | ServerMsg::Joined { room, .. } | ServerMsg::Gap { room, .. }) if room != mine => {}
        Ok(ServerMsg::Message { seq, data, .. }) => {
            let last = track.last_seq.load(Ordering::Relaxed);
            if seq <= last {
                ctx.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if seq > last + 1 {
                ctx.holes.fetch_add(seq - last - 1, Ordering::Relaxed);
            }
            track.last_seq.store(seq, Ordering::Relaxed);
            track.got.fetch_add(1, Ordering::Relaxed);
            ctx.deliver(index, data.t);
        }
        Ok(ServerMsg::Joined { last_seq, .. }) => {
            track.last_seq.store(last_seq, Ordering::Relaxed);
            after.joined = true;
        }
        Ok(ServerMsg::Gap { first_lost, last_lost, resume_from, .. }) => {
            ctx.gaps.fetch_add(1, Ordering::Relaxed);
            ctx.lost.fetch_add(last_lost.saturating_sub(first_lost) + 1, Ordering::Relaxed);
            track.last_seq.fetch_max(resume_from.saturating_sub(1), Ordering::Relaxed);
        }
        Ok(ServerMsg::Error { .. }) => {
            ctx.errors.fetch_add(1, Ordering::Relaxed);
            if track.state.load(Ordering::Relaxed) & JOINED == 0 {
                after.end = Some("join refused by server");
            }
        }
        Ok(_) => {}
        Err(_) => {
            ctx.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Answers a ping with an (empty, masked) pong without waiting: the send buffer of an idle
/// socket has room; if not, the next ping gets the next chance.
fn pong(stream: &TcpStream) {
    let _ = stream.try_write(&[0x8a, 0x80, 0, 0, 0, 0]);
}

/// The upgrade request for `url` (`ws://host:port/path?query`).
fn upgrade_request(url: &WsUrl) -> String {
    let rest = url.url.split_once("://").map_or(url.url.as_str(), |(_, r)| r);
    let (host, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], &rest[i..]),
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') { format!("/{path}") } else { path.to_string() };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// One server frame at the start of some bytes.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// Not all of it is there yet.
    Incomplete,
    /// Something this client does not read (masked, fragmented, too large).
    Bad(&'static str),
    /// A whole frame: opcode, payload offset and length.
    Whole { opcode: u8, start: usize, len: usize },
}

/// Reads the header of an (unmasked, unfragmented) server frame.
fn server_frame(buf: &[u8]) -> Frame {
    let [b0, b1, ..] = *buf else { return Frame::Incomplete };
    if b0 & 0x80 == 0 || b0 & 0x0f == 0 {
        return Frame::Bad("fragmented server frame");
    }
    if b1 & 0x80 != 0 {
        return Frame::Bad("masked server frame");
    }
    let (len, start) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Frame::Incomplete,
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (u64::from_be_bytes(b), 10),
            None => return Frame::Incomplete,
        },
        n => (u64::from(n), 2),
    };
    if len > MAX_FRAME as u64 {
        return Frame::Bad("server frame too large");
    }
    let len = len as usize;
    if buf.len() < start + len {
        return Frame::Incomplete;
    }
    Frame::Whole { opcode: b0 & 0x0f, start, len }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_frames_are_read_whole_or_not_at_all() {
        let text = linkcast_core::ws_frame::text(br#"{"op":"pong"}"#);
        assert_eq!(server_frame(&text), Frame::Whole { opcode: 1, start: 2, len: 13 });
        assert_eq!(server_frame(&text[..5]), Frame::Incomplete);
        let big = linkcast_core::ws_frame::text(&[b'x'; 300]);
        assert_eq!(server_frame(&big), Frame::Whole { opcode: 1, start: 4, len: 300 });
        assert_eq!(server_frame(&big[..3]), Frame::Incomplete);
        assert_eq!(server_frame(&linkcast_core::ws_frame::ping()), Frame::Whole { opcode: 9, start: 2, len: 2 });
        assert_eq!(server_frame(&[0x01, 0x00]), Frame::Bad("fragmented server frame"));
        assert_eq!(server_frame(&[0x81, 0x80]), Frame::Bad("masked server frame"));
    }

    #[test]
    fn upgrade_requests_name_path_and_host() {
        let url = WsUrl::parse("ws://127.0.0.1:7080/ws", Some("abc")).expect("url");
        let req = upgrade_request(&url);
        assert!(req.starts_with("GET /ws?token=abc HTTP/1.1\r\nHost: 127.0.0.1:7080\r\n"), "{req}");
        let bare = WsUrl::parse("ws://127.0.0.1:9001", None).expect("url");
        assert!(upgrade_request(&bare).starts_with("GET / HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n"));
    }
}

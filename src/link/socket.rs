//! A client's byte stream on the Link's WebSocket port: plain TCP (`ws://`) or TLS over it
//! (`wss://`), with the non-blocking calls the shard's delivery path makes.
//!
//! The delivery path writes to a socket from the shard loop with one non-blocking vectored send
//! and never awaits (`conn_io.rs`), so TLS cannot be an `AsyncWrite` wrapper here. A TLS socket
//! is the TCP stream plus the session (`tls_session.rs`, rustls' unbuffered API: no buffer
//! kept while idle) that `upgrade.rs` completed the handshake with:
//! - [`ClientSocket::send`] has the session encrypt plaintext into its outgoing ciphertext
//!   (bounded: `tls_session::TLS_OUT_LIMIT` — no more is taken while that much waits), then
//!   writes what the socket takes; ciphertext left over waits for [`ClientSocket::writable`]
//!   and is pushed by the next call ([`ClientSocket::wants_write`] says some is pending);
//! - [`ClientSocket::try_read`] returns plaintext the session already holds, else reads TLS
//!   records from the socket (only when no plaintext waits, so what the session holds stays
//!   bounded) and decrypts; [`ClientSocket::readable`] is ready at once while plaintext waits.
//!
//! Plain sockets go straight to `send`/`sendmsg` with `MSG_NOSIGNAL` and `read`.
//!
//! Readiness: the socket is a plain non-blocking `std` stream with two readiness bits, not a
//! tokio registration (256 bytes per socket). While its connection is in the shard's driver,
//! the shard's epoll set (`socket_poll.rs`) sets them ([`ClientSocket::mark_ready`]) and a call
//! that would block clears its own ([`ClientSocket::read_ready`], [`ClientSocket::write_ready`]).
//! The few waits outside the driver — the `auth` message, the close — register the socket with
//! tokio for as long as each wait lasts ([`ClientSocket::readable`], [`ClientSocket::writable`]).

use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::tls_session::TlsSession;

/// Readiness bit: a read may not block.
const READABLE: u8 = 1;
/// Readiness bit: a write may not block.
const WRITABLE: u8 = 2;

/// A client connection's stream (see the module docs).
#[derive(Debug)]
pub(crate) struct ClientSocket {
    tcp: TcpStream,
    /// [`READABLE`] and [`WRITABLE`]: set by the shard's epoll set, cleared by a call that
    /// would block.
    ready: Cell<u8>,
    /// Boxed: a TLS session is large, and a plain connection should not carry its room.
    tls: Option<Box<RefCell<TlsSession>>>,
}

impl ClientSocket {
    /// A plain `ws://` socket (taken out of tokio's reactor: its readiness is the shard's).
    pub(crate) fn plain(tcp: tokio::net::TcpStream) -> io::Result<Self> {
        Ok(ClientSocket { tcp: tcp.into_std()?, ready: Cell::new(READABLE | WRITABLE), tls: None })
    }

    /// A `wss://` socket whose handshake `session` completed on `tcp`.
    pub(crate) fn tls(tcp: tokio::net::TcpStream, session: TlsSession) -> io::Result<Self> {
        Ok(ClientSocket { tcp: tcp.into_std()?, ready: Cell::new(READABLE | WRITABLE), tls: Some(Box::new(RefCell::new(session))) })
    }

    /// The socket's descriptor (for the shard's epoll set).
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.tcp.as_raw_fd()
    }

    /// An event of the shard's epoll set: input, or output space, arrived.
    pub(crate) fn mark_ready(&self, readable: bool, writable: bool) {
        let bits = if readable { READABLE } else { 0 } | if writable { WRITABLE } else { 0 };
        self.ready.set(self.ready.get() | bits);
    }

    /// Whether a read may find something (input arrived since a read last would block, or
    /// the TLS session holds plaintext). `false`: an event of the shard's epoll set will say.
    pub(crate) fn read_ready(&self) -> bool {
        self.ready.get() & READABLE != 0 || self.has_plaintext()
    }

    /// Whether a write may be taken (no write would block since the last space event).
    pub(crate) fn write_ready(&self) -> bool {
        self.ready.get() & WRITABLE != 0
    }

    /// `result` of a call that needed `bit`: a `WouldBlock` clears it until the next event.
    fn track<T>(&self, bit: u8, result: io::Result<T>) -> io::Result<T> {
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.ready.set(self.ready.get() & !bit);
        }
        result
    }

    /// Writes as much of `slices` as the socket (and the TLS session's bounded buffer) takes; `WouldBlock`
    /// when nothing could be taken.
    pub(crate) fn send(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        let Some(tls) = &self.tls else { return self.track(WRITABLE, send_raw(&self.tcp, slices)) };
        let Ok(mut session) = tls.try_borrow_mut() else { return Err(io::ErrorKind::WouldBlock.into()) };
        self.push_tls(&mut session)?;
        let taken = session.encrypt(slices)?;
        // Best effort now; what stays is pushed when the socket is writable again.
        match self.push_tls(&mut session) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if taken == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Pushes ciphertext the TLS session holds; `Ok` once none is left, `WouldBlock` if the socket is
    /// full. Plain sockets have none.
    pub(crate) fn flush_tls(&self) -> io::Result<()> {
        let Some(tls) = &self.tls else { return Ok(()) };
        let Ok(mut session) = tls.try_borrow_mut() else { return Err(io::ErrorKind::WouldBlock.into()) };
        self.push_tls(&mut session)
    }

    fn push_tls(&self, session: &mut TlsSession) -> io::Result<()> {
        self.track(WRITABLE, session.write_to(&mut RawWriter(&self.tcp)))
    }

    /// True while ciphertext waits for the socket.
    pub(crate) fn wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.try_borrow().map(|s| s.wants_write()).unwrap_or(true))
    }

    /// Reads plaintext into `buf`: `Ok(0)` at the end of the stream, `WouldBlock` when nothing
    /// waits.
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = &self.tls else { return self.track(READABLE, (&self.tcp).read(buf)) };
        let Ok(mut session) = tls.try_borrow_mut() else { return Err(io::ErrorKind::WouldBlock.into()) };
        loop {
            if session.has_plaintext() {
                return Ok(session.take_plaintext(buf));
            }
            if session.peer_closed() {
                return Ok(0);
            }
            // No plaintext waits: read records from the socket.
            let read = self.track(READABLE, session.read_from(&mut RawReader(&self.tcp)));
            // Key updates and alerts owed to the peer (an alert also on an error), best effort.
            if session.wants_write() {
                let _ = self.push_tls(&mut session);
            }
            if read? == 0 {
                return Ok(0);
            }
        }
    }

    /// Waits until [`ClientSocket::try_read`] may have something (at once while the TLS session
    /// holds plaintext). Outside the shard's driver only (`auth`, close): the socket is
    /// registered with tokio for the wait.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        if self.has_plaintext() {
            return Ok(());
        }
        self.wait(Interest::READABLE).await
    }

    /// Waits for `interest` through a tokio registration that lasts as long as the wait (an
    /// edge-triggered registration reports what is ready already at once).
    async fn wait(&self, interest: Interest) -> io::Result<()> {
        // SAFETY: the descriptor is `self.tcp`'s, which outlives this registration (a local of
        // a call that borrows `self`).
        let registered = unsafe { AsyncFd::register_with_interest(Descriptor(self.tcp.as_raw_fd()), interest)? };
        let _ready = registered.ready(interest).await?;
        let bit = if interest.is_readable() { READABLE } else { WRITABLE };
        self.ready.set(self.ready.get() | bit);
        Ok(())
    }

    fn has_plaintext(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.try_borrow().is_ok_and(|s| s.has_plaintext()))
    }

    /// Waits for and appends what the socket has (up to 16 KiB) to `buf`; `Ok(0)` at the end.
    /// For the few reads before a connection has its task loop (authentication, closing).
    pub(crate) async fn read_some(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            self.readable().await?;
            // On the heap and only after the await: a buffer held across an await would sit in
            // every connection task's future (its size is that of its largest await state).
            let mut chunk = vec![0u8; 16 * 1024];
            match self.try_read(&mut chunk) {
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes all of `bytes` (and any ciphertext behind them), waiting for the socket as needed.
    pub(crate) async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.send(&[IoSlice::new(bytes)]) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                Err(e) => return Err(e),
            }
        }
        loop {
            match self.flush_tls() {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until the socket takes bytes again (outside the shard's driver, as
    /// [`ClientSocket::readable`]).
    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.wait(Interest::WRITABLE).await
    }
}

/// A descriptor lent to a tokio registration for one wait (never closed by it).
struct Descriptor(RawFd);

impl AsRawFd for Descriptor {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// A `std::io::Read` over the socket, for the TLS session.
struct RawReader<'a>(&'a TcpStream);

impl Read for RawReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

/// A `std::io::Write` over [`send_raw`], for the TLS session.
struct RawWriter<'a>(&'a TcpStream);

impl Write for RawWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send_raw(self.0, &[IoSlice::new(buf)])
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A peer that went away is an error here, never a SIGPIPE (Linux `MSG_NOSIGNAL`).
#[cfg(target_os = "linux")]
const MSG_NOSIGNAL: std::os::raw::c_int = 0x4000;
#[cfg(not(target_os = "linux"))]
const MSG_NOSIGNAL: std::os::raw::c_int = 0;

/// One non-blocking `send` (one slice) or `sendmsg` (several), with `MSG_NOSIGNAL` (the
/// caller clears the socket's readiness on `WouldBlock`: [`ClientSocket::send`]).
///
/// Why not `write`/`writev` (`TcpStream::try_write_vectored`): on a socket they go through the
/// VFS layer (`vfs_writev`, `fdget_pos`), about a tenth of the Link's CPU per delivery when one
/// small frame goes to each of thousands of sockets (perf, docs/benchmarks.md); the socket calls
/// reach TCP directly.
fn send_raw(tcp: &TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    let socket = socket2::SockRef::from(tcp);
    match slices {
        [one] => socket.send_with_flags(one, MSG_NOSIGNAL),
        many => socket.send_vectored_with_flags(many, MSG_NOSIGNAL),
    }
}

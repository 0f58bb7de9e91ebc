//! A client's byte stream on the Link's WebSocket port: plain TCP (`ws://`) or TLS over it
//! (`wss://`), with the non-blocking calls the shard's delivery path makes.
//!
//! The delivery path writes to a socket from the shard loop with one non-blocking vectored send
//! and never awaits (`conn_io.rs`), so TLS cannot be an `AsyncWrite` wrapper here. A TLS socket
//! is the TCP stream plus the rustls session that `upgrade.rs` completed the handshake with:
//! - [`ClientSocket::send`] hands plaintext to rustls, which encrypts it into its outgoing
//!   buffer (bounded: [`TLS_OUT_LIMIT`] — rustls takes no more while that much waits), then
//!   writes what the socket takes; ciphertext left over waits for [`ClientSocket::writable`]
//!   and is pushed by the next call ([`ClientSocket::wants_write`] says some is pending);
//! - [`ClientSocket::try_read`] returns plaintext rustls already holds, else reads TLS records
//!   from the socket (only when no plaintext waits, so rustls' receive buffer stays bounded) and
//!   decrypts; [`ClientSocket::readable`] is ready at once while plaintext waits.
//!
//! Plain sockets go straight to `send`/`sendmsg` with `MSG_NOSIGNAL` and `read`.

use std::cell::RefCell;
use std::io::{self, IoSlice, Read, Write};

use tokio::net::TcpStream;

/// Most ciphertext rustls holds for one connection before it refuses more plaintext.
pub(crate) const TLS_OUT_LIMIT: usize = 64 * 1024;

/// A client connection's stream (see the module docs).
#[derive(Debug)]
pub(crate) struct ClientSocket {
    tcp: TcpStream,
    /// Boxed: a rustls session is large, and a plain connection should not carry its room.
    tls: Option<Box<RefCell<rustls::ServerConnection>>>,
}

impl ClientSocket {
    /// A plain `ws://` socket.
    pub(crate) fn plain(tcp: TcpStream) -> Self {
        ClientSocket { tcp, tls: None }
    }

    /// A `wss://` socket whose handshake `session` completed on `tcp`.
    pub(crate) fn tls(tcp: TcpStream, mut session: rustls::ServerConnection) -> Self {
        session.set_buffer_limit(Some(TLS_OUT_LIMIT));
        ClientSocket { tcp, tls: Some(Box::new(RefCell::new(session))) }
    }

    /// Writes as much of `slices` as the socket (and rustls' bounded buffer) takes; `WouldBlock`
    /// when nothing could be taken.
    pub(crate) fn send(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        let Some(tls) = &self.tls else { return send_raw(&self.tcp, slices) };
        let Ok(mut session) = tls.try_borrow_mut() else { return Err(io::ErrorKind::WouldBlock.into()) };
        self.push_tls(&mut session)?;
        let taken = session.writer().write_vectored(slices)?;
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

    /// Pushes ciphertext rustls holds; `Ok` once none is left, `WouldBlock` if the socket is
    /// full. Plain sockets have none.
    pub(crate) fn flush_tls(&self) -> io::Result<()> {
        let Some(tls) = &self.tls else { return Ok(()) };
        let Ok(mut session) = tls.try_borrow_mut() else { return Err(io::ErrorKind::WouldBlock.into()) };
        self.push_tls(&mut session)
    }

    fn push_tls(&self, session: &mut rustls::ServerConnection) -> io::Result<()> {
        while session.wants_write() {
            match session.write_tls(&mut RawWriter(&self.tcp)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// True while ciphertext waits for the socket.
    pub(crate) fn wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.try_borrow().map(|s| s.wants_write()).unwrap_or(true))
    }

    /// Reads plaintext into `buf`: `Ok(0)` at the end of the stream, `WouldBlock` when nothing
    /// waits.
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = &self.tls else { return self.tcp.try_read(buf) };
        let Ok(mut session) = tls.try_borrow_mut() else { return Err(io::ErrorKind::WouldBlock.into()) };
        loop {
            match session.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            // No plaintext waits: read records from the socket.
            if session.read_tls(&mut RawReader(&self.tcp))? == 0 {
                return Ok(0);
            }
            let state = session.process_new_packets().map_err(|e| {
                // Tell the peer why (an alert), best effort.
                let _ = self.push_tls(&mut session);
                io::Error::new(io::ErrorKind::InvalidData, e)
            });
            let state = state?;
            if session.wants_write() {
                // Key updates and alerts owed to the peer.
                let _ = self.push_tls(&mut session);
            }
            if state.peer_has_closed() && state.plaintext_bytes_to_read() == 0 {
                return Ok(0);
            }
        }
    }

    /// Waits until [`ClientSocket::try_read`] may have something (at once while rustls holds
    /// plaintext).
    pub(crate) async fn readable(&self) -> io::Result<()> {
        if self.has_plaintext() {
            return Ok(());
        }
        self.tcp.readable().await
    }

    fn has_plaintext(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| {
            tls.try_borrow_mut().is_ok_and(|mut s| s.process_new_packets().is_ok_and(|st| st.plaintext_bytes_to_read() > 0))
        })
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

    /// Waits until the socket takes bytes again.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.tcp.writable().await
    }

    /// [`ClientSocket::readable`] as a poll (the task's one reader: the waker is kept by the
    /// socket's registration, not in a future).
    pub(crate) fn poll_readable(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        if self.has_plaintext() {
            return std::task::Poll::Ready(Ok(()));
        }
        self.tcp.poll_read_ready(cx)
    }

    /// [`ClientSocket::writable`] as a poll (the task's one writer).
    pub(crate) fn poll_writable(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        self.tcp.poll_write_ready(cx)
    }
}

/// `std::io` adapters over tokio's non-blocking calls, for rustls' `read_tls`/`write_tls`.
struct RawReader<'a>(&'a TcpStream);

impl Read for RawReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

struct RawWriter<'a>(&'a TcpStream);

impl Write for RawWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send_raw(self.0, &[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        send_raw(self.0, bufs)
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

/// One non-blocking `send` (one slice) or `sendmsg` (several), with `MSG_NOSIGNAL`, through
/// tokio's readiness tracking (`try_io` clears readiness on `WouldBlock`).
///
/// Why not `write`/`writev` (`TcpStream::try_write_vectored`): on a socket they go through the
/// VFS layer (`vfs_writev`, `fdget_pos`), about a tenth of the Link's CPU per delivery when one
/// small frame goes to each of thousands of sockets (perf, docs/benchmarks.md); the socket calls
/// reach TCP directly.
fn send_raw(tcp: &TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    tcp.try_io(tokio::io::Interest::WRITABLE, || {
        let socket = socket2::SockRef::from(tcp);
        match slices {
            [one] => socket.send_with_flags(one, MSG_NOSIGNAL),
            many => socket.send_vectored_with_flags(many, MSG_NOSIGNAL),
        }
    })
}

//! A `wss://` client's TLS session, over rustls' unbuffered API: the session holds buffers only
//! while bytes wait in them, so an idle connection keeps none.
//!
//! rustls' buffered `ServerConnection` keeps a 4 KiB receive buffer (its deframer's) for the
//! connection's whole life, and every idle `wss://` connection paid for it (docs/benchmarks.md).
//! Here the caller moves the bytes, and the session keeps:
//! - `incoming`: ciphertext read from the socket and not yet processed — between reads only an
//!   incomplete record's bytes (a record is at most 16 KiB + 256); emptied, it is freed;
//! - `plaintext`: decrypted bytes the reader has not taken yet; freed once taken;
//! - `outgoing`: ciphertext (handshake messages, encrypted application data, alerts, key
//!   updates) the socket has not taken yet, in order; freed once written. Plaintext is taken
//!   only while less than [`TLS_OUT_LIMIT`] waits, so it stays bounded.
//!
//! ```text
//!  socket ──read_from──▶ incoming ──process──▶ plaintext ──take_plaintext──▶ reader
//!  writer ──encrypt────────────────────────▶ outgoing ──write_to──▶ socket
//!                     (handshake messages, key updates, alerts: process ─▶ outgoing)
//! ```
//!
//! Sans-IO: the session only sees `Read`/`Write` values lent to one call. `socket.rs` drives it
//! with a non-blocking socket on the shard's delivery path; [`TlsStream`] drives it with tokio's
//! readiness for the handshake and the HTTP upgrade, before the connection joins its shard.

use std::io::{self, IoSlice, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Most ciphertext a session holds for its socket before it takes no more plaintext.
const TLS_OUT_LIMIT: usize = 64 * 1024;

/// Bytes asked of the socket per read: a whole record of the largest size, and its header.
const READ_CHUNK: usize = 16 * 1024 + 512;

/// Largest plaintext of one TLS record.
const MAX_RECORD: usize = 16 * 1024;

/// Least room under [`TLS_OUT_LIMIT`] worth a record (below, the writer waits for the socket).
const MIN_RECORD_ROOM: usize = 1024;

/// Bound on what waits in `incoming` (a record is at most 16 KiB + 256 bytes: more is a peer
/// that does not speak TLS).
const MAX_INCOMING: usize = 64 * 1024;

/// One client's TLS session (see the module docs).
pub(crate) struct TlsSession {
    conn: UnbufferedServerConnection,
    incoming: Vec<u8>,
    plaintext: Vec<u8>,
    /// Bytes of `plaintext` already taken.
    plain_taken: usize,
    outgoing: Vec<u8>,
    /// Bytes of `outgoing` already written.
    out_written: usize,
    /// The handshake finished: application data may be sent.
    established: bool,
    /// The peer sent `close_notify` (or its stream ended).
    peer_closed: bool,
    /// Our `close_notify` is queued.
    closing: bool,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("incoming", &self.incoming.len())
            .field("plaintext", &(self.plaintext.len() - self.plain_taken))
            .field("outgoing", &(self.outgoing.len() - self.out_written))
            .field("established", &self.established)
            .field("peer_closed", &self.peer_closed)
            .finish()
    }
}

/// A TLS error as the socket calls report it.
fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// Writes into `out`'s spare tail with `fill` (which says how much it needs when the tail is
/// too short) and keeps what it wrote.
fn append_with<E>(
    out: &mut Vec<u8>,
    guess: usize,
    mut fill: impl FnMut(&mut [u8]) -> Result<usize, E>,
    needs: impl Fn(&E) -> Option<usize>,
) -> Result<(), E> {
    let start = out.len();
    let mut room = guess;
    loop {
        out.resize(start + room, 0);
        match fill(&mut out[start..]) {
            Ok(written) => {
                out.truncate(start + written);
                return Ok(());
            }
            Err(error) => match needs(&error) {
                Some(required) if required > room => room = required,
                _ => {
                    out.truncate(start);
                    return Err(error);
                }
            },
        }
    }
}

fn encode_needs(error: &EncodeError) -> Option<usize> {
    match error {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => Some(*required_size),
        _ => None,
    }
}

fn encrypt_needs(error: &EncryptError) -> Option<usize> {
    match error {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => Some(*required_size),
        _ => None,
    }
}

impl TlsSession {
    /// A session that will answer a client's hello with `config`.
    pub(crate) fn new(config: Arc<rustls::ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(TlsSession {
            conn: UnbufferedServerConnection::new(config)?,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            plain_taken: 0,
            outgoing: Vec::new(),
            out_written: 0,
            established: false,
            peer_closed: false,
            closing: false,
        })
    }

    /// The handshake finished (the client's `Finished` was checked).
    pub(crate) fn is_established(&self) -> bool {
        self.established && !self.conn.is_handshaking()
    }

    /// Decrypted bytes wait for the reader.
    pub(crate) fn has_plaintext(&self) -> bool {
        self.plain_taken < self.plaintext.len()
    }

    /// Ciphertext waits for the socket.
    pub(crate) fn wants_write(&self) -> bool {
        self.out_written < self.outgoing.len()
    }

    /// The peer closed its side (no more plaintext will come once what waits is taken).
    pub(crate) fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Reads what the socket has (one read) and processes it: handshake messages are answered
    /// into `outgoing`, application data lands in `plaintext`. `Ok(0)`: the stream ended.
    pub(crate) fn read_from(&mut self, socket: &mut dyn Read) -> io::Result<usize> {
        if self.incoming.len() >= MAX_INCOMING {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "TLS record too large"));
        }
        let start = self.incoming.len();
        self.incoming.resize(start + READ_CHUNK, 0);
        let read = socket.read(&mut self.incoming[start..]);
        self.incoming.truncate(start + *read.as_ref().unwrap_or(&0));
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        let read = read?;
        if read == 0 {
            self.peer_closed = true;
            return Ok(0);
        }
        self.process().map_err(tls_error)?;
        Ok(read)
    }

    /// Copies waiting plaintext into `buf`; 0 when none waits.
    pub(crate) fn take_plaintext(&mut self, buf: &mut [u8]) -> usize {
        let waiting = &self.plaintext[self.plain_taken..];
        let n = waiting.len().min(buf.len());
        buf[..n].copy_from_slice(&waiting[..n]);
        self.plain_taken += n;
        if self.plain_taken == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.plain_taken = 0;
        }
        n
    }

    /// Encrypts as much of `slices` as [`TLS_OUT_LIMIT`] leaves room for, in records of up to
    /// 16 KiB that may each span several slices; how many plaintext bytes were taken (0 while
    /// the limit is reached, or before the handshake finished).
    pub(crate) fn encrypt(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        if !self.established {
            return Ok(0);
        }
        let mut taken = 0;
        let mut record = Vec::new();
        let mut slices = slices.iter().map(|s| &s[..]).filter(|s| !s.is_empty()).peekable();
        let mut rest: &[u8] = &[];
        loop {
            let budget = TLS_OUT_LIMIT.saturating_sub(self.outgoing.len() - self.out_written);
            if budget < MIN_RECORD_ROOM {
                break;
            }
            // Room for the record's header, content type and tag besides its plaintext.
            let cap = MAX_RECORD.min(budget - 256);
            // One record's plaintext: a slice as it is when it fills the record alone, else
            // the next slices gathered.
            if rest.is_empty() {
                match slices.next() {
                    Some(next) => rest = next,
                    None => break,
                }
            }
            let chunk: &[u8] = if rest.len() >= cap || slices.peek().is_none() {
                let (chunk, after) = rest.split_at(rest.len().min(cap));
                rest = after;
                chunk
            } else {
                record.clear();
                while record.len() < cap {
                    if rest.is_empty() {
                        match slices.next() {
                            Some(next) => rest = next,
                            None => break,
                        }
                    }
                    let n = rest.len().min(cap - record.len());
                    record.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                }
                &record
            };
            self.seal(chunk)?;
            taken += chunk.len();
        }
        Ok(taken)
    }

    /// Encrypts `plaintext` (one record's worth) into `outgoing`.
    fn seal(&mut self, plaintext: &[u8]) -> io::Result<()> {
        loop {
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
            let mut sealed = None;
            match state.map_err(tls_error)? {
                ConnectionState::WriteTraffic(mut traffic) => {
                    let guess = plaintext.len() + 64;
                    let result = append_with(&mut self.outgoing, guess, |out| traffic.encrypt(plaintext, out), encrypt_needs);
                    sealed = Some(result.map_err(|e| io::Error::other(e.to_string())));
                }
                ConnectionState::Closed => sealed = Some(Err(io::ErrorKind::BrokenPipe.into())),
                ConnectionState::BlockedHandshake => sealed = Some(Err(io::ErrorKind::WouldBlock.into())),
                other => Self::handle(other, &mut self.plaintext, &mut self.plain_taken, &mut self.outgoing, &mut self.peer_closed)?,
            }
            self.discard(discard);
            if let Some(sealed) = sealed {
                return sealed;
            }
        }
    }

    /// Queues a `close_notify` alert, once (best effort: nothing when the session cannot send).
    pub(crate) fn close(&mut self) {
        if !self.established || std::mem::replace(&mut self.closing, true) {
            return;
        }
        let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::WriteTraffic(mut traffic)) = state {
            let _ = append_with(&mut self.outgoing, 64, |out| traffic.queue_close_notify(out), encrypt_needs);
        }
        self.discard(discard);
    }

    /// Writes waiting ciphertext: `Ok` once none is left; the writer's error (`WouldBlock`
    /// when the socket is full) otherwise.
    pub(crate) fn write_to(&mut self, socket: &mut dyn Write) -> io::Result<()> {
        while self.wants_write() {
            match socket.write(&self.outgoing[self.out_written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.outgoing = Vec::new();
        self.out_written = 0;
        Ok(())
    }

    /// Processes what `incoming` holds until rustls needs more bytes or has nothing to say.
    fn process(&mut self) -> Result<(), rustls::Error> {
        loop {
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
            let more = match state? {
                ConnectionState::WriteTraffic(_) => {
                    self.established = true;
                    false
                }
                ConnectionState::BlockedHandshake | ConnectionState::Closed => false,
                other => {
                    Self::handle(other, &mut self.plaintext, &mut self.plain_taken, &mut self.outgoing, &mut self.peer_closed)
                        .map_err(|e| rustls::Error::General(e.to_string()))?;
                    true
                }
            };
            self.discard(discard);
            if !more {
                return Ok(());
            }
        }
    }

    /// Handles a state other than `WriteTraffic`, `BlockedHandshake` and `Closed` (a function
    /// of the fields it touches: the state borrows the connection and `incoming`).
    fn handle(
        state: ConnectionState<'_, '_, rustls::server::ServerConnectionData>,
        plaintext: &mut Vec<u8>,
        plain_taken: &mut usize,
        outgoing: &mut Vec<u8>,
        peer_closed: &mut bool,
    ) -> io::Result<()> {
        match state {
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    let record = record.map_err(tls_error)?;
                    if *plain_taken == plaintext.len() {
                        plaintext.clear();
                        *plain_taken = 0;
                    }
                    plaintext.extend_from_slice(record.payload);
                }
            }
            ConnectionState::EncodeTlsData(mut data) => {
                append_with(outgoing, 4096, |out| data.encode(out), encode_needs).map_err(|e| io::Error::other(format!("{e:?}")))?;
            }
            // What was encoded is in `outgoing`, ahead of anything written later: sent in order.
            ConnectionState::TransmitTlsData(data) => data.done(),
            ConnectionState::PeerClosed => *peer_closed = true,
            ConnectionState::WriteTraffic(_) | ConnectionState::BlockedHandshake | ConnectionState::Closed => {}
            // 0-RTT is not offered (the config's `max_early_data_size` is 0).
            _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected TLS state")),
        }
        Ok(())
    }

    fn discard(&mut self, discard: usize) {
        if discard > 0 {
            self.incoming.drain(..discard.min(self.incoming.len()));
        }
        if self.incoming.is_empty() && self.incoming.capacity() > 0 {
            self.incoming = Vec::new();
        }
    }
}

/// A `std::io` reader over a tokio socket's non-blocking read.
struct TryRead<'a>(&'a TcpStream);

impl Read for TryRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

/// A `std::io` writer over a tokio socket's non-blocking write.
struct TryWrite<'a>(&'a TcpStream);

impl Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TLS session over a tokio socket, for the few steps before the connection joins its shard:
/// the handshake ([`TlsStream::handshake`]) and the HTTP upgrade (`AsyncRead`/`AsyncWrite`).
#[derive(Debug)]
pub(crate) struct TlsStream {
    tcp: TcpStream,
    session: TlsSession,
}

impl TlsStream {
    /// Runs the server side of a handshake on `tcp`.
    pub(crate) async fn handshake(tcp: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<TlsStream> {
        let session = TlsSession::new(config).map_err(tls_error)?;
        let mut stream = TlsStream { tcp, session };
        loop {
            std::future::poll_fn(|cx| stream.poll_write_out(cx)).await?;
            if stream.session.is_established() {
                return Ok(stream);
            }
            if stream.session.peer_closed() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            stream.tcp.readable().await?;
            match stream.session.read_from(&mut TryRead(&stream.tcp)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    // Tell the peer why, best effort (rustls queued an alert).
                    let _ = stream.session.write_to(&mut TryWrite(&stream.tcp));
                    return Err(e);
                }
            }
        }
    }

    /// The socket and the session, for the connection's life on its shard (`socket.rs`).
    pub(crate) fn into_parts(self) -> (TcpStream, TlsSession) {
        (self.tcp, self.session)
    }

    /// Writes waiting ciphertext, waiting for the socket as needed.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.session.write_to(&mut TryWrite(&self.tcp)) {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(self.tcp.poll_write_ready(cx))?,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.session.has_plaintext() {
                let n = this.session.take_plaintext(buf.initialize_unfilled());
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.session.peer_closed() {
                return Poll::Ready(Ok(()));
            }
            ready!(this.tcp.poll_read_ready(cx))?;
            match this.session.read_from(&mut TryRead(&this.tcp)) {
                Ok(_) => {
                    // Key updates and alerts owed to the peer, best effort.
                    let _ = this.session.write_to(&mut TryWrite(&this.tcp));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.session.is_established() {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        }
        loop {
            let taken = this.session.encrypt(&[IoSlice::new(data)])?;
            if taken > 0 || data.is_empty() {
                return Poll::Ready(Ok(taken));
            }
            ready!(this.poll_write_out(cx))?;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_write_out(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.session.close();
        ready!(this.poll_write_out(cx))?;
        Poll::Ready(socket2::SockRef::from(&this.tcp).shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    /// A client (rustls' buffered connection) and a server session, no handshake yet.
    fn pair() -> (rustls::ClientConnection, TlsSession) {
        let cert = Arc::new(crate::tls::ServerCert::self_signed().expect("cert"));
        let leaf = cert.leaf().expect("leaf");
        let server = TlsSession::new(Arc::new(crate::tls::server_config(cert, &[]).expect("server config"))).expect("session");
        let client_config = Arc::new(crate::tls::Trust::pin_der(&leaf).client_config(&[]).expect("client config"));
        let name = crate::tls::server_name(None, SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 443));
        let mut client = rustls::ClientConnection::new(client_config, name).expect("client");
        client.set_buffer_limit(None);
        (client, server)
    }

    /// Moves every byte each side has for the other, `chunk` bytes per server read, until
    /// neither has more; the client's plaintext is appended to `client_got`.
    fn pump(client: &mut rustls::ClientConnection, server: &mut TlsSession, chunk: usize, client_got: &mut Vec<u8>) {
        loop {
            let mut moved = false;
            let mut to_server = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut to_server).expect("client write_tls");
            }
            for piece in to_server.chunks(chunk) {
                let mut piece: &[u8] = piece;
                server.read_from(&mut piece).expect("server read");
                moved = true;
            }
            let mut to_client = Vec::new();
            server.write_to(&mut to_client).expect("server write");
            if !to_client.is_empty() {
                moved = true;
                let mut from: &[u8] = &to_client;
                while !from.is_empty() {
                    client.read_tls(&mut from).expect("client read_tls");
                    client.process_new_packets().expect("client process");
                    let _ = client.reader().read_to_end(client_got);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn server_reads(server: &mut TlsSession) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1000];
        while server.has_plaintext() {
            let n = server.take_plaintext(&mut buf);
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    fn held(server: &TlsSession) -> (usize, usize, usize) {
        (server.incoming.capacity(), server.plaintext.capacity(), server.outgoing.capacity())
    }

    #[test]
    fn a_handshake_then_data_both_ways_and_an_idle_session_holds_no_buffer() {
        let (mut client, mut server) = pair();
        let mut got = Vec::new();
        pump(&mut client, &mut server, usize::MAX, &mut got);
        assert!(server.is_established() && !client.is_handshaking());
        client.writer().write_all(b"GET /ws HTTP/1.1\r\n\r\n").expect("client write");
        pump(&mut client, &mut server, usize::MAX, &mut got);
        assert_eq!(server_reads(&mut server), b"GET /ws HTTP/1.1\r\n\r\n");
        let taken = server.encrypt(&[IoSlice::new(b"HTTP/1.1 101 "), IoSlice::new(b"Switching Protocols\r\n\r\n")]).expect("encrypt");
        assert_eq!(taken, 36);
        pump(&mut client, &mut server, usize::MAX, &mut got);
        assert_eq!(got, b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert_eq!(held(&server), (0, 0, 0), "idle: no receive, plaintext or send buffer");
    }

    #[test]
    fn records_cut_anywhere_still_arrive_whole_and_in_order() {
        let (mut client, mut server) = pair();
        let mut got = Vec::new();
        pump(&mut client, &mut server, 7, &mut got);
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        client.writer().write_all(&sent).expect("client write");
        pump(&mut client, &mut server, 1, &mut Vec::new());
        assert!(server_reads(&mut server) == sent, "plaintext differs");
        assert_eq!(held(&server), (0, 0, 0));
    }

    #[test]
    fn a_large_write_is_taken_up_to_the_limit_and_arrives_in_order() {
        let (mut client, mut server) = pair();
        let mut got = Vec::new();
        pump(&mut client, &mut server, usize::MAX, &mut got);
        let frames: Vec<Vec<u8>> = (0..300u32).map(|i| vec![(i % 256) as u8; 10 + (i as usize * 37) % 3000]).collect();
        let expected: Vec<u8> = frames.concat();
        let mut sent = 0;
        while sent < expected.len() {
            // What a corked send offers: the frames not taken yet, as slices.
            let mut skip = sent;
            let mut slices = Vec::new();
            for frame in &frames {
                if skip >= frame.len() {
                    skip -= frame.len();
                    continue;
                }
                slices.push(IoSlice::new(&frame[skip..]));
                skip = 0;
            }
            let taken = server.encrypt(&slices).expect("encrypt");
            assert!(taken > 0, "room after a drain");
            assert!(server.outgoing.len() <= TLS_OUT_LIMIT, "bounded: {}", server.outgoing.len());
            if sent + taken < expected.len() {
                assert_eq!(server.encrypt(&slices[..1]).expect("full"), 0, "nothing more while the limit is reached");
            }
            sent += taken;
            pump(&mut client, &mut server, usize::MAX, &mut got);
        }
        assert!(got == expected, "plaintext differs from the frames in order");
        assert_eq!(held(&server), (0, 0, 0));
    }

    #[test]
    fn a_key_update_from_the_client_is_answered_and_traffic_goes_on() {
        let (mut client, mut server) = pair();
        let mut got = Vec::new();
        pump(&mut client, &mut server, usize::MAX, &mut got);
        client.refresh_traffic_keys().expect("key update");
        client.writer().write_all(b"after the update").expect("client write");
        pump(&mut client, &mut server, usize::MAX, &mut got);
        assert_eq!(server_reads(&mut server), b"after the update");
        server.encrypt(&[IoSlice::new(b"answer")]).expect("encrypt");
        pump(&mut client, &mut server, usize::MAX, &mut got);
        assert_eq!(got, b"answer");
    }

    #[test]
    fn close_notify_ends_the_stream_both_ways() {
        let (mut client, mut server) = pair();
        let mut got = Vec::new();
        pump(&mut client, &mut server, usize::MAX, &mut got);
        client.send_close_notify();
        pump(&mut client, &mut server, usize::MAX, &mut got);
        assert!(server.peer_closed() && !server.has_plaintext());
        server.close();
        server.close();
        let mut to_client = Vec::new();
        server.write_to(&mut to_client).expect("write");
        let mut from: &[u8] = &to_client;
        client.read_tls(&mut from).expect("read_tls");
        let state = client.process_new_packets().expect("process");
        assert!(state.peer_has_closed(), "the server's close_notify arrived");
    }

    #[test]
    fn bytes_that_are_not_tls_are_an_error() {
        let (_, mut server) = pair();
        let mut garbage: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let error = server.read_from(&mut garbage).expect_err("not TLS");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}

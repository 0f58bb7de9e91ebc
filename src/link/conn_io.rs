//! The output side of one WebSocket connection: a queue of whole frames, written to the socket
//! with non-blocking vectored writes.
//!
//! Frames are `Bytes`: a room message's frame is the very buffer every other member also holds
//! (built once per Link by `ws_frame`), so queueing it is a reference-count increment. The shard
//! loop (`WsConnection::deliver`) and the connection's driver slot (`ws_driver.rs`) both push
//! here and call [`OutQueue::flush`], which sends until the queue is empty or the socket is full;
//! what is left waits for the socket to become writable (an event of the shard's epoll set steps
//! the slot again). Each send is one syscall:
//! - one frame: sent from its own buffer;
//! - several small frames (a burst of a hot room): copied into the shard's one cork buffer
//!   ([`CORK_BYTES`], a thread-local reused for every socket, as uWebSockets corks) and sent as
//!   one contiguous buffer — one TCP segment and one wake-up of the reader instead of an iovec per
//!   frame, and one TLS record instead of one per frame;
//! - a frame too large for the cork at the front: one vectored send of up to [`MAX_IOVECS`]
//!   frames from their own buffers.
//!
//! Bounds: nobody fills the queue above `link.write_batch_bytes` from the rings, and the slot
//! stops reading client input while the queue is over its cap, so a peer that never reads holds
//! at most a batch here (the rest stays in the shard's ring, shared).
//!
//! The queue holds slots only while it holds frames: a flush that empties it frees them, and a
//! lone frame takes one slot (32 bytes), not four. Slots kept between bursts (freed only at the
//! connection's next keep-alive timer, as before) made every connection hold 128 bytes for up to
//! `ping_interval_secs` after each delivery, and, freed in scattered order once the timers ran,
//! they left mimalloc's 128-byte pages partly used and resident (18,000 connections: 2.1 MiB of
//! slots at the peak, 0.3 MiB of other live blocks in those pages after). Freed at once, a
//! connection's slots are one short-lived block, taken again by the next connection's burst.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::Bytes;

use super::socket::ClientSocket;
use super::tally;

/// Most frames written by one vectored write.
pub(crate) const MAX_IOVECS: usize = 64;

/// Most bytes of small frames copied into the shard's cork buffer for one send.
pub(crate) const CORK_BYTES: usize = 16 * 1024;

thread_local! {
    /// The shard's one cork buffer: the small frames waiting for one socket are copied here
    /// and leave in one contiguous send (one TCP segment, one TLS record), then it is reused
    /// for the next socket. A thread's shard is the only user; its capacity stays
    /// [`CORK_BYTES`].
    static CORK: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(CORK_BYTES));
}

/// Frames waiting for a socket (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    out: VecDeque<Bytes>,
    /// Bytes of `out[0]` already written (32 bits: a frame is at most a Link↔hub frame plus
    /// its WebSocket header, far below 4 GiB; every connection carries this queue).
    written: u32,
    /// Bytes queued and not yet written.
    queued: usize,
    /// Some bytes were written since the last [`OutQueue::take_progress`].
    progress: bool,
}

/// What a flush left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flushed {
    /// Everything was written.
    All,
    /// The socket is full; the rest waits for it to become writable.
    Blocked,
}

impl OutQueue {
    /// Queues a whole frame (shared, not copied).
    pub(crate) fn push(&mut self, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        debug_assert!(u32::try_from(frame.len()).is_ok(), "frames are far below 4 GiB");
        self.queued += frame.len();
        if self.out.capacity() == 0 {
            // Most sends are of one frame: one slot (a second grows it to four).
            self.out.reserve_exact(1);
        }
        self.out.push_back(frame);
    }

    /// Bytes queued and not yet written.
    pub(crate) fn queued(&self) -> usize {
        self.queued
    }

    /// Whether bytes left since the last call (a stalled reader makes none).
    pub(crate) fn take_progress(&mut self) -> bool {
        std::mem::take(&mut self.progress)
    }

    /// Drops queued frames not yet started (a frame partly written is kept whole, so the
    /// stream stays well-formed for a close frame). Used before closing a slow consumer.
    pub(crate) fn discard_unsent(&mut self) {
        let keep = usize::from(self.written > 0).min(self.out.len());
        while self.out.len() > keep {
            if let Some(frame) = self.out.pop_back() {
                self.queued -= frame.len();
            }
        }
    }

    /// Writes queued frames until the queue is empty or the socket would block.
    /// On a TLS socket, `All` also means no ciphertext waits in the TLS session.
    pub(crate) fn flush(&mut self, socket: &ClientSocket) -> io::Result<Flushed> {
        while !self.out.is_empty() {
            let sent = CORK.with(|cork| match cork.try_borrow_mut() {
                Ok(mut cork) => self.send_some(socket, &mut cork),
                Err(_) => self.send_some(socket, &mut Vec::new()),
            });
            match sent {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.advance(n),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        // Empty: its slots are freed (see the module docs).
        self.out = VecDeque::new();
        match socket.flush_tls() {
            Ok(()) => Ok(Flushed::All),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(Flushed::Blocked),
            Err(error) => Err(error),
        }
    }

    /// One send from the front of the queue: a lone frame as it is; small frames copied into
    /// `cork` (up to [`CORK_BYTES`]) and sent as one contiguous buffer; a large frame at the
    /// front with what follows as one vectored send.
    fn send_some(&self, socket: &ClientSocket, cork: &mut Vec<u8>) -> io::Result<usize> {
        let front = self.out.front().map_or(&[][..], |f| &f[self.written as usize..]);
        if self.out.len() == 1 {
            // The common case on the delivery path: one frame, nothing to gather.
            return socket.send(&[IoSlice::new(front)]);
        }
        cork.clear();
        let mut corked = 0;
        for (i, frame) in self.out.iter().enumerate() {
            let bytes = if i == 0 { front } else { &frame[..] };
            if cork.len() + bytes.len() > CORK_BYTES {
                break;
            }
            cork.extend_from_slice(bytes);
            corked += 1;
        }
        if corked >= 2 {
            let sent = socket.send(&[IoSlice::new(cork)]);
            if cork.capacity() > CORK_BYTES {
                *cork = Vec::with_capacity(CORK_BYTES);
            }
            return sent;
        }
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let mut count = 0;
        for (i, frame) in self.out.iter().take(MAX_IOVECS).enumerate() {
            slices[count] = IoSlice::new(if i == 0 { front } else { &frame[..] });
            count += 1;
        }
        socket.send(&slices[..count])
    }

    fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        tally::wrote(n as u64); // the shard's counter, not one per queue (8 bytes a connection)
        self.progress = true;
        while n > 0 {
            let Some(front) = self.out.front() else { break };
            let left = front.len() - self.written as usize;
            if n >= left {
                n -= left;
                self.written = 0;
                self.out.pop_front();
            } else {
                self.written += n as u32; // n < left ≤ a frame's length
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn frames_leave_in_order_and_partial_writes_resume() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move { TcpStream::connect(addr).await.expect("connect") });
        let (server, _) = listener.accept().await.expect("accept");
        let mut client = client.await.expect("join");
        let _ = socket2::SockRef::from(&server).set_send_buffer_size(4096);
        let server = ClientSocket::plain(server).expect("socket");
        let mut queue = OutQueue::default();
        let frame = Bytes::from(vec![7u8; 1000]);
        let mut expected = 0;
        for _ in 0..2000 {
            queue.push(frame.clone());
            expected += frame.len();
        }
        queue.push(Bytes::from_static(b"end"));
        expected += 3;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut client, &mut got).await.expect("read");
            got
        });
        // The peer reads slower than we write: the queue blocks, then drains.
        let mut blocked = false;
        loop {
            match queue.flush(&server).expect("flush") {
                Flushed::All => break,
                Flushed::Blocked => {
                    blocked = true;
                    server.writable().await.expect("writable");
                }
            }
        }
        assert!(blocked, "a 2 MB queue must outgrow a 4 KiB send buffer");
        assert_eq!(queue.queued(), 0);
        assert_eq!(tally::take_bytes_out(), expected as u64);
        drop(server);
        let got = reader.await.expect("join");
        assert_eq!(got.len(), expected);
        assert!(got.ends_with(b"end"));
    }

    /// A connected pair: the server end (send buffer shrunk, so writes stop part-way) and the
    /// client's TCP stream.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move { TcpStream::connect(addr).await.expect("connect") });
        let (server, _) = listener.accept().await.expect("accept");
        let _ = socket2::SockRef::from(&server).set_send_buffer_size(4096);
        (server, client.await.expect("join"))
    }

    /// Frames of every size around the cork's bound, in a known order: small ones (corked),
    /// one larger than the cork (sent from its own buffer), small ones again.
    fn mixed_frames() -> Vec<Bytes> {
        let mut frames: Vec<Bytes> = (0..3000).map(|i| Bytes::from(format!("<{i}:{}>", "x".repeat(i % 300)))).collect();
        frames.insert(1500, Bytes::from(vec![b'L'; CORK_BYTES * 3 + 7]));
        frames.insert(10, Bytes::from(vec![b'M'; CORK_BYTES - 5]));
        frames
    }

    /// Flushes `queue` to `socket` until everything left, waiting for the socket in between.
    async fn flush_all(queue: &mut OutQueue, socket: &ClientSocket) -> bool {
        let mut blocked = false;
        loop {
            match queue.flush(socket).expect("flush") {
                Flushed::All => return blocked,
                Flushed::Blocked => {
                    blocked = true;
                    socket.writable().await.expect("writable");
                }
            }
        }
    }

    #[tokio::test]
    async fn corked_frames_leave_whole_and_in_order_through_partial_writes() {
        let (server, mut client) = pair().await;
        let server = ClientSocket::plain(server).expect("socket");
        let frames = mixed_frames();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        let mut queue = OutQueue::default();
        for frame in &frames {
            queue.push(frame.clone());
        }
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut client, &mut got).await.expect("read");
            got
        });
        assert!(flush_all(&mut queue, &server).await, "the queue must outgrow the send buffer");
        assert_eq!(tally::take_bytes_out(), expected.len() as u64);
        drop(server);
        let got = reader.await.expect("join");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes differ from the frames in order");
    }

    #[tokio::test]
    async fn several_small_frames_leave_in_one_send() {
        let (server, mut client) = pair().await;
        let server = ClientSocket::plain(server).expect("socket");
        let mut queue = OutQueue::default();
        let frames = [&b"first"[..], b"second", b"third frame"];
        for frame in frames {
            queue.push(Bytes::from_static(frame));
        }
        let sent = queue.send_some(&server, &mut Vec::new()).expect("send");
        assert_eq!(sent, frames.iter().map(|f| f.len()).sum::<usize>(), "one send takes all three");
        let mut got = vec![0u8; sent];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut got).await.expect("read");
        assert_eq!(got, frames.concat());
    }

    #[tokio::test]
    async fn a_queue_holds_slots_only_while_it_holds_frames() {
        let (server, mut client) = pair().await;
        let server = ClientSocket::plain(server).expect("socket");
        let mut queue = OutQueue::default();
        queue.push(Bytes::from_static(b"ping"));
        assert_eq!(queue.out.capacity(), 1, "a lone frame takes one slot");
        assert!(!flush_all(&mut queue, &server).await);
        assert_eq!(queue.out.capacity(), 0, "written: no slots kept");
        queue.push(Bytes::from_static(b"message"));
        queue.push(Bytes::from_static(b"ping"));
        assert!(queue.out.capacity() >= 2);
        assert!(!flush_all(&mut queue, &server).await);
        assert_eq!(queue.out.capacity(), 0, "a burst's slots go with it");
        let mut got = vec![0u8; 15];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut got).await.expect("read");
        assert_eq!(got, b"pingmessageping");
    }

    #[tokio::test]
    async fn corked_frames_cross_tls_whole_and_in_order() {
        use std::sync::Arc;
        let cert = Arc::new(crate::tls::ServerCert::self_signed().expect("cert"));
        let leaf = cert.leaf().expect("leaf");
        let config = Arc::new(crate::tls::server_config(cert, &[]).expect("server config"));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(crate::tls::Trust::pin_der(&leaf).client_config(&[]).expect("client config")));
        let (server, client) = pair().await;
        let addr = client.peer_addr().expect("addr");
        let client = tokio::spawn(async move { connector.connect(crate::tls::server_name(None, addr), client).await.expect("client handshake") });
        let (tcp, session) = crate::link::tls_session::TlsStream::handshake(server, config).await.expect("server handshake").into_parts();
        let mut client = client.await.expect("join");
        let server = ClientSocket::tls(tcp, session).expect("socket");
        let frames = mixed_frames();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        let mut queue = OutQueue::default();
        for frame in &frames {
            queue.push(frame.clone());
        }
        let want = expected.len();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; want];
            tokio::io::AsyncReadExt::read_exact(&mut client, &mut got).await.expect("read");
            got
        });
        flush_all(&mut queue, &server).await;
        assert!(!server.wants_write(), "no ciphertext left in the TLS session after All");
        let got = reader.await.expect("join");
        assert!(got == expected, "plaintext differs from the frames in order");
    }
}

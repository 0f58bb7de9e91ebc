//! The output side of one WebSocket connection: a queue of whole frames, written to the socket
//! with non-blocking vectored writes.
//!
//! Frames are `Bytes`: a room message's frame is the very buffer every other member also holds
//! (built once per Link by `ws_frame`), so queueing it is a reference-count increment. The shard
//! loop (`WsConnection::deliver`) and the connection task both push here and call
//! [`OutQueue::flush`], which writes up to [`MAX_IOVECS`] frames per `writev` until the queue is
//! empty or the socket is full; what is left waits for the socket to become writable (the task
//! awaits that).
//!
//! Bounds: nobody fills the queue above `link.write_batch_bytes` from the rings, and the task
//! stops reading client input while the queue is over its cap, so a peer that never reads holds
//! at most a batch here (the rest stays in the shard's ring, shared).

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::Bytes;

use super::socket::ClientSocket;

/// Most frames written by one vectored write.
pub(crate) const MAX_IOVECS: usize = 64;

/// Frames waiting for a socket (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    out: VecDeque<Bytes>,
    /// Bytes of `out[0]` already written.
    written: usize,
    /// Bytes queued and not yet written.
    queued: usize,
    /// Bytes written since the last [`OutQueue::take_written`].
    sent: u64,
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
        self.queued += frame.len();
        self.out.push_back(frame);
    }

    /// Bytes queued and not yet written.
    pub(crate) fn queued(&self) -> usize {
        self.queued
    }

    /// Bytes written to the socket since the last call (for metrics).
    pub(crate) fn take_written(&mut self) -> u64 {
        std::mem::take(&mut self.sent)
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
    /// On a TLS socket, `All` also means no ciphertext waits in rustls.
    pub(crate) fn flush(&mut self, socket: &ClientSocket) -> io::Result<Flushed> {
        while let Some(front) = self.out.front() {
            let sent = if self.out.len() == 1 {
                // The common case on the delivery path: one frame, no iovec array to build.
                socket.send(&[IoSlice::new(&front[self.written..])])
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let mut count = 0;
                for (i, frame) in self.out.iter().take(MAX_IOVECS).enumerate() {
                    let from = if i == 0 { self.written } else { 0 };
                    slices[count] = IoSlice::new(&frame[from..]);
                    count += 1;
                }
                socket.send(&slices[..count])
            };
            match sent {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.advance(n),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        if self.out.capacity() > 64 {
            self.out.shrink_to(8); // a burst's slots are not kept by an idle connection
        }
        match socket.flush_tls() {
            Ok(()) => Ok(Flushed::All),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(Flushed::Blocked),
            Err(error) => Err(error),
        }
    }

    fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        self.sent += n as u64;
        self.progress = true;
        while n > 0 {
            let Some(front) = self.out.front() else { break };
            let left = front.len() - self.written;
            if n >= left {
                n -= left;
                self.written = 0;
                self.out.pop_front();
            } else {
                self.written += n;
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
        let server = ClientSocket::plain(server);
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
        assert_eq!(queue.take_written(), expected as u64);
        drop(server);
        let got = reader.await.expect("join");
        assert_eq!(got.len(), expected);
        assert!(got.ends_with(b"end"));
    }
}

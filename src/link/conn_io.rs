//! The byte pipe under one WebSocket connection: a TCP stream with an output queue of `Bytes`.
//!
//! tokio-websockets owns the protocol (upgrade, client frames, ping/pong, close); this type is the
//! `AsyncRead + AsyncWrite` it runs on. It adds two things:
//! - **Shared output frames.** [`ConnIo::push`] queues a pre-built frame (`wsframe`) as the very
//!   `Bytes` every other member also holds — no copy. Frames tokio-websockets writes itself
//!   (pong, close, ping: small) are copied into the same queue, so the two sources are ordered
//!   and can never interleave inside a frame.
//! - **Vectored writes.** [`ConnIo::poll_drain`] writes up to [`MAX_IOVECS`] queued frames with
//!   one `writev`.
//!
//! It also replays the bytes of the HTTP request head the Link read before deciding to upgrade
//! (`prefix`), so tokio-websockets sees the request as if unread.
//!
//! Bounds: the driver stops filling the queue above `link.write_batch_bytes` and stops reading
//! client input while the queue is over its cap, so a peer that never reads holds at most a
//! batch here (the rest stays in the shard's ring, shared).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Most frames written by one vectored write.
pub const MAX_IOVECS: usize = 64;

/// A TCP stream with a queue of outgoing frames (see the module docs).
#[derive(Debug)]
pub struct ConnIo {
    tcp: TcpStream,
    /// Request bytes read before the upgrade, handed to tokio-websockets first.
    prefix: BytesMut,
    out: VecDeque<Bytes>,
    /// Bytes of `out[0]` already written.
    written: usize,
    /// Bytes queued and not yet written.
    queued: usize,
    /// Bytes written since the last [`ConnIo::take_written`].
    sent: u64,
}

impl ConnIo {
    /// Wraps `tcp`; `prefix` holds bytes already read from it.
    pub fn new(tcp: TcpStream, prefix: BytesMut) -> Self {
        ConnIo { tcp, prefix, out: VecDeque::new(), written: 0, queued: 0, sent: 0 }
    }

    /// Queues a whole frame (shared, not copied).
    pub fn push(&mut self, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        self.queued += frame.len();
        self.out.push_back(frame);
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Bytes written to the socket since the last call (for metrics).
    pub fn take_written(&mut self) -> u64 {
        std::mem::take(&mut self.sent)
    }

    /// Drops queued frames not yet started (a frame partly written is kept whole, so the
    /// stream stays well-formed for a close frame). Used before closing a slow consumer.
    pub fn discard_unsent(&mut self) {
        let keep = usize::from(self.written > 0).min(self.out.len());
        while self.out.len() > keep {
            if let Some(frame) = self.out.pop_back() {
                self.queued -= frame.len();
            }
        }
    }

    /// Writes queued frames until the queue is empty or the socket would block.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (i, frame) in self.out.iter().take(MAX_IOVECS).enumerate() {
                let from = if i == 0 { self.written } else { 0 };
                slices[count] = IoSlice::new(&frame[from..]);
                count += 1;
            }
            let n = ready!(Pin::new(&mut self.tcp).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        self.sent += n as u64;
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

impl AsyncRead for ConnIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // Only tokio-websockets' own small frames (upgrade response, pong, ping, close) come
        // this way; data frames are pushed pre-built. Copying them keeps one ordered queue.
        self.push(Bytes::copy_from_slice(buf));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut joined = BytesMut::with_capacity(total);
        for buf in bufs {
            joined.extend_from_slice(buf);
        }
        self.push(joined.freeze());
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

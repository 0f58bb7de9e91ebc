//! A shard's own readiness for the sockets of its running WebSocket connections: one epoll set
//! per shard, instead of a tokio registration per socket.
//!
//! Why (issue 17, Link memory per connection): tokio keeps a `ScheduledIo` for every socket it
//! drives — cache-line padded, in an `Arc`: 256 bytes, the largest single thing an idle
//! connection cost the Link after its session. A connection in its shard's driver slab
//! (`ws_driver.rs`) needs no waker of its own from the reactor: its slot index is enough.
//!
//! Data flow:
//! - when a connection takes its driver slot, its socket is [`SocketPoll::add`]ed with the slot's
//!   index as token, edge-triggered for input, output space and hang-up;
//! - the driver's task waits on the set's own descriptor (one tokio registration per shard) and
//!   takes the events ([`SocketPoll::take`]); each marks its socket's readiness
//!   (`ClientSocket::mark_ready`) and puts its slot on the ready list;
//! - a socket's readiness is cleared by the call that found it would block (`socket.rs`), so the
//!   next edge — more input, or space after a full send buffer — sets it again: tokio's model,
//!   without a waker per socket;
//! - a connection leaving its slot is [`SocketPoll::remove`]d before its close (which waits on
//!   the socket through a tokio registration of its own, only while it closes).
//!
//! A late event for a slot that a new connection took meanwhile only wakes that connection
//! once for nothing (its read or write would block, which clears the readiness it set).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Events taken by one `epoll_wait`.
const EVENTS_PER_TAKE: usize = 1024;

/// What an event says of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Readiness {
    /// The slot index the socket was added with.
    pub(crate) token: u32,
    /// Input (or end of stream, or an error) waits: a read will not block.
    pub(crate) readable: bool,
    /// Send buffer space (or an error): a write will not block.
    pub(crate) writable: bool,
}

/// One shard's epoll set (see the module docs).
#[derive(Debug)]
pub(crate) struct SocketPoll {
    epoll: AsyncFd<OwnedFd>,
}

impl SocketPoll {
    /// An empty set, registered with the current tokio runtime.
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: `epoll_create1` has no memory arguments; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the registration owns the descriptor; it stays open while registered.
        let epoll = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? };
        Ok(SocketPoll { epoll })
    }

    /// Watches `socket` for the slot `token`: edge-triggered input, output space and hang-up.
    /// Current readiness is reported at once (an edge for what already waits).
    pub(crate) fn add(&self, socket: RawFd, token: u32) -> io::Result<()> {
        let flags = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
        let mut event = libc::epoll_event { events: flags as u32, u64: u64::from(token) };
        // SAFETY: `event` is a valid `epoll_event` for the call's duration.
        let done = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, socket, &mut event) };
        if done < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `socket` (its connection left its slot). Best effort: closing the socket
    /// removes it too.
    pub(crate) fn remove(&self, socket: RawFd) {
        // SAFETY: a null event is allowed for `EPOLL_CTL_DEL` (Linux ≥ 2.6.9).
        unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, socket, std::ptr::null_mut()) };
    }

    /// Waits until some socket of the set has an event, then moves every waiting event into
    /// `into` (cleared first). Cancel-safe: nothing is taken before the wait ends.
    pub(crate) async fn take(&self, into: &mut Vec<Readiness>) -> io::Result<()> {
        into.clear();
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            let mut guard = self.epoll.readable().await?;
            loop {
                // SAFETY: `events` is writable for `events.len()` entries; timeout 0 never blocks.
                let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, 0) };
                if n < 0 {
                    let error = io::Error::last_os_error();
                    if error.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(error);
                }
                for event in &events[..n as usize] {
                    into.push(readiness(event.events, event.u64));
                }
                if (n as usize) < events.len() || into.len() >= EVENTS_PER_TAKE {
                    break;
                }
            }
            if into.len() < EVENTS_PER_TAKE {
                // Nothing more waits (tokio keeps a readiness that arrived since).
                guard.clear_ready();
            }
            if !into.is_empty() {
                return Ok(());
            }
        }
    }
}

/// An event's flags as a socket's readiness. An error or hang-up makes both ready: the next
/// read or write reports it.
fn readiness(flags: u32, token: u64) -> Readiness {
    let failed = flags & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
    Readiness {
        token: token as u32,
        readable: failed || flags & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 != 0,
        writable: failed || flags & libc::EPOLLOUT as u32 != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// A connected pair of non-blocking loopback sockets.
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("nonblocking");
        (client, server)
    }

    async fn next(poll: &SocketPoll) -> Vec<Readiness> {
        let mut taken = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), poll.take(&mut taken)).await.expect("an event").expect("epoll");
        taken
    }

    #[tokio::test]
    async fn a_socket_reports_space_at_once_then_input_as_it_arrives() {
        let poll = SocketPoll::new().expect("epoll");
        let (mut client, server) = pair();
        poll.add(server.as_raw_fd(), 7).expect("add");
        assert_eq!(next(&poll).await, [Readiness { token: 7, readable: false, writable: true }], "space, no input yet");
        client.write_all(b"hello").expect("write");
        let taken = next(&poll).await;
        assert!(taken.iter().all(|r| r.token == 7) && taken.iter().any(|r| r.readable), "{taken:?}");
        let mut buf = [0u8; 16];
        assert_eq!((&server).read(&mut buf).expect("read"), 5);
        // Edge-triggered: nothing new, no event.
        let mut quiet = Vec::new();
        assert!(tokio::time::timeout(Duration::from_millis(100), poll.take(&mut quiet)).await.is_err(), "{quiet:?}");
        drop(client);
        let taken = next(&poll).await;
        assert!(taken.iter().any(|r| r.token == 7 && r.readable), "a hang-up reads as input: {taken:?}");
    }

    #[tokio::test]
    async fn a_removed_socket_reports_nothing() {
        let poll = SocketPoll::new().expect("epoll");
        let (mut client, server) = pair();
        poll.add(server.as_raw_fd(), 1).expect("add");
        let _ = next(&poll).await;
        poll.remove(server.as_raw_fd());
        client.write_all(b"x").expect("write");
        let mut quiet = Vec::new();
        assert!(tokio::time::timeout(Duration::from_millis(100), poll.take(&mut quiet)).await.is_err(), "{quiet:?}");
    }
}

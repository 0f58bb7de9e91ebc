//! UDP sockets of the cluster's busy QUIC endpoints, and the kernel's count of what they dropped.
//!
//! Three endpoints carry many connections' packets through one socket: the hub's Link port
//! (every Link's joins and acks), a Link's client port (its native clients) and a Link's endpoint
//! towards its hubs (every broadcast). The kernel queues a socket's datagrams until the endpoint's
//! task reads them, up to the socket's receive buffer (`net.core.rmem_default`, 208 KiB on stock
//! Linux); past that it drops them. QUIC retransmits what was dropped, but a hub starved for
//! seconds by a join storm (a million connections on two cores) dropped so much (the machine
//! counted 1.1 M receive-buffer drops over two such runs, 3,246 at 200,000, all on the hub's
//! socket) that connections whose keep-alives were all dropped for the idle timeout closed.
//!
//! [`bind_busy`] binds such a socket with a receive buffer of [`BUSY_RECV_BUFFER`] bytes: the
//! kernel caps the request at `net.core.rmem_max`, and a process that got less warns once, naming
//! the sysctl. It is the kernel's byte limit on that queue; memory is taken only while datagrams
//! wait in it. [`export_drops`] exports what the kernel still dropped as a counter, read at scrape
//! time from the `drops` column of `/proc/net/udp` (`udp6`) by the socket's inode, so nothing
//! holds the socket open after its endpoint closed: once the inode is gone the collector is
//! dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Protocol, Socket, Type};

/// Receive buffer a busy endpoint asks for: room for a few thousand datagrams, what a hub
/// receives from its Links while its thread is descheduled for a second or two under a join
/// storm. (quic-go asks for 7 MiB for the same reason.)
pub(crate) const BUSY_RECV_BUFFER: usize = 8 << 20;

static WARNED_SMALL_BUFFER: AtomicBool = AtomicBool::new(false);

/// A UDP socket bound to `addr` with a receive buffer of up to [`BUSY_RECV_BUFFER`], its drops
/// exported under `role` and `endpoint` ([`export_drops`]), ready for `quic::endpoint_on`. A
/// wildcard IPv6 `addr` is made dual-stack where the system allows.
pub(crate) fn bind_busy(addr: SocketAddr, role: &'static str, endpoint: &'static str) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        if let Err(error) = socket.set_only_v6(false) {
            tracing::debug!(%error, "UDP socket stays IPv6-only");
        }
    }
    socket.bind(&addr.into())?;
    // Linux doubles the request for its bookkeeping and caps it at rmem_max first; whatever it
    // gave is still a working socket, so a refusal is a warning, not an error.
    let granted = socket.set_recv_buffer_size(BUSY_RECV_BUFFER).and_then(|()| socket.recv_buffer_size());
    match granted {
        Ok(bytes) if bytes >= BUSY_RECV_BUFFER => {}
        Ok(bytes) => {
            if !WARNED_SMALL_BUFFER.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    wanted = BUSY_RECV_BUFFER,
                    got = bytes,
                    "the kernel capped a QUIC endpoint's UDP receive buffer: under load it drops datagrams (see linkcast_udp_drops_total); raise it with `sysctl -w net.core.rmem_max={}`",
                    BUSY_RECV_BUFFER / 2
                );
            }
        }
        Err(error) => tracing::warn!(%error, "could not size a QUIC endpoint's UDP receive buffer"),
    }
    let socket = std::net::UdpSocket::from(socket);
    export_drops(&socket, role, endpoint);
    Ok(socket)
}

/// Exports the datagrams the kernel dropped on `socket` as `linkcast_udp_drops_total{role,
/// endpoint, addr}`, brought up to date at each scrape until the socket is closed. `addr` (the
/// socket's own address) tells apart the endpoints of the nodes of one process (`serve`, tests).
fn export_drops(socket: &std::net::UdpSocket, role: &'static str, endpoint: &'static str) {
    let (Some(inode), Ok(addr)) = (inode(socket), socket.local_addr()) else { return };
    let v6 = addr.is_ipv6();
    // The recorder first: a counter made before it is installed counts into nothing.
    let _ = crate::telemetry::prometheus();
    let counter = metrics::counter!("linkcast_udp_drops_total", "role" => role, "endpoint" => endpoint, "addr" => addr.to_string());
    crate::telemetry::on_scrape(move || match drops(inode, v6) {
        Some(dropped) => {
            counter.absolute(dropped);
            true
        }
        None => false,
    });
}

/// The inode of `socket` (the `socket:[N]` its descriptor links to).
fn inode(socket: &std::net::UdpSocket) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?;
    link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The kernel's drop count of the UDP socket with `inode`, `None` once it is closed.
fn drops(inode: u64, v6: bool) -> Option<u64> {
    let table = std::fs::read_to_string(if v6 { "/proc/net/udp6" } else { "/proc/net/udp" }).ok()?;
    drops_in_table(&table, inode)
}

/// The `drops` column of the row with `inode` in a `/proc/net/udp` table.
fn drops_in_table(table: &str, inode: u64) -> Option<u64> {
    const INODE: usize = 9;
    const DROPS: usize = 12;
    table.lines().skip(1).find_map(|row| {
        let columns: Vec<&str> = row.split_whitespace().collect();
        let row_inode: u64 = columns.get(INODE)?.parse().ok()?;
        (row_inode == inode).then(|| columns.get(DROPS)?.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_socket_gets_the_larger_receive_buffer_where_the_kernel_allows_it() {
        let socket = bind_busy("127.0.0.1:0".parse().expect("addr"), "test", "busy").expect("bind");
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .expect("rmem_max readable");
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind plain");
        let default = socket2::SockRef::from(&plain).recv_buffer_size().expect("default size");
        let got = socket2::SockRef::from(&socket).recv_buffer_size().expect("size");
        // Linux grants twice the request, capped at rmem_max first.
        assert_eq!(got, 2 * BUSY_RECV_BUFFER.min(rmem_max));
        assert!(got > default || rmem_max * 2 <= default, "busy {got} B vs default {default} B");
    }

    #[test]
    fn drops_are_read_from_the_row_of_the_socket() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 0100007F:1F90 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0
  101: 0100007F:7A02 00000000:0000 07 00000000:00034E00 00:00000000 00000000     0        0 5151 2 0000000000000000 3246
";
        assert_eq!(drops_in_table(table, 5151), Some(3246));
        assert_eq!(drops_in_table(table, 4242), Some(0));
        assert_eq!(drops_in_table(table, 7), None);
    }

    #[test]
    fn a_live_socket_is_found_by_its_inode_and_a_closed_one_is_not() {
        let socket = bind_busy("127.0.0.1:0".parse().expect("addr"), "test", "busy").expect("bind");
        let inode = inode(&socket).expect("inode");
        assert_eq!(drops(inode, false), Some(0));
        drop(socket);
        assert_eq!(drops(inode, false), None);
    }

    #[test]
    fn the_kernel_counts_what_a_full_socket_dropped() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket2::SockRef::from(&receiver).set_recv_buffer_size(4096).expect("shrink");
        let inode = inode(&receiver).expect("inode");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind sender");
        let target = receiver.local_addr().expect("addr");
        for _ in 0..256 {
            sender.send_to(&[0u8; 1200], target).expect("send");
        }
        let dropped = drops(inode, false).expect("row");
        assert!(dropped > 0, "256 datagrams into a 4 KiB buffer nobody reads, {dropped} dropped");
    }
}

//! `link.keepalive`: how a Link finds out that a WebSocket client is gone. With `"ping"` (the
//! default) it sends a WebSocket ping every `ping_interval_secs`; with `"tcp"` it sends none and
//! the kernel probes the socket instead — and a client that vanished without a FIN (its host
//! gone) is found by the probe and its connection ended. Driven from raw TCP clients, so the
//! pings the server sends (and does not send) are seen as frames.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use linkcast::config::KeepAlive;
use linkcast_core::room_table::TableLimits;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::support::eventually;
use crate::support::http::{raw_upgrade, take_server_frame};
use crate::support::link::{config, start_link};

const PING_SECS: u64 = 1;

/// The opcodes of every server frame that arrives within `wait`.
async fn opcodes_within(tcp: &mut TcpStream, mut buf: Vec<u8>, wait: Duration) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut seen = Vec::new();
    loop {
        while let Some((opcode, _)) = take_server_frame(&mut buf) {
            seen.push(opcode);
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Err(_) => return seen,
            Ok(Ok(0)) => panic!("the Link closed the connection; frames so far {seen:?}"),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(error)) => panic!("read: {error}"),
        }
    }
}

/// The kernel's timer on the Link's end of `client` (from `/proc/net/tcp`, field `tr`: 0 none,
/// 1 retransmit, 2 keep-alive or another, 4 zero-window probe).
fn server_side_timer(client: &TcpStream) -> u8 {
    let local = client.local_addr().expect("local");
    let peer = client.peer_addr().expect("peer");
    let hex = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port()),
        SocketAddr::V6(_) => panic!("loopback v4 expected"),
    };
    // The Link's socket: local = the Link's address, remote = the client's.
    let (server, remote) = (hex(peer), hex(local));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() > 5 && fields[1] == server && fields[2] == remote {
            return u8::from_str_radix(&fields[5][..2], 16).expect("timer field");
        }
    }
    panic!("the Link's socket {server} → {remote} is not in /proc/net/tcp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_mode_pings_and_tcp_mode_arms_the_kernel_instead() {
    for mode in [KeepAlive::Ping, KeepAlive::Tcp] {
        let (link, _hub) = start_link(
            config(1, |c| {
                c.link.keepalive = mode;
                c.link.ping_interval_secs = PING_SECS;
                c.link.idle_timeout_secs = 30;
            }),
            TableLimits::default(),
        )
        .await;
        let (mut tcp, buf) = raw_upgrade(link.ws_addr()).await;
        // Three ping intervals of a connection that only listens.
        let opcodes = opcodes_within(&mut tcp, buf, Duration::from_secs(3 * PING_SECS)).await;
        let pings = opcodes.iter().filter(|&&op| op == 0x9).count();
        match mode {
            KeepAlive::Ping => assert!(pings >= 2, "a ping every {PING_SECS} s: {opcodes:?}"),
            KeepAlive::Tcp => {
                assert_eq!(pings, 0, "no WebSocket pings with keepalive = \"tcp\": {opcodes:?}");
                // Silent for 3 × the interval and still served: no silence check in this mode.
                assert_eq!(link.shard_connections(), vec![1]);
                assert_eq!(server_side_timer(&tcp), 2, "the kernel's keep-alive timer runs on the Link's socket");
            }
        }
        link.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_without_a_fin_is_found_by_the_kernel_probe() {
    let (link, _hub) = start_link(
        config(1, |c| {
            c.link.keepalive = KeepAlive::Tcp;
            c.link.ping_interval_secs = PING_SECS;
            c.link.idle_timeout_secs = 30;
        }),
        TableLimits::default(),
    )
    .await;
    let (mut tcp, buf) = raw_upgrade(link.ws_addr()).await;
    // Let the connection settle: its answers (the automatic rooms' `joined`) sent and read,
    // then nothing more to send — a send to the vanished client would meet its kernel's RST
    // without any keep-alive.
    let opcodes = opcodes_within(&mut tcp, buf, Duration::from_millis(1500)).await;
    assert!(opcodes.iter().all(|&op| op == 0x1), "text frames only, no pings: {opcodes:?}");
    assert_eq!(link.shard_connections(), vec![1]);
    // The client's host "goes away": its socket is dropped in TCP repair mode, which sends
    // neither FIN nor RST (needs CAP_NET_ADMIN: CI runs as root). The Link hears nothing and
    // sends nothing (no pings in this mode); only the kernel's probe, after PING_SECS of
    // silence, meets the missing socket (a RST from the client's kernel) and ends it.
    let on: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    let set = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_REPAIR,
            std::ptr::addr_of!(on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "TCP_REPAIR needs CAP_NET_ADMIN (run the tests as root, as CI does): {}", std::io::Error::last_os_error());
    drop(tcp);
    // Nothing is sent to it (no pings, no messages): only the probe can find it.
    eventually(Duration::from_secs(10), "the Link ends the vanished client's connection", || async {
        (link.shard_connections() == vec![0]).then_some(())
    })
    .await;
    link.shutdown().await;
}

//! A hub alone in this process on loopback, and Links played by the test: [`FakeLink`] is the
//! Link's end of an in-process `uplink::pair` attached to the hub, driven frame by frame.
//!
//! Hub metrics are process-wide and labelled by hub id, and the whole test binary is one
//! process: every test starting a hub gives it an id of its own.

use std::net::SocketAddr;
use std::sync::Arc;

use linkcast::config::Config;
use linkcast::hub::{HubHandle, HubOptions};
use linkcast::uplink::{pair, HubPort};
use linkcast_core::frame::{ArchivedBody, Body, Frame, FrameBuilder, Kind};
use linkcast_core::hub_directory::HubId;
use linkcast_core::placement::LinkId;

use super::{any_addr, STEP};

/// Starts hub `id` with `config` on port 0 (no QUIC).
pub async fn start_hub(id: u32, config: Config) -> HubHandle {
    start_hub_at(id, config, any_addr(), None).await
}

/// Starts hub `id` on the given addresses.
pub async fn start_hub_at(id: u32, config: Config, http: SocketAddr, quic: Option<SocketAddr>) -> HubHandle {
    try_start_hub_at(id, config, http, quic).await.expect("hub starts")
}

/// Starts hub `id` on the given addresses; the bind error if a port is taken.
pub async fn try_start_hub_at(id: u32, config: Config, http: SocketAddr, quic: Option<SocketAddr>) -> std::io::Result<HubHandle> {
    // Every test hub has an admin listener (a secured hub serves `/metrics` only there).
    linkcast::hub::start(HubOptions { id: HubId(id), config: Arc::new(config), http_addr: http, quic_addr: quic, admin_addr: Some(any_addr()) })
        .await
}

/// A Link played by the test: the Link's end of an in-process pair attached to a hub.
pub struct FakeLink {
    pub id: u32,
    pub port: HubPort,
    nonce: u64,
}

impl FakeLink {
    /// Attaches a fake Link with id `id` to `hub` (port capacity `capacity` frames).
    pub async fn attach(hub: &HubHandle, id: u32, capacity: usize) -> FakeLink {
        let (port, link_port) = pair(LinkId(id), HubId(0), capacity);
        hub.link_ports().send(link_port).await.expect("hub takes ports");
        let mut link = FakeLink { id, port, nonce: 0 };
        link.sync().await;
        link
    }

    /// Sends a frame to the hub.
    pub async fn send(&self, frame: Frame) {
        self.port.to_hub.send(frame).await.expect("hub connected");
    }

    /// Announces `members` local members of `room` (0 = InterestRemove) and waits until the hub
    /// has processed it.
    pub async fn interest(&mut self, room: &str, members: u64) {
        let builder = FrameBuilder::new(room);
        let builder = if members == 0 { builder.interest_remove() } else { builder };
        self.send(builder.build(&Body::Interest { link: self.id, members })).await;
        self.sync().await;
    }

    /// Round-trips a heartbeat; returns every other frame received before its echo.
    pub async fn sync(&mut self) -> Vec<Frame> {
        self.nonce += 1;
        let nonce = self.nonce;
        self.send(FrameBuilder::new("").build(&Body::Heartbeat { nonce })).await;
        let mut others = Vec::new();
        loop {
            let frame = self.recv().await.expect("heartbeat echo before the port closes");
            match frame.body() {
                ArchivedBody::Heartbeat { nonce: n } if n.to_native() == nonce => return others,
                _ => others.push(frame),
            }
        }
    }

    /// The next frame from the hub (`None` if the hub closed the port); fails after [`STEP`].
    /// Presence frames (member counts, join/leave events: tests/it/presence.rs) are skipped.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            let frame = tokio::time::timeout(STEP, self.port.from_hub.recv()).await.expect("frame from hub in time")?;
            if !matches!(frame.kind(), Kind::Presence | Kind::Member) {
                return Some(frame);
            }
        }
    }

    /// Receives `n` frames of kind `Message`, skipping heartbeats.
    pub async fn messages(&mut self, n: usize) -> Vec<Frame> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let frame = self.recv().await.expect("port open");
            if frame.kind() == Kind::Message {
                out.push(frame);
            }
        }
        out
    }
}


/// Starts hubs `ids` that must know each other's HTTP addresses before they start (their config
/// lists them, for forwarding): free ports are chosen (bound, released), written into
/// `config(addresses)`, and the whole start is retried on fresh ports if one was taken meanwhile.
pub async fn start_hubs_on_free_ports(ids: &[u32], config: impl Fn(&[SocketAddr]) -> Config) -> Vec<HubHandle> {
    'attempt: for attempt in 1..=5 {
        let addrs: Vec<SocketAddr> = ids
            .iter()
            .map(|_| std::net::TcpListener::bind(any_addr()).and_then(|l| l.local_addr()).expect("a free port"))
            .collect();
        let config = config(&addrs);
        let mut hubs = Vec::new();
        for (id, addr) in ids.iter().zip(&addrs) {
            match try_start_hub_at(*id, config.clone(), *addr, None).await {
                Ok(hub) => hubs.push(hub),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    eprintln!("attempt {attempt}: {addr} taken meanwhile; starting again on fresh ports");
                    for hub in hubs {
                        hub.shutdown().await;
                    }
                    continue 'attempt;
                }
                Err(e) => panic!("hub {id} starts: {e}"),
            }
        }
        return hubs;
    }
    panic!("five port clashes in a row");
}

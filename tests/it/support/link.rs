//! A real Link in this process on loopback, against [`FakeHub`]: a real hub minus the network.
//! The fake hub is a `room_table::RoomTable` (the hub's own decision logic) driven by a task
//! that takes the Link's frames from `uplink::pair` ends handed out by its `HubConnector`,
//! publishes on request, and sends `poll_transmit` output back to the Link.

use std::collections::HashMap;
use std::sync::Arc;

use linkcast::config::Config;
use linkcast::link::{self, LinkHandle, LinkId, LinkOptions};
use linkcast::uplink::{pair, BoxFuture, HubConnector, HubPort, LinkPort, PORT_CAPACITY};
use linkcast_core::frame::{Frame, FLAG_JSON};
use linkcast_core::hub_directory::HubId;
use linkcast_core::placement;
use linkcast_core::room_table::{RoomTable, TableLimits};
use tokio::sync::{mpsc, oneshot};

use super::{any_addr, eventually, STEP};

enum Cmd {
    Attach(LinkPort),
    Publish { room: String, sender: String, flags: u16, data: Vec<u8>, reply: oneshot::Sender<u64> },
}

/// A hub made of the real `RoomTable`, reachable through its connector.
#[derive(Clone)]
pub struct FakeHub {
    cmd: mpsc::UnboundedSender<Cmd>,
}

struct Connector {
    link: LinkId,
    cmd: mpsc::UnboundedSender<Cmd>,
}

impl HubConnector for Connector {
    fn connect(&self, hub: HubId) -> BoxFuture<'_, std::io::Result<HubPort>> {
        let (hub_port, link_port) = pair(self.link, hub, PORT_CAPACITY);
        let sent = self.cmd.send(Cmd::Attach(link_port));
        Box::pin(async move {
            sent.map_err(|_| std::io::Error::other("fake hub stopped"))?;
            Ok(hub_port)
        })
    }
}

fn now_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl FakeHub {
    /// Starts the hub task on the current runtime.
    pub fn start(limits: TableLimits) -> FakeHub {
        let (cmd, mut commands) = mpsc::unbounded_channel::<Cmd>();
        tokio::spawn(async move {
            let mut table = RoomTable::new(limits, 0x5eed);
            let (frames_tx, mut frames) = mpsc::channel::<(placement::LinkId, Option<Frame>)>(PORT_CAPACITY);
            let mut links: HashMap<placement::LinkId, mpsc::Sender<Frame>> = HashMap::new();
            loop {
                tokio::select! {
                    cmd = commands.recv() => match cmd {
                        Some(Cmd::Attach(port)) => {
                            let LinkPort { link, to_link, mut from_link } = port;
                            links.insert(link, to_link);
                            let frames_tx = frames_tx.clone();
                            tokio::spawn(async move {
                                while let Some(frame) = from_link.recv().await {
                                    if frames_tx.send((link, Some(frame))).await.is_err() {
                                        return;
                                    }
                                }
                                let _ = frames_tx.send((link, None)).await;
                            });
                        }
                        Some(Cmd::Publish { room, sender, flags, data, reply }) => {
                            let seq = table.publish(now_micros(), &room, &sender, flags, &data, "").expect("publish accepted").seq;
                            let _ = reply.send(seq);
                        }
                        None => break,
                    },
                    Some((link, frame)) = frames.recv() => match frame {
                        Some(frame) => table.handle_link_frame(now_micros(), link, &frame),
                        None => {
                            table.handle_link_down(now_micros(), link);
                            links.remove(&link);
                        }
                    },
                }
                while let Some((link, frame)) = table.poll_transmit() {
                    if let Some(tx) = links.get(&link) {
                        let _ = tx.send(frame).await;
                    }
                }
            }
        });
        FakeHub { cmd }
    }

    /// The connector a Link uses to reach this hub.
    pub fn connector(&self, link: LinkId) -> Arc<dyn HubConnector> {
        Arc::new(Connector { link, cmd: self.cmd.clone() })
    }

    /// Publishes a JSON payload as the HTTP API would; returns its seq.
    pub async fn publish(&self, room: &str, data: &str) -> u64 {
        self.publish_raw(room, "server", FLAG_JSON, data.as_bytes()).await
    }

    /// Publishes with explicit flags and sender.
    pub async fn publish_raw(&self, room: &str, sender: &str, flags: u16, data: &[u8]) -> u64 {
        let (reply, answer) = oneshot::channel();
        let cmd = Cmd::Publish { room: room.into(), sender: sender.into(), flags, data: data.to_vec(), reply };
        assert!(self.cmd.send(cmd).is_ok(), "fake hub running");
        answer.await.expect("fake hub answers")
    }
}

/// A config with `shards` shards and the given tweaks.
pub fn config(shards: usize, tweak: impl FnOnce(&mut Config)) -> Arc<Config> {
    let mut config = Config::default();
    config.link.shards = shards;
    tweak(&mut config);
    Arc::new(config)
}

/// Starts Link 1 on loopback (port 0, QUIC too) against a fresh fake hub, and waits until the
/// Link is connected to it (before that, joins are answered 503 "hub unavailable").
pub async fn start_link(config: Arc<Config>, limits: TableLimits) -> (LinkHandle, FakeHub) {
    start_link_with_id(LinkId(1), config, limits).await
}

/// Like [`start_link`] with the Link's id (it names the Link's threads).
pub async fn start_link_with_id(id: LinkId, config: Arc<Config>, limits: TableLimits) -> (LinkHandle, FakeHub) {
    let hub = FakeHub::start(limits);
    let options = LinkOptions { id, config, ws_addr: any_addr(), quic_addr: Some(any_addr()), admin_addr: None };
    let handle = link::start(options, hub.connector(id)).expect("link starts");
    eventually(STEP, "the Link connects to the fake hub", || async { (handle.connected_hubs() > 0).then_some(()) }).await;
    (handle, hub)
}

//! The interest interface: how a Link and a hub exchange frames, whatever carries them.
//!
//! Both directions carry [`Frame`]s only:
//! - Link → hub: `Hello` (first), `InterestAdd`/`InterestRemove` (first member in / last member
//!   out, with the Link's member count), `Join` (a connection's `join since`), `Publish` (a
//!   client's publish), `Heartbeat`.
//! - hub → Link: `Message` (live, once per interested Link), `Replay`/`Gap`/`Joined` (answers to
//!   a `Join`, addressed to one connection), `PublishAck`/`Error`, `Heartbeat`, a room-wide
//!   `Reset {request: 0}` (the room's history was lost at the store), `OwnerMap` (the live hubs,
//!   versioned: which hub owns which room).
//!
//! A [`HubPort`] is the Link's end, a [`LinkPort`] the hub's end. In `serve` they are joined by
//! [`pair`] (in-process channels); in a cluster a QUIC stream driver pumps each end onto the
//! network (length-prefixed frames, see `frame::decode`). Tests drive a Link with a fake hub by
//! holding the [`LinkPort`] themselves. The channels are bounded (by frame count; frames are at
//! most `frame::DEFAULT_MAX_FRAME_LEN` bytes), so a slow side pushes back instead of growing.
//!
//! After a reconnect, a Link re-announces every room it holds members of (`InterestAdd`), so
//! the hub's interest set is rebuilt from the Links' truth.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::mpsc;

use linkcast_core::frame::Frame;
use linkcast_core::hub_directory::HubId;
use linkcast_core::placement::LinkId;

/// Default capacity, in frames, of each direction of a port.
pub const PORT_CAPACITY: usize = 4096;

/// The Link's end of a Link–hub connection.
#[derive(Debug)]
pub struct HubPort {
    /// Which hub this is.
    pub hub: HubId,
    /// Frames for the hub.
    pub to_hub: mpsc::Sender<Frame>,
    /// Frames from the hub, in the order the hub produced them.
    pub from_hub: mpsc::Receiver<Frame>,
}

/// The hub's end of a Link–hub connection.
#[derive(Debug)]
pub struct LinkPort {
    /// Which Link this is (from config in-process, from `Hello` over QUIC).
    pub link: LinkId,
    /// Frames for the Link.
    pub to_link: mpsc::Sender<Frame>,
    /// Frames from the Link.
    pub from_link: mpsc::Receiver<Frame>,
}

/// Two joined ends, as used in-process by `serve` and by tests.
pub fn pair(link: LinkId, hub: HubId, capacity: usize) -> (HubPort, LinkPort) {
    let (to_hub, from_link) = mpsc::channel(capacity);
    let (to_link, from_hub) = mpsc::channel(capacity);
    (HubPort { hub, to_hub, from_hub }, LinkPort { link, to_link, from_link })
}

/// A boxed future, as returned by [`HubConnector::connect`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a Link reaches a hub; called again after a connection ends.
pub trait HubConnector: Send + Sync + 'static {
    /// Opens a connection to `hub` (QUIC in a cluster, a channel pair in `serve`).
    fn connect(&self, hub: HubId) -> BoxFuture<'_, std::io::Result<HubPort>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pair_carries_frames_both_ways() {
        let (mut hub_port, mut link_port) = pair(LinkId(3), HubId(0), 4);
        let frame = Frame::message("lobby", 1, 2, "u", 0, b"x");
        hub_port.to_hub.send(frame.clone()).await.expect("open");
        assert_eq!(link_port.from_link.recv().await, Some(frame.clone()));
        link_port.to_link.send(frame.clone()).await.expect("open");
        assert_eq!(hub_port.from_hub.recv().await, Some(frame));
    }
}

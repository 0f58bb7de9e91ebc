//! A Link follows its hubs' owner map (`OwnerMap {version, hubs}`), against two scripted fake
//! hubs: the test holds the hubs' ends of the Link's `uplink::pair` connections (through its own
//! `HubConnector`) and writes every hub frame by hand, so the order of what each hub says is
//! exact.
//!
//! - a newer map that moves a room: the Link drops its interest at the old owner, announces it
//!   to the new one and rejoins there once (`Join {since: pushed, epoch}`); live messages before
//!   the rejoin's answer and frames from the old owner are not delivered; members get every
//!   message once, in order, without a gap; an older (or equal) map changes nothing;
//! - a room-wide `Reset {request: 0}` (the store lost the room's history): members get `reset`,
//!   then the new epoch from seq 1;
//! - a hub connection that drops never moves a room: the Link rejoins at the same hub;
//! - a member who joins while the room's rejoin is still owed does not move the Link's position:
//!   the rejoin still asks from the last seq the members got, so they get what the outage held.
//! - a member who joins past messages the hub's queue to this Link dropped does not hide the
//!   hub's room-wide `Gap` from the members already there: they are told at once;
//! - after a reconnect the rooms with the most members are announced and rejoined first, each
//!   room's interest before its rejoin, and `linkcast_link_rooms_rejoining` counts them meanwhile.

use std::collections::HashMap;
use std::sync::Arc;

use linkcast::config::HubEntry;
use linkcast::link::{self, LinkHandle, LinkId, LinkOptions};
use linkcast::uplink::{pair, BoxFuture, HubConnector, HubPort, LinkPort, PORT_CAPACITY};
use linkcast_core::frame::{ArchivedBody, Body, Frame, FrameBuilder, Kind, FLAG_JSON, FLAG_PAGED};
use linkcast_core::hub_directory::{HubDirectory, HubId};
use linkcast_core::protocol::format_epoch;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::support::http::{metric, metrics_text};
use crate::support::link::config;
use crate::support::ws::WsClient;
use crate::support::{any_addr, eventually, local, STEP};

const E1: u64 = 0x00e1_00e1;
const E2: u64 = 0x00e2_00e2;

/// Hands the test the hub end of every connection the Link opens.
struct Scripted {
    attached: mpsc::UnboundedSender<(HubId, LinkPort)>,
}

impl HubConnector for Scripted {
    fn connect(&self, hub: HubId) -> BoxFuture<'_, std::io::Result<HubPort>> {
        let (hub_port, link_port) = pair(LinkId(1), hub, PORT_CAPACITY);
        let sent = self.attached.send((hub, link_port));
        Box::pin(async move {
            sent.map_err(|_| std::io::Error::other("test ended"))?;
            Ok(hub_port)
        })
    }
}

/// The connections the Link opened, by hub, not yet taken by the test.
struct Connections {
    attached: mpsc::UnboundedReceiver<(HubId, LinkPort)>,
    waiting: HashMap<HubId, LinkPort>,
}

impl Connections {
    /// The Link's next connection to `hub`.
    async fn next(&mut self, hub: HubId) -> FakeHub {
        loop {
            if let Some(port) = self.waiting.remove(&hub) {
                return FakeHub { port };
            }
            let (id, port) = tokio::time::timeout(STEP, self.attached.recv())
                .await
                .unwrap_or_else(|_| panic!("the Link did not connect to hub {}", hub.0))
                .expect("connector alive");
            self.waiting.insert(id, port);
        }
    }
}

/// One hub end, scripted by the test.
struct FakeHub {
    port: LinkPort,
}

impl FakeHub {
    async fn send(&self, frame: Frame) {
        self.port.to_link.send(frame).await.expect("the Link reads its hub connection");
    }

    /// The next frame the Link sent this hub (frames about the rooms the Link joins by itself,
    /// `all` and `user:*`, are not this test's subject and skipped).
    async fn next(&mut self) -> Frame {
        loop {
            let frame = tokio::time::timeout(STEP, self.port.from_link.recv())
                .await
                .expect("the Link sends the hub a frame")
                .expect("hub connection open");
            // System rooms and presence reports (tests/it/presence.rs covers them) are not this
            // test's subject.
            if !linkcast_core::system_rooms::is_server_only(frame.room()) && !matches!(frame.kind(), Kind::Member | Kind::MemberList) {
                return frame;
            }
        }
    }

    /// Asserts the Link sent this hub nothing (beyond what was read; system rooms and presence
    /// reports aside).
    fn assert_quiet(&mut self, why: &str) {
        while let Ok(frame) = self.port.from_link.try_recv() {
            if !linkcast_core::system_rooms::is_server_only(frame.room()) && !matches!(frame.kind(), Kind::Member | Kind::MemberList) {
                panic!("{why}: the Link sent {frame:?}");
            }
        }
    }

    /// Reads the Link's interest announcement for `room`: `(kind, members)`.
    async fn interest(&mut self, room: &str) -> (Kind, u64) {
        let frame = self.next().await;
        assert_eq!(frame.room(), room, "{frame:?}");
        match frame.body() {
            ArchivedBody::Interest { link, members } => {
                assert_eq!(link.to_native(), 1);
                (frame.kind(), members.to_native())
            }
            _ => panic!("expected interest, got {frame:?}"),
        }
    }

    /// Reads a join of `room`: `(request, since, epoch, flags)`.
    async fn join(&mut self, room: &str) -> (u64, Option<u64>, Option<u64>, u16) {
        let frame = self.next().await;
        assert_eq!(frame.room(), room, "{frame:?}");
        match frame.body() {
            ArchivedBody::Join { request, since, epoch } => (
                request.to_native(),
                since.as_ref().map(|s| s.to_native()),
                epoch.as_ref().map(|e| e.to_native()),
                frame.flags(),
            ),
            _ => panic!("expected a join, got {frame:?}"),
        }
    }

    /// Answers a connection's join of `room` the Link already announced with `Joined`
    /// (the member counts it announces once a second, of any room, are skipped).
    async fn answer_join(&mut self, room: &str, epoch: u64, last_seq: u64) {
        let request = loop {
            let frame = self.next().await;
            match frame.body() {
                ArchivedBody::Interest { .. } => continue,
                ArchivedBody::Join { request, .. } if frame.room() == room => break request.to_native(),
                _ => panic!("expected a join of {room}, got {frame:?}"),
            }
        };
        self.send(joined(room, request, epoch, last_seq)).await;
    }

    /// Answers a connection's first join of `room` (interest, then `Join`) with `Joined`.
    async fn answer_first_join(&mut self, room: &str, epoch: u64, last_seq: u64) {
        assert_eq!(self.interest(room).await, (Kind::InterestAdd, 1));
        let (request, since, _, flags) = self.join(room).await;
        assert_eq!((since, flags & FLAG_PAGED), (None, FLAG_PAGED), "a connection's join is paged");
        self.send(joined(room, request, epoch, last_seq)).await;
    }
}

fn message(room: &str, seq: u64, from: &str) -> Frame {
    let data = json!({"seq": seq, "from": from}).to_string();
    Frame::message(room, seq, 1_700_000_000_000_000 + seq, "server", FLAG_JSON, data.as_bytes())
}

fn replay(room: &str, request: u64, seq: u64, from: &str) -> Frame {
    let data = json!({"seq": seq, "from": from}).to_string().into_bytes();
    FrameBuilder::new(room).seq(seq).sender("server").flags(FLAG_JSON).build(&Body::Replay { request, data })
}

fn joined(room: &str, request: u64, epoch: u64, last_seq: u64) -> Frame {
    FrameBuilder::new(room).seq(last_seq).build(&Body::Joined { request, epoch })
}

fn owner_map(version: u64, hubs: &[u32]) -> Frame {
    FrameBuilder::new("").build(&Body::OwnerMap { version, hubs: hubs.to_vec() })
}

/// A room the plain ring gives to `hub` (of hubs 0 and 1).
fn room_owned_by(hub: HubId) -> String {
    let directory = HubDirectory::new([HubId(0), HubId(1)]);
    (0..).map(|n| format!("map-room-{n}")).find(|room| directory.owner(room) == Some(hub)).expect("some room")
}

/// Starts Link 1 configured with hubs 0 and 1 (scripted), and waits until both are connected.
async fn start() -> (LinkHandle, FakeHub, FakeHub, Connections) {
    let config = config(1, |c| {
        c.hubs = (0..2)
            .map(|id| HubEntry { id, http: local(1), quic: local(2), admin: None, tls_name: None })
            .collect();
    });
    let (attached, rx) = mpsc::unbounded_channel();
    let options = LinkOptions { id: LinkId(1), config, ws_addr: any_addr(), quic_addr: None, admin_addr: None };
    let link = link::start(options, Arc::new(Scripted { attached })).expect("link starts");
    let mut connections = Connections { attached: rx, waiting: HashMap::new() };
    let (hub0, hub1) = (connections.next(HubId(0)).await, connections.next(HubId(1)).await);
    eventually(STEP, "the Link connects to both hubs", || async { (link.connected_hubs() == 2).then_some(()) }).await;
    (link, hub0, hub1, connections)
}

/// Reads the next room message and checks its seq and origin tag.
async fn expect_message(ws: &mut WsClient, room: &str, seq: u64, from: &str) {
    let got: Value = ws.next_json().await;
    assert_eq!(got["room"], room, "{got}");
    assert_eq!(got["seq"], seq, "expected seq {seq} from {from}, got {got}");
    assert_eq!(got["data"], json!({"seq": seq, "from": from}), "{got}");
}

/// The first member of `room` (owned by hub 0), joined at seq 0, that got message 1 from it.
async fn member_with_message_1(link: &LinkHandle, hub0: &mut FakeHub, room: &str) -> WsClient {
    let mut ws = WsClient::connect_to(link.ws_addr(), None).await;
    let ((_, last_seq), ()) = tokio::join!(ws.join(room, None), hub0.answer_first_join(room, E1, 0));
    assert_eq!(last_seq, 0);
    hub0.send(message(room, 1, "hub0")).await;
    expect_message(&mut ws, room, 1, "hub0").await;
    ws
}

/// Ends hub 0's connection: the Link reconnects, announces its one member of `room` again and
/// rejoins it. Returns the new connection and the rejoin's `(request, since, epoch)`.
async fn reconnect_hub0(hub0: FakeHub, connections: &mut Connections, room: &str) -> (FakeHub, u64, Option<u64>, Option<u64>) {
    drop(hub0);
    let mut hub0 = connections.next(HubId(0)).await;
    assert_eq!(hub0.interest(room).await, (Kind::InterestAdd, 1));
    let (rejoin, since, epoch, _) = hub0.join(room).await;
    (hub0, rejoin, since, epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_owner_map_moves_the_room_and_members_get_every_message_once_in_order() {
    let (link, mut hub0, mut hub1, _connections) = start().await;
    let room = room_owned_by(HubId(0));
    let mut ws = WsClient::connect_to(link.ws_addr(), None).await;
    let ((replayed, last_seq), ()) = tokio::join!(ws.join(&room, None), hub0.answer_first_join(&room, E1, 0));
    assert_eq!((replayed.len(), last_seq), (0, 0));
    for seq in 1..=3 {
        hub0.send(message(&room, seq, "hub0")).await;
    }
    for seq in 1..=3 {
        expect_message(&mut ws, &room, seq, "hub0").await;
    }

    // The process's metrics recorder is installed by the first /metrics rendering.
    metrics_text(link.ws_addr()).await;
    // Hub 0 says only hub 1 is alive; what it sends afterwards for the room is not the owner's.
    hub0.send(owner_map(5, &[1])).await;
    hub0.send(message(&room, 4, "old-owner")).await;
    assert_eq!(hub0.interest(&room).await, (Kind::InterestRemove, 0), "interest dropped at the old owner");
    assert_eq!(hub1.interest(&room).await, (Kind::InterestAdd, 1), "interest announced to the new owner");
    let (rejoin, since, epoch, flags) = hub1.join(&room).await;
    assert_eq!((since, epoch, flags & FLAG_PAGED), (Some(3), Some(E1), 0), "one rejoin from the last pushed seq");
    // A live message before the rejoin's answer is dropped: the replay covers it.
    hub1.send(message(&room, 5, "hub1-live-early")).await;
    hub1.send(replay(&room, rejoin, 4, "hub1-replay")).await;
    hub1.send(replay(&room, rejoin, 5, "hub1-replay")).await;
    hub1.send(joined(&room, rejoin, E1, 5)).await;
    hub1.send(message(&room, 6, "hub1")).await;
    hub1.send(message(&room, 7, "hub1")).await;
    expect_message(&mut ws, &room, 4, "hub1-replay").await;
    expect_message(&mut ws, &room, 5, "hub1-replay").await;
    expect_message(&mut ws, &room, 6, "hub1").await;
    expect_message(&mut ws, &room, 7, "hub1").await;

    // Older and equal versions are ignored (sent by hub 1, on the channel of what follows: had
    // one been taken, hub 0 would own the room again and hub 1's message 8 would be dropped).
    hub1.send(owner_map(4, &[0])).await;
    hub1.send(owner_map(5, &[0, 1])).await;
    hub0.send(owner_map(3, &[0])).await;
    hub1.send(message(&room, 8, "hub1")).await;
    expect_message(&mut ws, &room, 8, "hub1").await;
    hub0.assert_quiet("the room stayed with hub 1");
    hub1.assert_quiet("no second rejoin");

    let text = metrics_text(link.ws_addr()).await;
    assert_eq!(metric(&text, "linkcast_link_owner_map_version", &[]), 5.0);
    assert!(metric(&text, "linkcast_link_owner_moves_total", &[]) >= 1.0);

    // A new member joins at the new owner.
    let mut late = WsClient::connect_to(link.ws_addr(), None).await;
    late.send(json!({"op": "join", "room": room})).await;
    let (request, _, _, _) = hub1.join(&room).await;
    hub1.send(joined(&room, request, E1, 8)).await;
    assert_eq!(late.next_json().await["op"], "joined");
    hub1.send(message(&room, 9, "hub1")).await;
    expect_message(&mut ws, &room, 9, "hub1").await;
    expect_message(&mut late, &room, 9, "hub1").await;
    link.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_wide_reset_gives_members_a_reset_then_the_new_epoch_from_seq_1() {
    let (link, mut hub0, _hub1, _connections) = start().await;
    let room = room_owned_by(HubId(0));
    let mut ws = WsClient::connect_to(link.ws_addr(), None).await;
    let ((_, last_seq), ()) = tokio::join!(ws.join(&room, None), hub0.answer_first_join(&room, E1, 10));
    assert_eq!(last_seq, 10);
    hub0.send(message(&room, 11, "hub0")).await;
    expect_message(&mut ws, &room, 11, "hub0").await;

    // The store lost the room: hub 0 resets every member of it on this Link.
    hub0.send(FrameBuilder::new(&room).seq(0).build(&Body::Reset { request: 0, epoch: E2 })).await;
    hub0.send(message(&room, 1, "hub0-new-epoch")).await;
    hub0.send(message(&room, 2, "hub0-new-epoch")).await;
    assert_eq!(ws.next_json().await, json!({"op": "reset", "room": room, "epoch": format_epoch(E2), "last_seq": 0}));
    expect_message(&mut ws, &room, 1, "hub0-new-epoch").await;
    expect_message(&mut ws, &room, 2, "hub0-new-epoch").await;
    // The same reset again (a retransmission) tells no one twice.
    hub0.send(FrameBuilder::new(&room).seq(2).build(&Body::Reset { request: 0, epoch: E2 })).await;
    hub0.send(message(&room, 3, "hub0-new-epoch")).await;
    expect_message(&mut ws, &room, 3, "hub0-new-epoch").await;
    link.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_hub_connection_never_moves_a_room() {
    let (link, mut hub0, mut hub1, mut connections) = start().await;
    let room = room_owned_by(HubId(0));
    let mut ws = member_with_message_1(&link, &mut hub0, &room).await;

    // Hub 0's connection ends. No map says it is dead: the Link reconnects to it and rejoins there.
    let (hub0, rejoin, since, epoch) = reconnect_hub0(hub0, &mut connections, &room).await;
    assert_eq!((since, epoch), (Some(1), Some(E1)));
    hub1.assert_quiet("hub 1 is not the room's owner");
    hub0.send(replay(&room, rejoin, 2, "hub0-replay")).await;
    hub0.send(joined(&room, rejoin, E1, 2)).await;
    hub0.send(message(&room, 3, "hub0")).await;
    expect_message(&mut ws, &room, 2, "hub0-replay").await;
    expect_message(&mut ws, &room, 3, "hub0").await;
    hub1.assert_quiet("hub 1 is not the room's owner");
    // Messages from a hub that does not own the room are not delivered.
    hub1.send(message(&room, 4, "not-the-owner")).await;
    hub0.send(message(&room, 4, "hub0")).await;
    expect_message(&mut ws, &room, 4, "hub0").await;
    link.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_joins_while_the_room_rejoins_does_not_cut_the_rejoins_replay_short() {
    let (link, mut hub0, _hub1, mut connections) = start().await;
    let room = room_owned_by(HubId(0));
    let mut first = member_with_message_1(&link, &mut hub0, &room).await;

    // The connection drops; the hub sequences 2 and 3 meanwhile. The Link rejoins from 1.
    let (mut hub0, rejoin, since, _) = reconnect_hub0(hub0, &mut connections, &room).await;
    assert_eq!(since, Some(1));
    // A second member joins before the hub answers. The hub answers in order: the rejoin is
    // refused for now (it stays owed and is retried within a second), the member joined at 3.
    let mut second = WsClient::connect_to(link.ws_addr(), None).await;
    let ((replayed, last_seq), ()) = tokio::join!(second.join(&room, None), async {
        let (request, since, _, _) = hub0.join(&room).await;
        assert_eq!(since, None, "a plain join");
        let refused = Body::Error { request: rejoin, code: 503, reason: "room store unavailable".into(), retry_after_ms: 0 };
        hub0.send(FrameBuilder::new(&room).build(&refused)).await;
        hub0.send(joined(&room, request, E1, 3)).await;
    });
    assert_eq!((replayed.len(), last_seq), (0, 3));

    // The retried rejoin still asks from 1: 2 and 3 reached no member of this Link yet.
    let (retry, since, epoch) = loop {
        let frame = hub0.next().await;
        match frame.body() {
            ArchivedBody::Interest { .. } => continue, // the new member count, once a second
            ArchivedBody::Join { request, since, epoch } => {
                break (request.to_native(), since.as_ref().map(|s| s.to_native()), epoch.as_ref().map(|e| e.to_native()))
            }
            _ => panic!("expected the retried rejoin, got {frame:?}"),
        }
    };
    assert_eq!((since, epoch), (Some(1), Some(E1)), "the rejoin asks from the last seq the members got");
    hub0.send(replay(&room, retry, 2, "hub0-replay")).await;
    hub0.send(replay(&room, retry, 3, "hub0-replay")).await;
    hub0.send(joined(&room, retry, E1, 3)).await;
    hub0.send(message(&room, 4, "hub0")).await;
    expect_message(&mut first, &room, 2, "hub0-replay").await;
    expect_message(&mut first, &room, 3, "hub0-replay").await;
    expect_message(&mut first, &room, 4, "hub0").await;
    // The second member joined at 3: it gets 4 only, once.
    expect_message(&mut second, &room, 4, "hub0").await;
    link.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reconnect_the_rooms_with_the_most_members_rejoin_first() {
    let (link, mut hub0, _hub1, mut connections) = start().await;
    let directory = HubDirectory::new([HubId(0), HubId(1)]);
    let rooms: Vec<String> =
        (0..).map(|n| format!("sized-room-{n}")).filter(|room| directory.owner(room) == Some(HubId(0))).take(3).collect();
    // Members: one in rooms[0], three in rooms[1], two in rooms[2].
    let mut members = Vec::new();
    for (index, joins) in [vec![0, 1, 2], vec![1, 2], vec![1]].into_iter().enumerate() {
        let mut ws = WsClient::connect_to(link.ws_addr(), None).await;
        for room in joins.into_iter().map(|r| &rooms[r]) {
            if index == 0 {
                tokio::join!(ws.join(room, None), hub0.answer_first_join(room, E1, 0));
            } else {
                tokio::join!(ws.join(room, None), hub0.answer_join(room, E1, 0));
            }
        }
        members.push(ws);
    }
    metrics_text(link.ws_addr()).await;

    drop(hub0);
    let mut hub0 = connections.next(HubId(0)).await;
    let (mut announced, mut rejoins) = (Vec::new(), Vec::new());
    while rejoins.len() < rooms.len() {
        let frame = hub0.next().await;
        match frame.body() {
            ArchivedBody::Interest { .. } => announced.push(frame.room().to_owned()),
            ArchivedBody::Join { request, .. } => {
                assert!(announced.iter().any(|r| r == frame.room()), "{} rejoined before its interest was announced", frame.room());
                rejoins.push((frame.room().to_owned(), request.to_native()));
            }
            _ => panic!("expected interest or a rejoin, got {frame:?}"),
        }
    }
    let order: Vec<&str> = rejoins.iter().map(|(room, _)| room.as_str()).collect();
    assert_eq!(order, [&rooms[1], &rooms[2], &rooms[0]], "the rooms with the most members first");
    // Other tests' Links in this process add to the gauge, never take from this Link's count.
    eventually(STEP, "the three rooms counted as rejoining", || async {
        let text = metrics_text(link.ws_addr()).await;
        (metric(&text, "linkcast_link_rooms_rejoining", &[]) >= 3.0).then_some(())
    })
    .await;
    for (room, request) in &rejoins {
        hub0.send(joined(room, *request, E1, 0)).await;
    }
    hub0.send(message(&rooms[0], 1, "hub0")).await;
    expect_message(&mut members[0], &rooms[0], 1, "hub0").await;
    let text = metrics_text(link.ws_addr()).await;
    assert!(metric(&text, "linkcast_link_rejoins_total", &[]) >= 3.0, "{text}");
    link.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_joins_past_messages_the_hub_dropped_does_not_hide_their_gap() {
    let (link, mut hub0, _hub1, _connections) = start().await;
    let room = room_owned_by(HubId(0));
    let mut first = member_with_message_1(&link, &mut hub0, &room).await;

    // The hub's queue to this Link is full: it drops 2 and 3 for this Link (answers still pass,
    // queued even above the limit). A second member joins at 3; then the queue drains and the
    // hub tells the Link what it dropped.
    let mut second = WsClient::connect_to(link.ws_addr(), None).await;
    let ((replayed, last_seq), ()) = tokio::join!(second.join(&room, None), hub0.answer_join(&room, E1, 3));
    assert_eq!((replayed.len(), last_seq), (0, 3));
    hub0.send(FrameBuilder::new(&room).build(&Body::Gap { request: 0, first_lost: 2, last_lost: 3, resume_from: 4 })).await;
    // The first member learns it at once, not at the room's next message (there may be none).
    let gap = first.next_json().await;
    assert_eq!(gap, json!({"op": "gap", "room": room, "first_lost": 2, "last_lost": 3, "resume_from": 4}));
    hub0.send(message(&room, 4, "hub0")).await;
    expect_message(&mut first, &room, 4, "hub0").await;
    // The second member joined at 3: no gap for it, 4 once.
    expect_message(&mut second, &room, 4, "hub0").await;
    link.shutdown().await;
}

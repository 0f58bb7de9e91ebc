//! Attacks on the cluster's QUIC ports and on the hub's resources, each checking the clear
//! refusal and that a bystander keeps getting its messages (issue 13, items 1, 6, 7, 8):
//! - the hub's Link port: no secret configured, a wrong secret, an unlisted Link id, a Link
//!   injecting bad JSON or sending hub-only frames, a reconnect replacing the old connection;
//! - half-open QUIC handshakes from one source address against the hub's Link port and the
//!   Link's client port (per-address pre-auth caps, one deadline);
//! - a Link that stops reading: the hub gives up on it after the write timeout and frees its
//!   queue at once; a Link that floods the hub slows neither HTTP publishes nor other Links.

use linkcast::config::{Config, LinkEntry};
use linkcast::quic::{client_endpoint, write_frames, FrameReader, ALPN_CLIENT, ALPN_HUB};
use linkcast_core::frame::{ArchivedBody, Body, Frame, FrameBuilder, Kind, FLAG_JSON};
use linkcast_core::room_table::TableLimits;

use crate::support::attack::{close_of, loopback, silent_handshakes, QuicLink};
use crate::support::http::{get_json, history, hub_metric, metric, metrics_text, publish_ok};
use crate::support::hub::{start_hub_at, FakeLink};
use crate::support::link::{config, start_link};
use crate::support::ws::WsClient;
use crate::support::{any_addr, eventually, STEP};

const SECRET: &str = "cluster-test-secret";

/// A config with the cluster secret and `[[links]]` listing `links`.
fn cluster_config(links: &[u32]) -> Config {
    let mut config = Config::default();
    config.auth.cluster_secret = SECRET.into();
    let addr = "127.0.0.1:9".parse().expect("addr");
    config.links = links.iter().map(|&id| LinkEntry { id, ws: addr, quic: addr, public_ws: None, public_quic: None, admin: None }).collect();
    config
}

/// The next frame not about a room the Link joins by itself (`all`, `user:*`).
async fn next_not_system(reader: &mut FrameReader) -> Frame {
    loop {
        let frame = tokio::time::timeout(STEP, reader.next()).await.expect("in time").expect("stream").expect("open");
        if !linkcast_core::system_rooms::is_server_only(frame.room()) {
            return frame;
        }
    }
}

/// A bystander: an in-process Link with a member in `room` that must get the next publish.
async fn assert_bystander_served(hub: &linkcast::hub::HubHandle, bystander: &mut FakeLink, room: &str) {
    let seq = publish_ok(hub.http_addr(), room, None, b"still here").await;
    let got = bystander.messages(1).await;
    assert_eq!((got[0].room(), got[0].seq(), got[0].payload()), (room, seq, &b"still here"[..]));
}

#[tokio::test]
async fn the_link_port_refuses_no_secret_wrong_secret_and_unlisted_ids() {
    // A hub without a cluster secret takes no Link over the network, whatever it presents.
    let open = start_hub_at(1301, Config::default(), any_addr(), Some(any_addr())).await;
    let quic = open.quic_addr().expect("quic bound");
    let link = QuicLink::hello(quic, loopback(1), 1, "").await;
    assert_eq!(close_of(&link.conn).await, (401, "cluster secret not configured".into()));
    let link = QuicLink::hello(quic, loopback(1), 1, "guess").await;
    assert_eq!(close_of(&link.conn).await, (401, "cluster secret not configured".into()));
    assert!(!open.is_link_connected(linkcast_core::placement::LinkId(1)));
    open.shutdown().await;

    let hub = start_hub_at(1302, cluster_config(&[5]), any_addr(), Some(any_addr())).await;
    let quic = hub.quic_addr().expect("quic bound");
    let mut bystander = FakeLink::attach(&hub, 7, 64).await;
    bystander.interest("lobby", 1).await;

    let wrong = QuicLink::hello(quic, loopback(1), 5, "wrong").await;
    assert_eq!(close_of(&wrong.conn).await, (401, "bad cluster secret".into()));
    let unlisted = QuicLink::hello(quic, loopback(1), 6, SECRET).await;
    assert_eq!(close_of(&unlisted.conn).await, (403, "link id not listed".into()));
    // An unlisted id even with the right secret never replaced the bystander or reached a room.
    let impostor = QuicLink::hello(quic, loopback(1), 7, SECRET).await;
    assert_eq!(close_of(&impostor.conn).await, (403, "link id not listed".into()));
    assert_bystander_served(&hub, &mut bystander, "lobby").await;

    // The listed Link attaches; reconnecting after a cut, its newer connection (which passed
    // the same checks) replaces the older one.
    let mut first = QuicLink::hello(quic, loopback(1), 5, SECRET).await;
    first.send(vec![FrameBuilder::new("q").build(&Body::Interest { link: 5, members: 1 })]).await;
    first.sync().await;
    let mut second = QuicLink::hello(quic, loopback(2), 5, SECRET).await;
    second.sync().await;
    assert_eq!(close_of(&first.conn).await, (0, "replaced by a newer connection of the same Link".into()));
    second.send(vec![FrameBuilder::new("q").build(&Body::Interest { link: 5, members: 1 })]).await;
    second.sync().await;
    let seq = publish_ok(hub.http_addr(), "q", None, b"to the new connection").await;
    let message = second.recv().await;
    assert_eq!((message.kind(), message.seq()), (Kind::Message, seq));
    let text = metrics_text(hub.admin_addr().expect("admin listener")).await;
    assert!(hub_metric(&text, "linkcast_hub_link_hello_refused_total", 1302) >= 3.0, "{text}");
    assert_bystander_served(&hub, &mut bystander, "lobby").await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_link_cannot_inject_json_or_send_hub_frames() {
    let hub = start_hub_at(1303, cluster_config(&[5]), any_addr(), Some(any_addr())).await;
    let mut bystander = FakeLink::attach(&hub, 7, 64).await;
    bystander.interest("r", 1).await;
    let mut link = QuicLink::hello(hub.quic_addr().expect("quic"), loopback(1), 5, SECRET).await;

    // Flagged JSON that is not JSON (it would be pasted into every client's frame): refused.
    let inject = |request, flags, data: &[u8]| {
        FrameBuilder::new("r").sender("mallory").flags(flags).build(&Body::Publish { request, key: String::new(), data: data.to_vec() })
    };
    link.send(vec![
        inject(1, FLAG_JSON, br#"1,"from":"admin","data":"pwned""#),
        inject(2, 0, &[0xc3, 0x28]),
        // Kinds only a hub sends: dropped, warned about and counted.
        Frame::message("r", 99, 1, "hub", 0, b"forged message"),
        FrameBuilder::new("r").build(&Body::Joined { request: 3, epoch: 1 }),
    ])
    .await;
    let answers = link.sync().await;
    let errors: Vec<(u64, u16, String)> = answers
        .iter()
        .filter_map(|f| match f.body() {
            ArchivedBody::Error { request, code, reason, .. } => Some((request.to_native(), code.to_native(), reason.to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(errors, vec![(1, 400, "payload flagged JSON is not valid JSON".to_owned()), (2, 400, "payload is not UTF-8".to_owned())]);
    assert!(history(hub.http_addr(), "r").await.is_empty(), "nothing was sequenced");
    let text = metrics_text(hub.admin_addr().expect("admin listener")).await;
    assert_eq!(hub_metric(&text, "linkcast_hub_link_frames_dropped_total", 1303), 4.0, "{text}");

    // The same Link's valid publish is sequenced; the bystander gets it, and its own traffic.
    link.send(vec![inject(4, FLAG_JSON, br#"{"ok":true}"#)]).await;
    let ack = link.recv().await;
    assert!(matches!(ack.body(), ArchivedBody::PublishAck { request, .. } if request.to_native() == 4));
    let got = bystander.messages(1).await;
    assert_eq!((got[0].seq(), got[0].payload(), got[0].flags()), (1, &br#"{"ok":true}"#[..], FLAG_JSON));
    assert_bystander_served(&hub, &mut bystander, "r").await;
    hub.shutdown().await;
}

#[tokio::test]
async fn silent_handshakes_from_one_address_do_not_lock_real_links_out() {
    let hub = start_hub_at(1304, cluster_config(&[5]), any_addr(), Some(any_addr())).await;
    let quic = hub.quic_addr().expect("quic");
    let mut bystander = FakeLink::attach(&hub, 7, 64).await;
    bystander.interest("lobby", 1).await;

    // 200 handshakes from 127.0.0.1 that never open a stream nor say Hello: beyond the
    // per-address cap they are refused before any handshake work.
    let (_attacker, open, refused) = silent_handshakes(quic, loopback(1), ALPN_HUB, 200).await;
    assert!(open.len() <= 8, "{} half-open connections from one address", open.len());
    assert_eq!(open.len() + refused, 200);
    let text = metrics_text(hub.admin_addr().expect("admin listener")).await;
    assert_eq!(hub_metric(&text, "linkcast_hub_link_preauth_refused_total", 1304), refused as f64);

    // The real Link, from another address, attaches at once; the bystander is served.
    let mut link = QuicLink::hello(quic, loopback(2), 5, SECRET).await;
    link.send(vec![FrameBuilder::new("q").build(&Body::Interest { link: 5, members: 1 })]).await;
    link.sync().await;
    assert!(hub.is_link_connected(linkcast_core::placement::LinkId(5)));
    assert_bystander_served(&hub, &mut bystander, "lobby").await;

    // The half-open ones get one deadline for handshake, stream and Hello together.
    let first = open.first().expect("some handshakes completed");
    assert_eq!(close_of(first).await, (408, "timed out waiting for hello".into()));
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_handshakes_on_the_link_client_port_leave_room_for_real_clients() {
    let (link, fake_hub) = start_link(config(1, |_| {}), TableLimits::default()).await;
    let quic = link.quic_addr().expect("quic listener");
    let before = metric(&metrics_text(link.ws_addr()).await, "linkcast_link_quic_preauth_refused_total", &[]);
    let mut ws = WsClient::connect_to(link.ws_addr(), None).await;
    ws.join("room", None).await;

    let (_attacker, open, refused) = silent_handshakes(quic, loopback(1), ALPN_CLIENT, 200).await;
    assert!(open.len() <= 64, "{} half-open connections from one address", open.len());
    assert!(refused >= 136);
    let after = metric(&metrics_text(link.ws_addr()).await, "linkcast_link_quic_preauth_refused_total", &[]);
    assert!(after - before >= refused as f64, "refusals counted: {before} → {after}");

    // A real QUIC client from another address joins and gets the room's messages, like the
    // WebSocket bystander.
    let endpoint = client_endpoint(loopback(3), &linkcast::tls::Trust::LoopbackDev, ALPN_CLIENT).expect("endpoint");
    let conn = endpoint.connect(quic, "localhost").expect("connect").await.expect("handshake");
    let (mut send, recv) = conn.open_bi().await.expect("stream");
    let mut reader = FrameReader::new(recv, 1 << 20);
    let mut out = vec![
        FrameBuilder::new("").build(&Body::Hello { link: 0, secret: String::new(), ws: String::new(), quic: String::new(), admin: String::new() }).into_bytes(),
        FrameBuilder::new("room").build(&Body::Join { request: 0, since: None, epoch: None }).into_bytes(),
    ];
    write_frames(&mut send, &mut out).await.expect("write");
    // (Frames about the rooms the Link joins by itself, `all` and `user:*`, are skipped.)
    let joined = next_not_system(&mut reader).await;
    assert_eq!((joined.kind(), joined.room()), (Kind::Joined, "room"));
    let seq = fake_hub.publish("room", r#"{"n":1}"#).await;
    let message = next_not_system(&mut reader).await;
    assert_eq!((message.kind(), message.seq()), (Kind::Message, seq));
    assert_eq!(ws.next_json().await["seq"], seq);
    link.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_stops_reading_is_dropped_and_its_queue_freed() {
    let mut config = cluster_config(&[5]);
    config.hub.link_write_timeout_ms = 500;
    let hub = start_hub_at(1305, config, any_addr(), Some(any_addr())).await;
    let mut bystander = FakeLink::attach(&hub, 7, 1024).await;
    bystander.interest("calm", 1).await;
    let mut stalled = QuicLink::hello(hub.quic_addr().expect("quic"), loopback(1), 5, SECRET).await;
    stalled.send(vec![FrameBuilder::new("flood").build(&Body::Interest { link: 5, members: 1 })]).await;
    stalled.sync().await;

    // The Link stops reading; the hub publishes far more to it than QUIC flow control lets
    // through (12 MB), so its writes stall.
    let payload = vec![b'x'; 60 * 1024];
    for _ in 0..200 {
        publish_ok(hub.http_addr(), "flood", None, &payload).await;
    }
    assert_eq!(close_of(&stalled.conn).await, (0, "link write timed out".into()));
    eventually(STEP, "the stalled Link is disconnected", || async {
        (!hub.is_link_connected(linkcast_core::placement::LinkId(5))).then_some(())
    })
    .await;
    eventually(STEP, "the stalled Link's queue is freed", || async {
        let text = metrics_text(hub.admin_addr().expect("admin listener")).await;
        (hub_metric(&text, "linkcast_hub_link_queued_bytes", 1305) == 0.0).then_some(())
    })
    .await;
    let text = metrics_text(hub.admin_addr().expect("admin listener")).await;
    assert_eq!(hub_metric(&text, "linkcast_hub_link_write_timeouts_total", 1305), 1.0);
    assert_bystander_served(&hub, &mut bystander, "calm").await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_link_does_not_starve_http_or_other_links() {
    let hub = start_hub_at(1306, cluster_config(&[5, 6]), any_addr(), Some(any_addr())).await;
    let quic = hub.quic_addr().expect("quic");
    let mut bystander = FakeLink::attach(&hub, 7, 1024).await;
    bystander.interest("calm", 1).await;
    let mut other = QuicLink::hello(quic, loopback(2), 6, SECRET).await;
    other.send(vec![FrameBuilder::new("calm").build(&Body::Interest { link: 6, members: 1 })]).await;
    other.sync().await;

    // Link 5 publishes as fast as its stream takes them (it reads its acks: it is not stalled).
    const FLOOD: u64 = 400;
    let QuicLink { endpoint: _flood_endpoint, conn: _flood_conn, mut send, mut reader, .. } =
        QuicLink::hello(quic, loopback(1), 5, SECRET).await;
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < FLOOD {
            let frame = tokio::time::timeout(STEP, reader.next()).await.expect("in time").expect("stream").expect("open");
            if frame.kind() == Kind::PublishAck {
                acked += 1;
            }
        }
        acked
    });
    let flood = tokio::spawn(async move {
        let payload = vec![b'x'; 30 * 1024];
        for request in 1..=FLOOD {
            let publish = FrameBuilder::new("spam").sender("flooder").build(&Body::Publish { request, key: String::new(), data: payload.clone() });
            write_frames(&mut send, &mut vec![publish.into_bytes()]).await.expect("write");
        }
        send
    });

    // Meanwhile HTTP publishes are sequenced and both other Links get every one, in order.
    for n in 1..=20u64 {
        assert_eq!(publish_ok(hub.http_addr(), "calm", None, format!("m{n}").as_bytes()).await, n);
    }
    let got = bystander.messages(20).await;
    assert_eq!(got.iter().map(Frame::seq).collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());
    let mut seen = 0;
    while seen < 20 {
        let frame = other.recv().await;
        if frame.kind() == Kind::Message {
            seen += 1;
            assert_eq!((frame.room(), frame.seq()), ("calm", seen));
        }
    }
    // And the flood itself is served in full, none lost.
    let _send = flood.await.expect("flood task");
    assert_eq!(acks.await.expect("ack task"), FLOOD);
    assert_eq!(get_json(hub.http_addr(), "/v1/rooms/spam").await["last_seq"], FLOOD);
    hub.shutdown().await;
}

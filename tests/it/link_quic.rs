//! A QUIC client (quinn, ALPN `linkcast/1`) and a WebSocket client in the same room receive the
//! same messages; the QUIC client gets the hub's frames (kind `Message`), and can publish.

use bytes::Bytes;
use linkcast::quic::{client_endpoint, write_frames, FrameReader, ALPN_CLIENT};
use linkcast_core::frame::{ArchivedBody, Body, Frame, FrameBuilder, Kind, FLAG_JSON};
use linkcast_core::room_table::TableLimits;
use serde_json::json;

use crate::support::link::{config, start_link};
use crate::support::ws::WsClient;
use crate::support::{any_addr, STEP};

/// The next frame, skipping those about the rooms the Link joins by itself (`all`, `user:*`).
async fn next_frame(reader: &mut FrameReader) -> Frame {
    loop {
        let frame = tokio::time::timeout(STEP, reader.next())
            .await
            .expect("frame in time")
            .expect("valid stream")
            .expect("stream open");
        if !linkcast_core::system_rooms::is_server_only(frame.room()) {
            return frame;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_and_websocket_members_get_the_same_messages() {
    let (link, hub) = start_link(config(2, |_| {}), TableLimits::default()).await;
    let endpoint = client_endpoint(any_addr(), &linkcast::tls::Trust::LoopbackDev, ALPN_CLIENT).expect("endpoint");
    let conn = endpoint
        .connect(link.quic_addr().expect("quic listener"), "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    let (mut send, recv) = conn.open_bi().await.expect("stream");
    let mut reader = FrameReader::new(recv, 1 << 20);
    let mut out: Vec<Bytes> = vec![
        FrameBuilder::new("").build(&Body::Hello { link: 0, secret: String::new(), ws: String::new(), quic: String::new(), admin: String::new() }).into_bytes(),
        FrameBuilder::new("both").build(&Body::Join { request: 0, since: None, epoch: None }).into_bytes(),
    ];
    write_frames(&mut send, &mut out).await.expect("write");
    let joined = next_frame(&mut reader).await;
    assert_eq!((joined.kind(), joined.room(), joined.seq()), (Kind::Joined, "both", 0));

    let mut ws = WsClient::connect_to(link.ws_addr(), None).await;
    ws.join("both", None).await;
    for n in 1..=100u64 {
        hub.publish("both", &format!(r#"{{"n":{n}}}"#)).await;
    }
    for n in 1..=100u64 {
        let frame = next_frame(&mut reader).await;
        let json = ws.next_json().await;
        assert_eq!(frame.kind(), Kind::Message);
        assert_eq!(frame.seq(), n);
        assert_eq!(json["seq"], n);
        assert_eq!(frame.flags(), FLAG_JSON);
        let data: serde_json::Value = serde_json::from_slice(frame.payload()).expect("json payload");
        assert_eq!(data, json["data"]);
        assert_eq!(frame.sender(), json["from"]);
        assert_eq!(frame.ts_micros(), json["ts"].as_u64().expect("ts"));
    }

    // A QUIC publish: acked with the client's request id, seen by the WebSocket member.
    let publish = FrameBuilder::new("both").flags(FLAG_JSON).build(&Body::Publish { request: 77, key: String::new(), data: br#"{"via":"quic"}"#.to_vec() });
    write_frames(&mut send, &mut vec![publish.into_bytes()]).await.expect("write");
    let mut acked = false;
    let mut echoed = false;
    while !(acked && echoed) {
        let frame = next_frame(&mut reader).await;
        match (frame.kind(), frame.body()) {
            (Kind::PublishAck, ArchivedBody::PublishAck { request, epoch }) => {
                assert_eq!((request.to_native(), frame.seq()), (77, 101));
                assert_ne!(epoch.to_native(), 0, "a publish ack names the room's epoch");
                acked = true;
            }
            (Kind::Message, _) => {
                assert_eq!(frame.seq(), 101);
                echoed = true;
            }
            (kind, _) => panic!("unexpected {kind:?}"),
        }
    }
    let json = ws.next_json().await;
    assert_eq!((json["seq"].as_u64(), &json["data"]), (Some(101), &json!({"via":"quic"})));

    // Bad input over QUIC: a room not allowed does not exist in dev mode, but a bad room name
    // is refused with an Error frame and the stream continues.
    let heartbeat = FrameBuilder::new("").build(&Body::Heartbeat { nonce: 5 });
    write_frames(&mut send, &mut vec![heartbeat.into_bytes()]).await.expect("write");
    let pong = next_frame(&mut reader).await;
    assert!(matches!(pong.body(), ArchivedBody::Heartbeat { nonce } if nonce.to_native() == 5));
    link.shutdown().await;
    let closed = tokio::time::timeout(STEP, conn.closed()).await.expect("closed in time");
    assert!(matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == quinn::VarInt::from_u32(1001)), "{closed:?}");
}

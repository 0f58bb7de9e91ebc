//! Two hubs in one process sharing a config: requests for a room reaching the hub that does
//! not own it are forwarded to the owner (one sequencer per room); an unreachable owner or
//! disagreeing configs give a JSON 503, never a second sequencing.

use std::net::SocketAddr;

use linkcast::config::{Config, HubEntry};
use linkcast_core::hub_directory::{HubDirectory, HubId};

use crate::support::any_addr;
use crate::support::http::{assert_error, get, get_as, http, hub_metric, publish, publish_ok};
use crate::support::hub::start_hubs_on_free_ports;

fn cluster_config(http: &[SocketAddr]) -> Config {
    let mut config = Config::default();
    config.auth.jwt_secret = "jwt".into();
    config.auth.api_keys = vec!["key".into()];
    for (id, &http) in http.iter().enumerate() {
        // Ids 40 and 41: metrics are process-wide, labelled by hub id.
        config.hubs.push(HubEntry { id: 40 + id as u32, http, quic: any_addr(), admin: None, tls_name: None });
    }
    config
}

fn room_owned_by(owner: u32) -> String {
    let directory = HubDirectory::new([HubId(40), HubId(41)]);
    (0..).map(|i| format!("fw-{i}")).find(|room| directory.owner(room) == Some(HubId(owner))).expect("room")
}

#[tokio::test]
async fn requests_reaching_the_wrong_hub_are_answered_by_the_owner() {
    let mut hubs = start_hubs_on_free_ports(&[40, 41], cluster_config).await;
    let (hub1, hub0) = (hubs.pop().expect("hub 41"), hubs.pop().expect("hub 40"));
    let addrs = [hub0.http_addr(), hub1.http_addr()];
    let owned_by_1 = room_owned_by(41);
    let owned_by_0 = room_owned_by(40);

    // Publishes alternate between the hubs; seqs come from the one owner.
    for i in 1..=10u64 {
        let via = if i % 2 == 0 { addrs[0] } else { addrs[1] };
        assert_eq!(publish_ok(via, &owned_by_1, Some("key"), b"x").await, i);
        assert_eq!(publish_ok(via, &owned_by_0, Some("key"), b"y").await, i);
    }
    // Auth is checked before forwarding, and by the owner.
    assert_error(&publish(addrs[0], &owned_by_1, Some("bad"), b"x").await, 401, "bad key at the non-owner");
    // Queries are forwarded too.
    let info = get_as(addrs[0], &format!("/v1/rooms/{owned_by_1}"), "key").await.json();
    assert_eq!(info["last_seq"], 10);
    let history = get_as(addrs[0], &format!("/v1/rooms/{owned_by_1}/messages?since=8"), "key").await.json();
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(2));
    assert_error(&get_as(addrs[0], "/v1/rooms/fw-unknown-room-owned-anywhere", "key").await, 404, "unknown room via either hub");
    let metrics = get(hub0.admin_addr().expect("admin listener"), "/metrics").await.text();
    assert_eq!(hub_metric(&metrics, "linkcast_hub_published_total", 40), 10.0, "hub 0 sequenced only its rooms");
    assert_eq!(hub_metric(&metrics, "linkcast_hub_published_total", 41), 10.0);

    // A request marked as forwarded that reaches a non-owner is refused, not forwarded again.
    let looped = http(
        addrs[0],
        "POST",
        &format!("/v1/rooms/{owned_by_1}/messages"),
        &[("authorization", "Bearer key"), ("x-linkcast-forwarded", "1")],
        b"x",
    )
    .await;
    assert_error(&looped, 503, "ownership disagreement");

    // The owner goes away: the non-owner answers 503 with a reason and keeps serving its rooms.
    hub1.shutdown().await;
    assert_error(&publish(addrs[0], &owned_by_1, Some("key"), b"x").await, 503, "owner down");
    assert_eq!(publish_ok(addrs[0], &owned_by_0, Some("key"), b"y").await, 11);
    hub0.shutdown().await;
}

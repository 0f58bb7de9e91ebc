//! The operator's API on users (issue 15) in a real cluster: 2 hubs and 3 Links as processes of
//! the binary, a JWT secret (tokens carry `sub` and `iat`), one publish key and one admin key.
//!
//! - push to a user (`POST /v1/users/{uid}/messages`): each of its sessions on three Links gets
//!   it once; broadcast (`POST /v1/broadcast`): every connection of every user once; clients
//!   cannot publish into `all` / `user:*` (403) nor join another user's personal room;
//! - `GET /v1/users/{uid}`: the user's connections with their Links and rooms; admin scope: no
//!   key 401, a publish key 403, the admin key 200;
//! - kick and ban across Links: every connection closed 4001 with the reason, the upgrade refused
//!   403 `{"error":"banned","until"}` (and an `auth` message closed 4001) until the ban ends, then
//!   accepted; a plain kick closes 4000 and the user may come back at once;
//! - revoke: a token issued before the revocation is closed 4002 and refused (at connect and by
//!   `refresh`); a newer one works;
//! - remove from a room: `removed`, nothing more of the room, other members still served;
//! - a ban made while a Link is down reaches it when it connects;
//! - with `[store] redis`, a ban survives a restart of the hub and of the Link;
//! - the Rust client library stops on 4001 (an `Event::Closed` with code and reason, no
//!   reconnect), against `serve`.

use std::collections::BTreeSet;
use std::time::Duration;

use linkcast::client::{Client, Event, Transport};
use linkcast::config::{ApiKey, Config, Scope};
use linkcast_core::auth::{sign, Claims};
use serde_json::{json, Value};

use crate::support::client::{next, options};
use crate::support::cluster::{Cluster, ClusterSpec};
use crate::support::http::{http, request, Response, UPGRADE};
use crate::support::redis::RedisServer;
use crate::support::ws::{ws_url, Got, WsClient};
use crate::support::{an_hour_from_now, eventually, start_serve, STEP};

const JWT: &str = "operator-jwt-secret";
const PUBLISH_KEY: &str = "operator-publish-key";
const ADMIN_KEY: &str = "operator-admin-key";

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A token for `sub` (every room) issued at `iat`.
fn token(sub: &str, iat: Option<u64>) -> String {
    sign(&Claims { sub: sub.into(), exp: an_hour_from_now(), rooms: vec!["*".into()], iat }, JWT)
}

async fn start_cluster(tag: &str) -> Cluster {
    let settings = format!(
        "[auth]\njwt_secret = \"{JWT}\"\ncluster_secret = \"operator-cluster-secret\"\n\n\
         [[auth.keys]]\nkey = \"{PUBLISH_KEY}\"\nscopes = [\"publish\", \"read\"]\n\n\
         [[auth.keys]]\nkey = \"{ADMIN_KEY}\"\nscopes = [\"admin\", \"read\"]\n\n\
         [hub]\ngroup_size = 2\n\n[link]\nshards = 1\n"
    );
    let spec = ClusterSpec { tag, hubs: 2, links: 3, settings: &settings, relay: false, link_quic: false };
    Cluster::start_with_admin_key(spec, Some(ADMIN_KEY)).await
}

/// `method path` on hub `hub` with `key` (if any) and a JSON `body`.
async fn call(cluster: &Cluster, hub: usize, method: &str, path: &str, key: Option<&str>, body: Value) -> Response {
    let bearer = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer.as_str()));
    }
    let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    http(cluster.hubs[hub], method, path, &headers, &body).await
}

/// An admin call that must succeed; its JSON answer.
async fn admin(cluster: &Cluster, hub: usize, method: &str, path: &str, body: Value) -> Value {
    let res = call(cluster, hub, method, path, Some(ADMIN_KEY), body).await;
    assert_eq!(res.status, 200, "{method} {path}: {}", res.text());
    res.json()
}

/// Connects `sub` with `token` to Link `link` (0-based) and waits for the `joined` of its two
/// automatic rooms.
async fn connect(cluster: &Cluster, link: usize, sub: &str, token: &str) -> WsClient {
    let mut client = WsClient::connect_to(cluster.links[link], Some(token)).await.with_system_rooms();
    let mut rooms = BTreeSet::new();
    while rooms.len() < 2 {
        let value = client.next_json().await;
        assert_eq!(value["op"], "joined", "{sub}: only the automatic joins come first: {value}");
        rooms.insert(value["room"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(rooms, BTreeSet::from(["all".to_owned(), format!("user:{sub}")]));
    client
}

/// The next room message (skipping nothing): `(room, seq, data)`.
async fn message(client: &mut WsClient) -> (String, u64, Value) {
    let value = client.next_json().await;
    assert!(value.get("op").is_none(), "expected a room message, got {value}");
    (value["room"].as_str().unwrap_or_default().to_owned(), value["seq"].as_u64().unwrap_or(0), value["data"].clone())
}

/// A raw upgrade of `token` at Link `link`: the HTTP answer (101 when accepted).
async fn upgrade(cluster: &Cluster, link: usize, token: &str) -> Response {
    http(cluster.links[link], "GET", &format!("/ws?token={token}"), UPGRADE, b"").await
}

/// Publishes `data` with the publish key to `path` (a user or broadcast route); the seq.
async fn push(cluster: &Cluster, hub: usize, path: &str, data: Value) -> u64 {
    let res = call(cluster, hub, "POST", path, Some(PUBLISH_KEY), data).await;
    assert_eq!(res.status, 200, "POST {path}: {}", res.text());
    let answer = res.json();
    assert!(answer["epoch"].is_string(), "{answer}");
    answer["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {answer}"))
}

#[tokio::test]
async fn pushes_reach_every_session_once_and_only_operators_see_users() {
    let cluster = start_cluster("operator-push").await;
    let ann = token("ann", Some(now_secs()));
    let mut anns = Vec::new();
    for link in 0..3 {
        anns.push(connect(&cluster, link, "ann", &ann).await);
    }
    let mut bob = connect(&cluster, 1, "bob", &token("bob", Some(now_secs()))).await;
    let mut cat = connect(&cluster, 2, "cat", &token("cat", Some(now_secs()))).await;

    // Push to ann through either hub (one of them forwards to the owner of `user:ann`): each of
    // her three sessions gets each push once, in order.
    let first = push(&cluster, 0, "/v1/users/ann/messages", json!({"gift": 1})).await;
    let second = push(&cluster, 1, "/v1/users/ann/messages", json!({"gift": 2})).await;
    assert_eq!(second, first + 1);
    for client in &mut anns {
        assert_eq!(message(client).await, ("user:ann".into(), first, json!({"gift": 1})));
        assert_eq!(message(client).await, ("user:ann".into(), second, json!({"gift": 2})), "exactly once");
    }

    // Broadcast: every connection of every user, once.
    let b1 = push(&cluster, 1, "/v1/broadcast", json!("stream starting")).await;
    let b2 = push(&cluster, 0, "/v1/broadcast", json!("stream started")).await;
    for client in anns.iter_mut().chain([&mut bob, &mut cat]) {
        assert_eq!(message(client).await, ("all".into(), b1, json!("stream starting")));
        assert_eq!(message(client).await, ("all".into(), b2, json!("stream started")), "exactly once");
    }
    // bob got nothing of ann's pushes (his next message is this one).
    let b3 = push(&cluster, 0, "/v1/users/bob/messages", json!("for bob")).await;
    assert_eq!(message(&mut bob).await, ("user:bob".into(), b3, json!("for bob")));

    // Clients cannot write into the system rooms, nor join another user's personal room.
    for room in ["all", "user:ann", "user:bob"] {
        bob.send(json!({"op": "publish", "room": room, "data": "spoof"})).await;
        let error = bob.next_json().await;
        assert_eq!((error["op"].as_str(), error["code"].as_u64()), (Some("error"), Some(403)), "{error}");
        assert_eq!(error["reason"], "room is read-only for clients");
    }
    bob.send(json!({"op": "join", "room": "user:ann"})).await;
    let error = bob.next_json().await;
    assert_eq!((error["code"].as_u64(), error["reason"].as_str()), (Some(403), Some("room not allowed by token")), "{error}");

    // Admin scope: no key 401, a publish key 403, the admin key 200.
    for (key, status) in [(None, 401), (Some(PUBLISH_KEY), 403)] {
        assert_eq!(call(&cluster, 0, "GET", "/v1/users/ann", key, Value::Null).await.status, status);
        assert_eq!(call(&cluster, 1, "POST", "/v1/users/ann/disconnect", key, json!({})).await.status, status);
        assert_eq!(call(&cluster, 0, "POST", "/v1/users/ann/revoke", key, json!({"before": 1})).await.status, status);
        assert_eq!(call(&cluster, 0, "POST", "/v1/rooms/r/members/ann/remove", key, json!({})).await.status, status);
    }
    // A publish key may push, an admin key (no publish scope) may not.
    assert_eq!(call(&cluster, 0, "POST", "/v1/broadcast", Some(ADMIN_KEY), json!(1)).await.status, 403);

    // GET /v1/users/ann (either hub): her three connections, one per Link, with their rooms.
    for hub in 0..2 {
        let info = admin(&cluster, hub, "GET", "/v1/users/ann", Value::Null).await;
        assert_eq!(info["user"], "ann");
        assert_eq!(info["banned_until"], Value::Null);
        assert_eq!(info["incomplete_links"], json!([]), "{info}");
        let connections = info["connections"].as_array().expect("connections");
        let links: BTreeSet<u64> = connections.iter().filter_map(|c| c["link"].as_u64()).collect();
        assert_eq!(links, BTreeSet::from([1, 2, 3]), "{info}");
        for connection in connections {
            assert_eq!(connection["transport"], "ws");
            assert!(connection["conn"].is_u64() && connection["connected_since"].as_u64().is_some_and(|t| t > 0), "{connection}");
            let rooms: BTreeSet<&str> = connection["rooms"].as_array().expect("rooms").iter().filter_map(Value::as_str).collect();
            assert_eq!(rooms, BTreeSet::from(["all", "user:ann"]), "{connection}");
        }
    }
    let nobody = admin(&cluster, 1, "GET", "/v1/users/nobody", Value::Null).await;
    assert_eq!(nobody["connections"], json!([]));
}

#[tokio::test]
async fn kicks_bans_revocations_and_removals_reach_every_link() {
    let mut cluster = start_cluster("operator-moderation").await;

    // A ban made while Link 3 is down reaches Link 3 when it connects (the owner hub re-sends).
    cluster.processes.kill("link-3");
    let banned = admin(&cluster, 0, "POST", "/v1/users/late/disconnect", json!({"reason": "early ban", "ban_seconds": 60})).await;
    assert_eq!((banned["user"].as_str(), banned["disconnected"].as_bool()), (Some("late"), Some(true)));
    let late_until = banned["banned_until"].as_u64().expect("banned_until");
    assert!(late_until >= now_secs() + 58, "{banned}");
    let config = cluster.config.clone();
    cluster.processes.spawn("link-3", &["link", "--config", &config, "--id", "3", "--no-quic"]);
    // (The hubs may still count the killed process's connection: the new one is waited for by
    // asking Link 3 itself below.)
    let late = token("late", Some(now_secs()));
    let refused = eventually(STEP, "Link 3 is back and knows the ban", || async {
        let res = request(cluster.links[2], "GET", &format!("/ws?token={late}"), UPGRADE, b"").await.ok()?;
        (res.status == 403).then_some(res)
    })
    .await;
    assert_eq!(refused.json(), json!({"error": "banned", "until": late_until}));

    // Kick + ban across Links: every connection closed 4001 with the reason.
    let kim = token("kim", Some(now_secs()));
    let mut kims = Vec::new();
    for link in 0..3 {
        kims.push(connect(&cluster, link, "kim", &kim).await);
    }
    let answer = admin(&cluster, 1, "POST", "/v1/users/kim/disconnect", json!({"reason": "spamming the chat", "ban_seconds": 3})).await;
    let until = answer["banned_until"].as_u64().expect("banned_until");
    assert_eq!(answer["incomplete_links"], json!([]), "{answer}");
    for client in &mut kims {
        assert_eq!(client.next().await, Got::Close(4001, "spamming the chat".into()));
    }
    // Refused while banned: at the upgrade (token in the URL) and after an `auth` message.
    for link in 0..3 {
        let res = upgrade(&cluster, link, &kim).await;
        assert_eq!((res.status, res.json()), (403, json!({"error": "banned", "until": until})), "link {}", link + 1);
    }
    let mut pending = WsClient::connect(&ws_url(cluster.links[0], None)).await;
    pending.send(json!({"op": "auth", "token": kim})).await;
    assert_eq!(pending.next().await, Got::Close(4001, "banned".into()));
    // Accepted once the ban is over (again idempotent: asking shows it ended).
    let url = ws_url(cluster.links[1], Some(&kim));
    let accepted = eventually(Duration::from_secs(6), "the ban ends", || async { WsClient::try_connect(&url).await.ok() }).await;
    accepted.close().await;
    let info = admin(&cluster, 0, "GET", "/v1/users/kim", Value::Null).await;
    assert_eq!(info["banned_until"], Value::Null, "{info}");
    let mut kim_again = connect(&cluster, 2, "kim", &kim).await;

    // A plain kick: 4000 with the reason, and the user may reconnect at once.
    let answer = admin(&cluster, 0, "POST", "/v1/users/kim/disconnect", json!({"reason": "take a break"})).await;
    assert_eq!((&answer["banned_until"], &answer["incomplete_links"]), (&Value::Null, &json!([])), "{answer}");
    assert_eq!(kim_again.next().await, Got::Close(4000, "take a break".into()));
    let _kim_back = connect(&cluster, 2, "kim", &kim).await;

    // Revoke: tokens issued before `before` are closed 4002 and refused; newer ones work.
    let before = now_secs();
    let old = token("oz", Some(before - 100));
    let fresh = token("oz", Some(before));
    let mut oz_old = connect(&cluster, 0, "oz", &old).await;
    let mut oz_fresh = connect(&cluster, 1, "oz", &fresh).await;
    let answer = admin(&cluster, 1, "POST", "/v1/users/oz/revoke", json!({"before": before})).await;
    // Answered once every Link applied it: from then on no Link lets the old token in.
    assert_eq!(answer, json!({"user": "oz", "revoked_before": before, "incomplete_links": []}));
    assert_eq!(oz_old.next().await, Got::Close(4002, "token revoked".into()));
    for link in 0..3 {
        let res = upgrade(&cluster, link, &old).await;
        assert_eq!((res.status, res.json()), (403, json!({"error": "token revoked"})));
        assert_eq!(upgrade(&cluster, link, &token("oz", None)).await.status, 403, "no iat: refused");
    }
    let _oz_new = connect(&cluster, 2, "oz", &fresh).await;
    let seq = push(&cluster, 0, "/v1/users/oz/messages", json!("still here")).await;
    assert_eq!(message(&mut oz_fresh).await, ("user:oz".into(), seq, json!("still here")), "the newer token was not closed");
    // A refresh to a revoked token is refused like a connect with it: the connection closes.
    oz_fresh.send(json!({"op": "refresh", "token": old})).await;
    assert_eq!(oz_fresh.next().await, Got::Close(4002, "token revoked".into()), "a revoked token cannot come back by refresh");

    // Remove from a room: `removed`, nothing more of the room; the other member still served.
    let mut rex = connect(&cluster, 0, "rex", &token("rex", Some(now_secs()))).await;
    let mut sue = connect(&cluster, 1, "sue", &token("sue", Some(now_secs()))).await;
    for client in [&mut rex, &mut sue] {
        client.join("stage", None).await;
    }
    let answer = admin(&cluster, 1, "POST", "/v1/rooms/stage/members/rex/remove", json!({"reason": "off topic"})).await;
    assert_eq!(answer, json!({"room": "stage", "user": "rex", "removed": true, "incomplete_links": []}));
    assert_eq!(rex.next_json().await, json!({"op": "removed", "room": "stage", "reason": "off topic"}));
    let seq = push(&cluster, 0, "/v1/rooms/stage/messages", json!("on stage")).await;
    assert_eq!(message(&mut sue).await, ("stage".into(), seq, json!("on stage")));
    let marker = push(&cluster, 1, "/v1/users/rex/messages", json!("marker")).await;
    assert_eq!(message(&mut rex).await, ("user:rex".into(), marker, json!("marker")), "nothing of the room after removed");

    // A Link that does not confirm within 1 s (stopped) is named in the answer, and applies the
    // action once it runs again.
    let mut pat = connect(&cluster, 1, "pat", &token("pat", Some(before - 100))).await;
    cluster.processes.stop("link-2");
    let answer = admin(&cluster, 0, "POST", "/v1/users/pat/revoke", json!({"before": before})).await;
    cluster.processes.cont("link-2");
    assert_eq!((&answer["revoked_before"], &answer["incomplete_links"]), (&json!(before), &json!([2])), "{answer}");
    assert_eq!(pat.next().await, Got::Close(4002, "token revoked".into()));
}

#[tokio::test]
async fn the_client_library_stops_on_a_ban_and_says_why() {
    let mut config = Config::default();
    config.auth.jwt_secret = JWT.into();
    config.auth.keys = vec![ApiKey { key: ADMIN_KEY.into(), scopes: vec![Scope::Admin] }];
    let serve = start_serve(config, false).await;
    let opts = options(&serve, "lobby", Transport::Ws, Some(token("zed", Some(now_secs()))), Duration::from_millis(50));
    let mut client = Client::start(opts);
    client.join("lobby").expect("join");
    loop {
        if let Event::Joined { room, .. } = next(&mut client).await {
            assert_eq!(room, "lobby");
            break;
        }
    }
    let bearer = format!("Bearer {ADMIN_KEY}");
    let res = http(
        serve.http_addr(),
        "POST",
        "/v1/users/zed/disconnect",
        &[("authorization", &bearer)],
        br#"{"reason":"cheating","ban_seconds":60}"#,
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    loop {
        match next(&mut client).await {
            Event::Closed { cause } => {
                assert_eq!((cause.close_code, cause.reason.as_str()), (Some(4001), "cheating"));
                break;
            }
            Event::Reconnecting { .. } => panic!("a ban is not retried"),
            _ => {}
        }
    }
    // And nothing after: no reconnect attempt.
    let after = tokio::time::timeout(Duration::from_millis(500), client.next_event()).await;
    assert!(!matches!(after, Ok(Some(Event::Reconnecting { .. } | Event::Connected { .. }))), "{after:?}");
}

#[tokio::test]
async fn without_personal_rooms_a_push_waits_in_history_for_a_client_that_joins_its_own() {
    let mut config = Config::default();
    config.auth.jwt_secret = JWT.into();
    config.auth.keys = vec![ApiKey { key: PUBLISH_KEY.into(), scopes: vec![Scope::Publish, Scope::Read] }];
    config.link.personal_room = false;
    let serve = start_serve(config, false).await;
    let push = |path: &'static str, data: Value| {
        let bearer = format!("Bearer {PUBLISH_KEY}");
        let addr = serve.http_addr();
        async move {
            let res = http(addr, "POST", path, &[("authorization", &bearer)], data.to_string().as_bytes()).await;
            assert_eq!(res.status, 200, "POST {path}: {}", res.text());
            res.json()["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {}", res.text()))
        }
    };
    let mut ann = WsClient::connect_to(serve.ws_addr(), Some(&token("ann", Some(now_secs())))).await.with_system_rooms();
    let joined = ann.next_json().await;
    assert_eq!((joined["op"].as_str(), joined["room"].as_str()), (Some("joined"), Some("all")), "{joined}");

    // Not in her personal room: a push to her is kept by the hub, not delivered (her next
    // message is the broadcast published after it).
    let first = push("/v1/users/ann/messages", json!("kept")).await;
    let broadcast = push("/v1/broadcast", json!("to all")).await;
    assert_eq!(message(&mut ann).await, ("all".into(), broadcast, json!("to all")));

    // Her own personal room is hers to join (another user's is not): from a position she gets
    // what was pushed meanwhile, then pushes live.
    ann.send(json!({"op": "join", "room": "user:bob"})).await;
    let error = ann.next_json().await;
    assert_eq!((error["code"].as_u64(), error["reason"].as_str()), (Some(403), Some("room not allowed by token")), "{error}");
    ann.send(json!({"op": "join", "room": "user:ann", "since": 0})).await;
    assert_eq!(message(&mut ann).await, ("user:ann".into(), first, json!("kept")));
    let joined = ann.next_json().await;
    assert_eq!((joined["op"].as_str(), joined["room"].as_str(), joined["last_seq"].as_u64()), (Some("joined"), Some("user:ann"), Some(first)), "{joined}");
    let live = push("/v1/users/ann/messages", json!("live")).await;
    assert_eq!(message(&mut ann).await, ("user:ann".into(), live, json!("live")));
}

#[tokio::test]
async fn with_redis_a_ban_survives_a_restart_of_the_hub_and_the_link() {
    let redis = RedisServer::start().await;
    let settings = format!(
        "[auth]\njwt_secret = \"{JWT}\"\ncluster_secret = \"operator-cluster-secret\"\n\n\
         [[auth.keys]]\nkey = \"{ADMIN_KEY}\"\nscopes = [\"admin\"]\n\n\
         [store]\nredis = \"{}\"\n\n[link]\nshards = 1\n",
        redis.url()
    );
    let spec = ClusterSpec { tag: "operator-redis", hubs: 1, links: 1, settings: &settings, relay: false, link_quic: false };
    let mut cluster = Cluster::start_with_admin_key(spec, Some(ADMIN_KEY)).await;
    let banned = admin(&cluster, 0, "POST", "/v1/users/rob/disconnect", json!({"reason": "fraud", "ban_seconds": 120})).await;
    let until = banned["banned_until"].as_u64().expect("banned_until");

    cluster.processes.kill("hub-0");
    cluster.processes.kill("link-1");
    cluster.spawn_hub(0);
    let config = cluster.config.clone();
    cluster.processes.spawn("link-1", &["link", "--config", &config, "--id", "1", "--no-quic"]);
    cluster.wait_links(0, 1, STEP).await;
    let rob = token("rob", Some(now_secs()));
    let refused = eventually(STEP, "the restarted Link learns the ban from the restarted hub", || async {
        let res = request(cluster.links[0], "GET", &format!("/ws?token={rob}"), UPGRADE, b"").await.ok()?;
        (res.status == 403).then_some(res)
    })
    .await;
    assert_eq!(refused.json(), json!({"error": "banned", "until": until}));
    let info = admin(&cluster, 0, "GET", "/v1/users/rob", Value::Null).await;
    assert_eq!(info["banned_until"], until);
}

#[tokio::test]
async fn the_hub_refuses_client_publishes_into_system_rooms_whatever_link_sends_them() {
    use crate::support::hub::{start_hub, FakeLink};
    use linkcast_core::frame::{ArchivedBody, Body, FrameBuilder, Kind};
    let hub = start_hub(1501, Config::default()).await;
    let mut link = FakeLink::attach(&hub, 3, 64).await;
    for (request, room) in [(1u64, "all"), (2, "user:ann")] {
        link.send(FrameBuilder::new(room).sender("mallory").build(&Body::Publish { request, key: String::new(), data: b"\"x\"".to_vec() }))
            .await;
        let answers = link.sync().await;
        let refusal = answers.iter().find(|f| f.kind() == Kind::Error).unwrap_or_else(|| panic!("no refusal for {room}: {answers:?}"));
        match refusal.body() {
            ArchivedBody::Error { request: r, code, reason, .. } => {
                assert_eq!((r.to_native(), code.to_native(), reason.as_str()), (request, 403, "room is read-only for clients"));
            }
            _ => panic!("not an error frame"),
        }
        assert!(answers.iter().all(|f| f.kind() != Kind::PublishAck), "never sequenced: {answers:?}");
    }
    hub.shutdown().await;
}

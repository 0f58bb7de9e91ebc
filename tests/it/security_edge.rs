//! Issue 13 at the edge of the cluster, tried as an attacker on the same network would: TLS that
//! is verified (a server with another certificate is refused, by the client library over wss and
//! QUIC and by a Link dialling its hub), certificates reloaded on SIGHUP without dropping
//! anyone, room reads that need credentials, metrics only on the admin listener, secured nodes
//! that refuse to start without a cluster secret, half-open upgrades and slowloris requests that
//! cannot lock real clients out. Each attack checks that a bystander keeps being served.
//!
//! The certificates are made here with rcgen: one test CA, server certificates for 127.0.0.1 /
//! localhost signed by it, and a second, unrelated CA for the man in the middle.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use linkcast::client::http::HttpApi;
use linkcast::client::{Client, ClientOptions, Event, Target, Transport};
use linkcast::config::{ApiKey, Config, Scope};
use linkcast::hub::HubOptions;
use linkcast::link::{LinkId, LinkOptions, QuicHubConnector};
use linkcast::tls::Trust;
use linkcast_core::auth::{sign, Claims};
use linkcast_core::hub_directory::HubId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::client::next;
use crate::support::pki::Pki;
use crate::support::http::{assert_error, get, get_as, http, metric, publish_ok, request};
use crate::support::ws::WsClient;
use crate::support::{an_hour_from_now, any_addr, eventually, start_serve, STEP};

const JWT: &str = "edge-jwt-secret";
const PUBLISH_KEY: &str = "edge-publish-key";
const READ_KEY: &str = "edge-read-key";
const ADMIN_KEY: &str = "edge-admin-key";

fn secured_config() -> Config {
    let mut config = Config::default();
    config.auth.jwt_secret = JWT.into();
    config.auth.keys = vec![
        ApiKey { key: PUBLISH_KEY.into(), scopes: vec![Scope::Publish] },
        ApiKey { key: READ_KEY.into(), scopes: vec![Scope::Read] },
        ApiKey { key: ADMIN_KEY.into(), scopes: vec![Scope::Admin] },
    ];
    config.auth.cluster_secret = "edge-cluster-secret".into();
    config.link.shards = 1;
    config
}

fn with_tls(mut config: Config, cert: &Path, key: &Path) -> Config {
    config.tls.cert_file = Some(cert.to_path_buf());
    config.tls.key_file = Some(key.to_path_buf());
    config
}

fn token(sub: &str, rooms: &[&str]) -> String {
    sign(&Claims { sub: sub.into(), exp: an_hour_from_now(), rooms: rooms.iter().map(|r| r.to_string()).collect(), iat: None }, JWT)
}

/// A client of `room` through `http` (locate) with `trust`, over `transport`.
fn client(http: String, room: &str, transport: Transport, trust: Trust) -> Client {
    let mut options = ClientOptions::new(Target::Locate { http, room: room.into(), transport });
    options.token = Some(token("viewer", &["*"]));
    options.trust = trust;
    let client = Client::start(options);
    client.join(room).expect("join");
    client
}

/// Waits for the client's join; panics with the cause if its connection fails.
async fn joined(client: &mut Client) {
    loop {
        match next(client).await {
            Event::Joined { .. } => return,
            Event::Reconnecting { cause, .. } | Event::Closed { cause } => panic!("connection failed: {cause:?}"),
            _ => {}
        }
    }
}

/// The next room message's payload.
async fn message(client: &mut Client) -> serde_json::Value {
    loop {
        if let Event::Message(m) = next(client).await {
            return m.data;
        }
    }
}

/// The first failure the client reports (it must not join).
async fn refused(client: &mut Client) -> String {
    loop {
        match next(client).await {
            Event::Reconnecting { cause, .. } | Event::Closed { cause } => return format!("{cause:?}"),
            Event::Joined { .. } | Event::Message(_) => panic!("joined a server whose certificate is not trusted"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_end_to_end_and_a_server_with_another_certificate_is_refused() {
    let pki = Pki::new("verify");
    pki.issue("server");
    let config = with_tls(secured_config(), &pki.path("server.pem"), &pki.path("server.key"));
    let serve = start_serve(config, true).await;
    let https = format!("https://{}", serve.http_addr());

    // The client library over wss:// and over QUIC, checking the test CA; publishes over https.
    let mut over_wss = client(https.clone(), "tls-room", Transport::Ws, pki.trust());
    let mut over_quic = client(https.clone(), "tls-room", Transport::Quic, pki.trust());
    joined(&mut over_wss).await;
    joined(&mut over_quic).await;
    let mut api = HttpApi::with_trust(&https, Some(PUBLISH_KEY.into()), pki.trust()).expect("api");
    assert_eq!(api.publish("tls-room", r#"{"n":1}"#.into(), None).await.expect("https publish"), 1);
    assert_eq!(message(&mut over_wss).await, serde_json::json!({"n": 1}));
    assert_eq!(message(&mut over_quic).await, serde_json::json!({"n": 1}));
    let located = api.locate("tls-room").await.expect_err("a publish-only key may not locate");
    assert!(format!("{located:?}").contains("403"), "{located:?}");
    let mut reader = HttpApi::with_trust(&https, Some(READ_KEY.into()), pki.trust()).expect("api");
    let links = reader.locate("tls-room").await.expect("locate over https");
    assert!(links[0].ws.starts_with("wss://"), "locate offers wss:// URLs: {links:?}");

    // Plain HTTP to the https port gets no HTTP answer.
    assert!(request(serve.http_addr(), "GET", "/", &[], b"").await.is_err(), "an https port answered plain HTTP");

    // A "man in the middle": a server with a certificate from another CA. Clients that trust
    // the test CA refuse it over wss:// and QUIC, and never send it their token.
    let other = Pki::new("mitm");
    other.issue("server");
    let mitm = start_serve(with_tls(secured_config(), &other.path("server.pem"), &other.path("server.key")), true).await;
    let mitm_https = format!("https://{}", mitm.http_addr());
    let mut fooled = client(mitm_https.clone(), "tls-room", Transport::Ws, pki.trust());
    let cause = refused(&mut fooled).await;
    assert!(cause.to_lowercase().contains("certificate") || cause.contains("UnknownIssuer"), "{cause}");
    let Some(quic) = mitm.quic_addr() else { panic!("the MITM listens for QUIC") };
    let mut options = ClientOptions::new(Target::Quic(quic));
    options.token = Some(token("viewer", &["*"]));
    options.trust = pki.trust();
    let mut fooled_quic = Client::start(options);
    fooled_quic.join("tls-room").expect("join");
    let cause = refused(&mut fooled_quic).await;
    assert!(cause.to_lowercase().contains("certificate") || cause.contains("UnknownIssuer"), "{cause}");
    // Unverified dialling is for loopback only: a non-loopback target is refused before any byte.
    assert!(Trust::LoopbackDev.check_target("192.0.2.1:443".parse().expect("addr")).is_err());

    // The bystanders on the real server were not disturbed.
    assert_eq!(api.publish("tls-room", r#"{"n":2}"#.into(), None).await.expect("publish"), 2);
    assert_eq!(message(&mut over_wss).await, serde_json::json!({"n": 2}));
    assert_eq!(message(&mut over_quic).await, serde_json::json!({"n": 2}));
    drop((over_wss, over_quic, fooled, fooled_quic));
    mitm.shutdown().await;
    serve.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_refuses_a_hub_whose_certificate_it_cannot_verify() {
    let pki = Pki::new("hub");
    pki.issue("hub");
    let other = Pki::new("hub-mitm");
    let mut config = with_tls(secured_config(), &pki.path("hub.pem"), &pki.path("hub.key"));
    let quic = std::net::UdpSocket::bind(any_addr()).and_then(|s| s.local_addr()).expect("free udp port");
    let hub = linkcast::hub::start(HubOptions {
        id: HubId(0),
        config: Arc::new(config.clone()),
        http_addr: any_addr(),
        quic_addr: Some(quic),
        admin_addr: None,
    })
    .await
    .expect("hub starts");
    config.hubs.push(linkcast::config::HubEntry { id: 0, http: hub.http_addr(), quic, admin: None, tls_name: None });

    // A Link trusting another CA never attaches (it would have sent the cluster secret).
    let mut wrong = config.clone();
    wrong.tls = Default::default();
    wrong.tls.ca_file = Some(other.path("ca.pem"));
    let start_link = |config: Config, id: u32| {
        let config = Arc::new(config);
        let options = LinkOptions { id: LinkId(id), config: config.clone(), ws_addr: any_addr(), quic_addr: None, admin_addr: None };
        linkcast::link::start(options, Arc::new(QuicHubConnector::new(LinkId(id), config))).expect("link starts")
    };
    let fooled = start_link(wrong, 7);
    // A Link trusting the right CA attaches.
    let mut right = config.clone();
    right.tls = Default::default();
    right.tls.ca_file = Some(pki.path("ca.pem"));
    let link = start_link(right, 8);
    eventually(STEP, "the verifying Link attaches", || async { hub.is_link_connected(LinkId(8)).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!hub.is_link_connected(LinkId(7)), "a Link attached to a hub it could not verify");
    assert_eq!(fooled.connected_hubs(), 0);
    fooled.shutdown().await;
    link.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_sighup_without_dropping_connections() {
    let pki = Pki::new("reload");
    let first = pki.issue("live");
    let config = with_tls(secured_config(), &pki.path("live.pem"), &pki.path("live.key"));
    let serve = start_serve(config, false).await;
    let https = format!("https://{}", serve.http_addr());
    let pin_first = Trust::pin_der(&first.clone().into());
    let mut viewer = client(https.clone(), "reload", Transport::Ws, pin_first.clone());
    joined(&mut viewer).await;

    // New files, then SIGHUP to this process (the server's certificate watcher reloads them).
    let second = pki.issue("live");
    assert_ne!(first, second);
    // SAFETY: kill(2) with our own pid and a signal the certificate watcher handles.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);
    let pin_second = Trust::pin_der(&second.clone().into());
    eventually(STEP, "new handshakes present the new certificate", || {
        let pin = pin_second.clone();
        let https = https.clone();
        async move { HttpApi::with_trust(&https, Some(READ_KEY.into()), pin).ok()?.get("/v1/rooms/reload").await.ok() }
    })
    .await;
    let mut stale = HttpApi::with_trust(&https, Some(READ_KEY.into()), pin_first).expect("api");
    assert!(stale.get("/v1/rooms/reload").await.is_err(), "the old certificate is no longer presented");

    // The connection made before the reload still gets messages.
    let mut api = HttpApi::with_trust(&https, Some(PUBLISH_KEY.into()), pin_second).expect("api");
    assert_eq!(api.publish("reload", r#""after""#.into(), None).await.expect("publish"), 1);
    assert_eq!(message(&mut viewer).await, serde_json::json!("after"));
    drop(viewer);
    serve.shutdown().await;
}

#[tokio::test]
async fn room_reads_need_credentials_and_metrics_live_on_the_admin_listener() {
    let mut config = secured_config();
    config.admin.addr = Some(any_addr());
    let serve = start_serve(config, false).await;
    let addr = serve.http_addr();
    publish_ok(addr, "private", Some(PUBLISH_KEY), br#"{"secret":1}"#).await;
    for route in ["/v1/rooms/private", "/v1/rooms/private/messages?since=0", "/v1/locate?room=private"] {
        assert_error(&get(addr, route).await, 401, route);
        assert_error(&get_as(addr, route, "not-a-key").await, 401, route);
        assert_error(&get_as(addr, route, PUBLISH_KEY).await, 403, route);
        assert_error(&get_as(addr, route, &token("eve", &["elsewhere"])).await, 403, route);
        assert_eq!(get_as(addr, route, READ_KEY).await.status, 200, "{route} with a read key");
        assert_eq!(get_as(addr, route, &token("alice", &["private"])).await.status, 200, "{route} with a token for the room");
    }
    let lower = http(addr, "GET", "/v1/rooms/private", &[("authorization", &format!("bearer {READ_KEY}"))], b"").await;
    assert_eq!(lower.status, 200, "the Bearer scheme is case-insensitive");
    // A read key cannot publish.
    assert_error(&crate::support::http::publish(addr, "private", Some(READ_KEY), b"x").await, 403, "read key publishing");

    // Metrics and health: not on the public ports, on the admin listener with an admin key.
    assert_error(&get(addr, "/metrics").await, 404, "hub API port");
    assert_eq!(get(serve.ws_addr(), "/metrics").await.status, 404, "Link WebSocket port");
    assert_eq!(get(serve.ws_addr(), "/healthz").await.status, 404, "Link WebSocket port");
    let admin = serve.admin_addr().expect("admin listener");
    assert_error(&get(admin, "/metrics").await, 401, "admin without a key");
    assert_error(&get_as(admin, "/metrics", READ_KEY).await, 401, "admin with a read key");
    let metrics = get_as(admin, "/metrics", ADMIN_KEY).await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("linkcast_hub_published_total"));
    assert_eq!(get_as(admin, "/healthz", ADMIN_KEY).await.json()["status"], "ok");
    serve.shutdown().await;
}

#[tokio::test]
async fn secured_nodes_refuse_to_start_without_a_cluster_secret() {
    let mut config = secured_config();
    config.auth.cluster_secret.clear();
    let options = HubOptions {
        id: HubId(0),
        config: Arc::new(config.clone()),
        http_addr: any_addr(),
        quic_addr: Some(any_addr()),
        admin_addr: None,
    };
    let error = linkcast::hub::start(options).await.expect_err("a secured hub without a cluster secret");
    assert!(error.to_string().contains("cluster_secret"), "{error}");

    // `linkcast link` with API keys and no cluster secret exits with the reason.
    let dir = std::env::temp_dir().join(format!("linkcast-edge-link-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("cluster.toml");
    let toml = "[auth]\napi_keys = [\"k\"]\n\n[[hubs]]\nid = 0\nhttp = \"127.0.0.1:1\"\nquic = \"127.0.0.1:1\"\n\n\
                [[links]]\nid = 1\nws = \"127.0.0.1:0\"\nquic = \"127.0.0.1:0\"\n";
    std::fs::write(&path, toml).expect("config");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_linkcast"))
        .args(["link", "--config", path.to_str().expect("utf-8"), "--id", "1"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(STEP, output).await.expect("exits at once").expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cluster_secret"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A socket from `ip` (a loopback address) connected to `addr`.
async fn connect_from(ip: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip.parse().expect("ip"), 0))?;
    socket.connect(addr).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_half_open_upgrades_do_not_lock_clients_out() {
    let mut config = Config::default();
    config.link.shards = 1;
    config.link.max_handshakes = 400;
    config.link.max_handshakes_per_ip = 100;
    let serve = start_serve(config, false).await;
    let ws = serve.ws_addr();
    let mut member = WsClient::connect_to(ws, None).await;
    member.join("stage", None).await;

    // 2,000 connections from 127.0.0.1 that never send a request head.
    let mut held = Vec::new();
    for _ in 0..2000 {
        if let Ok(tcp) = connect_from("127.0.0.1", ws).await {
            held.push(tcp);
        }
    }
    // A bystander from another address gets in and is served; the member keeps its messages.
    let bystander = connect_from("127.0.0.2", ws).await.expect("connect");
    let uri: http::Uri = format!("ws://{ws}/ws").parse().expect("uri");
    let (stream, _) = tokio::time::timeout(STEP, tokio_websockets::ClientBuilder::from_uri(uri).connect_on(bystander))
        .await
        .expect("upgrade in time")
        .expect("the bystander's upgrade is answered");
    drop(stream);
    publish_ok(serve.http_addr(), "stage", None, br#""still here""#).await;
    assert_eq!(member.next_json().await["data"], "still here");

    // Most of the flood was refused at accept (closed at once), and the rest is cut after the
    // handshake deadline: every held socket reads EOF within it (plus slack).
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut closed = 0;
    for tcp in &mut held {
        let mut byte = [0u8; 1];
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(left, tcp.read(&mut byte)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, held.len(), "every half-open upgrade was closed by the Link");
    let metrics = get(ws, "/metrics").await.text();
    assert!(metric(&metrics, "linkcast_link_upgrades_refused_total", &[("reason", "handshakes per address")]) > 0.0, "{metrics}");
    assert!(metric(&metrics, "linkcast_link_upgrades_refused_total", &[("reason", "head timeout")]) > 0.0);
    serve.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_hub_is_cut_and_publishers_are_served() {
    let mut config = Config::default();
    config.link.shards = 1;
    config.hub.max_http_connections = 40;
    config.hub.http_header_timeout_secs = 1;
    config.hub.http_request_timeout_secs = 1;
    let serve = start_serve(config, false).await;
    let addr = serve.http_addr();

    // 40 connections trickling a request head fill the cap; each is cut after the head timeout.
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(b"POST /v1/rooms/x/messages HTTP/1.1\r\nHost: a\r\n").await.expect("write");
        slow.push(tcp);
    }
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        let mut cut = 0;
        while !slow.is_empty() && started.elapsed() < Duration::from_secs(8) {
            let mut alive = Vec::new();
            for mut tcp in slow.drain(..) {
                if tcp.write_all(b"X").await.is_ok() && tcp.flush().await.is_ok() {
                    let mut buf = [0u8; 256];
                    match tokio::time::timeout(Duration::from_millis(5), tcp.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => cut += 1, // answered (408/400) and closed
                        Ok(_) => cut += 1,
                        Err(_) => alive.push(tcp),
                    }
                } else {
                    cut += 1;
                }
            }
            slow = alive;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (cut, started.elapsed())
    });
    let (cut, took) = trickle.await.expect("trickle");
    assert_eq!(cut, 40, "every slowloris connection was cut");
    assert!(took < Duration::from_secs(8), "cut after the head timeout, not held");

    // A body trickled byte by byte is answered 408 once the request timeout passes.
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"POST /v1/rooms/x/messages HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nab").await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the slow body was not cut");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // The publisher is told the outcome is unknown, and how to retry safely.
    assert!(answer.contains(r#""error":"timeout""#) && answer.contains("retry it with the same Idempotency-Key"), "{answer}");

    // Publishers are served (the member gets it).
    let mut member = WsClient::connect_to(serve.ws_addr(), None).await;
    member.join("after", None).await;
    publish_ok(addr, "after", None, br#""served""#).await;
    assert_eq!(member.next_json().await["data"], "served");
    serve.shutdown().await;
}

/// wss:// under backpressure: 800 KB published to a client that reads nothing for a while (its
/// event buffer holds 4, the Link's socket send buffer is 4 KiB), so the Link's sends block and
/// resume on the encrypted path; once it reads, every message arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_delivers_everything_in_order_through_a_blocked_socket() {
    let pki = Pki::new("backpressure");
    pki.issue("server");
    let mut config = with_tls(secured_config(), &pki.path("server.pem"), &pki.path("server.key"));
    config.link.socket_send_buffer = 4096;
    // The ring holds the whole burst (100 × ~16 KB: WebSocket frame + hub frame), so what this
    // test sees is the encrypted path blocking and resuming, not a member falling off its ring
    // (at the default 1 MiB, a presence notice or a few KB less in flight were enough for a gap).
    config.link.ring_bytes = 4 * 1024 * 1024;
    let serve = start_serve(config, false).await;
    let https = format!("https://{}", serve.http_addr());
    let mut options = ClientOptions::new(Target::Locate { http: https.clone(), room: "burst".into(), transport: Transport::Ws });
    options.token = Some(token("viewer", &["*"]));
    options.trust = pki.trust();
    options.event_buffer = 4;
    let mut reader = Client::start(options);
    reader.join("burst").expect("join");
    joined(&mut reader).await;
    let mut api = HttpApi::with_trust(&https, Some(PUBLISH_KEY.into()), pki.trust()).expect("api");
    let pad = "y".repeat(8000);
    for n in 1..=100u64 {
        let body = format!(r#"{{"n":{n},"pad":"{pad}"}}"#);
        assert_eq!(api.publish("burst", body.into(), None).await.expect("publish"), n);
    }
    // Not reading for a moment: the Link's socket and its rustls buffer fill.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 1..=100u64 {
        assert_eq!(message(&mut reader).await["n"], n, "message {n} in order");
    }
    drop(reader);
    serve.shutdown().await;
}

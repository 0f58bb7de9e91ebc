//! linkcast.js (clients/js/) against real nodes, and what a page on another origin needs from
//! the hub: the library served at `/linkcast.js`, and CORS on the API.
//!
//! `the_js_client_passes_its_node_tests_against_a_cluster` starts a secured hub and Link as
//! processes of the binary ([`Cluster`]) and runs `node --test` on `clients/js/test/*.test.js`
//! with the URLs and secrets in environment variables (clients/js/test/helpers.js lists them).
//! The Node tests cause real server-side faults through a small control server of this test
//! (`POST /link/stop`, `/link/start`, `/hub/restart`: the Link process killed and started
//! again, the hub process restarted without a store), so the library's resume, gap and reset
//! handling meet the real Link and hub. Needs `node` (Debian's `nodejs`, >= 20) — the test
//! FAILS saying so when it is missing — and runs `npm ci` in clients/js itself when
//! `node_modules` is missing (the `ws` dev dependency), so a fresh clone's `cargo test` works.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use linkcast::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::support::cluster::{Cluster, ClusterSpec};
use crate::support::http::request;
use crate::support::{local, start_serve, STEP};

const JWT: &str = "js-client-secret";
const KEY: &str = "js-client-key";
/// The hub's `history_messages`: small, so the gap test can outrun it.
const HISTORY: usize = 16;

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients").join("js")
}

/// `node`, or a failure naming the Debian package.
fn node() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("node"))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| panic!("this test needs Node.js >= 20: install the Debian packages `nodejs` and `npm`"))
}

/// `npm ci` in clients/js unless its dependencies are installed.
async fn ensure_node_modules() {
    let dir = js_dir();
    if dir.join("node_modules").join("ws").join("package.json").is_file() {
        return;
    }
    let out = tokio::process::Command::new("npm").arg("ci").current_dir(&dir).output().await.expect("npm ci runs (Debian package `npm`)");
    assert!(out.status.success(), "npm ci in {}:\n{}\n{}", dir.display(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// What the Node tests may ask of the nodes: one action per request, answered 200 once done.
async fn act(cluster: &Mutex<Cluster>, action: &str) -> Result<(), String> {
    let mut cluster = cluster.lock().await;
    match action {
        "link/stop" => cluster.processes.kill("link-1"),
        "link/start" => {
            let config = cluster.config.clone();
            cluster.processes.spawn("link-1", &["link", "--config", &config, "--id", "1", "--no-quic"]);
            cluster.wait_links(0, 1, STEP).await;
        }
        "hub/restart" => {
            cluster.processes.kill("hub-0");
            cluster.spawn_hub(0);
            cluster.wait_links(0, 1, STEP).await;
        }
        other => return Err(format!("unknown action {other}")),
    }
    Ok(())
}

/// Serves `POST /<action>` on `listener` until the test ends (the task is aborted).
async fn control_server(listener: TcpListener, cluster: Arc<Mutex<Cluster>>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_owned();
        let (status, body) = match act(&cluster, &path).await {
            Ok(()) => ("200 OK", "done".to_owned()),
            Err(e) => ("400 Bad Request", e),
        };
        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_js_client_passes_its_node_tests_against_a_cluster() {
    let node = node();
    ensure_node_modules().await;
    let settings = format!(
        "[auth]\njwt_secret = \"{JWT}\"\napi_keys = [\"{KEY}\"]\ncluster_secret = \"js-cluster-secret\"\n\n\
         [hub]\nhistory_messages = {HISTORY}\n\n[link]\nshards = 1\n"
    );
    let spec = ClusterSpec { tag: "js-client", hubs: 1, links: 1, settings: &settings, relay: false, link_quic: false };
    let cluster = Cluster::start(spec).await;
    let hub = cluster.hubs[0];
    let cluster = Arc::new(Mutex::new(cluster));
    let listener = TcpListener::bind(local(0)).await.expect("control listener");
    let control = listener.local_addr().expect("control address");
    let server = tokio::spawn(control_server(listener, cluster.clone()));

    let dir = js_dir().join("test");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("clients/js/test")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|name| name.ends_with(".test.js"))
        .map(|name| format!("test/{name}"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "the Node tests are there: {files:?}");
    let run = tokio::process::Command::new(&node)
        .args(["--test", "--test-concurrency=1"])
        .args(&files)
        .current_dir(js_dir())
        .env("LINKCAST_HTTP", format!("http://{hub}"))
        .env("LINKCAST_JWT_SECRET", JWT)
        .env("LINKCAST_API_KEY", KEY)
        .env("LINKCAST_CONTROL", format!("http://{control}"))
        .env("LINKCAST_HISTORY", HISTORY.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run).await.expect("node --test ends within 5 minutes").expect("node runs");
    server.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let cluster = cluster.lock().await;
        panic!(
            "node --test failed ({}):\n{stdout}\n{stderr}\nhub log:\n{}\nlink log:\n{}",
            out.status,
            cluster.processes.log_tail("hub-0", 30),
            cluster.processes.log_tail("link-1", 30)
        );
    }
    // Shown with --nocapture: the Node tests' own report.
    println!("{stdout}");
    // Every test ran and passed (TAP summary), none was skipped or left out.
    assert!(stdout.contains("# fail 0"), "{stdout}");
    assert!(!stdout.contains("# pass 0"), "some tests ran: {stdout}");
    assert!(stdout.contains("# skipped 0") && stdout.contains("# todo 0"), "{stdout}");
}

/// `GET /linkcast.js` is the library's file, as JavaScript, on any hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_serves_linkcast_js() {
    let serve = start_serve(Config::default(), false).await;
    let res = request(serve.http_addr(), "GET", "/linkcast.js", &[], b"").await.expect("GET /linkcast.js");
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("text/javascript; charset=utf-8"));
    let file = std::fs::read(js_dir().join("linkcast.js")).expect("clients/js/linkcast.js");
    assert_eq!(res.body, file, "the served file is clients/js/linkcast.js");
    assert_eq!(res.header("access-control-allow-origin"), None, "no CORS unless configured");
    serve.shutdown().await;
}

/// `hub.cors_origins`: a preflight from an allowed origin is answered 204 with the methods,
/// headers and max-age; a publish from it carries `Access-Control-Allow-Origin` (and `Vary`);
/// another origin gets no CORS header (and no error beyond the route's own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_allowed_origins_only() {
    const APP: &str = "https://app.example";
    let mut config = Config::default();
    config.auth.api_keys = vec![KEY.into()];
    config.hub.cors_origins = vec![APP.into(), "http://localhost:3000".into()];
    let serve = start_serve(config, false).await;
    let hub = serve.http_addr();
    let preflight = |origin: &'static str| {
        let headers = [
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "authorization, content-type, idempotency-key"),
        ];
        async move { request(hub, "OPTIONS", "/v1/rooms/cors-room/messages", &headers, b"").await.expect("preflight") }
    };

    let ok = preflight(APP).await;
    assert_eq!(ok.status, 204, "{}", ok.text());
    assert_eq!(ok.header("access-control-allow-origin"), Some(APP));
    assert_eq!(ok.header("access-control-allow-methods"), Some("GET, POST, OPTIONS"));
    assert_eq!(ok.header("access-control-allow-headers"), Some("authorization, content-type, idempotency-key"));
    assert_eq!(ok.header("access-control-max-age"), Some("600"));
    assert!(ok.headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("vary") && v.to_ascii_lowercase().contains("origin")));

    let other = preflight("https://evil.example").await;
    assert!(other.status < 500, "a disallowed origin is never a server error: {}", other.status);
    assert_ne!(other.status, 204, "and not a preflight success");
    assert!(
        !other.headers.iter().any(|(n, _)| n.to_ascii_lowercase().starts_with("access-control-")),
        "no CORS header for a disallowed origin: {:?}",
        other.headers
    );

    let bearer = format!("Bearer {KEY}");
    let publish = |origin: &'static str| {
        let bearer = bearer.clone();
        async move {
            let headers = [("origin", origin), ("authorization", bearer.as_str()), ("content-type", "application/json")];
            request(hub, "POST", "/v1/rooms/cors-room/messages", &headers, br#"{"text":"hi"}"#).await.expect("publish")
        }
    };
    let published = publish(APP).await;
    assert_eq!(published.status, 200, "{}", published.text());
    assert_eq!(published.json()["seq"], 1);
    assert_eq!(published.header("access-control-allow-origin"), Some(APP));
    let refused = publish("https://evil.example").await;
    assert_eq!(refused.status, 200, "CORS is the browser's check; the server still answers");
    assert_eq!(refused.header("access-control-allow-origin"), None);
    // Errors carry it too, so a page can read why it was refused.
    let unauthorized = request(hub, "POST", "/v1/rooms/cors-room/messages", &[("origin", "http://localhost:3000")], b"x").await.expect("publish");
    assert_eq!(unauthorized.status, 401);
    assert_eq!(unauthorized.header("access-control-allow-origin"), Some("http://localhost:3000"));
    serve.shutdown().await;
}

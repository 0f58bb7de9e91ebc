//! The dashboard and the alert rules (`deploy/`) against what real nodes export.
//!
//! - `promtool` accepts `deploy/prometheus/alerts.yml` and its unit tests
//!   (`alerts_test.yml`: the alerts fire on synthetic series, and not before their `for:`).
//! - Every `linkcast_*` metric an expression of the dashboard or the rules names is in the
//!   `/metrics` of a `linkcast serve` process with TLS (the certificate gauge needs it), and the
//!   Link-side ones also in a Link process of a hub + Link cluster (QUIC between them), where
//!   `linkcast_link_hubs_connected` counts the hubs. Names come from the files, so a panel or
//!   rule added later is checked too.
//! - One publish to a room with two members on one shard is timed once by the delivery
//!   histogram (per message per shard, not per socket) while both members get it, and once by
//!   the hub's publish histogram; the certificate gauge holds the served certificate's notAfter.
//! - The kernel's UDP drop count is exported for each busy QUIC endpoint: serve's client port,
//!   each hub's Link port, a Link's endpoint towards its hubs.
//!
//! `promtool` comes from Debian's `prometheus` package (`.ci/run` installs it when missing).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use linkcast::client::http::HttpApi;
use linkcast::client::{Client, ClientOptions, Event, Target};

use crate::support::client::next;
use crate::support::cluster::{free_tcp_port, free_udp_port, Cluster, ClusterSpec, Processes};
use crate::support::http::{metric, metrics_text, try_get};
use crate::support::pki::Pki;
use crate::support::{eventually, local, STEP};

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/linkcast.json");
const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");
const RULE_TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts_test.yml");

/// rcgen's default `notAfter` (4096-01-01T00:00:00Z), which `Pki::issue` keeps, in Unix seconds.
const RCGEN_NOT_AFTER: f64 = 67_090_118_400.0;

/// Runs `promtool ARGS`; fails naming `.ci/run` if promtool is not installed.
fn promtool(args: &[&str]) -> std::process::Output {
    match Command::new("promtool").args(args).output() {
        Ok(output) => output,
        Err(error) => panic!(
            "promtool not runnable ({error}): install Debian's `prometheus` package (.ci/run does it when promtool is missing)"
        ),
    }
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    for args in [["check", "rules", RULES], ["test", "rules", RULE_TESTS]] {
        let output = promtool(&args);
        assert!(
            output.status.success(),
            "promtool {}: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Every `linkcast_*` name in `text`, with a histogram's `_bucket` / `_sum` / `_count` removed.
fn metric_names(text: &str, into: &mut BTreeSet<String>) {
    let mut rest = text;
    while let Some(at) = rest.find("linkcast_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        into.insert(base.to_owned());
        rest = &tail[end..];
    }
}

/// The expressions of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(DASHBOARD).expect("read the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "the dashboard has its panels");
    let templating = dashboard["templating"]["list"].as_array().expect("templating");
    assert!(
        templating.iter().any(|v| v["type"] == "datasource" && v["query"] == "prometheus" && v["name"] == "datasource"),
        "a Prometheus datasource variable"
    );
    let mut exprs = Vec::new();
    for panel in panels {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {} uses the datasource variable", panel["title"]);
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    exprs
}

/// The `expr:` values of the rules file (one line, or a block scalar's more-indented lines).
fn rule_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(RULES).expect("read the rules");
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else { continue };
        let indent = line.len() - line.trim_start().len();
        let value = value.trim();
        if value.starts_with('>') || value.starts_with('|') {
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect();
            exprs.push(block.join(" "));
        } else {
            exprs.push(value.to_owned());
        }
    }
    assert!(exprs.len() >= 8, "every alert has its expression: {exprs:?}");
    exprs
}

/// The names a rendering declares (`# TYPE name kind`).
fn exported(text: &str) -> BTreeSet<String> {
    text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).map(str::to_owned).collect()
}

/// `/metrics` of `addr` once it answers.
async fn scrape(addr: SocketAddr) -> String {
    eventually(STEP, "/metrics answers", || async move { try_get(addr, "/metrics").await.filter(|r| r.status == 200).map(|r| r.text()) })
        .await
}

/// A client of `room` on the Link at `wss`, joined.
async fn member(wss: &str, room: &str, pki: &Pki) -> Client {
    let mut options = ClientOptions::new(Target::Ws(wss.to_owned()));
    options.trust = pki.trust();
    let mut client = Client::start(options);
    client.join(room).expect("join");
    loop {
        match next(&mut client).await {
            Event::Joined { .. } => return client,
            Event::Reconnecting { cause, .. } | Event::Closed { cause } => panic!("member could not join: {cause:?}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exports_every_metric_the_dashboard_and_rules_name_and_times_deliveries_once_per_shard() {
    let mut used = BTreeSet::new();
    for expr in dashboard_exprs().iter().chain(rule_exprs().iter()) {
        metric_names(expr, &mut used);
    }
    for expected in ["linkcast_link_delivery_seconds", "linkcast_link_gaps_total", "linkcast_tls_cert_expiry_timestamp_seconds"] {
        assert!(used.contains(expected), "{expected} is read by the dashboard or the rules: {used:?}");
    }

    let pki = Pki::new("observability");
    pki.issue("serve");
    let mut processes = Processes::new("observability-serve");
    let config = processes.write_config(&format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\n\n[link]\nshards = 1\n",
        pki.path("serve.pem"),
        pki.path("serve.key")
    ));
    let (http, ws, quic, admin) = (local(free_tcp_port()), local(free_tcp_port()), local(free_udp_port()), local(free_tcp_port()));
    let (http_arg, ws_arg, quic_arg, admin_arg) = (http.to_string(), ws.to_string(), quic.to_string(), admin.to_string());
    processes.spawn(
        "serve",
        &["serve", "--config", &config, "--http", &http_arg, "--ws", &ws_arg, "--quic", &quic_arg, "--admin", &admin_arg, "--shards", "1"],
    );
    let before = scrape(admin).await;
    // serve binds the hub's listeners (admin included) before the Link's: a member started on
    // the first answer from admin could find the WebSocket port still closed.
    eventually(STEP, "the Link's WebSocket port accepts", || async move { tokio::net::TcpStream::connect(ws).await.ok().map(drop) }).await;

    // Two members of one room on the Link's one shard; one publish over https.
    let wss = format!("wss://{ws}/ws");
    let mut members = vec![member(&wss, "obs", &pki).await, member(&wss, "obs", &pki).await];
    let mut api = HttpApi::with_trust(&format!("https://{http}"), None, pki.trust()).expect("api");
    assert_eq!(api.publish("obs", r#"{"n":1}"#.into(), None).await.expect("publish over https"), 1);
    for client in &mut members {
        loop {
            if let Event::Message(m) = next(client).await {
                assert_eq!(m.data, serde_json::json!({"n": 1}));
                break;
            }
        }
    }

    // The shard counts a delivery as it writes it and times the message once its burst is
    // written: a scrape in between sees the deliveries before the timing. Wait for both.
    let text = eventually(STEP, "both deliveries counted and the message timed", || async move {
        let text = scrape(admin).await;
        let counted = metric(&text, "linkcast_link_deliveries_total", &[]) >= 2.0;
        let timed = metric(&text, "linkcast_link_delivery_seconds_count", &[]) >= 1.0;
        (counted && timed).then_some(text)
    })
    .await;
    let names = exported(&text);
    let missing: Vec<&String> = used.iter().filter(|n| !names.contains(*n)).collect();
    assert!(missing.is_empty(), "named by the dashboard or rules but not exported by serve: {missing:?}\n{text}");

    // Registered at start, before anything happened.
    for (name, labels) in [
        ("linkcast_link_gaps_total", [("reason", "hub_queue")]),
        ("linkcast_link_gaps_total", [("reason", "lagging")]),
        ("linkcast_link_closes_total", [("reason", "slow consumer; retry_after_ms=1000")]),
        ("linkcast_link_queued_bytes", [("shard", "0")]),
        ("linkcast_hub_link_queue_limit_bytes", [("hub", "0")]),
    ] {
        let series = format!("{name}{{{}=\"{}\"}}", labels[0].0, labels[0].1);
        assert!(before.contains(&series), "{series} exported from start:\n{before}");
    }
    assert_eq!(metric(&text, "linkcast_link_delivery_seconds_count", &[]), 1.0, "one message, one shard: timed once, not per member");
    assert_eq!(metric(&text, "linkcast_link_deliveries_total", &[]), 2.0, "both members got it");
    assert_eq!(metric(&text, "linkcast_hub_publish_seconds_count", &[("hub", "0")]), 1.0);
    assert!(metric(&text, "linkcast_link_delivery_seconds_bucket", &[("le", "+Inf")]) >= 1.0, "rendered as a Prometheus histogram");
    assert_eq!(metric(&text, "linkcast_hub_link_queue_limit_bytes", &[("hub", "0")]), (64 * 1024 * 1024) as f64, "hub.link_queue_bytes");
    for role in ["hub", "link"] {
        assert_eq!(metric(&text, "linkcast_tls_cert_expiry_timestamp_seconds", &[("role", role)]), RCGEN_NOT_AFTER, "{role}");
    }
    assert_eq!(metric(&text, "linkcast_link_hubs_connected", &[]), 1.0, "serve's Link reaches its one hub");
    let clients_port = [("role", "link"), ("endpoint", "clients"), ("addr", quic_arg.as_str())];
    assert!(has_series(&text, "linkcast_udp_drops_total", &clients_port), "the client QUIC port's kernel drops:\n{text}");
    assert_eq!(metric(&text, "linkcast_udp_drops_total", &clients_port), 0.0, "nothing dropped on an idle loopback port");
    assert_eq!(metric(&text, "linkcast_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    drop(members);
    processes.kill_all();
    let _ = std::fs::remove_dir_all(Path::new(&processes.dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_link_exports_its_metrics_and_counts_its_hubs() {
    let settings = "[auth]\ncluster_secret = \"observability-secret\"\n\n[link]\nshards = 1\n";
    let cluster = Cluster::start(ClusterSpec { tag: "observability", hubs: 2, links: 1, settings, relay: false, link_quic: false }).await;
    let mut used = BTreeSet::new();
    for expr in dashboard_exprs().iter().chain(rule_exprs().iter()) {
        metric_names(expr, &mut used);
    }
    // The Link's own process, on its admin listener: every Link-side name (the certificate gauge
    // needs TLS: serve's test).
    let link = cluster.link_admin[0];
    let text = eventually(STEP, "the Link reaches both hubs", || async move {
        let text = metrics_text(link).await;
        (metric(&text, "linkcast_link_hubs_connected", &[]) == 2.0).then_some(text)
    })
    .await;
    let names = exported(&text);
    let missing: Vec<&String> = used
        .iter()
        .filter(|n| n.starts_with("linkcast_link_") && !names.contains(*n))
        .collect();
    assert!(missing.is_empty(), "Link metrics named by the dashboard or rules missing from a cluster Link: {missing:?}\n{text}");
    // And each hub process: every hub-side name.
    for (id, admin) in cluster.hub_admin.iter().enumerate() {
        let text = metrics_text(*admin).await;
        let names = exported(&text);
        let missing: Vec<&String> = used
            .iter()
            // Requests are counted by route and status from the first one on (none made here).
            .filter(|n| n.starts_with("linkcast_hub_") && n.as_str() != "linkcast_hub_http_requests_total")
            .filter(|n| !names.contains(*n))
            .collect();
        assert!(missing.is_empty(), "hub {id}: hub metrics named by the dashboard or rules missing: {missing:?}\n{text}");
        assert_eq!(metric(&text, "linkcast_hub_links", &[("hub", &id.to_string())]), 1.0, "hub {id} sees the Link");
        assert!(has_series(&text, "linkcast_udp_drops_total", &[("role", "hub"), ("endpoint", "links")]), "hub {id}'s Link port:\n{text}");
    }
    // The Link's one endpoint towards both hubs.
    let text = metrics_text(link).await;
    assert!(has_series(&text, "linkcast_udp_drops_total", &[("role", "link"), ("endpoint", "hubs")]), "the Link's hub endpoint:\n{text}");
}

/// Whether `text` has a sample of `name` with (at least) `labels`: `metric` reads a missing
/// series as 0.
fn has_series(text: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    text.lines().filter(|line| !line.starts_with('#')).any(|line| {
        line.strip_prefix(name).and_then(|rest| rest.strip_prefix('{')).is_some_and(|rest| {
            labels.iter().all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")))
        })
    })
}

//! The deployable units (deploy/systemd, Dockerfile, deploy/k8s) stay consistent with the
//! binary and its configuration. Container and cluster files cannot run here, so they are
//! linted and cross-checked:
//! - the TOML the Kubernetes ConfigMap embeds, the image's deploy/docker/linkcast.toml and
//!   examples/cluster.toml parse (`Config::from_toml`, unknown keys refused) and `validate` (TLS
//!   file paths pointed at test certificates, secrets from the example Secret's env vars); a
//!   k8s hub passes the cluster-node check (cluster secret, CA to verify non-loopback hubs);
//!   every hub's Service has the ClusterIP and ports cluster.toml lists; every Link replica has
//!   its own Service; the Links' grace period and the Link unit's TimeoutStopSec exceed
//!   `link.drain_secs`;
//! - every `--flag` used with `linkcast <sub>` in the units, the manifests and the Dockerfile is
//!   in `linkcast <sub> --help` of the built binary;
//! - `systemd-analyze verify` accepts both units (copies whose ExecStart points at a stand-in
//!   executable in a temp dir), with no warning;
//! - the Dockerfile's HEALTHCHECK asks `/healthz` on the admin port of the config it ships, and
//!   its EXPOSE ports are exactly that admin port and the ports its CMD listens on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use linkcast::config::Config;

use crate::support::pki::Pki;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The block scalar `key: |` of a YAML file, dedented.
fn yaml_block(text: &str, key: &str) -> String {
    let mut lines = text.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let header = lines.next().unwrap_or_else(|| panic!("no `{key}: |` block"));
    let indent = header.len() - header.trim_start().len();
    let body: Vec<&str> = lines.take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent).collect();
    let strip = body.iter().filter(|l| !l.trim().is_empty()).map(|l| l.len() - l.trim_start().len()).min().unwrap_or(0);
    body.iter().map(|l| if l.len() >= strip { &l[strip..] } else { "" }).collect::<Vec<_>>().join("\n")
}

/// `NAME: "value"` lines of the example Secret's stringData.
fn example_secret_env() -> BTreeMap<String, String> {
    read("deploy/k8s/secret.example.yaml")
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(k, _)| k.starts_with("LINKCAST_"))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

/// Parses, applies `env`, points the `[tls]` files at test certificates, validates.
fn checked(name: &str, toml: &str, env: &BTreeMap<String, String>, pki: &Pki) -> Config {
    let mut config = Config::from_toml(toml).unwrap_or_else(|e| panic!("{name}: {e}\n{toml}"));
    config.apply_env(|key| env.get(key).cloned());
    if config.tls.cert_file.is_some() {
        config.tls.cert_file = Some(pki.path("node.pem"));
        config.tls.key_file = Some(pki.path("node.key"));
    }
    if config.tls.ca_file.is_some() {
        config.tls.ca_file = Some(pki.path("ca.pem"));
    }
    if config.tls.client_ca_file.is_some() {
        config.tls.client_ca_file = Some(pki.path("ca.pem"));
    }
    if config.tls.client_cert_file.is_some() {
        config.tls.client_cert_file = Some(pki.path("link-client.pem"));
        config.tls.client_key_file = Some(pki.path("link-client.key"));
    }
    config.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    config
}

/// `link.drain_secs` of a config text (default 5), read as TOML so it does not depend on the
/// key's Rust field.
fn drain_secs(toml_text: &str) -> u64 {
    let value: toml::Value = toml::from_str(toml_text).expect("toml");
    value.get("link").and_then(|l| l.get("drain_secs")).and_then(|d| d.as_integer()).map_or(5, |d| d as u64)
}

/// The first `key: N` (an integer) in `text`.
fn yaml_int(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")).and_then(|v| v.trim().trim_end_matches('}').trim().parse().ok()))
        .unwrap_or_else(|| panic!("no `{key}:`"))
}

#[test]
fn configs_in_the_deploy_files_parse_validate_and_match_the_manifests() {
    let pki = Pki::new("deploy-files");
    pki.issue("node");
    pki.issue_client("link-client");
    let env = example_secret_env();
    assert!(env.contains_key("LINKCAST_CLUSTER_SECRET") && env.contains_key("LINKCAST_API_KEYS"), "{env:?}");

    let configmap = read("deploy/k8s/configmap.yaml");
    let cluster_toml = yaml_block(&configmap, "cluster.toml");
    let cluster = checked("deploy/k8s/configmap.yaml cluster.toml", &cluster_toml, &env, &pki);
    assert!(!cluster.auth.cluster_secret.is_empty(), "the cluster secret comes from the Secret's env var");
    assert_eq!(cluster.hubs.len(), 2);
    // The Links join at run time (not in [[links]]): hubs accept them only with mutual TLS.
    assert!(cluster.links.is_empty(), "the k8s Links are not listed");
    assert!(
        cluster.tls.client_ca_file.is_some() && cluster.tls.client_cert_file.is_some(),
        "unlisted Links need tls.client_ca_file (hubs) and tls.client_cert_file (Links)"
    );
    let listen = ["0.0.0.0:7070".parse().expect("addr"), "0.0.0.0:7071".parse().expect("addr")];
    cluster.check_cluster_node(&listen, true).unwrap_or_else(|e| panic!("a k8s node may start: {e}"));

    // Every hub's Service: the ClusterIP and ports cluster.toml names, selecting that hub's pod.
    let hubs = read("deploy/k8s/hubs.yaml");
    assert_eq!(yaml_int(&hubs, "replicas"), cluster.hubs.len() as u64, "one hub pod per [[hubs]] entry");
    for hub in &cluster.hubs {
        let service = hubs.split("---").find(|doc| doc.contains(&format!("name: linkcast-hub-{}\n", hub.id))).unwrap_or_else(|| panic!("no Service for hub {}", hub.id));
        assert!(service.contains(&format!("clusterIP: {}", hub.http.ip())), "hub {} Service IP", hub.id);
        assert_eq!(hub.http.ip(), hub.quic.ip());
        assert!(service.contains(&format!("port: {}, targetPort: {}, protocol: TCP", hub.http.port(), hub.http.port())), "hub {} http port", hub.id);
        assert!(service.contains(&format!("port: {}, targetPort: {}, protocol: UDP", hub.quic.port(), hub.quic.port())), "hub {} quic port", hub.id);
        assert!(service.contains(&format!("pod-name: linkcast-hub-{}", hub.id)));
    }
    // Every Link replica (ordinals from 1) has a Service of its own; the drain fits the grace period.
    let links = read("deploy/k8s/links.yaml");
    let first = yaml_int(&links, "ordinals: {start");
    for ordinal in first..first + yaml_int(&links, "replicas") {
        assert!(links.contains(&format!("pod-name: linkcast-link-{ordinal}}}")), "no Service for Link {ordinal}");
    }
    let drain = drain_secs(&cluster_toml);
    assert!(yaml_int(&links, "terminationGracePeriodSeconds") > drain + 5, "grace period > link.drain_secs ({drain}) + closing");
    let unit = read("deploy/systemd/linkcast-link@.service");
    let stop: u64 = unit.lines().find_map(|l| l.strip_prefix("TimeoutStopSec=")).and_then(|v| v.trim_end_matches('s').parse().ok()).expect("TimeoutStopSec");
    assert!(stop > drain + 5, "TimeoutStopSec ({stop}) > link.drain_secs ({drain}) + closing");

    checked("deploy/docker/linkcast.toml", &read("deploy/docker/linkcast.toml"), &BTreeMap::new(), &pki);
    checked("examples/cluster.toml", &read("examples/cluster.toml"), &BTreeMap::new(), &pki);
}

/// Every `linkcast <sub> …` invocation in the deploy files: (file, subcommand, arguments).
fn invocations() -> Vec<(String, String, Vec<String>)> {
    let mut found = Vec::new();
    let mut add = |file: &str, words: Vec<String>| {
        let start = words.iter().position(|w| w == "linkcast" || w.ends_with("/linkcast")).map_or(0, |i| i + 1);
        let words = &words[start..];
        if let Some((sub, args)) = words.split_first() {
            found.push((file.to_owned(), sub.clone(), args.to_vec()));
        }
    };
    for unit in ["deploy/systemd/linkcast-hub@.service", "deploy/systemd/linkcast-link@.service"] {
        for line in read(unit).lines().filter_map(|l| l.strip_prefix("ExecStart=")) {
            add(unit, line.split_whitespace().map(str::to_owned).collect());
        }
    }
    // JSON arrays: the Dockerfile's CMD / HEALTHCHECK CMD, the manifests' args / command.
    let arrays = [("Dockerfile", "CMD ["), ("deploy/k8s/hubs.yaml", "args: ["), ("deploy/k8s/hubs.yaml", "command: ["), ("deploy/k8s/links.yaml", "args: ["), ("deploy/k8s/links.yaml", "command: [")];
    for (file, marker) in arrays {
        for line in read(file).lines().filter(|l| l.contains(marker)) {
            let json = &line[line.find(marker).expect("marker") + marker.len() - 1..];
            let words: Vec<String> = serde_json::from_str(json).unwrap_or_else(|e| panic!("{file}: {json}: {e}"));
            if marker == "CMD [" && file == "Dockerfile" && !words[0].ends_with("/linkcast") {
                // The image's ENTRYPOINT is the binary.
                assert!(read(file).contains("ENTRYPOINT [\"/usr/local/bin/linkcast\"]"));
            }
            add(file, words);
        }
    }
    found
}

#[test]
fn every_flag_in_the_deploy_files_exists_in_the_binary() {
    let found = invocations();
    let subs: BTreeSet<&str> = found.iter().map(|(_, sub, _)| sub.as_str()).collect();
    assert!(subs.is_superset(&BTreeSet::from(["hub", "link", "serve", "healthcheck"])), "{subs:?}");
    let mut help: BTreeMap<String, String> = BTreeMap::new();
    let mut missing = Vec::new();
    for (file, sub, args) in &found {
        let text = help.entry(sub.clone()).or_insert_with(|| {
            let out = Command::new(env!("CARGO_BIN_EXE_linkcast")).args([sub.as_str(), "--help"]).output().expect("run linkcast --help");
            assert!(out.status.success(), "linkcast {sub} --help: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        });
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            let flag = flag.split('=').next().unwrap_or(flag);
            let known = text.match_indices(flag).any(|(i, _)| {
                text[i + flag.len()..].chars().next().is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'))
            });
            if !known {
                missing.push(format!("{file}: linkcast {sub} {flag}"));
            }
        }
    }
    assert!(missing.is_empty(), "flags the binary does not have:\n{}", missing.join("\n"));
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let dir = std::env::temp_dir().join(format!("linkcast-units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let stand_in = dir.join("linkcast");
    std::fs::write(&stand_in, "#!/bin/sh\nexit 0\n").expect("stand-in");
    std::fs::set_permissions(&stand_in, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod stand-in");
    for (template, instance) in [("linkcast-hub@.service", "linkcast-hub@0.service"), ("linkcast-link@.service", "linkcast-link@1.service")] {
        let text = read(&format!("deploy/systemd/{template}"));
        assert!(text.contains("ExecStart=/usr/local/bin/linkcast "), "{template} runs /usr/local/bin/linkcast");
        for key in ["Restart=on-failure", "LimitNOFILE=", "KillSignal=SIGTERM", "TimeoutStopSec=", "NoNewPrivileges=yes", "ProtectSystem=strict", "User=linkcast"] {
            assert!(text.contains(key), "{template} sets {key}");
        }
        std::fs::write(dir.join(template), text.replace("/usr/local/bin/linkcast", stand_in.to_str().expect("utf-8"))).expect("unit copy");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(dir.join(instance))
            .output()
            .unwrap_or_else(|e| panic!("systemd-analyze is needed to lint the units (apt-get install systemd): {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify {instance}: {}\n{stderr}", out.status);
    }
    // The check itself fails on a broken unit (a missing executable).
    let broken = read("deploy/systemd/linkcast-hub@.service").replace("/usr/local/bin/linkcast", dir.join("missing").to_str().expect("utf-8"));
    std::fs::write(dir.join("linkcast-hub@.service"), broken).expect("broken copy");
    let out = Command::new("systemd-analyze").arg("verify").arg(dir.join("linkcast-hub@0.service")).output().expect("systemd-analyze");
    assert!(!out.status.success(), "verify catches a unit whose executable is missing");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `HOST:PORT` → port.
fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {addr}"))
}

#[test]
fn the_dockerfile_healthcheck_and_ports_match_the_config_it_ships() {
    let dockerfile = read("Dockerfile");
    let found = invocations();
    let arg = |args: &[String], flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
    let (_, _, cmd) = found.iter().find(|(f, sub, _)| f == "Dockerfile" && sub == "serve").expect("the image's CMD is serve");
    let (_, _, probe) = found.iter().find(|(f, sub, _)| f == "Dockerfile" && sub == "healthcheck").expect("HEALTHCHECK runs linkcast healthcheck");
    assert!(dockerfile.contains("HEALTHCHECK"), "a HEALTHCHECK");

    // The config the image ships is the one CMD uses.
    let shipped = arg(cmd, "--config").expect("CMD --config");
    let copy = dockerfile.lines().find(|l| l.starts_with("COPY ") && l.ends_with(&format!(" {shipped}"))).unwrap_or_else(|| panic!("no COPY to {shipped}"));
    let source = copy.split_whitespace().nth(1).expect("COPY source");
    let config = Config::from_toml(&read(source)).expect("shipped config parses");
    let admin = config.admin.addr.expect("the shipped config has an admin listener");

    // HEALTHCHECK: /healthz on that admin port.
    let url = probe.first().expect("healthcheck URL");
    let (authority, path) = url.strip_prefix("http://").and_then(|r| r.split_once('/')).expect("http://HOST:PORT/PATH");
    assert_eq!(format!("/{path}"), "/healthz");
    assert_eq!(port_of(authority), admin.port(), "HEALTHCHECK asks the shipped config's admin port");

    // EXPOSE: exactly the admin port and what CMD listens on.
    let exposed: BTreeSet<String> = dockerfile.lines().filter_map(|l| l.strip_prefix("EXPOSE ")).flat_map(|l| l.split_whitespace().map(str::to_owned)).collect();
    let mut expected = BTreeSet::from([format!("{}/tcp", admin.port())]);
    for (flag, proto) in [("--http", "tcp"), ("--ws", "tcp"), ("--quic", "udp")] {
        let addr = arg(cmd, flag).unwrap_or_else(|| panic!("CMD sets {flag}"));
        expected.insert(format!("{}/{proto}", port_of(&addr)));
    }
    assert_eq!(exposed, expected);
    assert!(dockerfile.lines().any(|l| l.starts_with("USER ") && !l.contains("root") && !l.contains(" 0")), "runs as non-root");
    assert!(dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM ")) >= 2, "multi-stage");
    assert!(Path::new(&root().join(".dockerignore")).exists());
}

//! `linkcast` processes on loopback, as a real deployment runs them: one TOML config (in a temp
//! dir) listing every hub and Link, each node its own process of the binary under test.
//!
//! A process only takes its addresses from the config, so the ports are chosen here (bound,
//! released, written down): another process may take one in between. [`Cluster::start`] then
//! retries the whole start on fresh ports when a node exits with "address already in use"; any
//! other early exit fails the test with the node's log. Each process is signalled only through
//! the pid this test spawned ([`Processes`]); all are killed when the test ends, however it ends.
//! [`Relay`] is a UDP relay (bound on port 0) that can cut a Link↔hub QUIC path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::http::{hub_metric, metric, try_get, try_get_as};
use super::{local, STEP};

/// What to start.
pub struct ClusterSpec<'a> {
    /// Names the temp dir of configs and logs.
    pub tag: &'a str,
    /// Hubs, ids 0..hubs.
    pub hubs: usize,
    /// Links, ids 1..=links.
    pub links: usize,
    /// TOML placed before the generated `[[hubs]]` and `[[links]]` (`[auth]`, `[hub]`, `[link]`).
    pub settings: &'a str,
    /// The Links dial hub 0 through a [`Relay`] the test can cut.
    pub relay: bool,
    /// The Links listen for QUIC clients (`--no-quic` otherwise).
    pub link_quic: bool,
}

/// Hubs and Links as child processes, all up: every hub sees every Link.
pub struct Cluster {
    pub processes: Processes,
    /// The config file's path.
    pub config: String,
    /// Each hub's HTTP address.
    pub hubs: Vec<SocketAddr>,
    /// Each hub's admin listener (`/metrics`, `/healthz`).
    pub hub_admin: Vec<SocketAddr>,
    /// Each Link's admin listener (its `/metrics` say how many hubs it has up).
    pub link_admin: Vec<SocketAddr>,
    /// Where each hub listens for Links (hub 0's config entry may name the relay instead).
    hub_quic: Vec<SocketAddr>,
    /// Each Link's WebSocket address.
    pub links: Vec<SocketAddr>,
    relay: Option<Relay>,
    /// The admin-scoped API key the hubs' admin listeners require: the one given to
    /// [`Cluster::start_with_admin_key`], else the settings' first `admin`-scoped key, if any.
    pub admin_key: Option<String>,
}

impl Cluster {
    /// Starts the cluster and waits until every hub sees every Link (retrying on port clashes).
    pub async fn start(spec: ClusterSpec<'_>) -> Cluster {
        Cluster::start_with_admin_key(spec, None).await
    }

    /// [`Cluster::start`] for settings with an `admin`-scoped `[[auth.keys]]` entry: the hubs'
    /// admin listeners (read to see the Links) then require `admin_key`.
    pub async fn start_with_admin_key(spec: ClusterSpec<'_>, admin_key: Option<&str>) -> Cluster {
        let mut processes = Processes::new(spec.tag);
        for attempt in 1..=5 {
            match Cluster::try_start(&spec, processes, admin_key).await {
                Ok(cluster) => return cluster,
                Err((back, clash)) => {
                    eprintln!("{}: attempt {attempt}: {clash}; starting again on fresh ports", spec.tag);
                    processes = back;
                }
            }
        }
        panic!("{}: five port clashes in a row", spec.tag);
    }

    async fn try_start(spec: &ClusterSpec<'_>, mut processes: Processes, admin_key: Option<&str>) -> Result<Cluster, (Processes, String)> {
        processes.kill_all();
        let hubs: Vec<(SocketAddr, SocketAddr)> = (0..spec.hubs).map(|_| (local(free_tcp_port()), local(free_udp_port()))).collect();
        let links: Vec<(SocketAddr, SocketAddr)> = (0..spec.links).map(|_| (local(free_tcp_port()), local(free_udp_port()))).collect();
        let admin: Vec<SocketAddr> = (0..spec.hubs).map(|_| local(free_tcp_port())).collect();
        let link_admin: Vec<SocketAddr> = (0..spec.links).map(|_| local(free_tcp_port())).collect();
        let relay = if spec.relay { Some(Relay::start(hubs[0].1).await) } else { None };
        let mut toml = format!("{}\n\n", spec.settings);
        for (id, (http, quic)) in hubs.iter().enumerate() {
            let dialed = match &relay {
                Some(relay) if id == 0 => relay.addr(),
                _ => *quic,
            };
            let admin = admin[id];
            toml.push_str(&format!("[[hubs]]\nid = {id}\nhttp = \"{http}\"\nquic = \"{dialed}\"\nadmin = \"{admin}\"\n\n"));
        }
        for (i, ((ws, quic), admin)) in links.iter().zip(&link_admin).enumerate() {
            toml.push_str(&format!("[[links]]\nid = {}\nws = \"{ws}\"\nquic = \"{quic}\"\nadmin = \"{admin}\"\n\n", i + 1));
        }
        let config = processes.write_config(&toml);
        let mut cluster = Cluster {
            processes,
            config,
            hubs: hubs.iter().map(|h| h.0).collect(),
            hub_admin: admin,
            link_admin,
            hub_quic: hubs.iter().map(|h| h.1).collect(),
            links: links.iter().map(|l| l.0).collect(),
            relay,
            admin_key: admin_key.map(str::to_owned).or_else(|| {
                let config = linkcast::config::Config::from_toml(spec.settings).ok()?;
                let admin = config.auth.scoped_keys().find(|(_, scopes)| scopes.contains(&linkcast::config::Scope::Admin)).map(|(k, _)| k.to_owned());
                admin
            }),
        };
        for id in 0..spec.hubs {
            cluster.spawn_hub(id);
        }
        for id in 1..=spec.links {
            let config = cluster.config.clone();
            let mut args = vec!["link", "--config", &config, "--id"];
            let id_text = id.to_string();
            args.push(&id_text);
            if !spec.link_quic {
                args.push("--no-quic");
            }
            cluster.processes.spawn(&format!("link-{id}"), &args);
        }
        for hub in 0..spec.hubs {
            if let Err(clash) = cluster.try_wait_links(hub, spec.links, STEP).await {
                return Err((cluster.into_processes(), clash));
            }
        }
        Ok(cluster)
    }

    fn into_processes(mut self) -> Processes {
        std::mem::replace(&mut self.processes, Processes { children: Vec::new(), dir: PathBuf::new() })
    }

    /// Starts (or restarts, on the same ports) hub `id`.
    pub fn spawn_hub(&mut self, id: usize) {
        let (config, quic) = (self.config.clone(), self.hub_quic[id].to_string());
        self.processes.spawn(&format!("hub-{id}"), &["hub", "--config", &config, "--id", &id.to_string(), "--quic", &quic]);
    }

    /// Waits until hub `hub` sees `n` Links connected and every running Link of the config has
    /// every running hub up; fails the test if that does not happen in time.
    ///
    /// Both sides, because a hub counts a Link at its hello, a moment before the Link has that
    /// hub up: a member joining in between is answered 503, and the tests' members do not retry.
    pub async fn wait_links(&mut self, hub: usize, n: usize, within: Duration) {
        if let Err(failure) = self.try_wait_links(hub, n, within).await {
            panic!("{failure}");
        }
    }

    /// Like [`Cluster::wait_links`]; `Err` if a node exited because its port was taken.
    async fn try_wait_links(&mut self, hub: usize, n: usize, within: Duration) -> Result<(), String> {
        let hubs_up = (0..self.hub_admin.len()).filter(|id| self.processes.running(&format!("hub-{id}"))).count();
        let links: Vec<SocketAddr> =
            self.link_admin.iter().enumerate().filter(|(i, _)| self.processes.running(&format!("link-{}", i + 1))).map(|(_, admin)| *admin).collect();
        let (admin, key) = (self.hub_admin[hub], self.admin_key.clone());
        let seen = || {
            let (key, links) = (key.clone(), links.clone());
            async move {
                let metrics = |at: SocketAddr| {
                    let key = key.clone();
                    async move {
                        let res = match &key {
                            Some(key) => try_get_as(at, "/metrics", key).await,
                            None => try_get(at, "/metrics").await,
                        };
                        res.filter(|res| res.status == 200).map(|res| res.text())
                    }
                };
                if !metrics(admin).await.is_some_and(|text| hub_metric(&text, "linkcast_hub_links", hub as u32) == n as f64) {
                    return false;
                }
                for link in links {
                    if !metrics(link).await.is_some_and(|text| metric(&text, "linkcast_link_hubs_connected", &[]) == hubs_up as f64) {
                        return false;
                    }
                }
                true
            }
        };
        let link_logs = self.link_admin.len();
        self.processes
            .until(within, seen, |processes| {
                let mut failure = format!(
                    "hub {hub} does not see {n} Links, or a Link does not have its {hubs_up} hub(s) up, within {within:?}; hub {hub}'s log:\n{}",
                    processes.log_tail(&format!("hub-{hub}"), 20)
                );
                for id in 1..=link_logs {
                    failure.push_str(&format!("\nlink-{id}'s log:\n{}", processes.log_tail(&format!("link-{id}"), 10)));
                }
                failure
            })
            .await
    }

    /// The WebSocket URL of Link `index` (0-based; its id is `index + 1`).
    pub fn url(&self, index: usize) -> String {
        format!("ws://{}/ws", self.links[index])
    }

    /// The relay in front of hub 0 (if the spec asked for one).
    pub fn relay(&self) -> &Relay {
        self.relay.as_ref().expect("the cluster was started with a relay")
    }
}


/// A free loopback TCP port (bound, then released).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free tcp port")
}

/// A free loopback UDP port (bound, then released).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).expect("free udp port")
}

/// Child processes of the `linkcast` binary, each signalled only through the pid this test got
/// from spawning it; all killed when the test ends, however it ends.
pub struct Processes {
    children: Vec<(String, Child)>,
    pub dir: PathBuf,
}

impl Processes {
    /// A fresh temp dir named after `tag` for configs and logs.
    pub fn new(tag: &str) -> Processes {
        let dir = std::env::temp_dir().join(format!("linkcast-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Processes { children: Vec::new(), dir }
    }

    /// Writes the config file; returns its path.
    pub fn write_config(&self, toml: &str) -> String {
        let path = self.dir.join("cluster.toml");
        std::fs::write(&path, toml).expect("write config");
        path.to_str().expect("utf-8 path").to_owned()
    }

    /// Starts `linkcast ARGS` as `name` (output to `name.log`, appended across restarts).
    pub fn spawn(&mut self, name: &str, args: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .expect("log file");
        // tracing writes to stdout: both streams go to the log.
        let out = log.try_clone().expect("log file handle");
        let child = Command::new(env!("CARGO_BIN_EXE_linkcast"))
            .args(args)
            // LINKCAST_TEST_LOG (e.g. `info,linkcast::hub=debug`) raises the nodes' log level.
            .env("RUST_LOG", std::env::var("LINKCAST_TEST_LOG").unwrap_or_else(|_| "info".to_owned()))
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn linkcast");
        self.children.retain(|(n, _)| n != name);
        self.children.push((name.to_owned(), child));
    }

    fn pid(&self, name: &str) -> i32 {
        let (_, child) = self.children.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no process {name}"));
        i32::try_from(child.id()).expect("pid fits")
    }

    /// SIGKILL (through `Child::kill`, i.e. our own pid) and reap.
    pub fn kill(&mut self, name: &str) {
        if let Some((_, child)) = self.children.iter_mut().find(|(n, _)| n == name) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, name: &str, signal: i32) {
        let pid = self.pid(name);
        // SAFETY: kill(2) on a pid we spawned and have not reaped; no memory is involved.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
    }

    /// SIGTERM the process (what systemd and Kubernetes send to stop it).
    pub fn terminate(&self, name: &str) {
        self.signal(name, libc::SIGTERM);
    }

    /// SIGSTOP the process.
    pub fn stop(&self, name: &str) {
        self.signal(name, libc::SIGSTOP);
    }

    /// SIGCONT the process.
    pub fn cont(&self, name: &str) {
        self.signal(name, libc::SIGCONT);
    }

    /// True while the process has not exited.
    pub fn running(&mut self, name: &str) -> bool {
        self.children.iter_mut().find(|(n, _)| n == name).is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    /// How the process ended, once it has (`None` while it runs).
    pub fn exit_status(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        self.children.iter_mut().find(|(n, _)| n == name).and_then(|(_, c)| c.try_wait().ok().flatten())
    }

    /// Polls `probe` until it holds; `Err` if a node exited because its port was taken
    /// ([`Processes::port_clash`]). Past `within` the test fails with `failure`'s message.
    pub async fn until<F, Fut>(&mut self, within: Duration, mut probe: F, failure: impl FnOnce(&Processes) -> String) -> Result<(), String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        loop {
            if probe().await {
                return Ok(());
            }
            if let Some(clash) = self.port_clash() {
                return Err(clash);
            }
            if Instant::now() >= deadline {
                panic!("{}", failure(self));
            }
            // 50 ms, as `wait_links` always polled.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A node that exited because its port was taken (another test bound it between this
    /// test's `free_tcp_port` and the node's own bind): why, for the caller to start again on
    /// fresh ports. Any other exit fails the test with the node's log.
    pub fn port_clash(&mut self) -> Option<String> {
        let name = self.exited()?;
        let log = self.log_tail(&name, 20);
        if log.to_ascii_lowercase().contains("address already in use") {
            return Some(format!("{name} found its port taken"));
        }
        panic!("{name} exited; its log:\n{log}");
    }

    /// The name of a process that has exited, if any (they are expected to run until killed).
    pub fn exited(&mut self) -> Option<String> {
        self.children.iter_mut().find_map(|(n, c)| (!matches!(c.try_wait(), Ok(None))).then(|| n.clone()))
    }

    /// Kills and reaps every process.
    pub fn kill_all(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }

    /// The last lines of `name.log`.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The temp dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            // A stopped child must be continued to die promptly on some systems; SIGKILL works
            // on stopped processes on Linux, so kill is enough.
            let _ = child.kill();
            let _ = child.wait();
        }
        // The logs are kept for a failing test only: a passing run leaves nothing in the temp dir.
        if std::thread::panicking() {
            eprintln!("process logs are in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A UDP relay on loopback: datagrams to `listen` go to `target` (one upstream socket per
/// source address) and answers come back; while paused, every datagram in either direction
/// is dropped (a network cut).
pub struct Relay {
    addr: SocketAddr,
    paused: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    /// Starts relaying from a fresh loopback port ([`Relay::addr`]) to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let socket = Arc::new(UdpSocket::bind(local(0)).await.expect("relay bind"));
        let addr = socket.local_addr().expect("relay address");
        let paused = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (paused, dropped, forwarded, tasks) = (paused.clone(), dropped.clone(), forwarded.clone(), tasks.clone());
            tokio::spawn(async move {
                let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
                let mut buf = vec![0u8; 65_536];
                loop {
                    let Ok((n, from)) = socket.recv_from(&mut buf).await else { break };
                    if paused.load(Ordering::SeqCst) {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if let std::collections::hash_map::Entry::Vacant(slot) = upstreams.entry(from) {
                        let Ok(up) = UdpSocket::bind("127.0.0.1:0").await else { continue };
                        if up.connect(target).await.is_err() {
                            continue;
                        }
                        let up = Arc::new(up);
                        let back = {
                            let (up, socket, paused, dropped, forwarded) =
                                (up.clone(), socket.clone(), paused.clone(), dropped.clone(), forwarded.clone());
                            tokio::spawn(async move {
                                let mut buf = vec![0u8; 65_536];
                                loop {
                                    // Errors (ICMP unreachable while the target is down) are not fatal.
                                    let Ok(n) = up.recv(&mut buf).await else {
                                        tokio::time::sleep(Duration::from_millis(5)).await;
                                        continue;
                                    };
                                    if paused.load(Ordering::SeqCst) {
                                        dropped.fetch_add(1, Ordering::Relaxed);
                                        continue;
                                    }
                                    forwarded.fetch_add(1, Ordering::Relaxed);
                                    let _ = socket.send_to(&buf[..n], from).await;
                                }
                            })
                        };
                        lock(&tasks).push(back);
                        slot.insert(up);
                    }
                    if let Some(up) = upstreams.get(&from) {
                        forwarded.fetch_add(1, Ordering::Relaxed);
                        let _ = up.send(&buf[..n]).await;
                    }
                }
            })
        };
        lock(&tasks).push(task);
        Relay { addr, paused, dropped, forwarded, tasks }
    }

    /// Where the relay listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the path (drops everything) or restores it.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    /// Datagrams dropped while paused.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Datagrams forwarded.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

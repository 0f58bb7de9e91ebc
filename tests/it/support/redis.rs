//! Real Redis for the store tests: `redis-server` processes (Debian's, from `/usr/bin`, which
//! `.ci/run` installs when missing) on free loopback ports, each in a temp dir of its own.
//!
//! [`RedisServer`] is one node: started with `--save "" --appendonly no` (no persistence) unless
//! [`RedisServer::start_with`] adds options; [`RedisServer::kill`] SIGKILLs the pid this test
//! spawned (never a process found by name) and [`RedisServer::restart`] starts it again on the
//! same port, dir and options — with persistence off, that is "Redis came back empty". Dropping
//! it kills it and removes its dir (kept, and named, when the test panicked).
//! [`RedisCluster`] is `n` masters with `--cluster-enabled yes`, joined by
//! `redis-cli --cluster create`, ready when every node says `cluster_state:ok`.
//!
//! Every wait is bounded (a PING poll until a deadline); a port taken between choosing it and
//! `redis-server` binding it means a fresh port and a new start, a few times.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a node may take to answer PING after it was spawned.
const READY: Duration = Duration::from_secs(10);

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// One `redis-server` process.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    /// The options after the fixed ones, kept for [`RedisServer::restart`].
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A node without persistence.
    pub async fn start() -> RedisServer {
        RedisServer::start_with(&[]).await
    }

    /// A node with more `redis-server` options (later ones win: `--appendonly yes`, ...).
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        RedisServer::start_on(extra, false).await
    }

    /// `cluster_bus`: the port + 10000 (Redis Cluster's bus) must be free too.
    async fn start_on(extra: &[&str], cluster_bus: bool) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("linkcast-redis-{}-{}", std::process::id(), NEXT_DIR.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("redis temp dir");
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        for attempt in 1..=5 {
            let mut server = RedisServer { port: free_port(cluster_bus), dir: dir.clone(), extra: extra.clone(), child: None };
            server.spawn();
            if server.wait_ready().await {
                return server;
            }
            eprintln!("redis-server on port {} did not come up (attempt {attempt}); trying another port", server.port);
            server.kill();
            server.dir = PathBuf::new(); // the next attempt reuses the dir: do not remove it on drop
        }
        panic!("redis-server did not start five times; logs in {}", dir.display());
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("redis.log")).expect("redis log");
        let out = log.try_clone().expect("redis log handle");
        let port = self.port.to_string();
        let dir = self.dir.to_str().expect("utf-8 temp dir").to_owned();
        let mut args: Vec<&str> =
            vec!["--save", "", "--appendonly", "no", "--port", &port, "--bind", "127.0.0.1", "--daemonize", "no", "--dir", &dir];
        args.extend(self.extra.iter().map(String::as_str));
        let child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn redis-server (is it installed? .ci/run installs Debian's redis-server)");
        self.child = Some(child);
    }

    /// PINGs until PONG; false if the process exited (port taken) or the deadline passed.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + READY;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return false;
                }
            }
            if ping(self.port).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The pid this test spawned.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("redis-server is running")
    }

    /// SIGKILL through the child handle (our own pid) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it (if running) and starts it again on the same port, dir and options.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY;
        loop {
            self.spawn();
            if self.wait_ready().await {
                return;
            }
            self.kill();
            // The old socket may linger a moment (or someone took the port): bounded retries.
            assert!(Instant::now() < deadline, "redis-server did not restart on port {}; log in {}", self.port, self.dir.display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `redis-cli -p PORT ARGS...`, its output trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// `CONFIG SET key value`, which must answer OK.
    pub fn config_set(&self, key: &str, value: &str) {
        assert_eq!(self.cli(&["CONFIG", "SET", key, value]), "OK", "CONFIG SET {key} {value}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if self.dir.as_os_str().is_empty() {
            return;
        }
        if std::thread::panicking() {
            eprintln!("redis-server log kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `n` Redis Cluster masters, no replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` (at least 3) masters, creates the cluster and waits until all say ok.
    pub async fn start(n: usize) -> RedisCluster {
        let options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"];
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            nodes.push(RedisServer::start_on(&options, true).await);
        }
        let addrs: Vec<String> = nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let output = tokio::process::Command::new("redis-cli").args(&args).stdin(Stdio::null()).output().await.expect("run redis-cli --cluster create");
        assert!(output.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&output.stdout));
        let deadline = Instant::now() + READY;
        while !nodes.iter().all(|node| node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")) {
            assert!(Instant::now() < deadline, "cluster not ok within {READY:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        RedisCluster { nodes }
    }

    /// Every node's URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// A free loopback TCP port (bound, then released); with `cluster_bus`, port + 10000 too.
fn free_port(cluster_bus: bool) -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free tcp port");
        if !cluster_bus {
            return port;
        }
        if port <= 55535 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// One inline `PING` on a fresh connection: true on `+PONG`.
async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await.ok()?;
        Some(&reply == b"+PONG\r\n")
    };
    tokio::time::timeout(Duration::from_millis(500), attempt).await.ok().flatten().unwrap_or(false)
}

/// `redis-cli -p PORT ARGS...` (blocking: a local command answers in milliseconds).
fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).stdin(Stdio::null()).output().expect("run redis-cli");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

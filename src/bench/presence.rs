//! `linkcast bench presence`: what member counts cost — hub → Link messages per second and
//! client deliveries per second while a big room churns, to run once with presence on and once
//! with it off (`hub.presence_interval_ms = 0`) against the same server.
//!
//! Flow: connect `--members` WebSocket clients to `--ws` (at most `--connect-concurrency` at a
//! time), each joins one room (`--room` plus a random suffix) and counts what it receives by kind
//! (`presence`, `member_joined`/`member_left`, room messages, other); once all joined and
//! `--settle` seconds passed, the hub's counters are read from `--http`'s `/metrics`
//! (`linkcast_hub_presence_sends_total`, `linkcast_hub_member_event_sends_total`,
//! `linkcast_hub_link_sends_total`), then for `--duration`
//! seconds `--churn` times per second a random member is toggled — it leaves the room if in it,
//! joins again if not (so the count walks and changes all the time; a member is a connection in
//! the room) — optionally with `--rate` HTTP publishes per
//! second into the room; at the end the counters are read again. Printed: hub → Link presence
//! frames per second (per Link and room), client deliveries per second by kind, and presence
//! messages per member per second. Bounded in members (≤ [`MAX_MEMBERS`]), time and rate.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::client::ws::{WsTransport, WsUrl};

/// Most members one run connects (one process's file limit, with margin).
pub const MAX_MEMBERS: u64 = 19_000;

/// Flags of `linkcast bench presence`.
#[derive(Clone, Debug, clap::Args)]
pub struct PresenceArgs {
    /// WebSocket URL of the Link the members connect to.
    #[arg(long)]
    pub ws: String,
    /// Hub base URL (`http://host:port`): its `/metrics` (and publishes with --rate).
    #[arg(long)]
    pub http: String,
    /// API key for `/metrics` and publishes, if the hub needs one.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Members of the room (connections).
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub members: u64,
    /// Toggles per second: a random member leaves the room (or joins it again if it left).
    #[arg(long, default_value_t = 1000.0)]
    pub churn: f64,
    /// Room messages per second published over HTTP during the churn.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Seconds of churn.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds between "all joined" and the churn.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Room name prefix (a random suffix keeps runs apart).
    #[arg(long, default_value = "presence-bench")]
    pub room: String,
    /// Label of this run.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Write the result as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What the members received, by kind.
#[derive(Debug, Default)]
struct Received {
    presence: AtomicU64,
    member_events: AtomicU64,
    messages: AtomicU64,
    other: AtomicU64,
}

impl Received {
    fn snapshot(&self) -> [u64; 4] {
        [&self.presence, &self.member_events, &self.messages, &self.other].map(|c| c.load(Ordering::Relaxed))
    }
}

/// The result of one run.
#[derive(Debug, serde::Serialize)]
pub struct PresenceReport {
    /// The run's label.
    pub label: String,
    /// Members connected and joined.
    pub members: u64,
    /// Toggles (a leave or a join) done per second.
    pub churn_per_sec: f64,
    /// Seconds measured.
    pub secs: f64,
    /// Hub → Link `Presence` frames (member counts) per second.
    pub hub_presence_per_sec: f64,
    /// Hub → Link `Member` frames (join/leave events) per second.
    pub hub_member_events_per_sec: f64,
    /// Hub → Link room message frames per second.
    pub hub_messages_per_sec: f64,
    /// Client deliveries per second: all, and by kind.
    pub deliveries_per_sec: f64,
    /// `presence` deliveries per second.
    pub presence_deliveries_per_sec: f64,
    /// `member_joined` / `member_left` deliveries per second.
    pub member_event_deliveries_per_sec: f64,
    /// Room message deliveries per second.
    pub message_deliveries_per_sec: f64,
    /// Other deliveries per second (`joined`, `left` answers to the churning members).
    pub other_deliveries_per_sec: f64,
    /// `presence` messages per member per second.
    pub presence_per_member_per_sec: f64,
}

/// Runs `linkcast bench presence` and prints its report.
pub fn run_cli(args: PresenceArgs) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(run(args.clone()))?;
    println!(
        "presence bench {label}: {members} members, churn {churn:.0}/s over {secs:.1} s\n  \
         hub → Link: {hp:.1} count frames/s, {he:.1} join/leave event frames/s, {hm:.1} message frames/s\n  \
         client deliveries: {d:.0}/s (presence {p:.0}/s, member events {e:.0}/s, messages {m:.0}/s, other {o:.0}/s)\n  \
         presence per member: {ppm:.2}/s",
        label = report.label,
        members = report.members,
        churn = report.churn_per_sec,
        secs = report.secs,
        hp = report.hub_presence_per_sec,
        he = report.hub_member_events_per_sec,
        hm = report.hub_messages_per_sec,
        d = report.deliveries_per_sec,
        p = report.presence_deliveries_per_sec,
        e = report.member_event_deliveries_per_sec,
        m = report.message_deliveries_per_sec,
        o = report.other_deliveries_per_sec,
        ppm = report.presence_per_member_per_sec,
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

/// One run (see the module docs).
pub async fn run(args: PresenceArgs) -> Result<PresenceReport, Box<dyn std::error::Error>> {
    if args.members == 0 || args.members > MAX_MEMBERS {
        return Err(format!("--members must be 1..={MAX_MEMBERS}").into());
    }
    let room = format!("{}-{}", args.room, crate::clock::now_micros() % 1_000_000_000);
    let url = WsUrl::parse(&args.ws, None)?;
    let received = Arc::new(Received::default());
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<mpsc::Sender<()>, String>>(1024);
    for _ in 0..args.members {
        let (url, room, received, gate, ready) = (url.clone(), room.clone(), received.clone(), gate.clone(), ready_tx.clone());
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let joined = join(&url, &room).await;
            drop(permit);
            match joined {
                Ok(conn) => {
                    let (churn_tx, churn_rx) = mpsc::channel(4);
                    if ready.send(Ok(churn_tx)).await.is_ok() {
                        member(conn, room, churn_rx, received).await;
                    }
                }
                Err(e) => {
                    let _ = ready.send(Err(e)).await;
                }
            }
        });
    }
    let mut members = Vec::with_capacity(args.members as usize);
    let mut failed = 0u64;
    let mut first_error = None;
    // Each member task keeps its sender while it runs: count the answers, not the senders.
    for _ in 0..args.members {
        let Some(result) = ready_rx.recv().await else { break };
        match result {
            Ok(tx) => members.push(tx),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if members.is_empty() {
        return Err(format!("no member joined: {}", first_error.unwrap_or_default()).into());
    }
    if failed > 0 {
        eprintln!("{failed} members failed to join (first error: {})", first_error.unwrap_or_default());
    }
    tokio::time::sleep(Duration::from_secs_f64(args.settle.max(0.0))).await;

    let before = hub_counters(&args.http, args.api_key.as_deref()).await?;
    let got_before = received.snapshot();
    let started = Instant::now();
    let duration = Duration::from_secs_f64(args.duration.clamp(0.1, 600.0));
    let churn_every = Duration::from_secs_f64(1.0 / args.churn.clamp(0.001, 100_000.0));
    let publish_every = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate.min(10_000.0)));
    let publisher = publish_every.map(|every| tokio::spawn(publish(args.http.clone(), args.api_key.clone(), room.clone(), every, duration)));
    // Random members (xorshift, seeded by the clock): the room's count walks, changing with every
    // toggle, as a live audience does.
    let mut state = crate::clock::now_micros() | 1;
    let mut churned = 0u64;
    let mut tick = tokio::time::interval(churn_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while started.elapsed() < duration {
        tick.tick().await;
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if members[(state % members.len() as u64) as usize].try_send(()).is_ok() {
            churned += 1;
        }
    }
    if let Some(publisher) = publisher {
        let _ = publisher.await;
    }
    // What the hub sent during the churn is delivered shortly after: a beat before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let secs = started.elapsed().as_secs_f64();
    let after = hub_counters(&args.http, args.api_key.as_deref()).await?;
    let got = received.snapshot();
    drop(members);
    let delta: Vec<f64> = got.iter().zip(got_before).map(|(a, b)| (a - b) as f64 / secs).collect();
    let joined = args.members - failed;
    Ok(PresenceReport {
        label: args.label,
        members: joined,
        churn_per_sec: churned as f64 / secs,
        secs,
        hub_presence_per_sec: (after.0 - before.0) / secs,
        hub_messages_per_sec: (after.1 - before.1) / secs,
        hub_member_events_per_sec: (after.2 - before.2) / secs,
        deliveries_per_sec: delta.iter().sum(),
        presence_deliveries_per_sec: delta[0],
        member_event_deliveries_per_sec: delta[1],
        message_deliveries_per_sec: delta[2],
        other_deliveries_per_sec: delta[3],
        presence_per_member_per_sec: delta[0] / joined.max(1) as f64,
    })
}

/// Connects and joins `room`; the connection once `joined` came.
async fn join(url: &WsUrl, room: &str) -> Result<WsTransport, String> {
    let mut conn = WsTransport::connect(url, None, Duration::from_secs(30), &crate::tls::Trust::LoopbackDev).await.map_err(|e| e.to_string())?;
    conn.send_text(join_op(room)).await.map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let msg = tokio::time::timeout_at(deadline, conn.recv()).await.map_err(|_| "no joined within 30 s".to_owned())?.map_err(|e| e.to_string())?;
        let text = msg.as_text().unwrap_or("");
        if text.starts_with(r#"{"op":"joined""#) {
            return Ok(conn);
        }
        if text.starts_with(r#"{"op":"error""#) {
            return Err(text.to_owned());
        }
    }
}

fn join_op(room: &str) -> String {
    serde_json::json!({"op": "join", "room": room}).to_string()
}

/// One member: counts what it receives; each churn command toggles it (leaves the room when in
/// it, joins again when out).
async fn member(mut conn: WsTransport, room: String, mut churn: mpsc::Receiver<()>, received: Arc<Received>) {
    let leave = serde_json::json!({"op": "leave", "room": room}).to_string();
    let mut inside = true;
    loop {
        tokio::select! {
            cmd = churn.recv() => {
                if cmd.is_none() {
                    conn.close().await;
                    return;
                }
                let op = if inside { leave.clone() } else { join_op(&room) };
                inside = !inside;
                if conn.send_text(op).await.is_err() {
                    return;
                }
            }
            msg = conn.recv() => {
                let Ok(msg) = msg else { return };
                let text = msg.as_text().unwrap_or("");
                let counter = if text.starts_with(r#"{"op":"presence""#) {
                    &received.presence
                } else if text.starts_with(r#"{"op":"member_"#) {
                    &received.member_events
                } else if text.starts_with(r#"{"room""#) {
                    &received.messages
                } else {
                    &received.other
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Publishes a small JSON message into `room` every `every` for `duration` (HTTP, one
/// connection per request: the rate is low).
async fn publish(http: String, api_key: Option<String>, room: String, every: Duration, duration: Duration) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(every);
    while started.elapsed() < duration {
        tick.tick().await;
        let auth = api_key.as_deref().map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
        let body = r#"{"bench":"presence"}"#;
        let request = format!(
            "POST /v1/rooms/{room}/messages HTTP/1.1\r\nHost: bench\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = http_exchange(&http, &request).await;
    }
}

/// The hub's (count frames, message frames, join/leave event frames) sent to Links so far,
/// summed over hubs.
async fn hub_counters(http: &str, api_key: Option<&str>) -> Result<(f64, f64, f64), Box<dyn std::error::Error>> {
    let auth = api_key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    let text = http_exchange(http, &format!("GET /metrics HTTP/1.1\r\nHost: bench\r\n{auth}Connection: close\r\n\r\n")).await?;
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    if !text.contains("linkcast_hub_link_sends_total") {
        return Err("the hub's /metrics has no linkcast_hub_link_sends_total (is --http a hub with /metrics?)".into());
    }
    Ok((sum("linkcast_hub_presence_sends_total"), sum("linkcast_hub_link_sends_total"), sum("linkcast_hub_member_event_sends_total")))
}

/// One HTTP/1.1 exchange over a fresh connection, bounded to 10 s and 16 MiB; the whole answer.
async fn http_exchange(http: &str, request: &str) -> Result<String, Box<dyn std::error::Error>> {
    let authority = http.strip_prefix("http://").ok_or("--http must be http://host:port")?;
    let authority = authority.split('/').next().unwrap_or(authority);
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(authority).await?;
        tcp.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        (&mut tcp).take(16 << 20).read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    Ok(tokio::time::timeout(Duration::from_secs(10), exchange).await??)
}

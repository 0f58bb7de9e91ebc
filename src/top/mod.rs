//! `linkcast top`: a terminal view of a running cluster — per-Link connections and deliveries/s,
//! the hottest rooms by publish rate, queues, gaps and hubs connected.
//!
//! Data flow, once per `--interval-ms`:
//! 1. the nodes to scrape: with `--config`, every `[[hubs]]` / `[[links]]` entry's `admin`
//!    listener (a hub without one: its API port, as an unsecured dev hub serves `/metrics`
//!    there); with `--hub URL` (one `serve`, or one hub in dev), that URL. Links the config does
//!    not list are added from a hub's `GET /v1/links` (their `admin` address) when a hub answers
//!    it (404 from an older hub is fine);
//! 2. every node's `/metrics` is fetched concurrently (each bounded by a timeout) and parsed
//!    ([`prom`]); counters become rates against the node's previous scrape ([`view`]);
//! 3. the hottest rooms come from the operator API, `GET /v1/top/rooms` on the first hub that
//!    answers (admin scope: `--api-key`, or `LINKCAST_ADMIN_KEY`).
//!
//! Output: on a terminal the view is redrawn in place ([`term`]: plain ANSI on the alternate
//! screen; `q` or Ctrl-C quits and restores the terminal). `--once` scrapes twice,
//! `--interval-ms` apart (so rates exist), prints one view and exits 0; `--json` prints the view
//! as JSON (one document with `--once`, one line per interval otherwise). A node that does not
//! answer is shown as down, a metric it does not export as `-` (`null`).

mod prom;
mod term;
mod view;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::client::http::{HttpApi, HttpError};
use crate::config::Config;
use crate::tls::Trust;
use prom::Scrape;
use view::{RoomRow, Scraped, View};

/// `linkcast top` flags.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Cluster configuration file: scrape every hub's and Link's admin listener in it.
    #[arg(long, conflicts_with = "hub")]
    pub config: Option<PathBuf>,
    /// One node's HTTP base URL (a `serve`, or a hub in dev); default http://127.0.0.1:7070 when
    /// neither --config nor --hub is given.
    #[arg(long)]
    pub hub: Option<String>,
    /// API key with the `admin` scope (room list; admin listeners that require one).
    #[arg(long, env = "LINKCAST_ADMIN_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Milliseconds between two scrapes (rates are over this interval).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub interval_ms: u64,
    /// Scrape twice, print one view and exit.
    #[arg(long)]
    pub once: bool,
    /// Print the view as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Hottest rooms to show (1-100).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub rooms: u64,
}

/// Runs `linkcast top` until `q`, Ctrl-C or SIGTERM (or after one view with `--once`).
pub fn run_cli(args: TopArgs) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

/// What a scraped node contributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Hub,
    Link,
    /// `--hub URL`: the hubs its series name, and a Link if it exports Link series (`serve`).
    Any,
}

/// One `/metrics` endpoint and its previous scrape.
struct Node {
    role: Role,
    id: Option<u32>,
    base: String,
    api: HttpApi,
    /// What a replacement connection is made with.
    key: Option<String>,
    trust: Trust,
    previous: Option<Scraped>,
}

/// Everything top polls.
struct Sources {
    nodes: Vec<Node>,
    /// Hubs' API bases, tried in order for the room list and the Link list.
    apis: Vec<(String, HttpApi)>,
    key: Option<String>,
    trust: Trust,
    rooms: u64,
    timeout: Duration,
    title: String,
}

async fn run(args: TopArgs) -> Result<(), Box<dyn std::error::Error>> {
    let interval = Duration::from_millis(args.interval_ms);
    let mut sources = Sources::new(&args)?;
    let once = args.once;
    if once {
        sources.poll(interval).await;
        tokio::time::sleep(interval).await;
        let view = sources.poll(interval).await;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&view)?);
        } else {
            println!("{}", view::render(&view, &sources.title, usize::MAX));
        }
        return Ok(());
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let interactive = !args.json && term::Screen::available();
    let screen = if interactive { Some(term::Screen::enter()?) } else { None };
    let mut keys = if interactive { Some(term::keys()) } else { None };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let view = sources.poll(interval).await;
                match &screen {
                    Some(screen) => screen.draw(&view::render(&view, &sources.title, term::Screen::width()).replace('\n', "\r\n"))?,
                    None if args.json => println!("{}", serde_json::to_string(&view)?),
                    None => println!("{}\n", view::render(&view, &sources.title, usize::MAX)),
                }
            }
            key = next_key(&mut keys) => match key {
                Some(key) if term::is_quit(key) => break,
                Some(_) => {}
                // stdin closed: keep running until a signal.
                None => keys = None,
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    drop(screen);
    Ok(())
}

async fn next_key(keys: &mut Option<tokio::sync::mpsc::Receiver<u8>>) -> Option<u8> {
    match keys {
        Some(keys) => keys.recv().await,
        None => std::future::pending().await,
    }
}

/// `http://addr` for a bare `host:port`; a URL is kept as it is (without a trailing `/`).
fn base_url(addr: &str) -> String {
    let addr = addr.trim_end_matches('/');
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// A Link as `GET /v1/links` lists it (only what top needs).
#[derive(Debug, serde::Deserialize)]
struct ListedLink {
    id: u32,
    #[serde(default)]
    admin: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct LinkList {
    links: Vec<ListedLink>,
}

#[derive(Debug, serde::Deserialize)]
struct TopRooms {
    rooms: Vec<RoomRow>,
    #[serde(default)]
    hubs_missing: Vec<u32>,
}

impl Sources {
    fn new(args: &TopArgs) -> Result<Sources, Box<dyn std::error::Error>> {
        let key = args.api_key.clone().filter(|k| !k.is_empty());
        let timeout = Duration::from_millis(args.interval_ms.clamp(1000, 5000));
        let mut sources = Sources { nodes: Vec::new(), apis: Vec::new(), key: key.clone(), trust: Trust::LoopbackDev, rooms: args.rooms, timeout, title: String::new() };
        match &args.config {
            Some(path) => {
                let config = Config::load(path)?;
                sources.trust = Trust::from_config(&config.tls)?;
                let scheme = if config.tls.serves_tls() { "https" } else { "http" };
                for hub in &config.hubs {
                    let api = format!("{scheme}://{}", hub.http);
                    let metrics = hub.admin.map(|a| base_url(&a.to_string())).unwrap_or_else(|| api.clone());
                    sources.add_node(Role::Hub, Some(hub.id), &metrics)?;
                    sources.apis.push((api.clone(), HttpApi::with_trust(&api, key.clone(), sources.trust.clone())?));
                }
                for link in &config.links {
                    if let Some(admin) = link.admin {
                        sources.add_node(Role::Link, Some(link.id), &base_url(&admin.to_string()))?;
                    }
                }
                sources.title = format!("linkcast top — {}", path.display());
            }
            None => {
                let hub = base_url(args.hub.as_deref().unwrap_or("http://127.0.0.1:7070"));
                sources.add_node(Role::Any, None, &hub)?;
                sources.apis.push((hub.clone(), HttpApi::with_trust(&hub, key.clone(), Trust::LoopbackDev)?));
                sources.title = format!("linkcast top — {hub}");
            }
        }
        sources.title.push_str(&format!(" — every {} ms — q quits", args.interval_ms));
        Ok(sources)
    }

    fn add_node(&mut self, role: Role, id: Option<u32>, base: &str) -> Result<(), HttpError> {
        let api = HttpApi::with_trust(base, self.key.clone(), self.trust.clone())?;
        self.nodes.push(Node { role, id, base: base.to_owned(), api, key: self.key.clone(), trust: self.trust.clone(), previous: None });
        Ok(())
    }

    /// One round: Links to add, every node's metrics, the room list; the view.
    async fn poll(&mut self, interval: Duration) -> View {
        self.discover_links().await;
        let timeout = self.timeout;
        let scrapes = futures_util::future::join_all(self.nodes.iter_mut().map(|node| scrape(node, timeout)));
        let rooms = top_rooms(&mut self.apis, self.rooms, timeout);
        let (scraped, rooms) = tokio::join!(scrapes, rooms);
        let mut view = View { interval_ms: interval.as_millis() as u64, hubs: Vec::new(), links: Vec::new(), rooms: Vec::new(), rooms_error: None, hubs_missing: Vec::new() };
        for (node, now) in self.nodes.iter_mut().zip(scraped) {
            let source = format!("{}/metrics", node.base);
            let before = node.previous.as_ref();
            match node.role {
                Role::Hub => view.hubs.push(view::hub_row(node.id, &source, before, &now)),
                Role::Link => view.links.push(view::link_row(node.id, &source, before, &now)),
                Role::Any => match now.result.as_ref() {
                    Ok(scrape) => {
                        for hub in scrape.label_values("linkcast_hub_links", "hub") {
                            view.hubs.push(view::hub_row(hub.parse().ok(), &source, before, &now));
                        }
                        if scrape.samples.iter().any(|s| s.name.starts_with("linkcast_link_")) {
                            view.links.push(view::link_row(node.id, &source, before, &now));
                        }
                    }
                    Err(_) => view.hubs.push(view::hub_row(None, &source, before, &now)),
                },
            }
            node.previous = Some(now);
        }
        view.links.sort_by_key(|l| l.id);
        match rooms {
            Ok(top) => {
                view.rooms = top.rooms;
                view.hubs_missing = top.hubs_missing;
            }
            Err(error) => view.rooms_error = Some(error),
        }
        view
    }

    /// Adds the Links a hub lists with an admin address that are not scraped yet.
    async fn discover_links(&mut self) {
        let timeout = self.timeout;
        let mut listed = None;
        for (_, api) in &mut self.apis {
            match tokio::time::timeout(timeout, api.get("/v1/links")).await {
                Ok(Ok(body)) => {
                    listed = serde_json::from_slice::<LinkList>(&body).ok();
                    break;
                }
                // An older hub without the route, or no admin key: nothing to add.
                Ok(Err(HttpError::Status { .. })) => break,
                _ => continue,
            }
        }
        for link in listed.map(|l| l.links).unwrap_or_default() {
            let known = self.nodes.iter().any(|n| n.role == Role::Link && n.id == Some(link.id));
            if let (false, Some(admin)) = (known, link.admin.as_deref()) {
                if let Err(e) = self.add_node(Role::Link, Some(link.id), &base_url(admin)) {
                    tracing::debug!(link = link.id, "cannot scrape the listed Link: {e}");
                }
            }
        }
    }
}

/// One node's `/metrics`, bounded by `timeout` (a timed-out connection is replaced).
async fn scrape(node: &mut Node, timeout: Duration) -> Scraped {
    let result = match tokio::time::timeout(timeout, node.api.get("/metrics")).await {
        Ok(Ok(body)) => Ok(Scrape::parse(&String::from_utf8_lossy(&body))),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => {
            if let Ok(fresh) = HttpApi::with_trust(&node.base, node.key.clone(), node.trust.clone()) {
                node.api = fresh;
            }
            Err(format!("no answer within {timeout:?}"))
        }
    };
    Scraped { at: Instant::now(), result }
}

/// `GET /v1/top/rooms` on the first hub that answers.
async fn top_rooms(apis: &mut [(String, HttpApi)], limit: u64, timeout: Duration) -> Result<TopRooms, String> {
    let mut last = "no hub to ask".to_owned();
    for (base, api) in apis.iter_mut() {
        match tokio::time::timeout(timeout, api.get(&format!("/v1/top/rooms?limit={limit}"))).await {
            Ok(Ok(body)) => return serde_json::from_slice(&body).map_err(|e| format!("{base}: unexpected answer: {e}")),
            Ok(Err(e @ HttpError::Status { .. })) => return Err(format!("{base}: {e}")),
            Ok(Err(e)) => last = format!("{base}: {e}"),
            Err(_) => last = format!("{base}: no answer within {timeout:?}"),
        }
    }
    Err(last)
}

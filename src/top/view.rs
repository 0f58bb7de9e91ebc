//! What `linkcast top` shows, computed from two scrapes of each node: the JSON document of
//! `--json` and the text table drawn in the terminal.
//!
//! Counters become rates from two scrapes of the same node (`(now − before) / elapsed`); a
//! counter that went down (the node restarted) or a metric the node does not export reads as
//! `null` in JSON and `-` on screen, never as 0.

use std::time::Instant;

use super::prom::Scrape;

/// One scrape of one node: when, and what it returned (or why not).
#[derive(Clone, Debug)]
pub(crate) struct Scraped {
    pub(crate) at: Instant,
    pub(crate) result: Result<Scrape, String>,
}

impl Scraped {
    fn ok(&self) -> Option<&Scrape> {
        self.result.as_ref().ok()
    }

    fn error(&self) -> Option<String> {
        self.result.as_ref().err().cloned()
    }
}

/// One hub's line.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub(crate) struct HubRow {
    pub(crate) id: Option<u32>,
    /// The `/metrics` URL scraped.
    pub(crate) source: String,
    pub(crate) up: bool,
    pub(crate) error: Option<String>,
    /// Links connected to this hub (`linkcast_hub_links`).
    pub(crate) links: Option<f64>,
    pub(crate) rooms: Option<f64>,
    pub(crate) published_per_sec: Option<f64>,
    /// Bytes queued towards all Links (`linkcast_hub_link_queued_bytes`).
    pub(crate) link_queued_bytes: Option<f64>,
    /// Each Link queue's limit (`linkcast_hub_link_queue_limit_bytes`).
    pub(crate) link_queue_limit_bytes: Option<f64>,
}

/// One Link's line.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub(crate) struct LinkRow {
    pub(crate) id: Option<u32>,
    pub(crate) source: String,
    pub(crate) up: bool,
    pub(crate) error: Option<String>,
    /// Client connections, all shards (`linkcast_link_connections`).
    pub(crate) connections: Option<f64>,
    pub(crate) deliveries_per_sec: Option<f64>,
    /// Bytes waiting in client outboxes (`linkcast_link_queued_bytes`, all shards).
    pub(crate) queued_bytes: Option<f64>,
    /// `gap` messages sent to clients so far, all reasons (`linkcast_link_gaps_total`).
    pub(crate) gaps_total: Option<f64>,
    pub(crate) gaps_per_sec: Option<f64>,
    /// Hubs this Link has a live connection to (`linkcast_link_hubs_connected`).
    pub(crate) hubs_connected: Option<f64>,
}

/// One room of the hottest-rooms list (`GET /v1/top/rooms`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct RoomRow {
    pub(crate) room: String,
    pub(crate) hub: u32,
    pub(crate) publish_rate: f64,
    pub(crate) members: u64,
}

/// The whole view (`--json` prints it as one document).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub(crate) struct View {
    /// Milliseconds between the two scrapes rates come from.
    pub(crate) interval_ms: u64,
    pub(crate) hubs: Vec<HubRow>,
    pub(crate) links: Vec<LinkRow>,
    /// Hottest rooms first.
    pub(crate) rooms: Vec<RoomRow>,
    /// Why the room list is missing (no hub answered, no admin key, …).
    pub(crate) rooms_error: Option<String>,
    /// Hubs the answering hub could not ask for their rooms.
    pub(crate) hubs_missing: Vec<u32>,
}

/// The rate of counter `name` (summed over series with `labels`) between two scrapes.
fn rate(before: Option<&Scraped>, now: &Scraped, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let before = before?;
    let (a, b) = (before.ok()?.sum(name, labels)?, now.ok()?.sum(name, labels)?);
    let secs = now.at.checked_duration_since(before.at)?.as_secs_f64();
    (secs > 0.0 && b >= a).then(|| (b - a) / secs)
}

/// A hub's line from its scrapes (`id`: the `hub` label its series carry).
pub(crate) fn hub_row(id: Option<u32>, source: &str, before: Option<&Scraped>, now: &Scraped) -> HubRow {
    let label = id.map(|id| id.to_string());
    let labels: Vec<(&str, &str)> = label.as_deref().map(|l| ("hub", l)).into_iter().collect();
    let gauge = |name: &str| now.ok().and_then(|s| s.sum(name, &labels));
    HubRow {
        id,
        source: source.to_owned(),
        up: now.result.is_ok(),
        error: now.error(),
        links: gauge("linkcast_hub_links"),
        rooms: gauge("linkcast_hub_rooms"),
        published_per_sec: rate(before, now, "linkcast_hub_published_total", &labels),
        link_queued_bytes: gauge("linkcast_hub_link_queued_bytes"),
        link_queue_limit_bytes: gauge("linkcast_hub_link_queue_limit_bytes"),
    }
}

/// A Link's line from its scrapes.
pub(crate) fn link_row(id: Option<u32>, source: &str, before: Option<&Scraped>, now: &Scraped) -> LinkRow {
    let gauge = |name: &str| now.ok().and_then(|s| s.sum(name, &[]));
    LinkRow {
        id,
        source: source.to_owned(),
        up: now.result.is_ok(),
        error: now.error(),
        connections: gauge("linkcast_link_connections"),
        deliveries_per_sec: rate(before, now, "linkcast_link_deliveries_total", &[]),
        queued_bytes: gauge("linkcast_link_queued_bytes"),
        gaps_total: gauge("linkcast_link_gaps_total"),
        gaps_per_sec: rate(before, now, "linkcast_link_gaps_total", &[]),
        hubs_connected: gauge("linkcast_link_hubs_connected"),
    }
}

/// `-` for a missing value, else the number with SI-ish suffixes (`12.3k`).
fn num(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(v) if !v.is_finite() => "-".to_owned(),
        Some(v) if v.abs() >= 10_000_000.0 => format!("{:.1}M", v / 1_000_000.0),
        Some(v) if v.abs() >= 10_000.0 => format!("{:.1}k", v / 1_000.0),
        Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

fn id(id: Option<u32>) -> String {
    id.map_or_else(|| "-".to_owned(), |id| id.to_string())
}

/// The screen: hubs, Links, hottest rooms; `width` cuts long lines (the terminal's columns).
pub(crate) fn render(view: &View, title: &str, width: usize) -> String {
    let mut lines = vec![title.to_owned(), String::new()];
    lines.push(format!("{:<6} {:<5} {:>6} {:>8} {:>11} {:>12} {:>12}  {}", "HUB", "UP", "LINKS", "ROOMS", "PUBLISH/s", "QUEUED B", "QUEUE LIMIT", "SOURCE"));
    for hub in &view.hubs {
        lines.push(format!(
            "{:<6} {:<5} {:>6} {:>8} {:>11} {:>12} {:>12}  {}",
            id(hub.id),
            if hub.up { "yes" } else { "NO" },
            num(hub.links),
            num(hub.rooms),
            num(hub.published_per_sec),
            num(hub.link_queued_bytes),
            num(hub.link_queue_limit_bytes),
            hub.error.as_deref().map_or_else(|| hub.source.clone(), |e| format!("{}: {e}", hub.source)),
        ));
    }
    lines.push(String::new());
    lines.push(format!("{:<6} {:<5} {:>8} {:>13} {:>12} {:>8} {:>7} {:>5}  {}", "LINK", "UP", "CONNS", "DELIVERIES/s", "QUEUED B", "GAPS", "GAPS/s", "HUBS", "SOURCE"));
    for link in &view.links {
        lines.push(format!(
            "{:<6} {:<5} {:>8} {:>13} {:>12} {:>8} {:>7} {:>5}  {}",
            id(link.id),
            if link.up { "yes" } else { "NO" },
            num(link.connections),
            num(link.deliveries_per_sec),
            num(link.queued_bytes),
            num(link.gaps_total),
            num(link.gaps_per_sec),
            num(link.hubs_connected),
            link.error.as_deref().map_or_else(|| link.source.clone(), |e| format!("{}: {e}", link.source)),
        ));
    }
    lines.push(String::new());
    lines.push(format!("{:<40} {:>5} {:>11} {:>9}", "HOTTEST ROOMS", "HUB", "PUBLISH/s", "MEMBERS"));
    if let Some(error) = &view.rooms_error {
        lines.push(format!("(no room list: {error})"));
    }
    for room in &view.rooms {
        lines.push(format!("{:<40} {:>5} {:>11} {:>9}", room.room, room.hub, num(Some(room.publish_rate)), room.members));
    }
    if !view.hubs_missing.is_empty() {
        lines.push(format!("(hubs that did not answer: {:?})", view.hubs_missing));
    }
    lines.into_iter().map(|l| if l.chars().count() > width { l.chars().take(width).collect() } else { l }).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn scraped(at: Instant, text: &str) -> Scraped {
        Scraped { at, result: Ok(Scrape::parse(text)) }
    }

    #[test]
    fn rates_come_from_two_scrapes_and_missing_metrics_stay_missing() {
        let t0 = Instant::now();
        let before = scraped(t0, "linkcast_link_deliveries_total 100\nlinkcast_link_connections{shard=\"0\"} 2\n");
        let now = scraped(t0 + Duration::from_secs(2), "linkcast_link_deliveries_total 300\nlinkcast_link_connections{shard=\"0\"} 2\nlinkcast_link_connections{shard=\"1\"} 3\n");
        let row = link_row(Some(1), "x", Some(&before), &now);
        assert_eq!(row.connections, Some(5.0));
        assert_eq!(row.deliveries_per_sec, Some(100.0));
        assert_eq!(row.gaps_total, None);
        assert_eq!(link_row(Some(1), "x", None, &now).deliveries_per_sec, None, "one scrape: no rate");
        let restarted = scraped(t0 + Duration::from_secs(3), "linkcast_link_deliveries_total 5\n");
        assert_eq!(link_row(Some(1), "x", Some(&now), &restarted).deliveries_per_sec, None, "a counter reset is no rate");
        let down = Scraped { at: t0, result: Err("refused".into()) };
        let row = hub_row(Some(0), "y", None, &down);
        assert!(!row.up && row.links.is_none());
        let hub = scraped(t0, "linkcast_hub_links{hub=\"0\"} 3\nlinkcast_hub_links{hub=\"1\"} 2\n");
        assert_eq!(hub_row(Some(1), "y", None, &hub).links, Some(2.0), "a hub's own series only");
        let view = View { interval_ms: 1000, hubs: vec![hub_row(Some(0), "y", None, &down)], links: vec![row_for_render()], rooms: vec![], rooms_error: Some("401".into()), hubs_missing: vec![1] };
        let text = render(&view, "t", 200);
        assert!(text.contains("NO") && text.contains("(no room list: 401)") && text.contains("[1]"), "{text}");
    }

    fn row_for_render() -> LinkRow {
        LinkRow { id: None, source: "s".into(), up: true, error: None, connections: Some(12_345.0), deliveries_per_sec: None, queued_bytes: None, gaps_total: None, gaps_per_sec: None, hubs_connected: None }
    }
}

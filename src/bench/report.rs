//! The bench result: one [`Report`] per run, printed as text, written as JSON (`--json`), and
//! compared across runs (`linkcast bench compare A.json B.json …`, used by scripts/compare-peers).
//!
//! Accounting (what "no loss" means): `expected` = Σ over rooms of (messages accepted for the
//! room × subscribers joined to it when publishing began); `received` = unique deliveries;
//! `lost` = expected − received when positive; `duplicated` = deliveries dropped as already seen
//! (linkcast seqs) plus, for peers without seqs, deliveries beyond `expected`.
//!
//! Late vs lost: the bench waits `--drain` seconds after the last publish (the window), then up
//! to `--late-drain` more. Deliveries of the second wait are `late` (received, but after the
//! window); what has not come by its end is `lost`. Lean subscribers also tell the loss apart per
//! connection: `reported_lost` (covered by a `gap` op), `holes` (seqs skipped with no gap: silent
//! loss), `missing` (Σ per connection of owed − got; includes the two before and what simply never
//! came), and `ended` connections (cut before the end; their owed messages are missing too).

use std::path::Path;

use serde::{Deserialize, Serialize};

use linkcast_core::quantiles::Quantiles;

use super::stats::SeriesPoint;

/// Connections.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConnectionStats {
    /// Subscribers asked for.
    pub attempted: u64,
    /// Joined.
    pub opened: u64,
    /// Failed to connect or join.
    pub failed: u64,
    /// First failure.
    pub first_error: Option<String>,
    /// Seconds until every subscriber joined or failed.
    pub connect_secs: f64,
    /// Joins per second.
    pub joins_per_sec: f64,
    /// Connect→joined time, µs.
    pub connect_latency_us: Quantiles,
    /// Connections cut on purpose (resume).
    pub drops: u64,
    /// Reconnects after cuts.
    pub reconnects: u64,
    /// Connect/join attempts retried (lean subscribers).
    #[serde(default)]
    pub retries: u64,
    /// Connects in flight at once per fleet.
    #[serde(default)]
    pub connect_concurrency: usize,
    /// Connections that ended before the bench stopped them (lean subscribers).
    #[serde(default)]
    pub ended: u64,
    /// Why the first of those ended.
    #[serde(default)]
    pub first_end: Option<String>,
}

/// Deliveries.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeliveryStats {
    /// Messages accepted by the server.
    pub messages_sent: u64,
    /// Publishes refused or failed.
    pub publish_errors: u64,
    /// First publish failure.
    pub first_publish_error: Option<String>,
    /// Deliveries owed.
    pub expected: u64,
    /// Unique deliveries.
    pub received: u64,
    /// expected − received, when positive, at the end of the late drain.
    pub lost: u64,
    /// Received after the window (`--drain`) closed, within the late drain.
    #[serde(default)]
    pub late: u64,
    /// Seqs skipped with no gap reported (lean subscribers): silent loss.
    #[serde(default)]
    pub holes: u64,
    /// Σ per joined connection of (published to its room − its unique deliveries) (lean).
    #[serde(default)]
    pub missing: u64,
    /// Seconds from the first publish to the window's end.
    #[serde(default)]
    pub window_closed_after_secs: f64,
    /// Duplicates seen.
    pub duplicated: u64,
    /// Messages the server reported lost (gap events).
    pub reported_lost: u64,
    /// Gap events.
    pub gaps: u64,
    /// Server errors / unreadable messages.
    pub errors: u64,
    /// Seconds from the first publish to the last delivery.
    pub window_secs: f64,
    /// received / window.
    pub deliveries_per_sec: f64,
    /// Publish rate achieved.
    pub messages_per_sec: f64,
}

/// Server process cost (from /proc, summed over --server-pid).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServerStats {
    /// The pids sampled.
    pub pids: Vec<u32>,
    /// CPU seconds spent during the publish window (first publish to last delivery).
    pub cpu_secs: f64,
    /// Deliveries per server CPU-second.
    pub deliveries_per_cpu_sec: f64,
    /// RSS before subscribers connected.
    pub rss_before: u64,
    /// RSS with every subscriber joined and idle.
    pub rss_connected: u64,
    /// RSS at the end.
    pub rss_end: u64,
    /// (rss_connected − rss_before) / connections opened.
    pub rss_per_conn_bytes: f64,
}

/// Load generator cost.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClientStats {
    /// Processes holding subscribers.
    pub processes: u64,
    /// RSS added by the subscribers, per connection.
    pub rss_per_conn_bytes: f64,
    /// CPU seconds of the subscriber processes (whole run).
    pub cpu_secs: f64,
    /// CPU seconds of the worker processes from "all joined" to the end of the drain (the
    /// delivery phase; 0 for in-process fleets).
    #[serde(default)]
    pub cpu_secs_delivering: f64,
    /// Lean subscribers ran.
    #[serde(default)]
    pub lean: bool,
    /// Σ RSS of the subscriber processes before they connected (their baseline).
    #[serde(default)]
    pub rss_before: u64,
    /// Σ RSS of the subscriber processes once all joined.
    #[serde(default)]
    pub rss_ready: u64,
}

/// One run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// Free label (`--label`), e.g. the server's name in a comparison.
    pub label: String,
    /// fanout, rooms, connect, resume.
    pub scenario: String,
    /// Wire dialect.
    pub proto: String,
    /// Where subscribers connected.
    pub targets: Vec<String>,
    /// Rooms.
    pub rooms: u64,
    /// Payload bytes.
    pub size: usize,
    /// Requested publish rate.
    pub rate: f64,
    /// Connections.
    pub connections: ConnectionStats,
    /// Deliveries.
    pub deliveries: DeliveryStats,
    /// Publish→deliver latency, µs.
    pub latency_us: Quantiles,
    /// Server cost.
    pub server: ServerStats,
    /// Client cost.
    pub client: ClientStats,
    /// Per-second series.
    pub series: Vec<SeriesPoint>,
}

impl Report {
    /// Whether every owed delivery arrived once.
    pub fn is_exact(&self) -> bool {
        self.deliveries.lost == 0 && self.deliveries.duplicated == 0 && self.deliveries.expected == self.deliveries.received
    }

    /// The human-readable summary.
    pub fn to_text(&self) -> String {
        let c = &self.connections;
        let d = &self.deliveries;
        let l = &self.latency_us;
        let s = &self.server;
        let mut out = format!(
            "linkcast bench {} ({}{})\n\
             connections  opened {} / {} (failed {}), {:.2} s, {:.0} joins/s, connect p50 {} µs p99 {} µs{}\n\
             messages     sent {} ({:.0}/s, {} B), publish errors {}\n\
             deliveries   expected {} received {} (late {}) lost {} duplicated {} (gaps {}, reported lost {}, holes {}, missing {})\n\
             throughput   {:.0} deliveries/s over {:.2} s\n\
             latency µs   p50 {} p90 {} p99 {} p99.9 {} max {} (n={})\n",
            self.scenario,
            self.proto,
            if self.label.is_empty() { String::new() } else { format!(", {}", self.label) },
            c.opened,
            c.attempted,
            c.failed,
            c.connect_secs,
            c.joins_per_sec,
            c.connect_latency_us.p50,
            c.connect_latency_us.p99,
            if c.drops > 0 { format!(", dropped {} reconnected {}", c.drops, c.reconnects) } else { String::new() },
            d.messages_sent,
            d.messages_per_sec,
            self.size,
            d.publish_errors,
            d.expected,
            d.received,
            d.late,
            d.lost,
            d.duplicated,
            d.gaps,
            d.reported_lost,
            d.holes,
            d.missing,
            d.deliveries_per_sec,
            d.window_secs,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            l.count,
        );
        if c.retries > 0 || c.ended > 0 {
            out.push_str(&format!("connect      retried {} attempt(s); {} connection(s) ended early{}\n", c.retries, c.ended,
                c.first_end.as_ref().map_or(String::new(), |e| format!(" (first: {e})"))));
        }
        if let Some(e) = &c.first_error {
            out.push_str(&format!("first connect error: {e}\n"));
        }
        if let Some(e) = &d.first_publish_error {
            out.push_str(&format!("first publish error: {e}\n"));
        }
        if !s.pids.is_empty() {
            out.push_str(&format!(
                "server       pids {:?}: {:.2} CPU-s, {:.0} deliveries/CPU-s, RSS {} → {} MiB ({:.0} B/conn)\n",
                s.pids,
                s.cpu_secs,
                s.deliveries_per_cpu_sec,
                s.rss_before / (1 << 20),
                s.rss_connected / (1 << 20),
                s.rss_per_conn_bytes,
            ));
        }
        out.push_str(&format!(
            "client       {} process(es) ({} subscribers, {} connects in flight each), {:.0} B RSS/conn, {:.2} CPU-s ({:.2} delivering)\n",
            self.client.processes,
            if self.client.lean { "lean" } else { "full" },
            c.connect_concurrency,
            self.client.rss_per_conn_bytes,
            self.client.cpu_secs,
            self.client.cpu_secs_delivering
        ));
        out
    }

    /// Writes the JSON form.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }

    /// Reads a JSON report.
    pub fn read_json(path: &Path) -> Result<Report, Box<dyn std::error::Error>> {
        Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
    }
}

/// The side-by-side table of several runs, ratios against the first.
pub fn compare_table(reports: &[Report], markdown: bool) -> String {
    let Some(base) = reports.first() else {
        return String::new();
    };
    let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}×", a / b) } else { "–".into() };
    let mut out = String::new();
    let header = [
        "server", "deliveries/s", "ratio", "deliveries/CPU-s", "ratio", "p99 µs", "ratio", "server CPU-s", "lost", "dup",
    ];
    if markdown {
        out.push_str(&format!("| {} |\n", header.join(" | ")));
        out.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    } else {
        out.push_str(&format!(
            "{:<14} {:>13} {:>7} {:>17} {:>7} {:>9} {:>7} {:>12} {:>8} {:>6}\n",
            header[0], header[1], header[2], header[3], header[4], header[5], header[6], header[7], header[8], header[9]
        ));
    }
    for r in reports {
        let name = if r.label.is_empty() { r.proto.clone() } else { r.label.clone() };
        let cells = [
            name,
            format!("{:.0}", r.deliveries.deliveries_per_sec),
            ratio(r.deliveries.deliveries_per_sec, base.deliveries.deliveries_per_sec),
            format!("{:.0}", r.server.deliveries_per_cpu_sec),
            ratio(r.server.deliveries_per_cpu_sec, base.server.deliveries_per_cpu_sec),
            format!("{}", r.latency_us.p99),
            ratio(r.latency_us.p99 as f64, base.latency_us.p99 as f64),
            format!("{:.2}", r.server.cpu_secs),
            format!("{}", r.deliveries.lost),
            format!("{}", r.deliveries.duplicated),
        ];
        if markdown {
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
        } else {
            out.push_str(&format!(
                "{:<14} {:>13} {:>7} {:>17} {:>7} {:>9} {:>7} {:>12} {:>8} {:>6}\n",
                cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7], cells[8], cells[9]
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_ratios_to_the_first() {
        let mut a = Report { label: "linkcast".into(), ..Report::default() };
        a.deliveries.deliveries_per_sec = 1000.0;
        a.server.deliveries_per_cpu_sec = 4000.0;
        a.latency_us.p99 = 100;
        let mut b = a.clone();
        b.label = "peer".into();
        b.server.deliveries_per_cpu_sec = 2000.0;
        let table = compare_table(&[a, b], true);
        assert!(table.contains("| peer | 1000 | 1.00× | 2000 | 0.50× | 100 | 1.00×"), "{table}");
    }
}

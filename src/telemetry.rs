//! Process-wide metrics: one Prometheus recorder per process, installed on first use.
//!
//! Runtimes record with the `metrics` macros (`counter!`, `gauge!`, `histogram!`); whichever
//! role serves `/metrics` (the hub's HTTP API, or a standalone Link's WebSocket port) renders
//! [`render`]. Installing lazily and once lets several nodes share a process (as `serve` and the
//! in-process tests do) without fighting over the global recorder. Metric names are listed in
//! docs/operations.md.
//!
//! Three things besides the recorder live here:
//! - the latency histograms ([`HISTOGRAMS`]) get Prometheus buckets (`_bucket`, `_sum`,
//!   `_count`), so dashboards can aggregate quantiles across nodes; other histograms stay
//!   summaries;
//! - an upkeep thread drains recorded histogram samples into their buckets every few seconds:
//!   the recorder holds raw samples until then, so without it an unscraped node would keep
//!   every sample (an unbounded queue);
//! - gauges that mirror state other code already counts in atomics (bytes queued per shard,
//!   hubs connected) are read at scrape time by [`on_scrape`] callbacks instead of being set on
//!   the delivery path.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// A scrape-time callback; it returns `false` once what it reads is gone (then it is dropped).
type Collector = Box<dyn FnMut() -> bool + Send>;

static COLLECTORS: Mutex<Vec<Collector>> = Mutex::new(Vec::new());

/// Latency buckets in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The histograms rendered with [`LATENCY_BUCKETS`].
pub(crate) const HISTOGRAMS: [&str; 2] = ["linkcast_link_delivery_seconds", "linkcast_hub_publish_seconds"];

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP: Duration = Duration::from_secs(5);

/// The process's Prometheus handle, installing the global recorder on first call.
pub(crate) fn prometheus() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let mut builder = PrometheusBuilder::new();
        for name in HISTOGRAMS {
            builder = match builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), &LATENCY_BUCKETS) {
                Ok(builder) => builder,
                // Only an empty bucket list is refused; LATENCY_BUCKETS is not empty.
                Err(_) => PrometheusBuilder::new(),
            };
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first (then metrics go there).
        if metrics::set_global_recorder(recorder).is_ok() {
            metrics::gauge!("linkcast_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        }
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new().name("linkcast-metrics".into()).spawn(move || loop {
            std::thread::sleep(UPKEEP);
            upkeep.run_upkeep();
        });
        handle
    })
}

/// Registers `collect`, run before every rendering of `/metrics` until it returns `false`.
pub(crate) fn on_scrape(collect: impl FnMut() -> bool + Send + 'static) {
    let _ = prometheus();
    COLLECTORS.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(collect));
}

/// The Prometheus text of every metric, scrape-time gauges brought up to date first.
pub(crate) fn render() -> String {
    let handle = prometheus();
    COLLECTORS.lock().unwrap_or_else(|p| p.into_inner()).retain_mut(|collect| collect());
    handle.render()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn recorded_metrics_show_up_in_the_rendering() {
        let handle = super::prometheus();
        metrics::counter!("linkcast_test_counter_total").increment(3);
        assert!(handle.render().contains("linkcast_test_counter_total 3"));
        assert!(std::ptr::eq(handle, super::prometheus()));
    }

    #[test]
    fn latency_histograms_render_as_prometheus_histograms_and_build_info_is_one() {
        let _ = super::prometheus();
        metrics::histogram!("linkcast_hub_publish_seconds", "hub" => "test").record(0.003);
        let text = super::render();
        assert!(text.contains(r#"linkcast_hub_publish_seconds_bucket{hub="test",le="0.005"} 1"#), "{text}");
        assert!(text.contains(r#"linkcast_hub_publish_seconds_count{hub="test"} 1"#), "{text}");
        assert!(text.contains(&format!(r#"linkcast_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION"))), "{text}");
    }

    #[test]
    fn scrape_collectors_run_until_they_say_they_are_done() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        super::on_scrape(move || counted.fetch_add(1, Ordering::Relaxed) < 1);
        super::render();
        super::render();
        super::render();
        assert_eq!(runs.load(Ordering::Relaxed), 2, "ran until it returned false, then dropped");
    }
}

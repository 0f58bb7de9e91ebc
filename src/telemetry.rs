//! Process-wide metrics: one Prometheus recorder per process, installed on first use.
//!
//! Runtimes record with the `metrics` macros (`counter!`, `gauge!`, `histogram!`); whichever
//! role serves `/metrics` (the hub's HTTP API, or a standalone Link's WebSocket port) renders
//! [`prometheus`]'s handle. Installing lazily and once lets several nodes share a process (as
//! `serve` and the in-process tests do) without fighting over the global recorder.
//! Metric names are listed in docs/operations.md.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus handle, installing the global recorder on first call.
pub(crate) fn prometheus() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first (then metrics go there).
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn recorded_metrics_show_up_in_the_rendering() {
        let handle = super::prometheus();
        metrics::counter!("linkcast_test_counter_total").increment(3);
        assert!(handle.render().contains("linkcast_test_counter_total 3"));
        assert!(std::ptr::eq(handle, super::prometheus()));
    }
}

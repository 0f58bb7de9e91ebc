//! `--plot PATH.svg`: throughput and latency over the run, as an SVG drawn with plotters.
//!
//! Top panel: deliveries per second; bottom panel: p50 and p99 publish→deliver latency (ms) of the
//! deliveries of each second. Data comes from the merged per-second series of the report.

use std::path::Path;

use plotters::prelude::*;

use super::report::Report;

/// Why the plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("plot: {0}")]
pub struct PlotError(String);

fn err<E: std::fmt::Display>(e: E) -> PlotError {
    PlotError(e.to_string())
}

/// Draws `report`'s series into `path`.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), PlotError> {
    let series = &report.series;
    let t_max = series.iter().map(|p| p.t).max().unwrap_or(0).max(1) as f64 + 1.0;
    let d_max = series.iter().map(|p| p.delivered).max().unwrap_or(0).max(1) as f64 * 1.1;
    let l_max = series.iter().map(|p| p.p99_us).max().unwrap_or(0).max(1) as f64 / 1000.0 * 1.1;
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(300);
    let title = format!(
        "linkcast bench {} {}: {} subscribers, {} B, {:.0} msg/s",
        report.scenario,
        if report.label.is_empty() { &report.proto } else { &report.label },
        report.connections.opened,
        report.size,
        report.rate
    );
    let mut chart = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..d_max)
        .map_err(err)?;
    chart.configure_mesh().x_desc("seconds").y_desc("deliveries/s").draw().map_err(err)?;
    chart
        .draw_series(LineSeries::new(series.iter().map(|p| (p.t as f64, p.delivered as f64)), &BLUE))
        .map_err(err)?
        .label("deliveries/s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    let mut chart = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..l_max)
        .map_err(err)?;
    chart.configure_mesh().x_desc("seconds").y_desc("latency ms").draw().map_err(err)?;
    chart
        .draw_series(LineSeries::new(series.iter().map(|p| (p.t as f64, p.p50_us as f64 / 1000.0)), &GREEN))
        .map_err(err)?
        .label("p50")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    chart
        .draw_series(LineSeries::new(series.iter().map(|p| (p.t as f64, p.p99_us as f64 / 1000.0)), &RED))
        .map_err(err)?
        .label("p99")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

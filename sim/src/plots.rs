//! SVG plots of a report's `series` section, drawn with plotters into `--plots DIR`:
//!
//! - `latency_cdf.svg`: fraction of deliveries (y) made within a latency (x, ms, log scale),
//!   live and replayed;
//! - `deliveries_per_link.svg`: member deliveries per virtual second, one line per Link (a dying
//!   Link's line drops to 0; the survivors' rise);
//! - `reconnects.svg`: failure disconnects and re-joins per virtual second (the storm's shape).
//!
//! Reads only the [`Report`]; writes only files in the given directory.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;

/// Why plots could not be written.
#[derive(Debug)]
pub struct PlotError(pub String);

impl std::fmt::Display for PlotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot draw plots: {}", self.0)
    }
}

impl std::error::Error for PlotError {}

fn err<E: std::fmt::Display>(e: E) -> PlotError {
    PlotError(e.to_string())
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Writes the three SVGs into `dir` (created if missing).
pub fn write_all(report: &Report, dir: &Path) -> Result<(), PlotError> {
    std::fs::create_dir_all(dir).map_err(err)?;
    latency_cdf(report, &dir.join("latency_cdf.svg"))?;
    deliveries_per_link(report, &dir.join("deliveries_per_link.svg"))?;
    reconnects(report, &dir.join("reconnects.svg"))?;
    Ok(())
}

fn latency_cdf(report: &Report, path: &Path) -> Result<(), PlotError> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let series = [("live", &report.series.live_latency_cdf), ("replay", &report.series.replay_latency_cdf)];
    let max_ms = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|&(us, _)| us as f64 / 1000.0))
        .fold(1.0f64, f64::max)
        * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Delivery latency CDF — {} (seed {})", report.scenario, report.config.seed), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((0.1f64..max_ms).log_scale(), 0f64..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, publish at hub → client)")
        .y_desc("fraction of deliveries")
        .draw()
        .map_err(err)?;
    for (i, (name, points)) in series.iter().enumerate() {
        if points.is_empty() {
            continue;
        }
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(points.iter().map(|&(us, q)| ((us as f64 / 1000.0).max(0.1), q)), color.stroke_width(2)))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(err)?;
    root.present().map_err(err)
}

fn deliveries_per_link(report: &Report, path: &Path) -> Result<(), PlotError> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let per_link = &report.series.deliveries_per_link_per_sec;
    let secs = per_link.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let max = per_link.iter().flat_map(|s| s.iter().copied()).max().unwrap_or(0).max(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("Member deliveries per Link per second", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..secs as f64, 0f64..max)
        .map_err(err)?;
    chart.configure_mesh().x_desc("virtual time (s)").y_desc("deliveries / s").draw().map_err(err)?;
    for (link, series) in per_link.iter().enumerate() {
        if series.iter().all(|&v| v == 0) {
            continue;
        }
        let color = PALETTE[link % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(series.iter().enumerate().map(|(t, &v)| (t as f64, v as f64)), color.stroke_width(2)))
            .map_err(err)?
            .label(format!("link-{link}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(err)?;
    root.present().map_err(err)
}

fn reconnects(report: &Report, path: &Path) -> Result<(), PlotError> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let series = [("disconnects", &report.series.disconnects_per_sec), ("re-joins", &report.series.reconnects_per_sec)];
    let secs = series.iter().map(|(_, s)| s.len()).max().unwrap_or(0).max(1);
    let max = series.iter().flat_map(|(_, s)| s.iter().copied()).max().unwrap_or(0).max(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("Reconnect storm: disconnects and re-joins per second", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..secs as f64, 0f64..max)
        .map_err(err)?;
    chart.configure_mesh().x_desc("virtual time (s)").y_desc("members / s").draw().map_err(err)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = PALETTE[(i + 3) % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(points.iter().enumerate().map(|(t, &v)| (t as f64, v as f64)), color.stroke_width(2)))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(err)?;
    root.present().map_err(err)
}

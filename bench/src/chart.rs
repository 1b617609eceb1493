//! The send -> delivery latency chart of a whole `bench/run` as SVG: the
//! classic HDR percentile plot, one line per report, the percentile on a
//! log-of-(1/(1-q)) axis (90%, 99%, 99.9%, ... equally spaced) and the
//! latency on a log axis.
//!
//! Plotters needs a font to lay text out; it is read from a TTF file (by
//! default Debian's `fonts-dejavu-core`) and registered once per process.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, Context};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::report::Report;
use super::stats::LatencySummary;
use super::summary::in_table_order;

/// The font used unless `--font` says otherwise (Debian `fonts-dejavu-core`).
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The font family the chart's text uses, as registered with plotters.
const FONT_FAMILY: &str = "sans-serif";

/// Where the 100th percentile (the maximum) is drawn on the x axis.
const MAX_X: f64 = 4.3;

/// The labelled x ticks: position and percentile.
const X_TICKS: [(f64, &str); 5] = [
    (0.0, "0%"),
    (1.0, "90%"),
    (2.0, "99%"),
    (3.0, "99.9%"),
    (4.0, "99.99%"),
];

/// Line colours, reused in turn past the last.
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

const SIZE: (u32, u32) = (960, 600);

/// One line of the chart: the legend text and its (x, milliseconds) points.
struct Line {
    name: String,
    points: Vec<(f64, f64)>,
}

/// Whether any report has send -> delivery samples to plot.
pub fn has_latency_data(reports: &[Report]) -> bool {
    reports.iter().any(|r| r.delivery_latency.count > 0)
}

/// Draws the send -> delivery latency of every report that has delivery
/// samples into an SVG file at `path`, laying text out with the TTF `font`.
pub fn latency_svg(reports: &[Report], path: &Path, font: &Path) -> anyhow::Result<()> {
    register_font_file(font)?;
    let lines: Vec<Line> = in_table_order(reports)
        .into_iter()
        .filter_map(line_of)
        .collect();
    anyhow::ensure!(
        !lines.is_empty(),
        "no report has send->delivery latency samples to plot"
    );
    let svg = render(&lines)?;
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

/// Reads `font` and registers it as the chart's font family, once per path.
fn register_font_file(font: &Path) -> anyhow::Result<()> {
    static REGISTERED: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut registered = REGISTERED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if registered.as_deref() == Some(font) {
        return Ok(());
    }
    let bytes = std::fs::read(font).map_err(|e| {
        anyhow!(
            "cannot read the chart font {}: {e}; install Debian's fonts-dejavu-core \
             (apt-get install fonts-dejavu-core) or pass another TTF with --font",
            font.display()
        )
    })?;
    // Plotters keeps fonts for the life of the process: the bytes must be 'static.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font(FONT_FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{} is not a TrueType or OpenType font", font.display()))?;
    *registered = Some(font.to_path_buf());
    Ok(())
}

/// The report's line, when it has delivery samples.
fn line_of(report: &Report) -> Option<Line> {
    if report.delivery_latency.count == 0 {
        return None;
    }
    let name = format!("{} {}", report.label, report.scenario)
        .trim()
        .to_string();
    Some(Line {
        name,
        points: latency_points(&report.delivery_latency),
    })
}

/// (x, ms) points of a summary; older reports without a percentile list
/// fall back to their p50, p99, p99.9 and maximum.
fn latency_points(summary: &LatencySummary) -> Vec<(f64, f64)> {
    let listed: Vec<(f64, f64)> = if summary.percentiles.is_empty() {
        vec![
            (50.0, summary.p50_ms),
            (99.0, summary.p99_ms),
            (99.9, summary.p999_ms),
            (100.0, summary.max_ms),
        ]
    } else {
        summary
            .percentiles
            .iter()
            .map(|p| (p.percentile, p.ms))
            .collect()
    };
    listed
        .into_iter()
        .filter(|(_, ms)| ms.is_finite() && *ms > 0.0)
        .map(|(percentile, ms)| (percentile_x(percentile), ms))
        .collect()
}

/// The x position of a percentile: -log10(1 - p/100), the maximum at [`MAX_X`].
fn percentile_x(percentile: f64) -> f64 {
    let rest = 1.0 - percentile / 100.0;
    if rest <= 0.0 {
        MAX_X
    } else {
        (-rest.log10()).clamp(0.0, MAX_X)
    }
}

/// The label of an x tick.
fn x_label(x: &f64) -> String {
    X_TICKS
        .iter()
        .find(|(at, _)| (at - x).abs() < 1e-9)
        .map_or_else(String::new, |(_, label)| (*label).to_string())
}

/// The label of a y tick: milliseconds without trailing zeros.
fn ms_label(ms: &f64) -> String {
    let text = if *ms >= 10.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.3}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// The y range: whole decades around every point, two at least.
fn y_range(lines: &[Line]) -> (f64, f64) {
    let values = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
    let (min, max) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let low = min.log10().floor();
    let high = max.log10().ceil().max(low + 2.0);
    // A hair below the bottom decade, so that rounding in plotters' log
    // key points does not drop its label.
    (10f64.powf(low) * 0.999, 10f64.powf(high))
}

fn render(lines: &[Line]) -> anyhow::Result<String> {
    let mut svg = String::new();
    draw(lines, SVGBackend::with_string(&mut svg, SIZE))
        .map_err(|e| anyhow!("drawing the latency chart: {e}"))?;
    Ok(svg)
}

fn draw(lines: &[Line], backend: SVGBackend) -> Result<(), Box<dyn std::error::Error>> {
    let root = backend.into_drawing_area();
    root.fill(&WHITE)?;
    let (low, high) = y_range(lines);
    let mut chart = ChartBuilder::on(&root)
        .caption("send -> delivery latency by percentile", (FONT_FAMILY, 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..MAX_X, (low..high).log_scale())?;
    chart
        .configure_mesh()
        // Ticks at 0, 1, 2, 3, 4: the percentiles of X_TICKS.
        .x_labels(X_TICKS.len())
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&x_label)
        .y_label_formatter(&ms_label)
        .label_style((FONT_FAMILY, 13))
        .axis_desc_style((FONT_FAMILY, 15))
        .draw()?;
    for (i, line) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(
                LineSeries::new(line.points.iter().copied(), color.stroke_width(2)).point_size(3),
            )?
            .label(line.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT_FAMILY, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Percentile;

    fn report(label: &str, scenario: &str, scale_ms: f64) -> Report {
        let percentiles = crate::stats::PERCENTILES
            .iter()
            .map(|&percentile| Percentile {
                percentile,
                ms: scale_ms * (1.0 + percentile_x(percentile)),
            })
            .collect();
        Report {
            label: label.into(),
            scenario: scenario.into(),
            delivery_latency: LatencySummary {
                count: 1000,
                p99_ms: scale_ms * 3.0,
                percentiles,
                ..LatencySummary::default()
            },
            ..Report::default()
        }
    }

    fn font() -> Option<&'static Path> {
        let font = Path::new(DEFAULT_FONT);
        if font.exists() {
            Some(font)
        } else {
            eprintln!("skipped: {DEFAULT_FONT} is absent (Debian fonts-dejavu-core)");
            None
        }
    }

    #[test]
    fn percentiles_map_to_log_positions() {
        assert_eq!(percentile_x(0.0), 0.0);
        assert!((percentile_x(90.0) - 1.0).abs() < 1e-9);
        assert!((percentile_x(99.9) - 3.0).abs() < 1e-9);
        assert!((percentile_x(99.99) - 4.0).abs() < 1e-6);
        assert_eq!(percentile_x(100.0), MAX_X);
        assert_eq!(x_label(&3.0), "99.9%");
        assert_eq!(x_label(&2.5), "");
        assert_eq!(ms_label(&0.25), "0.25");
        assert_eq!(ms_label(&1.0), "1");
        assert_eq!(ms_label(&200.0), "200");
        assert_eq!(ms_label(&0.01), "0.01");
    }

    #[test]
    fn older_summaries_plot_their_four_figures() {
        let summary = LatencySummary {
            count: 10,
            p50_ms: 1.0,
            p99_ms: 2.0,
            p999_ms: 3.0,
            max_ms: 4.0,
            ..LatencySummary::default()
        };
        let points = latency_points(&summary);
        assert_eq!(points.len(), 4);
        assert_eq!(points[3], (MAX_X, 4.0));
    }

    #[test]
    fn renders_one_line_per_report_with_samples() {
        let Some(font) = font() else { return };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latency.svg");
        let idle = Report {
            label: "parley".into(),
            scenario: "idle".into(),
            ..Report::default()
        };
        let reports = [
            report("mosquitto", "relay", 0.4),
            report("parley", "dm", 1.5),
            idle,
        ];
        assert!(has_latency_data(&reports));
        latency_svg(&reports, &path, font).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("<svg"), "{svg}");
        assert!(
            svg.contains("send -&gt; delivery latency by percentile"),
            "{svg}"
        );
        assert!(svg.contains("mosquitto relay"), "{svg}");
        assert!(svg.contains("parley dm"), "{svg}");
        assert!(!svg.contains("parley idle"), "{svg}");
        for tick in ["0%", "90%", "99%", "99.9%", "99.99%"] {
            assert!(svg.contains(&format!("\n{tick}\n")), "{tick} in {svg}");
        }
        assert!(svg.contains("<polyline") || svg.contains("<path"), "{svg}");
        let mosquitto = svg.find("mosquitto relay").unwrap();
        assert!(
            mosquitto < svg.find("parley dm").unwrap(),
            "legend in table order"
        );
    }

    #[test]
    fn nothing_to_plot_is_an_error() {
        let Some(font) = font() else { return };
        let dir = tempfile::tempdir().unwrap();
        let reports = [Report::default()];
        assert!(!has_latency_data(&reports));
        assert!(latency_svg(&reports, &dir.path().join("x.svg"), font).is_err());
    }

    #[test]
    fn missing_font_names_the_path_and_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let font = dir.path().join("NoSuchFont.ttf");
        let reports = [report("parley", "dm", 1.0)];
        let err = latency_svg(&reports, &dir.path().join("x.svg"), &font).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("NoSuchFont.ttf"), "{text}");
        assert!(text.contains("fonts-dejavu-core"), "{text}");
        assert!(!dir.path().join("x.svg").exists());
    }
}

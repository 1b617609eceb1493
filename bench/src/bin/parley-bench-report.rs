//! `parley-bench-report`: reads the JSON reports `parley-bench` wrote for one
//! `bench/run` and writes the send -> delivery latency chart (SVG) and the
//! summary `LATEST.md` that links it. See `parley_bench::summary`.
//!
//! ```text
//! parley-bench-report bench/results/runs \
//!     --markdown bench/results/LATEST.md --svg bench/results/latency.svg
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use parley_bench::report::Report;
use parley_bench::{chart, summary};

/// `parley-bench-report RUNS_DIR [options]`.
#[derive(Debug, Parser)]
#[command(
    name = "parley-bench-report",
    version,
    about = "Summarizes a directory of parley-bench JSON reports as Markdown and an SVG latency chart"
)]
struct Args {
    /// The directory of `*.json` reports (other files are skipped).
    runs_dir: PathBuf,
    /// The Markdown summary to write.
    #[arg(long, value_name = "FILE", default_value = "bench/results/LATEST.md")]
    markdown: PathBuf,
    /// The SVG latency chart to write.
    #[arg(long, value_name = "FILE", default_value = "bench/results/latency.svg")]
    svg: PathBuf,
    /// The TrueType font the chart's text is laid out with.
    #[arg(long, value_name = "FILE", default_value = chart::DEFAULT_FONT)]
    font: PathBuf,
    /// Hand-written findings (profiling, what is left) appended to the summary.
    #[arg(long, value_name = "FILE")]
    notes: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let reports = summary::load_reports(&args.runs_dir)?;
    anyhow::ensure!(
        !reports.is_empty(),
        "no *.json reports in {}",
        args.runs_dir.display()
    );
    let chart_link = write_chart(&args, &reports)?;
    let mut markdown = summary::latest_markdown(
        &reports,
        &summary::machine_description(),
        chart_link.as_deref(),
    );
    if let Some(notes) = &args.notes {
        let text = std::fs::read_to_string(notes)
            .with_context(|| format!("reading the notes {}", notes.display()))?;
        markdown.push('\n');
        markdown.push_str(&text);
    }
    write_file(&args.markdown, &markdown)?;
    eprintln!(
        "parley-bench-report: {} reports -> {}",
        reports.len(),
        args.markdown.display()
    );
    Ok(())
}

/// Writes the chart, when some report has delivery latencies, and returns
/// its link from the Markdown file.
fn write_chart(args: &Args, reports: &[Report]) -> anyhow::Result<Option<String>> {
    if !chart::has_latency_data(reports) {
        eprintln!("parley-bench-report: no send->delivery latencies; no chart");
        return Ok(None);
    }
    create_parent_dir(&args.svg)?;
    chart::latency_svg(reports, &args.svg, &args.font)?;
    eprintln!("parley-bench-report: wrote {}", args.svg.display());
    Ok(Some(summary::chart_link(&args.markdown, &args.svg)))
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    create_parent_dir(path)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn create_parent_dir(path: &Path) -> anyhow::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir)
            .with_context(|| format!("creating directory {}", dir.display())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let args = Args::try_parse_from(["parley-bench-report", "runs"]).unwrap();
        assert_eq!(args.runs_dir, Path::new("runs"));
        assert_eq!(args.markdown, Path::new("bench/results/LATEST.md"));
        assert_eq!(args.svg, Path::new("bench/results/latency.svg"));
        assert_eq!(args.font, Path::new(chart::DEFAULT_FONT));
        assert!(Args::try_parse_from(["parley-bench-report"]).is_err());
    }
}

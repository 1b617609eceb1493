//! The summary of a whole `bench/run`: every broker's reports side by side in
//! `bench/results/LATEST.md`, with the ratios of Parley to the reference
//! brokers measured in the same run on the same machine.

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use anyhow::Context;

use super::report::Report;
use super::stats::LatencySummary;

/// Brokers in table order; other labels follow alphabetically.
const BROKER_ORDER: [&str; 3] = ["mosquitto", "rumqttd", "parley"];

/// Scenarios in table order; others follow alphabetically.
const SCENARIO_ORDER: [&str; 5] = ["relay", "dm", "group", "idle", "connect"];

/// The reference brokers of the ratios: (label, name shown).
const REFERENCES: [(&str, &str); 2] = [("mosquitto", "Mosquitto"), ("rumqttd", "rumqttd")];

/// Every `*.json` report in `dir`, in file-name order. Other files are
/// skipped; a file that is not a report is an error naming it.
pub fn load_reports(dir: &Path) -> anyhow::Result<Vec<Report>> {
    let mut paths = json_files(dir)?;
    paths.sort();
    paths.iter().map(|path| load_report(path)).collect()
}

fn json_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("reading directory {}", dir.display()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading directory {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|ext| ext == "json") && path.is_file() {
            paths.push(path);
        }
    }
    Ok(paths)
}

fn load_report(path: &Path) -> anyhow::Result<Report> {
    let json =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Report::from_json(&json)
        .with_context(|| format!("{} is not a parley-bench JSON report", path.display()))
}

/// `LATEST.md`: the machine, the chart (a link relative to the Markdown
/// file, when given), one row per report and the ratios to the references.
pub fn latest_markdown(reports: &[Report], machine: &str, chart: Option<&str>) -> String {
    let mut out = String::from("# Parley benchmark: latest run\n\n");
    let _ = writeln!(out, "Machine: {}.\n", machine.trim_end_matches('.'));
    if let Some(link) = chart {
        let _ = writeln!(out, "![send->delivery latency]({link})\n");
    }
    out.push_str(&figures_table(reports));
    out.push_str("\n## Ratios (same run, same machine)\n\n");
    out.push_str(&ratios_table(reports));
    out.push_str(&super::targets::targets_markdown(reports));
    out
}

/// The reports in table order: by broker, then by scenario.
pub fn in_table_order(reports: &[Report]) -> Vec<&Report> {
    let mut sorted: Vec<&Report> = reports.iter().collect();
    sorted.sort_by(|a, b| {
        compare_in_order(&BROKER_ORDER, &a.label, &b.label)
            .then_with(|| compare_in_order(&SCENARIO_ORDER, &a.scenario, &b.scenario))
    });
    sorted
}

/// Known names by their place in `order`, then unknown names alphabetically.
fn compare_in_order(order: &[&str], a: &str, b: &str) -> Ordering {
    let rank = |name: &str| order.iter().position(|known| *known == name);
    match (rank(a), rank(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

fn figures_table(reports: &[Report]) -> String {
    let mut out = String::from(
        "| broker | scenario | connections | accepted/s | delivered/s | inbox deliveries/s \
         | ack p50 ms | ack p99 ms | delivery p50 ms | delivery p99 ms | delivery p99.9 ms \
         | errors | lost | RSS growth/conn (bytes) |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in in_table_order(reports) {
        out.push_str(&figures_row(r));
    }
    out
}

fn figures_row(r: &Report) -> String {
    let (ack, delivery) = (&r.ack_latency, &r.delivery_latency);
    let cells = [
        text_cell(&r.label),
        text_cell(&r.scenario),
        r.connections.to_string(),
        format!("{:.0}", r.accepted_per_sec),
        format!("{:.0}", r.delivered_per_sec),
        format!("{:.0}", r.inbox_deliveries_per_sec),
        ms_cell(ack, ack.p50_ms),
        ms_cell(ack, ack.p99_ms),
        ms_cell(delivery, delivery.p50_ms),
        ms_cell(delivery, delivery.p99_ms),
        ms_cell(delivery, delivery.p999_ms),
        r.errors.to_string(),
        r.lost.to_string(),
        rss_growth(r).map_or_else(|| "-".to_string(), |b| format!("{b:.0}")),
    ];
    format!("| {} |\n", cells.join(" | "))
}

fn text_cell(text: &str) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text.replace('|', "\\|")
    }
}

/// A latency figure, or `-` when the summary has no samples.
fn ms_cell(summary: &LatencySummary, ms: f64) -> String {
    if summary.count == 0 {
        "-".to_string()
    } else {
        format!("{ms:.2}")
    }
}

fn rss_growth(r: &Report) -> Option<f64> {
    r.broker_memory
        .as_ref()
        .map(|m| m.growth_per_connection_bytes)
}

fn delivery_p99(r: &Report) -> Option<f64> {
    (r.delivery_latency.count > 0).then_some(r.delivery_latency.p99_ms)
}

fn ratios_table(reports: &[Report]) -> String {
    let mut out = String::from(
        "| ratio | throughput (accepted/s) | delivery p99 | RSS per idle connection |\n\
         |---|---:|---:|---:|\n",
    );
    for (label, name) in REFERENCES {
        let _ = writeln!(
            out,
            "| Parley dm / {name} relay | {} |",
            ratio_cells(reports, label).join(" | ")
        );
    }
    out.push_str(
        "\nAbove 1 is better for throughput, below 1 for latency and memory; \
         `n/a` when a figure is missing or the reference's is 0.\n",
    );
    out
}

/// Throughput, delivery p99 and idle RSS of Parley over the reference `label`.
fn ratio_cells(reports: &[Report], label: &str) -> [String; 3] {
    let dm = find(reports, "parley", "dm");
    let relay = find(reports, label, "relay");
    let parley_idle = find(reports, "parley", "idle");
    let ref_idle = find(reports, label, "idle");
    [
        ratio(
            dm.map(|r| r.accepted_per_sec),
            relay.map(|r| r.accepted_per_sec),
        ),
        ratio(dm.and_then(delivery_p99), relay.and_then(delivery_p99)),
        ratio(
            parley_idle.and_then(rss_growth),
            ref_idle.and_then(rss_growth),
        ),
    ]
}

/// The first report of `label` running `scenario`.
fn find<'a>(reports: &'a [Report], label: &str, scenario: &str) -> Option<&'a Report> {
    reports
        .iter()
        .find(|r| r.label == label && r.scenario == scenario)
}

/// `a / b` to two decimals, or `n/a` when either is missing or `b` is 0.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && (a / b).is_finite() => format!("{:.2}", a / b),
        _ => "n/a".to_string(),
    }
}

/// Where the Markdown file at `markdown` finds the chart at `chart`: the
/// chart's path relative to the Markdown file's directory, `/`-separated.
pub fn chart_link(markdown: &Path, chart: &Path) -> String {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let markdown = absolute(markdown);
    let from_dir = markdown.parent().unwrap_or(Path::new("/"));
    relative_path(from_dir, &absolute(chart))
}

fn relative_path(from_dir: &Path, to: &Path) -> String {
    let from: Vec<Component> = from_dir.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let ups = std::iter::repeat_n("..".to_string(), from.len() - common);
    let downs = to[common..]
        .iter()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    ups.chain(downs).collect::<Vec<_>>().join("/")
}

/// This machine in one line, e.g. `2 cores (AMD EPYC 7B13), 23.4 GiB RAM,
/// Linux 6.1.0; load generator on the same machine, loopback`.
pub fn machine_description() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    describe_machine(
        cores,
        &read("/proc/cpuinfo"),
        &read("/proc/meminfo"),
        &read("/proc/sys/kernel/osrelease"),
    )
}

fn describe_machine(cores: usize, cpuinfo: &str, meminfo: &str, osrelease: &str) -> String {
    let cpu = cpu_model(cpuinfo).unwrap_or("unknown CPU");
    let ram = total_memory_gib(meminfo).map_or_else(
        || "unknown RAM".to_string(),
        |gib| format!("{gib:.1} GiB RAM"),
    );
    let kernel = match osrelease.trim() {
        "" => "Linux".to_string(),
        release => format!("Linux {release}"),
    };
    format!("{cores} cores ({cpu}), {ram}, {kernel}; load generator on the same machine, loopback")
}

/// The `model name` of the first CPU in `/proc/cpuinfo`.
fn cpu_model(cpuinfo: &str) -> Option<&str> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim())
    })
}

/// `MemTotal` of `/proc/meminfo`, GiB.
fn total_memory_gib(meminfo: &str) -> Option<f64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::BrokerMemory;

    fn latency(count: u64, p50_ms: f64, p99_ms: f64) -> LatencySummary {
        LatencySummary {
            count,
            p50_ms,
            p99_ms,
            p999_ms: p99_ms * 2.0,
            ..LatencySummary::default()
        }
    }

    fn report(label: &str, scenario: &str, accepted_per_sec: f64, p99_ms: f64) -> Report {
        Report {
            label: label.into(),
            scenario: scenario.into(),
            connections: 200,
            accepted_per_sec,
            delivered_per_sec: accepted_per_sec,
            inbox_deliveries_per_sec: accepted_per_sec * 2.0,
            ack_latency: latency(1000, p99_ms / 4.0, p99_ms / 2.0),
            delivery_latency: latency(1000, p99_ms / 2.0, p99_ms),
            ..Report::default()
        }
    }

    fn idle(label: &str, growth_per_connection_bytes: f64) -> Report {
        Report {
            label: label.into(),
            scenario: "idle".into(),
            connections: 2000,
            broker_memory: Some(BrokerMemory {
                growth_per_connection_bytes,
                ..BrokerMemory::default()
            }),
            ..Report::default()
        }
    }

    fn full_run() -> Vec<Report> {
        vec![
            idle("parley", 3000.0),
            report("parley", "dm", 20_000.0, 8.0),
            report("parley", "group", 2_000.0, 30.0),
            idle("rumqttd", 6000.0),
            report("rumqttd", "relay", 25_000.0, 4.0),
            idle("mosquitto", 1500.0),
            report("mosquitto", "relay", 40_000.0, 2.0),
        ]
    }

    fn row_starting<'a>(md: &'a str, start: &str) -> &'a str {
        md.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no row {start:?} in\n{md}"))
    }

    #[test]
    fn header_machine_and_chart_link() {
        let md = latest_markdown(&full_run(), "2 cores (X), Linux 6.1.", Some("latency.svg"));
        assert!(md.starts_with("# Parley benchmark: latest run\n\n"), "{md}");
        assert!(md.contains("Machine: 2 cores (X), Linux 6.1.\n"), "{md}");
        assert!(
            md.contains("![send->delivery latency](latency.svg)\n"),
            "{md}"
        );
        assert!(md.contains("## Ratios (same run, same machine)\n"), "{md}");
        let without = latest_markdown(&full_run(), "m", None);
        assert!(!without.contains("!["), "{without}");
    }

    #[test]
    fn rows_come_in_broker_then_scenario_order() {
        let mut reports = full_run();
        reports.push(report("emqx", "relay", 1.0, 1.0));
        reports.push(report("parley", "burst", 1.0, 1.0));
        let md = latest_markdown(&reports, "m", None);
        let figures = md.split("## Ratios").next().unwrap();
        let rows: Vec<String> = figures
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| broker") && !l.contains("/"))
            .map(|l| l.split(" | ").take(2).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            rows,
            [
                "| mosquitto relay",
                "| mosquitto idle",
                "| rumqttd relay",
                "| rumqttd idle",
                "| parley dm",
                "| parley group",
                "| parley idle",
                "| parley burst",
                "| emqx relay",
            ]
        );
    }

    #[test]
    fn figures_row_has_every_column() {
        let md = latest_markdown(&full_run(), "m", None);
        assert_eq!(
            row_starting(&md, "| parley | dm |"),
            "| parley | dm | 200 | 20000 | 20000 | 40000 | 2.00 | 4.00 | 4.00 | 8.00 | 16.00 | 0 | 0 | - |"
        );
        assert_eq!(
            row_starting(&md, "| parley | idle |"),
            "| parley | idle | 2000 | 0 | 0 | 0 | - | - | - | - | - | 0 | 0 | 3000 |"
        );
        let header = row_starting(&md, "| broker |");
        let separator = md.lines().find(|l| l.starts_with("|---|")).unwrap();
        assert_eq!(header.matches(" | ").count(), 13, "{header}");
        assert_eq!(separator.matches('|').count(), 15, "{separator}");
    }

    #[test]
    fn ratios_against_both_references() {
        let md = latest_markdown(&full_run(), "m", None);
        assert_eq!(
            row_starting(&md, "| Parley dm / Mosquitto relay |"),
            "| Parley dm / Mosquitto relay | 0.50 | 4.00 | 2.00 |"
        );
        assert_eq!(
            row_starting(&md, "| Parley dm / rumqttd relay |"),
            "| Parley dm / rumqttd relay | 0.80 | 2.00 | 0.50 |"
        );
    }

    #[test]
    fn reports_load_in_name_order_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        let mut relay = Report {
            label: "mosquitto".into(),
            scenario: "relay".into(),
            ..Report::default()
        };
        write("b.json", &relay.to_json());
        relay.label = "parley".into();
        write("a.json", &relay.to_json());
        write("notes.md", "not a report");
        let labels: Vec<String> = load_reports(dir.path())
            .unwrap()
            .into_iter()
            .map(|r| r.label)
            .collect();
        assert_eq!(labels, ["parley", "mosquitto"]);

        write("c.json", "{ not json");
        let error = format!("{:#}", load_reports(dir.path()).unwrap_err());
        assert!(
            error.contains("c.json is not a parley-bench JSON report"),
            "{error}"
        );
    }

    #[test]
    fn missing_reference_gives_n_a() {
        let reports: Vec<Report> = full_run()
            .into_iter()
            .filter(|r| r.label != "rumqttd")
            .collect();
        let md = latest_markdown(&reports, "m", None);
        assert_eq!(
            row_starting(&md, "| Parley dm / rumqttd relay |"),
            "| Parley dm / rumqttd relay | n/a | n/a | n/a |"
        );
        assert_eq!(
            row_starting(&md, "| Parley dm / Mosquitto relay |"),
            "| Parley dm / Mosquitto relay | 0.50 | 4.00 | 2.00 |"
        );
    }

    #[test]
    fn zero_divisor_and_missing_samples_give_n_a() {
        let mut reports = full_run();
        for r in &mut reports {
            match (r.label.as_str(), r.scenario.as_str()) {
                ("mosquitto", "relay") => r.accepted_per_sec = 0.0,
                ("mosquitto", "idle") => r.broker_memory = None,
                ("rumqttd", "relay") => r.delivery_latency = LatencySummary::default(),
                ("rumqttd", "idle") => {
                    r.broker_memory = Some(BrokerMemory::default());
                }
                _ => {}
            }
        }
        let md = latest_markdown(&reports, "m", None);
        assert_eq!(
            row_starting(&md, "| Parley dm / Mosquitto relay |"),
            "| Parley dm / Mosquitto relay | n/a | 4.00 | n/a |"
        );
        assert_eq!(
            row_starting(&md, "| Parley dm / rumqttd relay |"),
            "| Parley dm / rumqttd relay | 0.80 | n/a | n/a |"
        );
    }

    #[test]
    fn chart_link_is_relative_to_the_markdown_directory() {
        let link = |md: &str, svg: &str| chart_link(Path::new(md), Path::new(svg));
        assert_eq!(link("/r/LATEST.md", "/r/latency.svg"), "latency.svg");
        assert_eq!(
            link("bench/results/LATEST.md", "bench/results/latency.svg"),
            "latency.svg"
        );
        assert_eq!(link("/r/LATEST.md", "/r/img/l.svg"), "img/l.svg");
        assert_eq!(link("/r/a/LATEST.md", "/r/b/l.svg"), "../b/l.svg");
        assert_eq!(link("LATEST.md", "latency.svg"), "latency.svg");
    }

    #[test]
    fn machine_line_from_proc_files() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        let meminfo = "MemTotal:       24536216 kB\nMemFree:         1000 kB\n";
        assert_eq!(
            describe_machine(2, cpuinfo, meminfo, "6.1.0-31-cloud-amd64\n"),
            "2 cores (AMD EPYC 7B13), 23.4 GiB RAM, Linux 6.1.0-31-cloud-amd64; \
             load generator on the same machine, loopback"
        );
        assert_eq!(
            describe_machine(4, "", "", ""),
            "4 cores (unknown CPU), unknown RAM, Linux; load generator on the same machine, loopback"
        );
        assert!(machine_description().contains(" cores ("));
    }

    #[test]
    fn loads_json_reports_and_skips_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "b-parley-dm.json",
            &report("parley", "dm", 1.0, 1.0).to_json(),
        );
        write(
            "a-mosquitto-relay.json",
            r#"{"label": "mosquitto", "scenario": "relay"}"#,
        );
        write("parley-dm.md", "### not json");
        let reports = load_reports(dir.path()).unwrap();
        let names: Vec<&str> = reports.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(names, ["mosquitto", "parley"]);

        write("c-broken.json", "{ not json");
        let err = format!("{:#}", load_reports(dir.path()).unwrap_err());
        assert!(err.contains("c-broken.json"), "{err}");
        assert!(load_reports(&dir.path().join("missing")).is_err());
    }
}

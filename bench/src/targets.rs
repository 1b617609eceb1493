//! The latency and memory targets, judged from the reports of one
//! `bench/run`, each as a ratio against the reference measured in the same
//! run. Reports are found by label and scenario, as `bench/run` names them:
//!
//! | label | scenario | what |
//! |---|---|---|
//! | `mosquitto-saturation` | relay | Mosquitto's saturation search (pairs) |
//! | `mosquitto` | relay | Mosquitto at 75% of its saturation rate |
//! | `mosquitto-fanout` | relay | Mosquitto's fan-out ceiling (100 subscribers per topic) |
//! | `mosquitto` | idle | Mosquitto's idle connections |
//! | `parley-saturation` | dm | Parley's saturation search |
//! | `parley`, `parley-nagle` | dm | Parley at 75% of Mosquitto's saturation, TCP_NODELAY on / off, three runs each |
//! | `parley` | group | groups of 100 at the fan-out target |
//! | `parley` | idle | Parley's idle connections |
//! | `parley` | connect | the connect storm |

use std::fmt::Write as _;

use super::report::Report;

/// Inbox deliveries per second the group target asks for, where the load
/// generator can receive them.
pub const GROUP_DELIVERIES_TARGET: f64 = 200_000.0;
/// Share of Mosquitto's saturation rate the latency comparison runs at.
pub const LATENCY_LOAD_SHARE: f64 = 0.75;
/// Share of Mosquitto's fan-out ceiling the group runs at when the ceiling
/// is below [`GROUP_DELIVERIES_TARGET`].
pub const FANOUT_SHARE: f64 = 0.9;
/// Idle connections the memory target is measured with.
pub const IDLE_CONNECTIONS: u64 = 19_000;
/// Most RSS growth per idle connection, bytes.
pub const IDLE_BYTES_PER_CONNECTION: f64 = 4096.0;
/// Devices of the connect storm and the time they must all be connected in.
pub const STORM_DEVICES: u64 = 5_000;
/// Seconds within which every storm device must be connected.
pub const STORM_SECS: f64 = 5.0;
/// Group p99 limit, ms.
pub const GROUP_P99_MS: f64 = 100.0;

/// The targets section of `LATEST.md`; rows whose reports are missing say so.
pub fn targets_markdown(reports: &[Report]) -> String {
    let mut out = String::from(
        "\n## Latency and memory targets (same run, same machine)\n\n\
         | # | target | measured | verdict |\n|---|---|---|---|\n",
    );
    let rows = [
        ("1", "dm p99 independent of TCP_NODELAY (medians of 3 runs within 20% or 2 ms)", nagle(reports)),
        ("2a", "dm p99 <= 2x Mosquitto relay p99 at 75% of Mosquitto's saturation rate", dm_latency(reports)),
        ("2b", "dm throughput at saturation >= 1.0x Mosquitto relay's", saturation(reports)),
        ("3", "group (100 members) p99 < 100 ms at 200k inbox deliveries/s or 90% of Mosquitto's fan-out ceiling", group(reports)),
        ("4", "<= 4 KB RSS per idle connection at 19,000 connections", idle(reports)),
        ("5", "5,000 token CONNECTs all connected within 5 s", storm(reports)),
    ];
    for (n, target, (measured, verdict)) in rows {
        let _ = writeln!(out, "| {n} | {target} | {measured} | {} |", verdict.word());
    }
    out
}

/// Pass, fail, or not measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// Measured, but the runs cannot answer the question (e.g. both
    /// compared runs saturated the broker).
    Inconclusive,
    NotMeasured,
}

impl Verdict {
    fn from(met: bool) -> Verdict {
        if met {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }

    fn word(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "**missed**",
            Verdict::Inconclusive => "inconclusive",
            Verdict::NotMeasured => "not measured",
        }
    }
}

type Row = (String, Verdict);

fn missing(what: &str) -> Row {
    (format!("no {what} report"), Verdict::NotMeasured)
}

fn find<'a>(reports: &'a [Report], label: &str, scenario: &str) -> Option<&'a Report> {
    reports
        .iter()
        .find(|r| r.label == label && r.scenario == scenario)
}

/// The median delivery p99 of every `label` dm report.
pub fn median_p99(reports: &[Report], label: &str) -> Option<(f64, usize)> {
    let mut p99s: Vec<f64> = reports
        .iter()
        .filter(|r| r.label == label && r.scenario == "dm" && r.delivery_latency.count > 0)
        .map(|r| r.delivery_latency.p99_ms)
        .collect();
    if p99s.is_empty() {
        return None;
    }
    p99s.sort_by(f64::total_cmp);
    Some((p99s[p99s.len() / 2], p99s.len()))
}

/// Whether two p99s are within 20% or 2 ms of each other, whichever is larger.
pub fn within_noise(a: f64, b: f64) -> bool {
    (a - b).abs() <= (0.2 * a.max(b)).max(2.0)
}

fn nagle(reports: &[Report]) -> Row {
    let (Some((on, n_on)), Some((off, n_off))) = (
        median_p99(reports, "parley"),
        median_p99(reports, "parley-nagle"),
    ) else {
        return missing("parley / parley-nagle dm");
    };
    let measured = format!(
        "median p99 {on:.2} ms with TCP_NODELAY ({n_on} runs), {off:.2} ms without ({n_off} runs)"
    );
    let saturated = reports
        .iter()
        .filter(|r| r.scenario == "dm" && (r.label == "parley" || r.label == "parley-nagle"))
        .any(|r| r.errors > 0 || r.lost > 0);
    if saturated {
        return (
            format!(
                "{measured}; Parley is saturated at this rate (errors in the runs), so both modes \
                 queue alike: see bench/nagle at a rate it sustains"
            ),
            Verdict::Inconclusive,
        );
    }
    (measured, Verdict::from(within_noise(on, off)))
}

fn dm_latency(reports: &[Report]) -> Row {
    let (Some((dm, _)), Some(relay)) = (
        median_p99(reports, "parley"),
        find(reports, "mosquitto", "relay"),
    ) else {
        return missing("parley dm or mosquitto relay");
    };
    let reference = relay.delivery_latency.p99_ms;
    (
        format!(
            "at {:.0} msg/s: Parley dm median p99 {dm:.2} ms, Mosquitto relay p99 {reference:.2} ms: {:.2}x",
            relay.params.rate,
            dm / reference
        ),
        Verdict::from(dm <= 2.0 * reference),
    )
}

fn saturation(reports: &[Report]) -> Row {
    let (Some(parley), Some(mosquitto)) = (
        find(reports, "parley-saturation", "dm").and_then(|r| r.saturation.as_ref()),
        find(reports, "mosquitto-saturation", "relay").and_then(|r| r.saturation.as_ref()),
    ) else {
        return missing("saturation search");
    };
    let ratio = parley.max_accepted_per_sec / mosquitto.max_accepted_per_sec;
    (
        format!(
            "Parley dm {:.0} msg/s (sustained {:.0}), Mosquitto relay {:.0} msg/s (sustained {:.0}): {ratio:.2}x",
            parley.max_accepted_per_sec,
            parley.sustained_rate,
            mosquitto.max_accepted_per_sec,
            mosquitto.sustained_rate
        ),
        Verdict::from(ratio >= 1.0),
    )
}

/// The inbox deliveries/s the group scenario should run at: 200k, or 90% of
/// Mosquitto's fan-out ceiling when that is lower.
pub fn group_target(fanout_ceiling: Option<f64>) -> f64 {
    match fanout_ceiling {
        Some(ceiling) if ceiling > 0.0 => GROUP_DELIVERIES_TARGET.min(FANOUT_SHARE * ceiling),
        _ => GROUP_DELIVERIES_TARGET,
    }
}

fn group(reports: &[Report]) -> Row {
    let Some(group) = find(reports, "parley", "group") else {
        return missing("parley group");
    };
    let ceiling = find(reports, "mosquitto-fanout", "relay")
        .and_then(|r| r.saturation.as_ref())
        .map(|s| s.sustained_delivered_per_sec);
    let target = group_target(ceiling);
    let p99 = group.delivery_latency.p99_ms;
    let ceiling_text = ceiling.map_or("not measured".to_string(), |c| format!("{c:.0}/s"));
    (
        format!(
            "{:.0} inbox deliveries/s (target {target:.0}; Mosquitto fan-out ceiling {ceiling_text}), p99 {p99:.2} ms",
            group.inbox_deliveries_per_sec
        ),
        Verdict::from(
            p99 < GROUP_P99_MS && group.inbox_deliveries_per_sec >= 0.95 * target && group.lost == 0,
        ),
    )
}

fn idle(reports: &[Report]) -> Row {
    let growth = |r: &Report| {
        r.broker_memory
            .as_ref()
            .map(|m| m.growth_per_connection_bytes)
    };
    let Some(parley) = find(reports, "parley", "idle") else {
        return missing("parley idle");
    };
    let Some(bytes) = growth(parley) else {
        return missing("parley idle memory");
    };
    let mosquitto = find(reports, "mosquitto", "idle").and_then(growth);
    let beside = mosquitto.map_or(String::new(), |m| {
        format!(" (Mosquitto {m:.0} B: {:.1}x)", bytes / m)
    });
    (
        format!(
            "{bytes:.0} B per connection at {} connections{beside}",
            parley.connections
        ),
        Verdict::from(bytes <= IDLE_BYTES_PER_CONNECTION && parley.connections >= IDLE_CONNECTIONS),
    )
}

fn storm(reports: &[Report]) -> Row {
    let Some(report) = find(reports, "parley", "connect") else {
        return missing("parley connect");
    };
    let Some(storm) = &report.connect_storm else {
        return missing("connect storm");
    };
    let cpu = storm
        .broker_cpu_secs
        .map_or("-".to_string(), |s| format!("{s:.2} CPU s"));
    let rss = report.broker_memory.as_ref().map_or("-".to_string(), |m| {
        format!(
            "+{:.1} MiB RSS",
            m.connected_kb.saturating_sub(m.before_kb) as f64 / 1024.0
        )
    });
    (
        format!(
            "{} of {} connected in {:.2} s (p99 {:.0} ms), broker {cpu}, {rss}",
            report.connections,
            report.connections + report.connect_errors,
            storm.all_connected_secs,
            report.connect_latency.p99_ms
        ),
        Verdict::from(
            report.connections >= STORM_DEVICES
                && report.connect_errors == 0
                && storm.all_connected_secs <= STORM_SECS,
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{BrokerMemory, ConnectStorm, Params, Saturation};
    use crate::stats::LatencySummary;

    fn dm(label: &str, p99_ms: f64) -> Report {
        Report {
            label: label.into(),
            scenario: "dm".into(),
            delivery_latency: LatencySummary {
                count: 100,
                p99_ms,
                ..LatencySummary::default()
            },
            ..Report::default()
        }
    }

    #[test]
    fn medians_and_noise() {
        let reports = [
            dm("parley", 9.0),
            dm("parley", 3.0),
            dm("parley", 5.0),
            dm("x", 1.0),
        ];
        assert_eq!(median_p99(&reports, "parley"), Some((5.0, 3)));
        assert_eq!(median_p99(&reports, "none"), None);
        assert!(within_noise(5.0, 6.9), "2 ms floor");
        assert!(within_noise(50.0, 41.0), "20% of the larger");
        assert!(!within_noise(50.0, 39.0));
    }

    #[test]
    fn saturated_runs_cannot_show_the_effect_of_socket_options() {
        let mut on = dm("parley", 20_000.0);
        on.errors = 5;
        let reports = [on, dm("parley-nagle", 21_000.0)];
        assert_eq!(nagle(&reports).1, Verdict::Inconclusive);
        let calm = [dm("parley", 9.0), dm("parley-nagle", 30.0)];
        assert_eq!(nagle(&calm).1, Verdict::Missed);
    }

    #[test]
    fn the_group_target_is_the_lower_of_200k_and_90_percent_of_the_ceiling() {
        assert_eq!(group_target(None), 200_000.0);
        assert_eq!(group_target(Some(100_000.0)), 90_000.0);
        assert_eq!(group_target(Some(400_000.0)), 200_000.0);
    }

    #[test]
    fn a_full_set_of_reports_gives_every_verdict() {
        let relay = Report {
            label: "mosquitto".into(),
            scenario: "relay".into(),
            params: Params {
                rate: 30_000.0,
                ..Params::default()
            },
            delivery_latency: LatencySummary {
                count: 10,
                p99_ms: 3.0,
                ..LatencySummary::default()
            },
            ..Report::default()
        };
        let searched = |label: &str, scenario: &str, accepted: f64| Report {
            label: label.into(),
            scenario: scenario.into(),
            saturation: Some(Saturation {
                sustained_rate: accepted * 0.9,
                max_accepted_per_sec: accepted,
                max_delivered_per_sec: accepted * 100.0,
                sustained_delivered_per_sec: accepted * 90.0,
                steps: Vec::new(),
            }),
            ..Report::default()
        };
        let idle = Report {
            label: "parley".into(),
            scenario: "idle".into(),
            connections: 19_488,
            broker_memory: Some(BrokerMemory {
                growth_per_connection_bytes: 3000.0,
                ..BrokerMemory::default()
            }),
            ..Report::default()
        };
        let storm = Report {
            label: "parley".into(),
            scenario: "connect".into(),
            connections: 5000,
            connect_storm: Some(ConnectStorm {
                all_connected_secs: 6.5,
                ..ConnectStorm::default()
            }),
            ..Report::default()
        };
        let reports = vec![
            relay,
            dm("parley", 5.0),
            dm("parley-nagle", 6.0),
            searched("parley-saturation", "dm", 40_000.0),
            searched("mosquitto-saturation", "relay", 50_000.0),
            idle,
            storm,
        ];
        let md = targets_markdown(&reports);
        let row = |n: &str| {
            md.lines()
                .find(|l| l.starts_with(&format!("| {n} |")))
                .unwrap()
                .to_string()
        };
        assert!(row("1").ends_with("| met |"), "{md}");
        assert!(row("2a").ends_with("| met |"), "5 <= 2 x 3: {md}");
        assert!(
            row("2b").contains("0.80x") && row("2b").ends_with("| **missed** |"),
            "{md}"
        );
        assert!(row("3").ends_with("| not measured |"), "{md}");
        assert!(row("4").ends_with("| met |"), "{md}");
        assert!(row("5").ends_with("| **missed** |"), "6.5 s: {md}");
    }
}

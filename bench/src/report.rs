//! The result of a run, as JSON (`--json FILE`) and as a Markdown table
//! (`--markdown FILE`). The JSON field names are stable: `parley-bench-report` reads them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::stats::LatencySummary;

/// What the run was asked to do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Params {
    /// Sender/receiver pairs (`dm`, `relay`).
    pub pairs: usize,
    /// Groups (`group`).
    pub groups: usize,
    /// Members per group, sender included (`group`).
    pub group_size: usize,
    /// Connections (`idle`).
    pub connections: usize,
    /// Target messages per second, all senders together.
    pub rate: f64,
    /// Seconds of sending (or of holding idle connections).
    pub duration_secs: u64,
    /// Bytes of message text or MQTT payload.
    pub payload_bytes: usize,
    /// MQTT in-flight window per connection.
    pub inflight: u16,
    /// Unacknowledged sends per sender before it waits.
    pub max_outstanding: usize,
    /// Seconds between heartbeats (`idle`).
    pub heartbeat_secs: u64,
    /// Subscribers per topic (`relay`; 1 is a pair, 100 the fan-out reference).
    pub subscribers: usize,
    /// Whether the load generator's sockets set TCP_NODELAY.
    pub tcp_nodelay: bool,
}

/// The broker's resident memory over the run (from `/proc/{pid}/status`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BrokerMemory {
    /// The broker's process id.
    pub pid: u32,
    /// RSS before the bench connected, KiB.
    pub before_kb: u64,
    /// RSS once every connection (stalled ones included) was up, KiB.
    pub connected_kb: u64,
    /// RSS at the end of the run (connections, stalled ones included, still up), KiB.
    pub after_kb: u64,
    /// Peak RSS of the broker's life so far (`VmHWM`), KiB.
    pub peak_kb: u64,
    /// (connected - before) / the connections made after `before` (stalled
    /// ones included; `idle`: those after its warm-up), bytes.
    pub growth_per_connection_bytes: f64,
}

/// One run's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    /// `dm`, `group`, `idle` or `relay`.
    pub scenario: String,
    /// Free text from `--label` (e.g. `parley`, `mosquitto`).
    pub label: String,
    /// The broker address.
    pub broker: String,
    /// `tcp` or `websocket`.
    pub transport: String,
    /// Wall clock at the start, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// What was asked.
    pub params: Params,
    /// Connections established.
    pub connections: u64,
    /// Connections that failed.
    pub connect_errors: u64,
    /// Extra connections subscribed to the receivers' inboxes that never
    /// read (`dm --stalled`); not in `connections`.
    pub stalled_connections: u64,
    /// Stalled connections the broker had closed by the end of the run.
    pub stalled_closed_by_broker: u64,
    /// Seconds of the sending phase as scheduled.
    pub send_secs: f64,
    /// Seconds of the whole run, connecting and draining included.
    pub wall_secs: f64,
    /// Messages sent (heartbeats for `idle`).
    pub sent: u64,
    /// Messages acknowledged by the broker.
    pub accepted: u64,
    /// Acks that said `duplicate`.
    pub duplicates: u64,
    /// Deliveries to recipients (the sender's own copy excluded).
    pub delivered: u64,
    /// Copies received by the senders themselves.
    pub echoes: u64,
    /// Deliveries expected from the accepted messages.
    pub expected_deliveries: u64,
    /// Expected deliveries that never arrived before the drain ended.
    pub lost: u64,
    /// Errors of every kind.
    pub errors: u64,
    /// Errors by kind.
    pub error_kinds: BTreeMap<String, u64>,
    /// Sustained acknowledged messages per second.
    pub accepted_per_sec: f64,
    /// Sustained deliveries to recipients per second.
    pub delivered_per_sec: f64,
    /// Sustained inbox deliveries per second (recipients and senders' copies).
    pub inbox_deliveries_per_sec: f64,
    /// Send -> ack (chat `Ack` or MQTT PUBACK).
    pub ack_latency: LatencySummary,
    /// Send -> delivery to a recipient.
    pub delivery_latency: LatencySummary,
    /// Connect -> CONNACK and SUBACK.
    pub connect_latency: LatencySummary,
    /// Broker memory, with `--broker-pid`.
    pub broker_memory: Option<BrokerMemory>,
    /// The `connect` scenario's figures.
    pub connect_storm: Option<ConnectStorm>,
    /// The steps of `--saturate`, when the run searched for the highest
    /// sustained rate (the report's other figures are the best step's).
    pub saturation: Option<Saturation>,
}

/// A connect storm: every device connecting at once with its token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectStorm {
    /// Seconds the HTTP logins took (before the storm, outside its clock).
    pub logins_secs: f64,
    /// Seconds from the first CONNECT until the last device was connected
    /// and subscribed (or had failed).
    pub all_connected_secs: f64,
    /// Broker CPU seconds (user + system) over the storm, with `--broker-pid`.
    pub broker_cpu_secs: Option<f64>,
    /// `broker_cpu_secs / all_connected_secs`: cores busy on average.
    pub broker_cpu_cores: Option<f64>,
}

/// A search for the highest offered rate the broker sustains.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Saturation {
    /// The highest offered rate that was sustained (msg/s).
    pub sustained_rate: f64,
    /// The most messages per second accepted in any step (the throughput
    /// at saturation).
    pub max_accepted_per_sec: f64,
    /// The most deliveries per second in any step.
    pub max_delivered_per_sec: f64,
    /// Deliveries per second of the highest sustained step: the most the
    /// broker delivers while keeping up (its fan-out ceiling, for `relay
    /// --subscribers`).
    pub sustained_delivered_per_sec: f64,
    /// Every step, in the order run.
    pub steps: Vec<SaturationStep>,
}

/// One step of a saturation search.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SaturationStep {
    /// Offered msg/s.
    pub rate: f64,
    /// Accepted msg/s.
    pub accepted_per_sec: f64,
    /// Deliveries per second.
    pub delivered_per_sec: f64,
    /// Send -> delivery p99, ms.
    pub delivery_p99_ms: f64,
    /// Errors plus deliveries lost.
    pub errors_and_lost: u64,
    /// Whether the broker kept up (see `saturation::sustained`).
    pub sustained: bool,
}

/// `count` events over a window: divided by the longer of the scheduled
/// window and the time the events actually took (a broker that falls behind
/// does not get credit for acks it sent after the window).
pub fn per_sec(count: u64, scheduled_secs: f64, actual_secs: f64) -> f64 {
    let window = scheduled_secs.max(actual_secs);
    if window <= 0.0 {
        return 0.0;
    }
    count as f64 / window
}

fn latency_cell(l: &LatencySummary) -> String {
    if l.count == 0 {
        return "-".to_string();
    }
    format!(
        "{:.2} / {:.2} / {:.2} / {:.2}",
        l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
    )
}

impl Report {
    /// A report read back from its JSON; missing fields take their defaults.
    pub fn from_json(json: &str) -> serde_json::Result<Report> {
        serde_json::from_str(json)
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        // A struct of plain fields and string-keyed maps always serializes.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The report as a Markdown section with one two-column table.
    pub fn to_markdown(&self) -> String {
        let mut rows = self.setup_rows();
        rows.push(("sent".into(), self.sent.to_string()));
        if self.sends_messages() {
            rows.extend(self.message_rows());
        }
        rows.push((
            "connect p50 / p99 / p99.9 / max (ms)".into(),
            latency_cell(&self.connect_latency),
        ));
        rows.push(("errors".into(), self.errors_cell()));
        rows.extend(self.memory_rows());
        rows.extend(self.storm_rows());
        rows.extend(self.saturation_rows());
        markdown_section(&self.scenario, &self.label, rows)
    }
}

/// A `### parley-bench {scenario} ({label})` heading over a `metric |
/// value` table of `rows` (a `|` in a value is escaped).
fn markdown_section(scenario: &str, label: &str, rows: Vec<(String, String)>) -> String {
    let mut out = String::new();
    let label = if label.is_empty() {
        String::new()
    } else {
        format!(" ({label})")
    };
    let _ = writeln!(out, "### parley-bench {scenario}{label}\n");
    let _ = writeln!(out, "| metric | value |\n|---|---|");
    for (k, v) in rows {
        let _ = writeln!(out, "| {k} | {} |", v.replace('|', "\\|"));
    }
    out
}

impl Report {
    /// What the run was asked to do: broker, connections, the scenario's
    /// shape, the offered load and the duration.
    fn setup_rows(&self) -> Vec<(String, String)> {
        let mut rows: Vec<(String, String)> = vec![
            (
                "broker".into(),
                format!("{} ({})", self.broker, self.transport),
            ),
            (
                "connections".into(),
                format!("{} ({} failed)", self.connections, self.connect_errors),
            ),
        ];
        if self.stalled_connections > 0 {
            rows.push((
                "stalled receivers (never read)".into(),
                format!(
                    "{} ({} closed by the broker)",
                    self.stalled_connections, self.stalled_closed_by_broker
                ),
            ));
        }
        rows.push(self.shape_row());
        let p = &self.params;
        if self.sends_messages() {
            rows.push(("target rate".into(), format!("{:.0} msg/s", p.rate)));
            rows.push(("TCP_NODELAY".into(), p.tcp_nodelay.to_string()));
            rows.push(("payload".into(), format!("{} B", p.payload_bytes)));
        }
        rows.push(("duration".into(), format!("{} s", p.duration_secs)));
        rows
    }

    /// The scenario's shape: pairs, topics x subscribers, devices, groups
    /// x members, or (`idle`) the heartbeat interval.
    fn shape_row(&self) -> (String, String) {
        let p = &self.params;
        match self.scenario.as_str() {
            "relay" if p.subscribers > 1 => (
                "topics x subscribers".into(),
                format!("{} x {}", p.pairs, p.subscribers),
            ),
            "dm" | "relay" => ("pairs".into(), p.pairs.to_string()),
            "connect" => ("devices".into(), p.connections.to_string()),
            "group" => (
                "groups x members".into(),
                format!("{} x {}", p.groups, p.group_size),
            ),
            _ => ("heartbeat every".into(), format!("{} s", p.heartbeat_secs)),
        }
    }

    /// Acks, deliveries, their rates and latencies (scenarios that send).
    fn message_rows(&self) -> Vec<(String, String)> {
        vec![
            (
                "accepted".into(),
                format!("{} ({} duplicate)", self.accepted, self.duplicates),
            ),
            ("accepted/s".into(), format!("{:.0}", self.accepted_per_sec)),
            (
                "delivered".into(),
                format!(
                    "{} of {} expected ({} lost)",
                    self.delivered, self.expected_deliveries, self.lost
                ),
            ),
            (
                "delivered/s".into(),
                format!("{:.0}", self.delivered_per_sec),
            ),
            (
                "inbox deliveries/s".into(),
                format!("{:.0}", self.inbox_deliveries_per_sec),
            ),
            (
                "send->ack p50 / p99 / p99.9 / max (ms)".into(),
                latency_cell(&self.ack_latency),
            ),
            (
                "send->delivery p50 / p99 / p99.9 / max (ms)".into(),
                latency_cell(&self.delivery_latency),
            ),
        ]
    }

    /// The error count, followed by the count of each kind if any.
    fn errors_cell(&self) -> String {
        let kinds: Vec<String> = self
            .error_kinds
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        if kinds.is_empty() {
            self.errors.to_string()
        } else {
            format!("{} ({})", self.errors, kinds.join(", "))
        }
    }

    /// The broker's RSS over the run and per connection (with `--broker-pid`).
    fn memory_rows(&self) -> Vec<(String, String)> {
        let Some(m) = &self.broker_memory else {
            return Vec::new();
        };
        vec![
            (
                "broker RSS before / connected / after / peak (MiB)".into(),
                format!(
                    "{:.1} / {:.1} / {:.1} / {:.1}",
                    m.before_kb as f64 / 1024.0,
                    m.connected_kb as f64 / 1024.0,
                    m.after_kb as f64 / 1024.0,
                    m.peak_kb as f64 / 1024.0
                ),
            ),
            (
                "broker RSS per connection".into(),
                format!("{:.0} B", m.growth_per_connection_bytes),
            ),
        ]
    }

    /// Whether the scenario sends chat messages or publishes (not `idle`
    /// or `connect`).
    pub fn sends_messages(&self) -> bool {
        !matches!(self.scenario.as_str(), "idle" | "connect")
    }

    /// The connect storm's logins, duration and broker CPU (`connect`).
    fn storm_rows(&self) -> Vec<(String, String)> {
        let Some(storm) = &self.connect_storm else {
            return Vec::new();
        };
        let cpu = match (storm.broker_cpu_secs, storm.broker_cpu_cores) {
            (Some(secs), Some(cores)) => format!("{secs:.2} s ({cores:.2} cores)"),
            _ => "-".to_string(),
        };
        vec![
            (
                "logins (before the storm)".into(),
                format!("{:.2} s", storm.logins_secs),
            ),
            (
                "all connected after".into(),
                format!("{:.2} s", storm.all_connected_secs),
            ),
            ("broker CPU over the storm".into(), cpu),
        ]
    }

    /// The saturation search's result and steps (`--saturate`).
    fn saturation_rows(&self) -> Vec<(String, String)> {
        let Some(search) = &self.saturation else {
            return Vec::new();
        };
        let steps: Vec<String> = search
            .steps
            .iter()
            .map(|s| format!("{:.0}{}", s.rate, if s.sustained { " ok" } else { " no" }))
            .collect();
        vec![
            (
                "sustained rate (saturation search)".into(),
                format!("{:.0} msg/s", search.sustained_rate),
            ),
            (
                "most accepted/s in a step".into(),
                format!("{:.0}", search.max_accepted_per_sec),
            ),
            ("steps (offered msg/s)".into(), steps.join(", ")),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            scenario: "dm".into(),
            label: "parley".into(),
            broker: "127.0.0.1:1883".into(),
            transport: "tcp".into(),
            params: Params {
                pairs: 100,
                rate: 23_000.0,
                duration_secs: 10,
                payload_bytes: 100,
                ..Params::default()
            },
            connections: 200,
            sent: 230_000,
            accepted: 230_000,
            delivered: 229_990,
            expected_deliveries: 230_000,
            lost: 10,
            errors: 1,
            error_kinds: BTreeMap::from([("timeout".to_string(), 1)]),
            accepted_per_sec: 23_000.0,
            delivered_per_sec: 22_999.0,
            ack_latency: LatencySummary {
                count: 230_000,
                mean_ms: 1.0,
                p50_ms: 0.5,
                p99_ms: 4.25,
                p999_ms: 9.0,
                max_ms: 12.0,
                ..LatencySummary::default()
            },
            broker_memory: Some(BrokerMemory {
                pid: 42,
                before_kb: 10_240,
                connected_kb: 20_480,
                after_kb: 30_720,
                peak_kb: 40_960,
                growth_per_connection_bytes: 52_428.8,
            }),
            ..Report::default()
        }
    }

    #[test]
    fn markdown_table_has_the_figures() {
        let md = sample().to_markdown();
        assert!(md.starts_with("### parley-bench dm (parley)\n"), "{md}");
        assert!(md.contains("| metric | value |\n|---|---|\n"));
        assert!(md.contains("| accepted/s | 23000 |"), "{md}");
        assert!(
            md.contains("| send->ack p50 / p99 / p99.9 / max (ms) | 0.50 / 4.25 / 9.00 / 12.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| send->delivery p50 / p99 / p99.9 / max (ms) | - |"),
            "{md}"
        );
        assert!(md.contains("| errors | 1 (timeout: 1) |"), "{md}");
        assert!(md.contains("| broker RSS before / connected / after / peak (MiB) | 10.0 / 20.0 / 30.0 / 40.0 |"), "{md}");
        assert!(
            md.contains("| broker RSS per connection | 52429 B |"),
            "{md}"
        );
        assert!(md
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| metric"))
            .all(|l| l.matches(" | ").count() == 1));
        assert!(!md.contains("stalled"), "{md}");
    }

    #[test]
    fn stalled_receivers_get_a_row() {
        let report = Report {
            stalled_connections: 50,
            stalled_closed_by_broker: 2,
            ..sample()
        };
        let md = report.to_markdown();
        assert!(
            md.contains("| stalled receivers (never read) | 50 (2 closed by the broker) |"),
            "{md}"
        );
        let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(v["stalled_connections"], 50);
        assert_eq!(v["stalled_closed_by_broker"], 2);
        let old = Report::from_json(r#"{"scenario": "dm"}"#).unwrap();
        assert_eq!(
            (old.stalled_connections, old.stalled_closed_by_broker),
            (0, 0)
        );
    }

    #[test]
    fn json_has_stable_field_names() {
        let v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        assert_eq!(v["scenario"], "dm");
        assert_eq!(v["accepted_per_sec"], 23_000.0);
        assert_eq!(v["ack_latency"]["p99_ms"], 4.25);
        assert_eq!(v["params"]["pairs"], 100);
        assert_eq!(v["broker_memory"]["connected_kb"], 20_480);
        assert_eq!(v["error_kinds"]["timeout"], 1);
    }

    #[test]
    fn json_round_trips_and_partial_json_loads() {
        let report = sample();
        assert_eq!(Report::from_json(&report.to_json()).unwrap(), report);
        let partial = Report::from_json(r#"{"label": "mosquitto", "scenario": "relay"}"#).unwrap();
        assert_eq!(partial.label, "mosquitto");
        assert_eq!(partial.broker_memory, None);
        assert_eq!(partial.delivery_latency, LatencySummary::default());
    }

    #[test]
    fn idle_reports_skip_message_rows() {
        let report = Report {
            scenario: "idle".into(),
            params: Params {
                connections: 20_000,
                heartbeat_secs: 10,
                ..Params::default()
            },
            ..Report::default()
        };
        let md = report.to_markdown();
        assert!(!md.contains("accepted/s"));
        assert!(md.contains("| heartbeat every | 10 s |"));
    }

    #[test]
    fn rates_use_the_longer_window() {
        assert_eq!(per_sec(1000, 10.0, 5.0), 100.0);
        assert_eq!(per_sec(1000, 10.0, 20.0), 50.0);
        assert_eq!(per_sec(1000, 0.0, 0.0), 0.0);
    }
}

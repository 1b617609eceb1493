//! `parley-bench`: a load generator that drives a running broker over real
//! MQTT connections and reports throughput, latency and broker memory.
//!
//! Scenarios:
//! - `dm`: `--pairs` N sender/receiver pairs; sender `{prefix}{2i}` sends to
//!   the direct channel with receiver `{prefix}{2i+1}`, open loop at
//!   `--rate` messages per second in all. With `--stalled` N, N more raw
//!   connections log in as the receivers (`{prefix}{2i+1}` in turn, device
//!   `stalled{k}`), subscribe to their inbox at QoS 1 and never read again:
//!   slow consumers, to show that they neither grow the broker's memory
//!   without bound nor slow the other receivers (module `stalled`).
//! - `group`: `--groups` groups of `--group-size` members (default 100);
//!   member 0 of each creates the group and sends; every message is fanned
//!   out to every member's inbox.
//! - `idle`: `--connections` M connections that only send heartbeats;
//!   connection i logs in as `{prefix}{i mod --idle-users}` on device `idle{i}`.
//! - `relay`: the reference without a chat layer, for Mosquitto or bare
//!   rumqttd: the same pairs and payloads as `dm`, as plain MQTT QoS 1
//!   publishes on `bench/{pair}` to a subscriber; with `--subscribers N`,
//!   N subscribers per topic (the fan-out reference for `group`).
//! - `connect`: a connect storm: `--connections` devices log in over HTTP
//!   (`--http`) for tokens, then all connect at once with them; reports the
//!   time until the last is connected and the broker's CPU and RSS
//!   (module `storm`).
//!
//! `--saturate` turns any rate-driven scenario into a search for the
//! highest rate the broker sustains (module `saturation`).
//!
//! The chat scenarios need registered users `{prefix}{i}` with the same
//! `--password`: create them beforehand with `parley user add bench0
//! --password PW` (stopped broker) or `POST /v1/register` (running broker).
//! Every phase is bounded: sending stops after `--duration`, waiting for the
//! last acks and deliveries after `--drain-secs`; the run ends by itself.
//!
//! For example, 50 pairs with one stalled device per receiver, the broker's
//! RSS sampled before, once connected and at the end (stalled sockets still
//! open):
//!
//! ```text
//! parley-bench dm --pairs 50 --rate 5000 --duration 30 --stalled 50 --broker-pid $(pidof parley)
//! ```
//!
//! `parley-bench-report` turns the JSON reports of a whole `bench/run` into
//! one Markdown summary ([`summary`]) and a latency chart ([`chart`]).

pub mod chart;
mod chat;
mod conn;
mod idle;
pub mod pacing;
pub mod payload;
mod relay;
pub mod report;
pub mod rss;
pub mod saturation;
mod stalled;
pub mod stats;
mod storm;
pub mod summary;
pub mod targets;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};

use parley_client::options::{parse_broker_addr, Transport};
pub use report::Report;
use stats::Stats;

/// The load to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Direct messages between pairs of users.
    Dm,
    /// Group messages fanned out to every member.
    Group,
    /// Connections that only send heartbeats.
    Idle,
    /// Plain MQTT QoS 1 publish/subscribe (no chat layer).
    Relay,
    /// Many devices connecting at once with login tokens.
    Connect,
}

impl Scenario {
    /// The scenario's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Dm => "dm",
            Scenario::Group => "group",
            Scenario::Idle => "idle",
            Scenario::Relay => "relay",
            Scenario::Connect => "connect",
        }
    }
}

/// `parley-bench SCENARIO [options]`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "parley-bench",
    version,
    about = "Load generator for Parley (and reference MQTT brokers)"
)]
pub struct BenchArgs {
    /// dm, group, idle, relay or connect.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Broker address: HOST:PORT, or ws://HOST:PORT/mqtt.
    #[arg(long, env = "PARLEY_BROKER", default_value = "127.0.0.1:1883")]
    pub broker: String,
    /// The broker's HTTP API, HOST:PORT (connect: where devices log in).
    #[arg(long)]
    pub http: Option<String>,
    /// Users are {prefix}0, {prefix}1, ...; they must exist for dm, group and idle on Parley.
    #[arg(long, default_value = "bench")]
    pub users_prefix: String,
    /// Password (or token) of every bench user.
    #[arg(
        long,
        env = "PARLEY_BENCH_PASSWORD",
        default_value = "bench",
        hide_env_values = true
    )]
    pub password: String,
    /// Device id of the bench connections (dm, group, relay).
    #[arg(long, default_value = "bench")]
    pub device: String,
    /// Sender/receiver pairs (dm, relay); topics for relay.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub pairs: u32,
    /// Subscribers per topic (relay).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub subscribers: u32,
    /// Extra connections that log in as the dm receivers (device
    /// `stalled{k}`), subscribe to their inbox and never read (dm, TCP only).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub stalled: u32,
    /// Groups (group).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub groups: u32,
    /// Members per group, sender included (group).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(2..=500))]
    pub group_size: u32,
    /// Connections (idle, connect).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub connections: u32,
    /// Distinct users the idle (and connect) connections log in as.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub idle_users: u32,
    /// Seconds between heartbeats of each idle connection.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_secs: u64,
    /// Target messages per second, all senders together (open loop).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds of sending (idle: of holding the connections).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration: u64,
    /// Bytes of message text (or MQTT payload for relay); at least the 22-byte stamp is sent.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub payload: u32,
    /// Seconds to wait after sending for the last acks and deliveries.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub drain_secs: u64,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connect_concurrency: u32,
    /// MQTT in-flight window per connection.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,
    /// Unacknowledged sends per sender before it waits (latency still counts from the due time).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_outstanding: u32,
    /// TCP_NODELAY on the load generator's sockets (`false`: Nagle's
    /// algorithm on, as in MQTT.js on Node and many mobile MQTT libraries).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub tcp_nodelay: bool,
    /// A PEM file of the CA that signed the broker's certificate, for
    /// `mqtts://` and `wss://` brokers (default: the system's roots).
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// MQTT keep-alive of every connection, seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u16).range(1..))]
    pub keep_alive: u16,
    /// The broker's pid: its RSS is read from /proc before, during and after the run.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// A label for the report (e.g. parley, mosquitto, rumqttd).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
    /// Write the report as a Markdown table to this file.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<std::path::PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Search for the highest sustained rate, starting at `--rate` (dm,
    /// group, relay); each step runs `--duration` seconds.
    #[arg(long)]
    pub saturate: bool,
    /// A saturation step whose send->delivery p99 is above this is not
    /// sustained (default: the design brief's 200 ms between online users).
    #[arg(long, default_value_t = 200.0)]
    pub saturation_p99_ms: f64,
    /// Most steps of a saturation search.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub saturation_max_steps: u32,
}

impl BenchArgs {
    /// Checks what clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.rate.is_finite() && self.rate > 0.0 && self.rate <= 10_000_000.0,
            "--rate must be above 0 and at most 10,000,000"
        );
        anyhow::ensure!(
            !self.users_prefix.is_empty(),
            "--users-prefix must not be empty"
        );
        let (_, _, transport) = parse_broker_addr(&self.broker)?;
        anyhow::ensure!(
            self.subscribers == 1 || self.scenario == Scenario::Relay,
            "--subscribers applies to the relay scenario only"
        );
        anyhow::ensure!(
            !self.saturate || self.sends_messages(),
            "--saturate applies to dm, group and relay"
        );
        anyhow::ensure!(
            self.scenario != Scenario::Connect || self.http.is_some(),
            "the connect scenario needs --http HOST:PORT to log the devices in"
        );
        if self.stalled > 0 {
            anyhow::ensure!(
                self.scenario == Scenario::Dm,
                "--stalled applies to the dm scenario only"
            );
            anyhow::ensure!(
                transport == Transport::Tcp,
                "--stalled needs a TCP broker address (HOST:PORT), not WebSocket"
            );
        }
        Ok(())
    }

    /// Whether the scenario sends messages at `--rate`.
    pub fn sends_messages(&self) -> bool {
        matches!(
            self.scenario,
            Scenario::Dm | Scenario::Group | Scenario::Relay
        )
    }

    /// The number of connections the scenario opens.
    pub fn connection_count(&self) -> usize {
        match self.scenario {
            Scenario::Dm => 2 * self.pairs as usize,
            Scenario::Relay => (self.pairs * (self.subscribers + 1)) as usize,
            Scenario::Group => (self.groups * self.group_size) as usize,
            Scenario::Idle | Scenario::Connect => self.connections as usize,
        }
    }

    /// User `i` of the run.
    pub fn user(&self, i: usize) -> String {
        format!("{}{i}", self.users_prefix)
    }

    fn params(&self) -> report::Params {
        report::Params {
            pairs: self.pairs as usize,
            groups: self.groups as usize,
            group_size: self.group_size as usize,
            connections: self.connections as usize,
            rate: self.rate,
            duration_secs: self.duration,
            payload_bytes: self.payload as usize,
            inflight: self.inflight,
            max_outstanding: self.max_outstanding as usize,
            heartbeat_secs: self.heartbeat_secs,
            subscribers: self.subscribers as usize,
            tcp_nodelay: self.tcp_nodelay,
        }
    }
}

/// Runs one scenario to the end (or, with `--saturate`, the search of its
/// highest sustained rate) and returns its report (also written to
/// `--json` and `--markdown` when given).
pub async fn run(args: BenchArgs) -> anyhow::Result<Report> {
    args.validate()?;
    warn_about_open_files(args.connection_count() + args.stalled as usize);
    let report = if args.saturate {
        saturation::search(&args).await?
    } else {
        run_once(&args).await?
    };
    write_outputs(&args, &report)?;
    Ok(report)
}

/// One run of the scenario at `args.rate`.
pub(crate) async fn run_once(args: &BenchArgs) -> anyhow::Result<Report> {
    let stats = Arc::new(Stats::new());
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let mut report = match args.scenario {
        Scenario::Dm | Scenario::Group => chat::run(args, &stats).await?,
        Scenario::Idle => idle::run(args, &stats).await?,
        Scenario::Relay => relay::run(args, &stats).await?,
        Scenario::Connect => storm::run(args, &stats).await?,
    };
    let (_, _, transport) = parse_broker_addr(&args.broker)?;
    report.scenario = args.scenario.name().to_string();
    report.label = args.label.clone();
    report.broker = args.broker.clone();
    report.transport = match transport {
        Transport::Tcp => "tcp",
        Transport::WebSocket => "websocket",
        Transport::Tls => "tls",
        Transport::WebSocketTls => "wss",
    }
    .to_string();
    report.started_unix_ms = started_unix_ms;
    report.params = args.params();
    report.wall_secs = stats.now_us() as f64 / 1e6;
    Ok(report)
}

fn write_outputs(args: &BenchArgs, report: &Report) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json() + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, report.to_markdown())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn warn_about_open_files(connections: usize) {
    let needed = connections as u64 + 64;
    if let Some(limit) = rss::open_files_limit() {
        if limit < needed {
            eprintln!(
                "warning: the open-file limit is {limit} but {connections} connections need about {needed}; \
                 raise it (ulimit -n {needed}) or expect connect errors"
            );
        }
    }
}

/// Prints the progress line every second until `stop` turns true.
pub(crate) fn spawn_progress(
    stats: Arc<Stats>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    quiet: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut prev = stats.counts();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            ticker.tick().await;
            let now = stats.counts();
            if !quiet {
                let elapsed = Duration::from_micros(stats.now_us());
                eprintln!(
                    "{}",
                    stats::progress_line(elapsed, prev, now, Duration::from_secs(1))
                );
            }
            prev = now;
        }
    })
}

/// The broker's memory now, when `--broker-pid` is given.
pub(crate) fn sample_memory(args: &BenchArgs) -> Option<rss::Memory> {
    let pid = args.broker_pid?;
    let memory = rss::read(pid);
    if memory.is_none() {
        eprintln!("warning: cannot read /proc/{pid}/status; no broker memory in the report");
    }
    memory
}

/// The report's memory section from three samples.
pub(crate) fn broker_memory(
    args: &BenchArgs,
    before: Option<rss::Memory>,
    connected: Option<rss::Memory>,
    after: Option<rss::Memory>,
    connections: u64,
) -> Option<report::BrokerMemory> {
    let (pid, before, connected, after) = (args.broker_pid?, before?, connected?, after?);
    let growth_kb = connected.rss_kb.saturating_sub(before.rss_kb) as f64;
    Some(report::BrokerMemory {
        pid,
        before_kb: before.rss_kb,
        connected_kb: connected.rss_kb,
        after_kb: after.rss_kb,
        peak_kb: after.peak_kb.max(connected.peak_kb),
        growth_per_connection_bytes: if connections == 0 {
            0.0
        } else {
            growth_kb * 1024.0 / connections as f64
        },
    })
}

/// A run id for names that must not collide with earlier runs (group ids).
pub(crate) fn run_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    parley_client::ids::base36(millis)
}

/// Waits until every accepted message reached its `recipients`, or the deadline.
pub(crate) async fn wait_for_deliveries(
    stats: &Stats,
    recipients: u64,
    deadline: std::time::Instant,
) {
    while std::time::Instant::now() < deadline {
        let counts = stats.counts();
        if counts.delivered >= counts.accepted * recipients {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_definition_is_consistent() {
        use clap::CommandFactory;
        BenchArgs::command().debug_assert();
    }

    #[test]
    fn defaults_parse_and_validate() {
        let args = BenchArgs::try_parse_from(["parley-bench", "dm"]).unwrap();
        assert_eq!(args.scenario, Scenario::Dm);
        assert_eq!((args.pairs, args.duration, args.payload), (100, 10, 100));
        assert_eq!(args.broker, "127.0.0.1:1883");
        assert!(args.validate().is_ok());
        assert_eq!(args.connection_count(), 200);
        assert_eq!(args.user(7), "bench7");
        assert_eq!(args.stalled, 0);
    }

    #[test]
    fn stalled_is_for_dm_over_tcp() {
        let args =
            BenchArgs::try_parse_from(["parley-bench", "dm", "--pairs", "5", "--stalled", "8"])
                .unwrap();
        assert_eq!(args.stalled, 8);
        assert!(args.validate().is_ok());
        // The stalled connections come on top of the pairs.
        assert_eq!(args.connection_count(), 10);
        for refused in [
            &["parley-bench", "group", "--stalled", "1"][..],
            &["parley-bench", "relay", "--stalled", "1"][..],
            &[
                "parley-bench",
                "dm",
                "--stalled",
                "1",
                "--broker",
                "ws://127.0.0.1:8080/mqtt",
            ][..],
        ] {
            let args = BenchArgs::try_parse_from(refused).unwrap();
            assert!(args.validate().is_err(), "{refused:?}");
        }
        assert!(BenchArgs::try_parse_from(["parley-bench", "dm", "--stalled", "-1"]).is_err());
    }

    #[test]
    fn every_scenario_and_flag() {
        let args = BenchArgs::try_parse_from([
            "parley-bench",
            "group",
            "--groups",
            "3",
            "--group-size",
            "50",
            "--rate",
            "200",
            "--duration",
            "5",
            "--payload",
            "512",
            "--broker-pid",
            "77",
            "--json",
            "/tmp/x.json",
            "--markdown",
            "/tmp/x.md",
            "--users-prefix",
            "u",
            "--label",
            "parley",
        ])
        .unwrap();
        assert_eq!(args.connection_count(), 150);
        assert_eq!(args.broker_pid, Some(77));
        assert_eq!(args.user(0), "u0");
        for name in ["dm", "group", "idle", "relay", "connect"] {
            let args = BenchArgs::try_parse_from(["parley-bench", name]).unwrap();
            assert_eq!(args.scenario.name(), name);
        }
    }

    #[test]
    fn fan_out_saturation_and_storm_flags() {
        let parse = |argv: &[&str]| BenchArgs::try_parse_from(argv).unwrap();
        let fanout = parse(&[
            "b",
            "relay",
            "--pairs",
            "10",
            "--subscribers",
            "100",
            "--saturate",
        ]);
        assert!(fanout.validate().is_ok());
        assert_eq!(fanout.connection_count(), 1010);
        assert!(parse(&["b", "dm", "--subscribers", "5"])
            .validate()
            .is_err());
        assert!(parse(&["b", "idle", "--saturate"]).validate().is_err());
        assert!(parse(&["b", "connect"]).validate().is_err(), "no --http");
        let storm = parse(&[
            "b",
            "connect",
            "--http",
            "127.0.0.1:8080",
            "--connections",
            "5000",
        ]);
        assert!(storm.validate().is_ok());
        assert_eq!(storm.connection_count(), 5000);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(BenchArgs::try_parse_from(["parley-bench", "chaos"]).is_err());
        assert!(BenchArgs::try_parse_from(["parley-bench", "dm", "--pairs", "0"]).is_err());
        assert!(BenchArgs::try_parse_from(["parley-bench", "dm", "--duration", "0"]).is_err());
        assert!(BenchArgs::try_parse_from(["parley-bench", "group", "--group-size", "1"]).is_err());
        for rate in ["--rate=0", "--rate=-5", "--rate=NaN"] {
            let args = BenchArgs::try_parse_from(["parley-bench", "dm", rate]).unwrap();
            assert!(args.validate().is_err(), "rate {rate}");
        }
        let args =
            BenchArgs::try_parse_from(["parley-bench", "dm", "--broker", "nowhere"]).unwrap();
        assert!(args.validate().is_err());
    }
}

//! The `idle` scenario: many connections that only send heartbeats, to
//! measure what a connection costs the broker.
//!
//! The cost is marginal: the first [`WARM_UP`] connections are made before
//! the "before" RSS sample, so what a broker allocates once, lazily, at its
//! first logins (Parley's argon2 working areas, 19 MiB per verifier thread;
//! allocator and runtime pools) is not charged to every connection. The
//! growth per connection is (RSS with all connected - RSS after the warm-up)
//! / (connections - warm-up).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::{self, error_kind};
use super::report::Report;
use super::stats::Stats;
use super::{rss, BenchArgs};
use parley_client::{Client, ClientError};

/// Time for the broker to settle after the last connection, before its RSS is read.
const SETTLE: Duration = Duration::from_secs(1);
/// Connections made before the "before" sample (at most a tenth of them all).
pub const WARM_UP: usize = 100;

pub(crate) async fn run(args: &BenchArgs, stats: &Arc<Stats>) -> anyhow::Result<Report> {
    let logins = logins(args);
    let warm_up = WARM_UP.min(logins.len() / 10);
    let stop = Arc::new(AtomicBool::new(false));
    let progress = super::spawn_progress(stats.clone(), stop.clone(), args.quiet);

    let (results, before) = connect_after_warm_up(args, &logins, warm_up, stats).await;
    let attempted = results.len() as u64;
    let clients: Vec<Client> = results.into_iter().filter_map(Result::ok).collect();
    let warmed = clients.len().min(warm_up) as u64;
    if clients.is_empty() {
        stop.store(true, Ordering::Relaxed);
        return Err(nobody_connected(args));
    }
    tokio::time::sleep(SETTLE).await;
    let connected = super::sample_memory(args);

    hold(
        &clients,
        stats,
        args.heartbeat_secs,
        Duration::from_secs(args.duration),
    )
    .await;
    let dropped = clients.iter().filter(|c| !c.is_connected()).count() as u64;
    stats.record_errors("dropped", dropped);
    let after = super::sample_memory(args);
    stop.store(true, Ordering::Relaxed);
    let _ = progress.await;
    conn::disconnect_all(&clients).await;

    let mut report = report(args, stats, attempted, clients.len() as u64);
    report.broker_memory = super::broker_memory(
        args,
        before,
        connected,
        after,
        clients.len() as u64 - warmed,
    );
    Ok(report)
}

/// `(user, device)` of connection `i`: the `--idle-users` users in turn,
/// on device `idle{i}`.
fn logins(args: &BenchArgs) -> Vec<(String, String)> {
    let users = args.idle_users as usize;
    (0..args.connections as usize)
        .map(|i| (args.user(i % users), format!("idle{i}")))
        .collect()
}

/// Connects the first `warm_up` logins, lets the broker settle and takes
/// the "before" sample, then connects the rest; returns every attempt's
/// result, in login order, and the sample.
async fn connect_after_warm_up(
    args: &BenchArgs,
    logins: &[(String, String)],
    warm_up: usize,
    stats: &Arc<Stats>,
) -> (Vec<Result<Client, ClientError>>, Option<rss::Memory>) {
    let mut results = conn::connect_all(args, &logins[..warm_up], stats).await;
    tokio::time::sleep(SETTLE).await;
    let before = super::sample_memory(args);
    results.extend(conn::connect_all(args, &logins[warm_up..], stats).await);
    (results, before)
}

/// The error of a run in which no connection succeeded.
fn nobody_connected(args: &BenchArgs) -> anyhow::Error {
    anyhow::anyhow!(
        "no idle connection to {} succeeded (users {}0..{}{} must exist with --password)",
        args.broker,
        args.users_prefix,
        args.users_prefix,
        args.idle_users as usize - 1
    )
}

/// The run's figures: `connections` of the `attempted` connected, the
/// heartbeats sent and the errors (the broker's memory is added by `run`).
fn report(args: &BenchArgs, stats: &Stats, attempted: u64, connections: u64) -> Report {
    let counts = stats.counts();
    Report {
        connections,
        connect_errors: attempted - connections,
        send_secs: args.duration as f64,
        sent: counts.sent,
        errors: counts.errors,
        error_kinds: stats.error_kinds(),
        connect_latency: stats.connect_latency(),
        ..Report::default()
    }
}

/// Keeps the connections for `duration`; each second, the connections whose
/// index is the tick modulo `heartbeat_secs` send a heartbeat, so each
/// connection beats every `heartbeat_secs` and the beats are spread evenly.
async fn hold(clients: &[Client], stats: &Stats, heartbeat_secs: u64, duration: Duration) {
    let end = Instant::now() + duration;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut tick: u64 = 0;
    while Instant::now() < end {
        ticker.tick().await;
        for (i, client) in clients.iter().enumerate() {
            if i as u64 % heartbeat_secs != tick % heartbeat_secs || !client.is_connected() {
                continue;
            }
            match client.heartbeat().await {
                Ok(()) => {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => stats.record_error(&format!("heartbeat:{}", error_kind(&err))),
            }
        }
        tick += 1;
    }
}

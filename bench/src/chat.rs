//! The chat scenarios, `dm` and `group`: senders on an open-loop schedule,
//! every member's inbox drained and timed, over the SDK.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parley_proto::v1::envelope;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::conn::{self, error_kind};
use super::pacing::Pacer;
use super::report::{per_sec, Report};
use super::stalled;
use super::stats::Stats;
use super::{payload, BenchArgs, Scenario};
use parley_client::{direct_channel, group_channel, Client};

/// Lead time between the end of the set-up and the first due send.
const LEAD_US: u64 = 200_000;

/// Who sends where: one stream per pair or group.
struct Stream {
    /// Index of the sending client.
    sender: usize,
    channel: String,
    /// Group to create first: `(group_id, other member indexes)`.
    group: Option<(String, Vec<usize>)>,
}

/// The connections and streams of a `dm` or `group` run.
struct Plan {
    logins: Vec<(String, String)>,
    streams: Vec<Stream>,
    /// Recipients of each message, the sender excluded.
    recipients: u64,
}

impl Plan {
    fn new(args: &BenchArgs) -> Plan {
        let logins: Vec<(String, String)> = (0..args.connection_count())
            .map(|i| (args.user(i), args.device.clone()))
            .collect();
        if args.scenario == Scenario::Group {
            let size = args.group_size as usize;
            let run = super::run_id();
            let streams = (0..args.groups as usize)
                .map(|g| {
                    let group_id = format!("{}-g{g}-{run}", args.users_prefix);
                    Stream {
                        sender: g * size,
                        channel: group_channel(&group_id),
                        group: Some((group_id, (g * size + 1..(g + 1) * size).collect())),
                    }
                })
                .collect();
            return Plan {
                logins,
                streams,
                recipients: size as u64 - 1,
            };
        }
        let streams = (0..args.pairs as usize)
            .map(|p| Stream {
                sender: 2 * p,
                channel: direct_channel(&args.user(2 * p), &args.user(2 * p + 1)),
                group: None,
            })
            .collect();
        Plan {
            logins,
            streams,
            recipients: 1,
        }
    }
}

pub(crate) async fn run(args: &BenchArgs, stats: &Arc<Stats>) -> anyhow::Result<Report> {
    let plan = Plan::new(args);
    let before = super::sample_memory(args);
    let (clients, stalled) = connect_with_stalled(args, &plan, stats).await?;
    let connected = super::sample_memory(args);
    if let Err(err) = create_groups(&clients, &plan).await {
        conn::disconnect_all(&clients).await;
        return Err(err);
    }

    let schedule = Schedule::new(args, stats);
    let stop = Arc::new(AtomicBool::new(false));
    let progress = super::spawn_progress(stats.clone(), stop.clone(), args.quiet);
    let mut receivers = spawn_receivers(&clients, stats, &stop, schedule.hard_deadline());
    let in_flight = send_all(args, &plan, &clients, stats, &schedule).await;
    super::wait_for_deliveries(stats, plan.recipients, schedule.drain_deadline).await;

    stop.store(true, Ordering::Relaxed);
    while receivers.join_next().await.is_some() {}
    let _ = progress.await;
    let after = super::sample_memory(args);
    let stalled_connections = stalled.len() as u64;
    let stalled_closed = stalled.close().await;
    conn::disconnect_all(&clients).await;
    wait_for_unanswered_sends(in_flight).await;

    let mut report = report(stats, plan.recipients, schedule.start_us, args.duration);
    report.connections = clients.len() as u64;
    report.stalled_connections = stalled_connections;
    report.stalled_closed_by_broker = stalled_closed;
    report.broker_memory = super::broker_memory(
        args,
        before,
        connected,
        after,
        clients.len() as u64 + stalled_connections,
    );
    Ok(report)
}

/// The clock of a sending run (`dm`, `group`, `relay`): the first send is
/// due [`LEAD_US`] after the set-up, sending lasts `--duration`, and the
/// drain `--drain-secs` more.
pub(crate) struct Schedule {
    /// When the first send is due, on the [`Stats`] clock.
    pub start_us: u64,
    /// How long the senders send.
    pub duration_us: u64,
    /// When the senders and the wait for deliveries give up.
    pub drain_deadline: Instant,
}

impl Schedule {
    /// The schedule of a run whose set-up ends now.
    pub fn new(args: &BenchArgs, stats: &Stats) -> Schedule {
        let start_us = stats.now_us() + LEAD_US;
        let duration_us = args.duration * 1_000_000;
        let send_end = stats.instant_at(start_us + duration_us);
        Schedule {
            start_us,
            duration_us,
            drain_deadline: send_end + Duration::from_secs(args.drain_secs),
        }
    }

    /// When the receiving loops stop whatever happens: 5 s after the drain.
    pub fn hard_deadline(&self) -> Instant {
        self.drain_deadline + Duration::from_secs(5)
    }

    /// The pacing of stream `index` of `streams` sharing `rate` msg/s.
    pub fn pacer(&self, rate: f64, streams: usize, index: usize) -> Pacer {
        Pacer::new(rate, streams, index, self.start_us, self.duration_us)
    }
}

/// Connects the plan's clients, then the slow consumers (`--stalled`, dm
/// only): up before the `connected` sample, open until after the `after`
/// one. If the slow consumers fail, the clients are disconnected.
async fn connect_with_stalled(
    args: &BenchArgs,
    plan: &Plan,
    stats: &Arc<Stats>,
) -> anyhow::Result<(Vec<Client>, stalled::Stalled)> {
    let clients = conn::connect_all_or_fail(args, &plan.logins, stats).await?;
    match stalled::open_all(args, stats).await {
        Ok(stalled) => Ok((clients, stalled)),
        Err(err) => {
            conn::disconnect_all(&clients).await;
            Err(err.context("opening the --stalled connections"))
        }
    }
}

/// Runs one [`Sender`] per stream until each has sent its share (or gave
/// up at the drain deadline); returns the in-flight permits of each.
async fn send_all(
    args: &BenchArgs,
    plan: &Plan,
    clients: &[Client],
    stats: &Arc<Stats>,
    schedule: &Schedule,
) -> Vec<(Arc<Semaphore>, u32)> {
    let mut senders = JoinSet::new();
    for (i, stream) in plan.streams.iter().enumerate() {
        let pacer = schedule.pacer(args.rate, plan.streams.len(), i);
        let sender = Sender {
            client: clients[stream.sender].clone(),
            channel: stream.channel.clone(),
            tag: format!("s{i}"),
            payload: args.payload as usize,
            max_outstanding: args.max_outstanding as usize,
            deadline: schedule.drain_deadline,
            stats: stats.clone(),
        };
        senders.spawn(sender.run(pacer));
    }
    let mut in_flight = Vec::new();
    while let Some(joined) = senders.join_next().await {
        in_flight.extend(joined.ok());
    }
    in_flight
}

/// Sends still waiting failed with the disconnect: waits (at most 2 s per
/// sender) until every permit is back, so they count before the report.
async fn wait_for_unanswered_sends(in_flight: Vec<(Arc<Semaphore>, u32)>) {
    for (permits, all) in in_flight {
        let _ = tokio::time::timeout(Duration::from_secs(2), permits.acquire_many(all)).await;
    }
}

async fn create_groups(clients: &[Client], plan: &Plan) -> anyhow::Result<()> {
    for stream in &plan.streams {
        let Some((group_id, others)) = &stream.group else {
            continue;
        };
        let owner = &clients[stream.sender];
        let members: Vec<String> = others
            .iter()
            .map(|&i| clients[i].user().to_string())
            .collect();
        owner
            .create_group(group_id, group_id, members)
            .await
            .map_err(|err| anyhow::anyhow!("creating group {group_id}: {err}"))?;
    }
    Ok(())
}

/// One stream's sender: sends each message when due, at most
/// `max_outstanding` unacknowledged, and stops at `deadline` whatever happens.
struct Sender {
    client: Client,
    channel: String,
    tag: String,
    payload: usize,
    max_outstanding: usize,
    deadline: Instant,
    stats: Arc<Stats>,
}

impl Sender {
    /// Returns the in-flight permits: all of them are back once every send has finished.
    async fn run(self, pacer: Pacer) -> (Arc<Semaphore>, u32) {
        let permits = Arc::new(Semaphore::new(self.max_outstanding));
        for k in 0..pacer.count() {
            let Some(due) = pacer.due_us(k) else { break };
            tokio::time::sleep_until(self.stats.instant_at(due).into()).await;
            let permit =
                tokio::time::timeout_at(self.deadline.into(), permits.clone().acquire_owned())
                    .await;
            let Ok(Ok(permit)) = permit else {
                self.stats.record_errors("not-sent", pacer.count() - k);
                break;
            };
            let text = payload::encode(due, &format!("{}:{k}", self.tag), self.payload);
            self.stats.sent.fetch_add(1, Ordering::Relaxed);
            let (client, channel, stats) = (
                self.client.clone(),
                self.channel.clone(),
                self.stats.clone(),
            );
            let deadline = self.deadline;
            tokio::spawn(async move {
                match client.send(&channel, &text).await {
                    Ok(ack) => stats.record_ack(due, ack.duplicate),
                    // Still waiting when the run closed its connections.
                    Err(_) if Instant::now() >= deadline => stats.record_error("unanswered"),
                    Err(err) => stats.record_error(&error_kind(&err)),
                }
                drop(permit);
            });
        }
        // Every outstanding send has finished once all the permits are back.
        let all = u32::try_from(self.max_outstanding).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout_at(self.deadline.into(), permits.acquire_many(all)).await;
        (permits, all)
    }
}

fn spawn_receivers(
    clients: &[Client],
    stats: &Arc<Stats>,
    stop: &Arc<AtomicBool>,
    hard_deadline: Instant,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for client in clients {
        let (client, stats, stop) = (client.clone(), stats.clone(), stop.clone());
        set.spawn(async move { receive(client, stats, stop, hard_deadline).await });
    }
    set
}

/// Drains one client's inbox, timing each bench message.
async fn receive(client: Client, stats: Arc<Stats>, stop: Arc<AtomicBool>, hard_deadline: Instant) {
    let me = client.user().to_string();
    while !stop.load(Ordering::Relaxed) && Instant::now() < hard_deadline {
        match client.next_envelope(Duration::from_millis(200)).await {
            Ok(Some(envelope)) => {
                let Some(envelope::Body::Message(message)) = envelope.body else {
                    continue;
                };
                let Some(due) = payload::decode_due_us(message.text.as_bytes()) else {
                    continue;
                };
                if message.sender == me {
                    stats.record_echo();
                } else {
                    stats.record_delivery(due);
                }
            }
            Ok(None) => {}
            Err(err) => {
                stats.record_error(&format!("receive:{}", error_kind(&err)));
                break;
            }
        }
    }
}

pub(crate) fn report(
    stats: &Stats,
    recipients: u64,
    send_start_us: u64,
    duration_secs: u64,
) -> Report {
    let counts = stats.counts();
    let echoes = stats.echoes.load(Ordering::Relaxed);
    let (last_ack_us, last_delivery_us) = stats.last_ack_and_delivery_us();
    let secs_since_start = |us: u64| us.saturating_sub(send_start_us) as f64 / 1e6;
    let scheduled = duration_secs as f64;
    let expected = counts.accepted * recipients;
    Report {
        send_secs: scheduled,
        sent: counts.sent,
        accepted: counts.accepted,
        duplicates: stats.duplicates.load(Ordering::Relaxed),
        delivered: counts.delivered,
        echoes,
        expected_deliveries: expected,
        lost: expected.saturating_sub(counts.delivered),
        errors: counts.errors,
        error_kinds: stats.error_kinds(),
        accepted_per_sec: per_sec(counts.accepted, scheduled, secs_since_start(last_ack_us)),
        delivered_per_sec: per_sec(
            counts.delivered,
            scheduled,
            secs_since_start(last_delivery_us),
        ),
        inbox_deliveries_per_sec: per_sec(
            counts.delivered + echoes,
            scheduled,
            secs_since_start(last_delivery_us),
        ),
        ack_latency: stats.ack_latency(),
        delivery_latency: stats.delivery_latency(),
        connect_latency: stats.connect_latency(),
        ..Report::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn dm_plan_pairs_even_senders_with_odd_receivers() {
        let args =
            BenchArgs::try_parse_from(["b", "dm", "--pairs", "2", "--users-prefix", "u"]).unwrap();
        let plan = Plan::new(&args);
        assert_eq!(plan.logins.len(), 4);
        assert_eq!(plan.logins[3], ("u3".to_string(), "bench".to_string()));
        assert_eq!(plan.streams[1].sender, 2);
        assert_eq!(plan.streams[1].channel, "dm:u2:u3");
        assert_eq!(plan.recipients, 1);
    }

    #[test]
    fn byte_order_decides_the_direct_channel() {
        let args =
            BenchArgs::try_parse_from(["b", "dm", "--pairs", "6", "--users-prefix", "u"]).unwrap();
        let plan = Plan::new(&args);
        assert_eq!(plan.streams[5].channel, "dm:u10:u11");
        assert_eq!(plan.streams[4].channel, "dm:u8:u9");
    }

    #[test]
    fn group_plan_has_one_owner_and_the_rest_as_members() {
        let args = BenchArgs::try_parse_from(["b", "group", "--groups", "2", "--group-size", "3"])
            .unwrap();
        let plan = Plan::new(&args);
        assert_eq!(plan.logins.len(), 6);
        assert_eq!(plan.recipients, 2);
        let (group_id, others) = plan.streams[1].group.clone().unwrap();
        assert!(group_id.starts_with("bench-g1-"));
        assert!(group_id.len() <= 64);
        assert!(group_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(plan.streams[1].channel, format!("g:{group_id}"));
        assert_eq!(plan.streams[1].sender, 3);
        assert_eq!(others, vec![4, 5]);
    }

    #[test]
    fn report_counts_losses_and_rates() {
        let stats = Stats::new();
        for _ in 0..10 {
            stats.record_ack(0, false);
        }
        for _ in 0..8 {
            stats.record_delivery(0);
        }
        let r = report(&stats, 1, 0, 10);
        assert_eq!(
            (r.accepted, r.delivered, r.expected_deliveries, r.lost),
            (10, 8, 10, 2)
        );
        assert!((r.accepted_per_sec - 1.0).abs() < 1e-9);
    }
}

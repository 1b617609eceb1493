//! The `relay` scenario: plain MQTT, no chat layer. Pair i's publisher sends
//! QoS 1 publishes on `bench/{i}` that its subscriber receives; the same
//! pairs, rate and payloads as `dm`, so Mosquitto and bare rumqttd can be
//! compared with Parley. Send->ack is publish->PUBACK.
//!
//! With `--subscribers N`, each of the `--pairs` topics has N subscribers:
//! one publish reaches N connections, the plain-MQTT reference for `group`
//! fan-out (a broker's fan-out ceiling is where deliveries/s stop growing).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, NetworkOptions, Outgoing, QoS, SubscribeReasonCode,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::chat::Schedule;
use super::pacing::Pacer;
use super::report::Report;
use super::stats::Stats;
use super::{conn, payload, BenchArgs};
use parley_client::ClientError;

/// How long a connection may take to be ready (CONNACK, and SUBACK for subscribers).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The topic of pair `i`.
pub(crate) fn topic(pair: usize) -> String {
    format!("bench/{pair}")
}

/// A connected rumqttc client whose event loop has not been spawned yet.
struct RawConn {
    client: AsyncClient,
    eventloop: EventLoop,
}

/// Users of topic `pair`: the publisher, then its `fanout` subscribers
/// (with one subscriber: `2i` and `2i + 1`, the `dm` pairs).
fn publisher_index(pair: usize, fanout: usize) -> usize {
    pair * (fanout + 1)
}

pub(crate) async fn run(args: &BenchArgs, stats: &Arc<Stats>) -> anyhow::Result<Report> {
    let pairs = args.pairs as usize;
    let fanout = args.subscribers as usize;
    let before = super::sample_memory(args);
    let (subscribers, publishers) = connect_topics(args, stats, pairs, fanout).await?;
    let connected = super::sample_memory(args);

    let schedule = Schedule::new(args, stats);
    let stop = Arc::new(AtomicBool::new(false));
    let progress = super::spawn_progress(stats.clone(), stop.clone(), args.quiet);
    let mut loops = JoinSet::new();
    let mut handles = spawn_subscribers(subscribers, &mut loops, stats, &schedule);
    let mut senders =
        spawn_publishers(publishers, &mut loops, &mut handles, args, stats, &schedule);
    while senders.join_next().await.is_some() {}
    wait_for_acks(stats, schedule.drain_deadline).await;
    super::wait_for_deliveries(stats, fanout as u64, schedule.drain_deadline).await;

    stop.store(true, Ordering::Relaxed);
    let after = super::sample_memory(args);
    for handle in &handles {
        let _ = handle.try_disconnect();
    }
    while loops.join_next().await.is_some() {}
    let _ = progress.await;

    let mut report = super::chat::report(stats, fanout as u64, schedule.start_us, args.duration);
    report.connections = (pairs * (fanout + 1)) as u64;
    report.broker_memory = super::broker_memory(args, before, connected, after, report.connections);
    Ok(report)
}

/// Connects the `fanout` subscribers of each of the `pairs` topics, then
/// the topics' publishers; returns `(subscribers, publishers)`.
async fn connect_topics(
    args: &BenchArgs,
    stats: &Arc<Stats>,
    pairs: usize,
    fanout: usize,
) -> anyhow::Result<(Vec<RawConn>, Vec<RawConn>)> {
    let subscriptions = (0..pairs)
        .flat_map(|p| (1..=fanout).map(move |k| (publisher_index(p, fanout) + k, Some(topic(p)))));
    let subscribers = connect_many(args, stats, subscriptions).await?;
    let publishers = connect_many(
        args,
        stats,
        (0..pairs).map(|p| (publisher_index(p, fanout), None)),
    )
    .await?;
    Ok((subscribers, publishers))
}

/// Spawns each subscriber's event loop on `loops`, until the hard
/// deadline; returns the subscribers' clients.
fn spawn_subscribers(
    subscribers: Vec<RawConn>,
    loops: &mut JoinSet<()>,
    stats: &Arc<Stats>,
    schedule: &Schedule,
) -> Vec<AsyncClient> {
    let mut handles = Vec::new();
    for sub in subscribers {
        handles.push(sub.client.clone());
        loops.spawn(bounded(
            schedule.hard_deadline(),
            subscriber_loop(sub.eventloop, stats.clone()),
        ));
    }
    handles
}

/// Spawns each publisher's event loop on `loops` (until the hard deadline)
/// and its [`Sender`] on the set returned; adds its client to `handles`.
fn spawn_publishers(
    publishers: Vec<RawConn>,
    loops: &mut JoinSet<()>,
    handles: &mut Vec<AsyncClient>,
    args: &BenchArgs,
    stats: &Arc<Stats>,
    schedule: &Schedule,
) -> JoinSet<()> {
    let pairs = args.pairs as usize;
    let mut senders = JoinSet::new();
    for (p, publisher) in publishers.into_iter().enumerate() {
        handles.push(publisher.client.clone());
        let queue = Arc::new(Mutex::new(VecDeque::new()));
        loops.spawn(bounded(
            schedule.hard_deadline(),
            publisher_loop(publisher.eventloop, queue.clone(), stats.clone()),
        ));
        let sender = Sender {
            client: publisher.client,
            topic: topic(p),
            queue,
            payload: args.payload as usize,
            deadline: schedule.drain_deadline,
            stats: stats.clone(),
        };
        senders.spawn(sender.run(schedule.pacer(args.rate, pairs, p)));
    }
    senders
}

/// Runs `task` until it ends or until `deadline`.
async fn bounded(deadline: Instant, task: impl std::future::Future<Output = ()>) {
    let _ = tokio::time::timeout_at(deadline.into(), task).await;
}

/// Connects `(user index, subscription)` pairs, `--connect-concurrency` at a
/// time; fails with the first error.
async fn connect_many(
    args: &BenchArgs,
    stats: &Arc<Stats>,
    logins: impl Iterator<Item = (usize, Option<String>)>,
) -> anyhow::Result<Vec<RawConn>> {
    let permits = Arc::new(Semaphore::new(args.connect_concurrency as usize));
    let mut tasks = JoinSet::new();
    for (n, (user_index, subscription)) in logins.enumerate() {
        let user = args.user(user_index);
        let opts = conn::options(args, &user, &args.device)?;
        let (permits, stats) = (permits.clone(), stats.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let started = Instant::now();
            let result =
                tokio::time::timeout(CONNECT_TIMEOUT, connect_raw(opts, subscription)).await;
            let result = result.unwrap_or(Err(ClientError::Timeout {
                what: "CONNACK or SUBACK",
                after: CONNECT_TIMEOUT,
            }));
            if result.is_ok() {
                stats.record_connect(started.elapsed());
            }
            (n, user, result)
        });
    }
    let mut conns: Vec<(usize, RawConn)> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (n, user, result) = joined?;
        match result {
            Ok(conn) => conns.push((n, conn)),
            Err(err) => anyhow::bail!(
                "{user}:{} could not connect to {}: {err}",
                args.device,
                args.broker
            ),
        }
    }
    conns.sort_by_key(|(n, _)| *n);
    Ok(conns.into_iter().map(|(_, c)| c).collect())
}

/// Connects one plain MQTT client and, for a subscriber, subscribes at QoS 1.
async fn connect_raw(
    opts: parley_client::ClientOptions,
    subscription: Option<String>,
) -> Result<RawConn, ClientError> {
    let capacity = usize::from(opts.inflight).clamp(16, 10_000);
    let (client, mut eventloop) = AsyncClient::new(opts.to_mqtt_options()?, capacity);
    let mut network = NetworkOptions::new();
    network.set_connection_timeout(CONNECT_TIMEOUT.as_secs());
    network.set_tcp_nodelay(opts.tcp_nodelay);
    eventloop.set_network_options(network);
    loop {
        if let Event::Incoming(Incoming::ConnAck(_)) = eventloop.poll().await? {
            break;
        }
    }
    let Some(topic) = subscription else {
        return Ok(RawConn { client, eventloop });
    };
    client.subscribe(topic.clone(), QoS::AtLeastOnce).await?;
    loop {
        if let Event::Incoming(Incoming::SubAck(ack)) = eventloop.poll().await? {
            return match ack.return_codes.first() {
                Some(SubscribeReasonCode::Success(_)) => Ok(RawConn { client, eventloop }),
                _ => Err(ClientError::SubscribeRefused(topic)),
            };
        }
    }
}

/// Times every publish the subscriber receives, until its DISCONNECT.
async fn subscriber_loop(mut eventloop: EventLoop, stats: Arc<Stats>) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                if let Some(due) = payload::decode_due_us(&publish.payload) {
                    stats.record_delivery(due);
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(err) => {
                stats.record_error(&format!("subscriber:{}", short(&err)));
                return;
            }
        }
    }
}

/// Matches each PUBACK to the due time of its publish, until its DISCONNECT.
///
/// Publishes leave in the order the sender queued them, so the n-th
/// `Outgoing::Publish(pkid)` takes the n-th due time from `queue`.
async fn publisher_loop(
    mut eventloop: EventLoop,
    queue: Arc<Mutex<VecDeque<u64>>>,
    stats: Arc<Stats>,
) {
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let due = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                if let Some(due) = due {
                    in_flight.insert(pkid, due);
                }
            }
            Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                if let Some(due) = in_flight.remove(&ack.pkid) {
                    stats.record_ack(due, false);
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(err) => {
                stats.record_error(&format!("publisher:{}", short(&err)));
                return;
            }
        }
    }
}

fn short(err: &rumqttc::ConnectionError) -> &'static str {
    match err {
        rumqttc::ConnectionError::Io(_) => "io",
        rumqttc::ConnectionError::NetworkTimeout | rumqttc::ConnectionError::FlushTimeout => {
            "timeout"
        }
        rumqttc::ConnectionError::MqttState(_) => "state",
        rumqttc::ConnectionError::ConnectionRefused(_) => "refused",
        _ => "other",
    }
}

/// One pair's publisher: publishes each message when due, until `deadline`.
struct Sender {
    client: AsyncClient,
    topic: String,
    queue: Arc<Mutex<VecDeque<u64>>>,
    payload: usize,
    deadline: Instant,
    stats: Arc<Stats>,
}

impl Sender {
    async fn run(self, pacer: Pacer) {
        for k in 0..pacer.count() {
            let Some(due) = pacer.due_us(k) else { break };
            tokio::time::sleep_until(self.stats.instant_at(due).into()).await;
            let text = payload::encode(due, &format!("r:{k}"), self.payload);
            self.queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back(due);
            let publish =
                self.client
                    .publish(&self.topic, QoS::AtLeastOnce, false, text.into_bytes());
            match tokio::time::timeout_at(self.deadline.into(), publish).await {
                Ok(Ok(())) => {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    self.queue
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .pop_back();
                    self.stats.record_errors("not-sent", pacer.count() - k);
                    break;
                }
            }
        }
    }
}

/// Waits until every sent publish is acknowledged, or the deadline.
async fn wait_for_acks(stats: &Stats, deadline: Instant) {
    while Instant::now() < deadline {
        let counts = stats.counts();
        if counts.accepted >= counts.sent {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_per_pair() {
        assert_eq!(topic(0), "bench/0");
        assert_eq!(topic(41), "bench/41");
    }

    #[test]
    fn one_subscriber_makes_the_dm_pairs_and_more_share_no_user() {
        assert_eq!((publisher_index(0, 1), publisher_index(3, 1)), (0, 6));
        // Topic 1 of a fan-out of 100: publisher 101, subscribers 102..=201.
        assert_eq!(publisher_index(1, 100), 101);
        assert_eq!(publisher_index(2, 100), 202);
    }
}

//! The NATS JetStream harness itself ([`parley_tests::nats::NatsCluster`]):
//! three real `nats-server`s form a JetStream cluster on loopback; an R3
//! file stream refuses a publish with a wrong `Nats-Expected-Last-Sequence`,
//! keeps accepting publishes (after re-electing a leader) while its leader
//! server is killed, serves all of them in order, and the restarted server
//! rejoins and sees the whole stream.

use std::time::Duration;

use async_nats::jetstream::context::{Publish, PublishErrorKind};
use async_nats::jetstream::{self, stream};
use parley_tests::nats::{NatsCluster, REQUEST_TIMEOUT};
use tokio::time::Instant;

const STREAM: &str = "HARNESS";

/// How long the stream may take to accept publishes again after its leader
/// was killed (re-election takes a few seconds).
const FAILOVER_LIMIT: Duration = Duration::from_secs(20);

/// How long the restarted server may take to catch up with the stream.
const REJOIN_LIMIT: Duration = Duration::from_secs(15);

fn subject(n: u64) -> String {
    format!("harness.msg.{n}")
}

fn payload(n: u64) -> String {
    format!("message {n}")
}

/// Publishes message `n` expecting the stream's last sequence to be `n - 1`.
async fn publish(js: &jetstream::Context, n: u64) -> Result<u64, PublishErrorKind> {
    let publish = Publish::build()
        .payload(payload(n).into())
        .expected_last_sequence(n - 1);
    let ack = js
        .send_publish(subject(n), publish)
        .await
        .map_err(|e| e.kind())?;
    ack.await.map(|ack| ack.sequence).map_err(|e| e.kind())
}

/// Whether a publish error may go away by itself: no answer in time, a
/// connection in failover, or no stream leader to answer yet.
fn transient(kind: PublishErrorKind) -> bool {
    matches!(
        kind,
        PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::StreamNotFound
            | PublishErrorKind::Other
    )
}

/// Publishes message `n` as sequence `n`, retrying transient errors until
/// `deadline`. The expected-sequence header makes retries safe: when an
/// attempt that timed out was stored after all, the retry is refused as
/// `WrongLastSequence`, and sequence `n` must then hold this message.
/// Returns the number of attempts.
async fn publish_until(
    js: &jetstream::Context,
    stream: &stream::Stream,
    n: u64,
    deadline: Instant,
    cluster: &NatsCluster,
) -> usize {
    let mut attempts = 0;
    let mut uncertain = false;
    loop {
        attempts += 1;
        match publish(js, n).await {
            Ok(seq) => {
                assert_eq!(seq, n, "message {n} acked at another sequence");
                if attempts > 1 {
                    tracing::info!(n, attempts, "publish acked after retries");
                }
                return attempts;
            }
            Err(PublishErrorKind::WrongLastSequence) if uncertain => {
                let stored = get_until(stream, n, deadline, cluster).await;
                assert_eq!(
                    stored.payload,
                    payload(n).as_bytes(),
                    "sequence {n} holds another message than the retried one"
                );
                return attempts;
            }
            Err(kind) if transient(kind) && Instant::now() < deadline => {
                uncertain = true;
                tracing::debug!(n, attempts, error = %kind, "publish not acked, retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(kind) => panic!(
                "publish of message {n} failed after {attempts} attempts: {kind}\n{}",
                cluster.logs()
            ),
        }
    }
}

/// Sequence `seq` of the stream (read from the stream leader), retrying
/// failed requests until `deadline`.
async fn get_until(
    stream: &stream::Stream,
    seq: u64,
    deadline: Instant,
    cluster: &NatsCluster,
) -> jetstream::message::StreamMessage {
    loop {
        match stream.get_raw_message(seq).await {
            Ok(message) => return message,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(seq, error = %e, "get not answered, retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("get of sequence {seq} failed: {e}\n{}", cluster.logs()),
        }
    }
}

/// The stream's info, retrying failed requests until `deadline`.
async fn info_until(
    stream: &mut stream::Stream,
    deadline: Instant,
    cluster: &NatsCluster,
) -> stream::Info {
    loop {
        match stream.info().await {
            Ok(info) => return info.clone(),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "stream info not answered, retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("stream info failed: {e}\n{}", cluster.logs()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_cluster_keeps_an_r3_stream_through_a_killed_and_restarted_server() {
    let began = Instant::now();
    let mut cluster = NatsCluster::start(3).await;
    let started = began.elapsed();
    assert_eq!(cluster.urls().len(), 3);
    assert_eq!(cluster.url_list(), cluster.urls().join(","));

    let mut js = jetstream::new(cluster.client().await);
    js.set_timeout(REQUEST_TIMEOUT);
    let mut stream = js
        .create_stream(stream::Config {
            name: STREAM.to_owned(),
            subjects: vec!["harness.>".to_owned()],
            num_replicas: 3,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create the R3 stream: {e}\n{}", cluster.logs()));

    // A healthy cluster acks every publish at once, in sequence.
    for n in 1..=10 {
        assert_eq!(publish(&js, n).await, Ok(n), "publish of message {n}");
    }
    // A stale expectation is refused and stores nothing.
    let stale = Publish::build()
        .payload("stale".into())
        .expected_last_sequence(5);
    let refused = js
        .send_publish("harness.stale", stale)
        .await
        .expect("send the stale publish")
        .await
        .expect_err("a publish expecting last sequence 5 of 10 was stored");
    assert_eq!(refused.kind(), PublishErrorKind::WrongLastSequence);
    let deadline = Instant::now() + REQUEST_TIMEOUT * 5;
    let info = info_until(&mut stream, deadline, &cluster).await;
    assert_eq!(
        (info.state.messages, info.state.last_sequence),
        (10, 10),
        "stream state after the refused publish"
    );

    // Kill the stream's leader: the two others must elect a new one.
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the R3 stream reports its leader");
    let victim = cluster
        .index_of(&leader)
        .unwrap_or_else(|| panic!("leader {leader} is none of the harness's servers"));
    cluster.kill(victim).await;
    assert!(!cluster.is_running(victim));
    let killed_at = Instant::now();
    let deadline = killed_at + FAILOVER_LIMIT;
    let mut attempts = 0;
    for n in 11..=20 {
        attempts += publish_until(&js, &stream, n, deadline, &cluster).await;
    }
    let failover = killed_at.elapsed();

    let info = info_until(&mut stream, deadline, &cluster).await;
    assert_eq!(
        (
            info.state.messages,
            info.state.first_sequence,
            info.state.last_sequence
        ),
        (20, 1, 20),
        "stream state with {leader} down"
    );
    let new_leader = info.cluster.as_ref().and_then(|c| c.leader.clone());
    assert_ne!(new_leader.as_deref(), Some(leader.as_str()));
    // All 20 in order, read from the new leader (STREAM.MSG.GET).
    for seq in 1..=20 {
        let message = get_until(&stream, seq, deadline, &cluster).await;
        assert_eq!(message.sequence, seq);
        assert_eq!(message.subject.as_str(), subject(seq));
        assert_eq!(message.payload, payload(seq).as_bytes(), "sequence {seq}");
    }

    // The restarted server rejoins: through it alone, the stream has all 20
    // messages and the server is a current replica (or the leader again).
    cluster.restart(victim).await;
    let restarted_at = Instant::now();
    let js_victim = jetstream::new(cluster.client_of(victim).await);
    let deadline = restarted_at + REJOIN_LIMIT;
    loop {
        let last = match js_victim.get_stream(STREAM).await {
            Ok(through_victim) => {
                let info = through_victim.cached_info();
                let members = info.cluster.clone().unwrap_or_default();
                let current = members.leader.as_deref() == Some(leader.as_str())
                    || members
                        .replicas
                        .iter()
                        .any(|r| r.name == leader && r.current && !r.offline);
                if info.state.messages == 20 && current {
                    break;
                }
                format!("{} messages, cluster {members:?}", info.state.messages)
            }
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "{leader} did not rejoin within {REJOIN_LIMIT:?}: {last}\n{}",
            cluster.log_tail(victim, 40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(
        ?started,
        ?failover,
        attempts,
        rejoin = ?restarted_at.elapsed(),
        total = ?began.elapsed(),
        "NATS harness timings"
    );
}

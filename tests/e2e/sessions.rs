//! Sessions: durable ones (3.1.1 clean session off, 5 session expiry > 0)
//! replay what was missed, in order, without resubscribing, also after a
//! restart; the in-flight window respects the receive maximum; clean
//! sessions get live traffic only.

use std::time::Duration;

use parley_proto::topics;
use parley_proto::v1::Envelope;
use parley_tests::{direct_channel, message_of, RawV4, RawV5, TestBroker, WAIT};
use prost::Message;
use tokio::time::Instant;

const USERS: &[(&str, &str)] = &[("alice", "pw-alice"), ("bob", "pw-bob")];

/// How long a "nothing more arrives" check listens (after the window is
/// known to be full, so the broker had every chance to overfill it).
const QUIET: Duration = Duration::from_millis(300);

/// Collects inbox envelopes until `n` distinct inbox_seqs arrived; checks
/// that new ones only ever go up (repeats of seen ones are allowed).
macro_rules! collect_raw {
    ($raw:expr, $n:expr) => {{
        let deadline = Instant::now() + WAIT;
        let mut seqs: Vec<u64> = Vec::new();
        let mut texts: Vec<String> = Vec::new();
        while seqs.len() < $n {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(envelope) = $raw.next_envelope(left).await else {
                panic!(
                    "expected {} envelopes, got {seqs:?} (closed: {})",
                    $n,
                    $raw.is_closed()
                );
            };
            if seqs.contains(&envelope.inbox_seq) {
                continue; // at-least-once: a repeat is allowed
            }
            if let Some(last) = seqs.last() {
                assert!(
                    envelope.inbox_seq > *last,
                    "out of order: {} after {seqs:?}",
                    envelope.inbox_seq
                );
            }
            seqs.push(envelope.inbox_seq);
            texts.push(message_of(&envelope).text.clone());
        }
        (seqs, texts)
    }};
}

async fn send_texts(broker: &TestBroker, texts: &[&str]) {
    let alice = broker.client("alice", "phone").await;
    let dm = direct_channel("alice", "bob");
    for text in texts {
        alice.send(&dm, text).await.expect("alice sends");
    }
    alice.disconnect().await.expect("disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_v4_session_gets_missed_messages_in_order_without_resubscribing() {
    let broker = TestBroker::start(USERS).await;
    let mut bob = broker.raw_v4("bob", "phone", false).await;
    assert!(!bob.session_present, "a new durable session is not present");
    bob.subscribe_own().await;
    send_texts(&broker, &["m1"]).await;
    let (seqs, _) = collect_raw!(bob, 1);
    assert_eq!(seqs, vec![1]);
    bob.disconnect().await;

    send_texts(&broker, &["m2", "m3", "m4"]).await;

    let mut bob = broker.raw_v4("bob", "phone", false).await;
    assert!(
        bob.session_present,
        "CONNACK session present = 1 for a durable session"
    );
    // No SUBSCRIBE: the session's subscriptions were kept.
    let (seqs, texts) = collect_raw!(bob, 3);
    assert_eq!(seqs, vec![2, 3, 4]);
    assert_eq!(texts, vec!["m2", "m3", "m4"]);

    // Live traffic follows the replay on the same session.
    send_texts(&broker, &["m5"]).await;
    let (seqs, _) = collect_raw!(bob, 1);
    assert_eq!(seqs, vec![5]);
    bob.disconnect().await;

    // Reconnecting with a clean session ends the durable one.
    let clean = broker.raw_v4("bob", "phone", true).await;
    assert!(!clean.session_present);
    clean.disconnect().await;
    let bob = broker.raw_v4("bob", "phone", false).await;
    assert!(
        !bob.session_present,
        "the clean connect discarded the durable session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_session_is_replayed_after_a_broker_restart() {
    let mut broker = TestBroker::start(USERS).await;
    let mut bob = broker.raw_v4("bob", "phone", false).await;
    bob.subscribe_own().await;
    bob.disconnect().await;

    send_texts(&broker, &["before restart 1", "before restart 2"]).await;
    broker.restart().await;
    send_texts(&broker, &["after restart"]).await;

    let mut bob = broker.raw_v4("bob", "phone", false).await;
    assert!(
        bob.session_present,
        "the durable session survived the restart"
    );
    let (seqs, texts) = collect_raw!(bob, 3);
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(
        texts,
        vec!["before restart 1", "before restart 2", "after restart"]
    );

    // The acknowledged cursor survives too: after another restart only new
    // envelopes come (at-least-once allows repeats, so drop seen ones).
    bob.disconnect().await;
    broker.restart().await;
    send_texts(&broker, &["after second restart"]).await;
    let mut bob = broker.raw_v4("bob", "phone", false).await;
    assert!(bob.session_present);
    let (seqs, texts) = loop {
        let envelope = bob
            .next_envelope(WAIT)
            .await
            .expect("an envelope after the second restart");
        if envelope.inbox_seq <= 3 {
            continue;
        }
        break (envelope.inbox_seq, message_of(&envelope).text.clone());
    };
    assert_eq!((seqs, texts.as_str()), (4, "after second restart"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_session_with_expiry_is_durable_like_clean_session_off() {
    let mut broker = TestBroker::start(USERS).await;
    let mut bob = broker.raw_v5("bob", "phone", Some(3600)).await;
    assert!(!bob.session_present);
    bob.subscribe_own().await;
    bob.disconnect().await;

    send_texts(&broker, &["v5 one", "v5 two", "v5 three"]).await;

    let mut bob = broker.raw_v5("bob", "phone", Some(3600)).await;
    assert!(
        bob.session_present,
        "MQTT 5 session expiry > 0 keeps the session"
    );
    let (seqs, texts) = collect_raw!(bob, 3);
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(texts, vec!["v5 one", "v5 two", "v5 three"]);
    bob.disconnect().await;

    broker.restart().await;
    send_texts(&broker, &["v5 after restart"]).await;
    let mut bob = broker.raw_v5("bob", "phone", Some(3600)).await;
    assert!(bob.session_present, "and it survives a restart");
    let envelope = loop {
        let envelope = bob
            .next_envelope(WAIT)
            .await
            .expect("the envelope sent during the restart");
        if envelope.inbox_seq > 3 {
            break envelope;
        }
    };
    assert_eq!(
        (envelope.inbox_seq, message_of(&envelope).text.as_str()),
        (4, "v5 after restart")
    );
    bob.disconnect().await;

    // Session expiry 0 (and clean start) is a clean session: nothing kept.
    let bob = broker.raw_v5("bob", "phone", None).await;
    assert!(!bob.session_present);
}

/// Receives all `total` envelopes without acking until the window is full;
/// returns the largest number of unacked inbox publishes seen at once.
macro_rules! drain_with_window {
    ($raw:expr, $total:expr, $window:expr) => {{
        let mut outstanding = Vec::new();
        let mut received: Vec<u64> = Vec::new();
        let mut max_outstanding = 0;
        while received.len() < $total {
            let publish = $raw.next_inbox_publish(WAIT).await.unwrap_or_else(|| {
                panic!(
                    "stalled after {received:?} with {} unacked",
                    outstanding.len()
                )
            });
            let envelope = Envelope::decode(publish.payload.as_ref()).expect("an envelope");
            if let Some(last) = received.last() {
                assert_eq!(envelope.inbox_seq, last + 1, "in order, no gap");
            }
            received.push(envelope.inbox_seq);
            outstanding.push(publish);
            max_outstanding = max_outstanding.max(outstanding.len());
            assert!(
                outstanding.len() <= $window,
                "{} unacked inbox publishes, window {}",
                outstanding.len(),
                $window
            );
            if outstanding.len() == $window && received.len() < $total {
                // The window is full: nothing more may come until we ack.
                if let Some(extra) = $raw.next_inbox_publish(QUIET).await {
                    let envelope = Envelope::decode(extra.payload.as_ref()).expect("an envelope");
                    panic!(
                        "inbox_seq {} sent while {} publishes were unacked (window {})",
                        envelope.inbox_seq, $window, $window
                    );
                }
                for publish in outstanding.drain(..) {
                    $raw.ack(&publish).await;
                }
            }
        }
        for publish in outstanding.drain(..) {
            $raw.ack(&publish).await;
        }
        (received, max_outstanding)
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_receive_maximum_bounds_the_unacked_inbox_publishes() {
    const RECEIVE_MAX: usize = 3;
    let broker = TestBroker::start(USERS).await;
    let options = || {
        let mut opts = broker.v5_options("bob", "phone", Some(3600));
        opts.set_receive_maximum(Some(RECEIVE_MAX as u16))
            .set_manual_acks(true);
        opts
    };
    let mut bob = RawV5::connect(options(), "bob", "phone")
        .await
        .expect("connect");
    bob.subscribe_own().await;
    bob.disconnect().await;

    let texts: Vec<String> = (1..=10).map(|i| format!("burst {i}")).collect();
    send_texts(
        &broker,
        &texts.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;

    let mut bob = RawV5::connect(options(), "bob", "phone")
        .await
        .expect("reconnect");
    assert!(bob.session_present);
    let (received, max_outstanding) = drain_with_window!(bob, 10, RECEIVE_MAX);
    assert_eq!(received, (1..=10).collect::<Vec<u64>>());
    assert_eq!(max_outstanding, RECEIVE_MAX, "the broker fills the window");
}

/// A connected device that stops acking: what the broker cannot queue for it
/// (more than the live queue holds) is read back from the store later,
/// in order, once it acks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_device_that_falls_behind_gets_everything_from_the_store_in_order() {
    const RECEIVE_MAX: usize = 32;
    const MESSAGES: usize = 600; // beyond the live queues (256)
    let broker = TestBroker::start(USERS).await;
    let mut opts = broker.v5_options("bob", "phone", Some(3600));
    opts.set_receive_maximum(Some(RECEIVE_MAX as u16))
        .set_manual_acks(true);
    let mut bob = RawV5::connect(opts, "bob", "phone").await.expect("connect");
    bob.subscribe_own().await;

    let texts: Vec<String> = (1..=MESSAGES).map(|i| format!("flood {i}")).collect();
    send_texts(
        &broker,
        &texts.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;

    let (received, _) = drain_with_window!(bob, MESSAGES, RECEIVE_MAX);
    assert_eq!(received, (1..=MESSAGES as u64).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_inflight_window_bounds_v4_deliveries() {
    const WINDOW: usize = 4;
    let broker = TestBroker::builder()
        .users(USERS)
        .config(|config| config.inflight_window = WINDOW as u16)
        .start()
        .await;
    let options = || {
        let mut opts = broker.v4_options("bob", "phone", false);
        opts.set_manual_acks(true);
        opts
    };
    let mut bob = RawV4::connect(options(), "bob", "phone")
        .await
        .expect("connect");
    bob.subscribe_own().await;
    bob.disconnect().await;

    let texts: Vec<String> = (1..=9).map(|i| format!("v4 burst {i}")).collect();
    send_texts(
        &broker,
        &texts.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;

    let mut bob = RawV4::connect(options(), "bob", "phone")
        .await
        .expect("reconnect");
    assert!(bob.session_present);
    let (received, max_outstanding) = drain_with_window!(bob, 9, WINDOW);
    assert_eq!(received, (1..=9).collect::<Vec<u64>>());
    assert_eq!(max_outstanding, WINDOW);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_session_gets_live_traffic_only_and_catches_up_with_sync() {
    let broker = TestBroker::start(USERS).await;
    let mut bob = broker.raw_v4("bob", "phone", true).await;
    bob.subscribe_own().await;
    send_texts(&broker, &["live 1"]).await;
    let envelope = bob.next_envelope(WAIT).await.expect("live delivery");
    assert_eq!(envelope.inbox_seq, 1);
    bob.disconnect().await;

    send_texts(&broker, &["missed 2", "missed 3"]).await;

    let mut bob = broker.raw_v4("bob", "phone", true).await;
    assert!(!bob.session_present, "a clean session is never present");
    bob.subscribe_own().await;
    send_texts(&broker, &["live 4"]).await;
    let envelope = bob
        .next_envelope(WAIT)
        .await
        .expect("live delivery after reconnect");
    assert_eq!(
        (envelope.inbox_seq, message_of(&envelope).text.as_str()),
        (4, "live 4"),
        "missed envelopes are not replayed to a clean session"
    );

    // What was missed comes with Sync from the remembered inbox_seq.
    let reply = bob
        .request(parley_proto::v1::request::Body::Sync(
            parley_proto::v1::Sync {
                after_inbox_seq: 1,
                limit: 0,
            },
        ))
        .await;
    let Some(parley_proto::v1::reply::Body::SyncPage(page)) = reply.body else {
        panic!("expected a SyncPage, got {reply:?}");
    };
    assert_eq!(
        page.events.iter().map(|e| e.inbox_seq).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(message_of(&page.events[0]).text, "missed 2");
    assert!(!page.more);

    // A clean connection that never subscribed gets nothing at all.
    let mut silent = broker.raw_v4("bob", "tablet", true).await;
    send_texts(&broker, &["live 5"]).await;
    let envelope = bob
        .next_envelope(WAIT)
        .await
        .expect("the subscribed device gets live 5");
    assert_eq!(envelope.inbox_seq, 5);
    assert!(
        silent
            .next_publish_on(&topics::inbox("bob"), QUIET)
            .await
            .is_none(),
        "no subscription, no delivery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_with_clean_session_off_resumes_its_session() {
    let broker = TestBroker::start(USERS).await;
    let bob = broker.durable_client("bob", "laptop").await;
    assert!(!bob.session_present());
    bob.disconnect().await.expect("disconnect");

    send_texts(&broker, &["for the laptop 1", "for the laptop 2"]).await;

    let bob = broker.durable_client("bob", "laptop").await;
    assert!(
        bob.session_present(),
        "the SDK sees CONNACK session present"
    );
    let got = parley_tests::collect_messages(&bob, 2, WAIT).await;
    assert_eq!(
        got.iter()
            .map(|(i, m)| (*i, m.text.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "for the laptop 1"), (2, "for the laptop 2")]
    );
}

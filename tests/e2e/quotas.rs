//! The per-device and per-account limits, against a real broker: the
//! request rate (RATE_LIMITED, nothing changed), subscriptions per
//! connection (SUBACK failure), devices per user (CONNACK refusal), and the
//! defaults that must let heavy ordinary use through.

use std::sync::Arc;

use parley_proto::v1::{reply, ErrorCode};
use parley_tests::{direct_channel, raw, wire, RawV4, RawV5, TestBroker, WAIT};
use tokio::task::JoinSet;

const USERS: &[(&str, &str)] = &[("alice", "alice-password"), ("bob", "bob-password")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_device_rate_are_refused_and_change_nothing() {
    let broker = TestBroker::builder()
        .users(USERS)
        .config(|c| {
            c.request_rate = 1;
            c.request_burst = 5;
        })
        .start()
        .await;
    let alice = Arc::new(
        broker
            .connect(broker.options("alice", "phone").inflight(20))
            .await,
    );
    let bob = broker.client("bob", "phone").await;
    let dm = direct_channel("alice", "bob");
    let mut sends = JoinSet::new();
    for n in 0..10 {
        let (alice, dm) = (alice.clone(), dm.clone());
        sends.spawn(async move { alice.request(wire::send(&dm, &format!("c{n}"), "hi")).await });
    }
    let (mut acked, mut limited) = (Vec::new(), 0);
    while let Some(reply) = sends.join_next().await {
        let reply = reply.unwrap().expect("every request gets a reply");
        match &reply.body {
            Some(reply::Body::Ack(ack)) => acked.push(ack.seq),
            _ => {
                let message = wire::expect_error(&reply, ErrorCode::RateLimited);
                assert!(message.contains("slow down"), "{message}");
                limited += 1;
            }
        }
    }
    acked.sort_unstable();
    // The burst of 5, less the SDK's SUBSCRIBE (which counts too), plus
    // at most one token refilled meanwhile; gapless seqs.
    let passed = acked.len() as u64;
    assert!((4..=5).contains(&passed), "{acked:?}");
    assert_eq!(
        acked,
        (1..=passed).collect::<Vec<u64>>(),
        "refusals take no seq"
    );
    assert_eq!(limited as u64, 10 - passed);
    // Another device of the same user has its own allowance.
    let laptop = broker.client("alice", "laptop").await;
    assert_eq!(
        laptop.send(&dm, "from the laptop").await.unwrap().seq,
        passed + 1
    );
    assert_eq!(
        bob.send(&dm, "bob is not limited").await.unwrap().seq,
        passed + 2
    );
    let retried =
        parley_tests::eventually_async(WAIT, || async { alice.send(&dm, "later").await.is_ok() })
            .await;
    assert!(retried, "the bucket refills");
    let metrics = broker.http("GET", "/metrics", None, None).await.text;
    assert!(
        metrics.contains("parley_refusals_total{reason=\"request_rate\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_defaults_let_one_device_pipeline_a_thousand_requests() {
    let broker = TestBroker::start(USERS).await;
    let alice = Arc::new(
        broker
            .connect(broker.options("alice", "phone").inflight(1000))
            .await,
    );
    let dm = direct_channel("alice", "bob");
    let mut sends = JoinSet::new();
    for n in 0..1000 {
        let (alice, dm) = (alice.clone(), dm.clone());
        sends.spawn(async move { alice.send_with_id(&dm, &format!("c{n}"), "pipelined").await });
    }
    let mut seqs = Vec::new();
    while let Some(ack) = sends.join_next().await {
        seqs.push(
            ack.unwrap()
                .expect("no request is refused at the defaults")
                .seq,
        );
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=1000).collect::<Vec<u64>>());
    assert!(
        alice.is_connected(),
        "3.1.1: the in-flight bound is back-pressure, not a disconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_beyond_the_limit_are_refused_filter_by_filter() {
    let mut broker = TestBroker::builder()
        .users(USERS)
        .config(|c| c.max_subscriptions = 3)
        .start()
        .await;
    let opts = raw::v5_options(
        broker.mqtt_addr(),
        "alice:phone",
        "alice",
        "alice-password",
        Some(3600),
    );
    let mut v5 = RawV5::connect(opts, "alice", "phone").await.unwrap();
    let codes = v5
        .subscribe(&[
            "inbox/alice",
            "reply/alice/phone",
            "reply/alice/a",
            "reply/alice/b",
            "inbox/alice",
        ])
        .await;
    let names: Vec<String> = codes.iter().map(|c| format!("{c:?}")).collect();
    assert!(
        names[..3].iter().all(|n| n.starts_with("Success")),
        "{names:?}"
    );
    assert!(names[3].contains("QuotaExceeded"), "{names:?}");
    assert!(
        names[4].starts_with("Success"),
        "a held filter again is fine: {names:?}"
    );
    let flood: Vec<String> = (0..50).map(|n| format!("reply/alice/x{n}")).collect();
    let flood: Vec<&str> = flood.iter().map(String::as_str).collect();
    let codes = v5.subscribe(&flood).await;
    assert!(
        codes
            .iter()
            .all(|c| format!("{c:?}").contains("QuotaExceeded")),
        "{codes:?}"
    );
    v5.disconnect().await;

    let opts = raw::v4_options(broker.mqtt_addr(), "bob:phone", "bob", "bob-password", true);
    let mut v4 = RawV4::connect(opts, "bob", "phone").await.unwrap();
    let codes = v4
        .subscribe(&["inbox/bob", "reply/bob/1", "reply/bob/2", "reply/bob/3"])
        .await;
    assert_eq!(
        format!("{:?}", codes[3]),
        "Failure",
        "3.1.1 has only 0x80: {codes:?}"
    );
    v4.disconnect().await;

    let held = broker
        .with_store_while_stopped(|store| {
            store
                .session("alice", "phone")
                .unwrap()
                .unwrap()
                .subscriptions
        })
        .await;
    assert_eq!(
        held.len(),
        3,
        "the durable record holds only the granted filters: {held:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_per_user_are_limited_and_a_reconnect_does_not_count_twice() {
    let broker = TestBroker::builder()
        .users(USERS)
        .config(|c| c.max_devices_per_user = 2)
        .start()
        .await;
    let _phone = broker.client("alice", "phone").await;
    let laptop = broker.client("alice", "laptop").await;
    let opts = raw::v5_options(
        broker.mqtt_addr(),
        "alice:tablet",
        "alice",
        "alice-password",
        None,
    );
    let refused = RawV5::connect(opts.clone(), "alice", "tablet").await;
    assert!(
        format!("{:?}", refused.err()).contains("QuotaExceeded"),
        "v5 quota exceeded"
    );
    let v4 = raw::v4_options(
        broker.mqtt_addr(),
        "alice:tablet",
        "alice",
        "alice-password",
        true,
    );
    let refused = RawV4::connect(v4, "alice", "tablet").await;
    assert!(
        format!("{:?}", refused.err()).contains("ServiceUnavailable"),
        "3.1.1 server unavailable"
    );
    let _again = broker.client("alice", "phone").await;
    let _bob = broker.client("bob", "phone").await;
    laptop.disconnect().await.unwrap();
    let connected = parley_tests::eventually_async(WAIT, || async {
        RawV5::connect(opts.clone(), "alice", "tablet")
            .await
            .is_ok()
    })
    .await;
    assert!(connected, "a freed place can be taken");
    let metrics = broker.http("GET", "/metrics", None, None).await.text;
    assert!(
        metrics.contains("reason=\"max_devices_per_user\""),
        "{metrics}"
    );
}

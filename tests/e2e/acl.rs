//! Who may connect, subscribe and publish: CONNECT refusals, refused
//! subscriptions (0x80 in 3.1.1, 0x87 in 5), dropped publishes.

use std::time::Duration;

use parley_proto::v1::{self, Envelope, Request};
use parley_tests::{collect_messages, direct_channel, raw, wire, RawV4, RawV5, TestBroker, WAIT};
use prost::Message;
use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as V5Code;
use rumqttc::SubscribeReasonCode as V4Code;

const USERS: &[(&str, &str)] = &[
    ("alice", "pw-alice"),
    ("bob", "pw-bob"),
    ("carol", "pw-carol"),
];

/// After a barrier message arrived, how long to listen for anything that
/// must not arrive.
const QUIET: Duration = Duration::from_millis(300);

/// (client id, username, password, why it must be refused)
fn refused_connects() -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
    vec![
        (
            "bob:phone",
            "alice",
            "pw-alice",
            "client id of another user",
        ),
        ("alice", "alice", "pw-alice", "client id without a device"),
        ("alice:", "alice", "pw-alice", "empty device id"),
        ("alice:ph one", "alice", "pw-alice", "invalid device id"),
        (
            "alicex:phone",
            "alice",
            "pw-alice",
            "client id only starting with the username",
        ),
        ("alice:phone", "alice", "wrong", "bad password"),
        ("alice:phone", "alice", "", "empty password"),
        ("zed:phone", "zed", "pw-alice", "unknown user"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_with_a_foreign_client_id_or_bad_credentials_are_not_authorized() {
    let broker = TestBroker::start(USERS).await;
    for (client_id, user, password, why) in refused_connects() {
        let opts = raw::v4_options(broker.mqtt_addr(), client_id, user, password, true);
        match RawV4::connect(opts, user, "x").await {
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                assert_eq!(
                    code,
                    rumqttc::ConnectReturnCode::NotAuthorized,
                    "3.1.1, {why}"
                )
            }
            Err(other) => panic!("3.1.1, {why}: expected CONNACK not authorized, got {other}"),
            Ok(_) => panic!("3.1.1, {why}: the connection was accepted"),
        }
        let opts = raw::v5_options(broker.mqtt_addr(), client_id, user, password, None);
        match RawV5::connect(opts, user, "x").await {
            Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => {
                assert_eq!(
                    code,
                    rumqttc::v5::mqttbytes::v5::ConnectReturnCode::NotAuthorized,
                    "5, {why}"
                )
            }
            Err(other) => panic!("5, {why}: expected CONNACK not authorized (0x87), got {other}"),
            Ok(_) => panic!("5, {why}: the connection was accepted"),
        }
    }
    // The right credentials still work, on both versions.
    broker
        .raw_v4("alice", "phone", true)
        .await
        .disconnect()
        .await;
    broker
        .raw_v5("alice", "phone", None)
        .await
        .disconnect()
        .await;
}

const FORBIDDEN_FILTERS: &[&str] = &[
    "#",
    "+/alice",
    "inbox/+",
    "inbox/bob",
    "inbox/#",
    "reply/bob/#",
    "reply/+/phone",
    "reply/bob/phone",
    "presence/#",
    "presence/alice/bob",
    "req/alice/phone",
    "hb/alice/phone",
    "$SYS/#",
    "$share/g/inbox/alice",
    "something/else",
];

/// carol writes to bob, then bob to alice: alice must see bob's message to
/// her and nothing of carol's message to bob.
async fn cross_traffic(broker: &TestBroker) {
    let carol = broker.client("carol", "phone").await;
    carol
        .send(&direct_channel("bob", "carol"), "for bob only")
        .await
        .expect("carol sends");
    let bob = broker.client("bob", "phone").await;
    bob.send(&direct_channel("alice", "bob"), "barrier for alice")
        .await
        .expect("bob sends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_subscriptions_outside_ones_own_topics_are_refused_with_0x80() {
    let broker = TestBroker::start(USERS).await;
    let mut alice = broker.raw_v4("alice", "phone", true).await;
    for filter in FORBIDDEN_FILTERS {
        let codes = alice.subscribe(&[filter]).await;
        assert_eq!(codes, vec![V4Code::Failure], "3.1.1 SUBSCRIBE {filter}");
    }
    let codes = alice
        .subscribe(&[
            "inbox/alice",
            "#",
            "reply/alice/+",
            "inbox/+",
            "presence/+/alice",
        ])
        .await;
    assert_eq!(
        codes,
        vec![
            V4Code::Success(rumqttc::QoS::AtLeastOnce),
            V4Code::Failure,
            V4Code::Success(rumqttc::QoS::AtLeastOnce),
            V4Code::Failure,
            V4Code::Success(rumqttc::QoS::AtLeastOnce),
        ],
        "one SUBSCRIBE, a code per filter"
    );
    cross_traffic(&broker).await;
    let barrier = alice
        .next_publish_on("inbox/alice", WAIT)
        .await
        .expect("bob's message to alice");
    let envelope = Envelope::decode(barrier.payload.as_ref()).expect("envelope");
    assert_eq!(
        parley_tests::message_of(&envelope).text,
        "barrier for alice"
    );
    for topic in [
        "inbox/bob",
        "inbox/carol",
        "reply/bob/phone",
        "reply/carol/phone",
    ] {
        assert!(
            alice.next_publish_on(topic, QUIET).await.is_none(),
            "alice received a publish on {topic}"
        );
    }
    assert!(!alice.is_closed(), "refusals do not close the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_subscriptions_outside_ones_own_topics_are_refused_with_0x87() {
    let broker = TestBroker::start(USERS).await;
    let mut alice = broker.raw_v5("alice", "phone", None).await;
    for filter in FORBIDDEN_FILTERS {
        let codes = alice.subscribe(&[filter]).await;
        assert_eq!(
            codes,
            vec![V5Code::NotAuthorized],
            "MQTT 5 SUBSCRIBE {filter}"
        );
    }
    let codes = alice.subscribe(&["#", "inbox/alice"]).await;
    assert_eq!(
        codes,
        vec![
            V5Code::NotAuthorized,
            V5Code::Success(rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        ]
    );
    cross_traffic(&broker).await;
    let barrier = alice
        .next_publish_on("inbox/alice", WAIT)
        .await
        .expect("bob's message to alice");
    let envelope = Envelope::decode(barrier.payload.as_ref()).expect("envelope");
    assert_eq!(
        parley_tests::message_of(&envelope).text,
        "barrier for alice"
    );
    assert!(
        alice.next_publish_on("inbox/bob", QUIET).await.is_none(),
        "alice received bob's inbox"
    );
    assert!(!alice.is_closed(), "refusals do not close the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_to_topics_a_client_may_not_use_are_dropped() {
    let broker = TestBroker::start(USERS).await;
    let bob = broker.client("bob", "phone").await;
    let mut bob_raw = broker.raw_v4("bob", "raw", true).await;
    bob_raw.subscribe_own().await;
    let mut alice = broker.raw_v4("alice", "phone", true).await;
    alice.subscribe_own().await;
    let dm = direct_channel("alice", "bob");

    let forged_envelope = Envelope {
        inbox_seq: 1,
        body: Some(v1::envelope::Body::Message(v1::ChatMessage {
            channel: dm.clone(),
            seq: 1,
            sender: "alice".into(),
            text: "forged".into(),
            ..Default::default()
        })),
    }
    .encode_to_vec();
    let impersonated = Request {
        request_id: "evil-1".into(),
        body: Some(wire::send(&dm, "evil", "impersonated")),
    }
    .encode_to_vec();
    let forged_reply = v1::Reply {
        request_id: "x".into(),
        body: None,
    }
    .encode_to_vec();
    for (topic, payload) in [
        ("inbox/bob", forged_envelope.clone()),
        ("inbox/alice", forged_envelope.clone()),
        ("req/bob/phone", impersonated.clone()),
        ("req/alice/otherdevice", impersonated.clone()),
        ("reply/bob/phone", forged_reply.clone()),
        ("reply/bob/raw", forged_reply.clone()),
        ("hb/bob/phone", Vec::new()),
        ("presence/alice/bob", Vec::new()),
        ("somewhere/else", Vec::new()),
    ] {
        alice.publish(topic, payload).await;
    }

    // alice's own request topic still works, on the same connection, and
    // gets seq 1: the impersonated requests created nothing.
    let reply = alice.request(wire::send(&dm, "legit", "legit")).await;
    let ack = wire::expect_ack(&reply);
    assert_eq!(
        (ack.seq, ack.duplicate),
        (1, false),
        "the forbidden requests used no seq"
    );

    let got = collect_messages(&bob, 1, WAIT).await;
    assert_eq!(
        (got[0].0, got[0].1.text.as_str()),
        (1, "legit"),
        "bob's first envelope is the legit one"
    );
    let first = bob_raw
        .next_envelope(WAIT)
        .await
        .expect("bob's raw device gets the legit message");
    assert_eq!(
        (
            first.inbox_seq,
            parley_tests::message_of(&first).text.as_str()
        ),
        (1, "legit")
    );
    let own = alice
        .next_envelope(WAIT)
        .await
        .expect("alice gets her own message");
    assert_eq!(
        parley_tests::message_of(&own).text,
        "legit",
        "the forged envelope to alice was not delivered first"
    );
    for topic in ["inbox/bob", "reply/bob/raw"] {
        assert!(
            bob_raw.next_publish_on(topic, QUIET).await.is_none(),
            "something more on {topic}"
        );
    }
    let history = bob.history(&dm, 0, 10).await.expect("history");
    assert_eq!(history.messages.len(), 1, "{history:?}");
    assert!(!alice.is_closed());
}

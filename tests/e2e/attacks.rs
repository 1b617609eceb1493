//! The attack battery: a hostile but authenticated user (mallory) and
//! anonymous peers try everything the contract forbids, on TCP, TLS,
//! WebSocket and secure WebSocket with MQTT 3.1.1 and 5, while a bystander
//! pair (bob -> carol) keeps chatting. Every attempt must be refused and
//! counted, and the bystanders must lose nothing and see nothing foreign.
//! (Floods of connections, stalled TLS handshakes and oversized WebSocket
//! frames are in `tls.rs`; rate and subscription limits in `quotas.rs`.)

use std::sync::Arc;
use std::time::Duration;

use parley_broker::accounts::tokens;
use parley_proto::v1::{request, Request};
use parley_storage::TokenRecord;
use parley_tests::{direct_channel, raw, wire, Client, RawV4, RawV5, TestBroker, WAIT};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const USERS: &[(&str, &str)] = &[
    ("mallory", "mallory-password"),
    ("bob", "bob-password"),
    ("carol", "carol-password"),
];

/// Filters mallory may never hold: each could match another user's topic.
fn forbidden_filters() -> Vec<String> {
    let mut filters: Vec<String> = [
        "#",
        "+/#",
        "+",
        "inbox/+",
        "inbox/#",
        "inbox/bob",
        "reply/bob/#",
        "reply/+/phone",
        "presence/+/bob",
        "presence/#",
        "$SYS/#",
        "hb/bob/+",
        "hb/mallory/+",
        "req/bob/x",
        "req/mallory/phone",
        "$share/g/inbox/mallory",
    ]
    .iter()
    .map(|f| f.to_string())
    .collect();
    filters.push(format!("inbox/{}", "m".repeat(8_000)));
    filters.push(format!("reply/mallory/{}", "d".repeat(300)));
    filters
}

/// Topics mallory may never publish to.
const FORBIDDEN_TOPICS: &[&str] = &[
    "req/bob/phone",
    "hb/bob/phone",
    "inbox/bob",
    "inbox/carol",
    "reply/bob/phone",
    "presence/bob/carol",
    "inbox/mallory",
    "req/mallory/other-device",
    "$SYS/broker",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Tcp,
    Tls,
    Ws,
    Wss,
}

const EVERY_TRANSPORT: [Via; 4] = [Via::Tcp, Via::Tls, Via::Ws, Via::Wss];

/// `fn $name(broker, via, client_id, user, password)`: rumqttc options of
/// one protocol level (`$options`, made for TCP by `$tcp`) on any of the
/// four transports.
macro_rules! options_via {
    ($name:ident, $options:ty, $tcp:expr) => {
        fn $name(
            broker: &TestBroker,
            via: Via,
            client_id: &str,
            user: &str,
            password: &str,
        ) -> $options {
            let mut opts = match via {
                Via::Tcp => $tcp(broker.mqtt_addr(), client_id, user, password),
                Via::Tls => $tcp(broker.tls_addr(), client_id, user, password),
                Via::Ws => <$options>::new(client_id, broker.ws_url(), broker.ws_addr().port()),
                Via::Wss => <$options>::new(client_id, broker.wss_url(), broker.wss_addr().port()),
            };
            opts.set_credentials(user, password)
                .set_keep_alive(Duration::from_secs(30));
            let transport = match via {
                Via::Tcp => rumqttc::Transport::Tcp,
                Via::Tls => rumqttc::Transport::Tls(broker.pki().rumqttc_tls()),
                Via::Ws => rumqttc::Transport::Ws,
                Via::Wss => rumqttc::Transport::Wss(broker.pki().rumqttc_tls()),
            };
            opts.set_transport(transport);
            opts
        }
    };
}

options_via!(
    v4,
    rumqttc::MqttOptions,
    |addr, id: &str, user: &str, pw: &str| { raw::v4_options(addr, id, user, pw, true) }
);
options_via!(
    v5,
    rumqttc::v5::MqttOptions,
    |addr, id: &str, user: &str, pw: &str| { raw::v5_options(addr, id, user, pw, None) }
);

/// bob keeps sending to carol until stopped; carol's client is returned
/// with the seqs bob had acknowledged.
struct Bystanders {
    stop: CancellationToken,
    sender: JoinHandle<Vec<u64>>,
    carol: Arc<Client>,
    bob: Arc<Client>,
}

impl Bystanders {
    async fn start(broker: &TestBroker) -> Bystanders {
        let bob = Arc::new(broker.client("bob", "phone").await);
        let carol = Arc::new(broker.client("carol", "phone").await);
        let stop = CancellationToken::new();
        let (sender, token) = (bob.clone(), stop.clone());
        let sender = tokio::spawn(async move {
            let dm = direct_channel("bob", "carol");
            let mut acked = Vec::new();
            while !token.is_cancelled() {
                let ack = sender.send(&dm, &format!("ping {}", acked.len())).await;
                acked.push(ack.expect("the bystander's send is never refused").seq);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acked
        });
        Bystanders {
            stop,
            sender,
            carol,
            bob,
        }
    }

    /// Stops bob and checks that carol got exactly bob's messages, in order.
    async fn check(self) {
        self.stop.cancel();
        let acked = self.sender.await.unwrap();
        assert!(
            acked.len() >= 5,
            "the bystanders kept chatting: {} messages",
            acked.len()
        );
        assert_eq!(acked, (1..=acked.len() as u64).collect::<Vec<_>>());
        let got = parley_tests::collect_messages(&self.carol, acked.len(), WAIT).await;
        let seqs: Vec<u64> = got.iter().map(|(_, m)| m.seq).collect();
        assert_eq!(seqs, acked, "carol got every acked message once, in order");
        assert!(
            got.iter().all(|(_, m)| m.sender == "bob"),
            "nothing forged reached carol"
        );
        let extra = self
            .carol
            .next_envelope(Duration::from_millis(300))
            .await
            .unwrap();
        assert!(extra.is_none(), "nothing more reached carol: {extra:?}");
        assert!(self.bob.is_connected() && self.carol.is_connected());
    }
}

/// A request payload forging a message from bob to carol.
fn forged_send() -> Vec<u8> {
    let body = wire::send(&direct_channel("bob", "carol"), "forged", "from mallory");
    Request {
        request_id: "forged".into(),
        body: Some(body),
    }
    .encode_to_vec()
}

async fn metrics(broker: &TestBroker) -> String {
    broker.http("GET", "/metrics", None, None).await.text
}

/// The sum of every sample of `name` (any labels) in a Prometheus page.
fn counter(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_attacks_on_every_transport_and_level_are_refused_and_harmless() {
    let broker = TestBroker::builder().users(USERS).tls().start().await;
    let bystanders = Bystanders::start(&broker).await;
    let before = metrics(&broker).await;
    let filters = forbidden_filters();
    let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
    let password = "mallory-password";
    for via in EVERY_TRANSPORT {
        let mut mallory = RawV4::connect(
            v4(&broker, via, "mallory:v4", "mallory", password),
            "mallory",
            "v4",
        )
        .await
        .unwrap_or_else(|e| panic!("{via:?} v4: {e:?}"));
        let codes = mallory.subscribe(&filters).await;
        assert!(
            codes.iter().all(|c| format!("{c:?}") == "Failure"),
            "{via:?} v4: {codes:?}"
        );
        for topic in FORBIDDEN_TOPICS {
            mallory.publish(topic, forged_send()).await;
        }
        let mut mallory5 = RawV5::connect(
            v5(&broker, via, "mallory:v5", "mallory", password),
            "mallory",
            "v5",
        )
        .await
        .unwrap_or_else(|e| panic!("{via:?} v5: {e:?}"));
        let codes = mallory5.subscribe(&filters).await;
        assert!(
            codes.iter().all(|c| format!("{c:?}") == "NotAuthorized"),
            "{via:?} v5: {codes:?}"
        );
        for topic in FORBIDDEN_TOPICS {
            mallory5.publish(topic, forged_send()).await;
        }
        // Both still work for mallory's own business: a refusal is not a disconnect.
        mallory.subscribe_own().await;
        let reply = mallory
            .request(request::Body::Sync(Default::default()))
            .await;
        assert!(
            matches!(reply.body, Some(parley_proto::v1::reply::Body::SyncPage(_))),
            "{via:?}"
        );
        assert!(mallory
            .next_inbox_publish(Duration::from_millis(100))
            .await
            .is_none());
        mallory.disconnect().await;
        mallory5.disconnect().await;
    }
    let after = metrics(&broker).await;
    let refused = counter(&after, "parley_subscriptions_refused_total")
        - counter(&before, "parley_subscriptions_refused_total");
    assert!(
        refused >= (8 * filters.len()) as f64,
        "every refused filter is counted: {refused}"
    );
    let dropped = counter(&after, "parley_publishes_dropped_total")
        - counter(&before, "parley_publishes_dropped_total");
    assert!(
        dropped >= (8 * FORBIDDEN_TOPICS.len()) as f64,
        "every dropped publish is counted: {dropped}"
    );
    bystanders.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_attacks_on_every_transport_and_level_are_refused() {
    let mut broker = TestBroker::builder().users(USERS).tls().start().await;
    let expired = tokens::generate();
    let record = TokenRecord {
        user: "mallory".into(),
        device: Some("phone".into()),
        issued_ms: 1,
        expires_ms: 2,
    };
    let digest = expired.digest;
    broker
        .with_store_while_stopped(move |store| store.put_token(&digest.0, &record).unwrap())
        .await;
    let bystanders = Bystanders::start(&broker).await;
    let before = metrics(&broker).await;
    let mallory_token = broker.login("mallory", "phone").await;
    let revoked = broker.login("mallory", "phone").await;
    assert_eq!(
        broker
            .http("POST", "/v1/logout", Some(&revoked), None)
            .await
            .status,
        200
    );
    let forged = format!("pt_{}", "ab".repeat(32));
    let attempts: Vec<(&str, &str, String, &str)> = vec![
        (
            "bob:phone",
            "mallory",
            "mallory-password".into(),
            "bob's client id with mallory's password",
        ),
        (
            "bob:phone",
            "bob",
            "mallory-password".into(),
            "bob's name with mallory's password",
        ),
        (
            "bob:phone",
            "bob",
            mallory_token.clone(),
            "bob's name with mallory's token",
        ),
        (
            "bob:phone",
            "mallory",
            mallory_token.clone(),
            "bob's client id with mallory's token",
        ),
        (
            "mallory:laptop",
            "mallory",
            mallory_token.clone(),
            "mallory's token for another device",
        ),
        (
            "mallory:phone",
            "mallory",
            revoked.clone(),
            "a revoked token",
        ),
        (
            "mallory:phone",
            "mallory",
            expired.text.clone(),
            "an expired token",
        ),
        ("mallory:phone", "mallory", forged.clone(), "a forged token"),
        ("carol:phone", "carol", "".into(), "an empty password"),
        (
            "svc:bob:x",
            "svc:bob",
            "bob-password".into(),
            "a service that does not exist",
        ),
    ];
    for via in EVERY_TRANSPORT {
        for (client_id, user, password, what) in &attempts {
            let refused4 =
                RawV4::connect(v4(&broker, via, client_id, user, password), user, "x").await;
            assert!(refused4.is_err(), "{via:?} v4: {what} was let in");
            let refused5 =
                RawV5::connect(v5(&broker, via, client_id, user, password), user, "x").await;
            assert!(refused5.is_err(), "{via:?} v5: {what} was let in");
        }
    }
    let refused = counter(&metrics(&broker).await, "parley_connects_refused_total")
        - counter(&before, "parley_connects_refused_total");
    assert!(
        refused >= (8 * attempts.len()) as f64,
        "every refusal is counted: {refused}"
    );
    // bob's session was never taken over: his connection is the one that chats.
    bystanders.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_stalls_and_oversized_packets_are_closed_without_disturbing_anyone() {
    let broker = TestBroker::builder()
        .users(USERS)
        .tls()
        .config(|c| c.connect_timeout_secs = 1)
        .start()
        .await;
    let bystanders = Bystanders::start(&broker).await;
    let max_packet = broker.config().max_packet_size;

    // Garbage before CONNECT, on TCP and TLS.
    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0xff; 64][..],
        &[0x10, 0xff, 0xff, 0xff, 0xff, 0x7f][..],
    ] {
        let mut tcp = TcpStream::connect(broker.mqtt_addr()).await.unwrap();
        tcp.write_all(garbage).await.unwrap();
        assert!(closed_soon(&mut tcp).await, "garbage {garbage:?} on TCP");
        let mut tls = parley_tests::tls::connect(broker.tls_addr(), broker.pki().client_config())
            .await
            .unwrap();
        tls.write_all(garbage).await.unwrap();
        tls.flush().await.unwrap();
        assert!(closed_soon(&mut tls).await, "garbage on TLS");
    }
    // A CONNECT that never completes: half of one, then silence.
    let connect = wire::connect_v4("mallory:phone", "mallory", "mallory-password", true, 30);
    let mut half = TcpStream::connect(broker.mqtt_addr()).await.unwrap();
    half.write_all(&connect[..connect.len() / 2]).await.unwrap();
    // Meanwhile others connect as usual.
    let other = broker.client("mallory", "laptop").await;
    assert!(other.is_connected());
    assert!(
        closed_soon(&mut half).await,
        "closed after the connect timeout"
    );
    // A CONNECT larger than any CONNECT needs.
    let huge = wire::connect_v4("mallory:phone", "mallory", &"p".repeat(20_000), true, 30);
    let mut tcp = TcpStream::connect(broker.mqtt_addr()).await.unwrap();
    let _ = tcp.write_all(&huge).await;
    assert!(closed_soon(&mut tcp).await, "an oversized CONNECT");
    // After a good CONNECT: a PUBLISH announcing more than max_packet_size.
    let mut tcp = TcpStream::connect(broker.mqtt_addr()).await.unwrap();
    tcp.write_all(&connect).await.unwrap();
    let mut connack = [0u8; 4];
    tcp.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "accepted");
    let mut oversized = vec![0x30];
    let mut len = max_packet + 1;
    while len > 0 {
        let byte = (len % 128) as u8;
        len /= 128;
        oversized.push(if len > 0 { byte | 0x80 } else { byte });
    }
    oversized.extend_from_slice(&[0, 1, b'x']);
    tcp.write_all(&oversized).await.unwrap();
    assert!(closed_soon(&mut tcp).await, "an oversized PUBLISH");
    // A SUBSCRIBE whose filter is not UTF-8.
    let mut tcp = TcpStream::connect(broker.mqtt_addr()).await.unwrap();
    tcp.write_all(&connect).await.unwrap();
    tcp.read_exact(&mut connack).await.unwrap();
    let invalid_utf8 = [0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', 0xff, 0xfe, 0x01];
    tcp.write_all(&invalid_utf8).await.unwrap();
    assert!(closed_soon(&mut tcp).await, "a filter that is not UTF-8");
    bystanders.check().await;
}

/// Whether the peer closes within a few seconds (reading and dropping
/// whatever it still sends, a refusing CONNACK say).
async fn closed_soon<S: AsyncReadExt + Unpin>(stream: &mut S) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

//! TLS and connection admission: MQTT over TLS and over secure WebSocket
//! (rumqttc 3.1.1 and 5, and the SDK) with a throwaway CA, clients that do
//! not trust it, stalled handshakes, the HTTPS API, `max_connections`,
//! `max_connecting_per_addr`, and a WebSocket frame above
//! `max_packet_size`.

use std::time::Duration;

use parley_tests::tls::{self, TestPki};
use parley_tests::{
    collect_messages, direct_channel, eventually_async, message_of, raw, wire, Client,
    ClientOptions, RawV4, RawV5, TestBroker, Transport, WAIT,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const USERS: &[(&str, &str)] = &[("alice", "pw-alice"), ("bob", "pw-bob")];

/// A TLS record header announcing a 512-byte ClientHello, then 6 bytes of it.
const HALF_CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
];

async fn tls_broker() -> TestBroker {
    TestBroker::builder().users(USERS).tls().start().await
}

/// SDK options over `transport` (Tls or WebSocketTls) trusting the test CA.
fn sdk_options(
    broker: &TestBroker,
    user: &str,
    device: &str,
    transport: Transport,
) -> ClientOptions {
    let addr = match transport {
        Transport::WebSocketTls => broker.wss_addr(),
        _ => broker.tls_addr(),
    };
    ClientOptions::new(addr, user, device, broker.password(user))
        .transport(transport)
        .tls_ca(broker.pki().ca_pem.clone())
        .connect_timeout(WAIT)
        .request_timeout(WAIT)
}

fn v4_tls(broker: &TestBroker, user: &str, device: &str) -> rumqttc::MqttOptions {
    let id = format!("{user}:{device}");
    let mut opts = raw::v4_options(broker.tls_addr(), &id, user, &broker.password(user), true);
    opts.set_transport(rumqttc::Transport::Tls(broker.pki().rumqttc_tls()));
    opts
}

fn v4_wss(broker: &TestBroker, user: &str, device: &str) -> rumqttc::MqttOptions {
    let id = format!("{user}:{device}");
    let mut opts = rumqttc::MqttOptions::new(id, broker.wss_url(), broker.wss_addr().port());
    opts.set_transport(rumqttc::Transport::Wss(broker.pki().rumqttc_tls()))
        .set_credentials(user, broker.password(user))
        .set_keep_alive(Duration::from_secs(30));
    opts
}

fn v5_tls(broker: &TestBroker, user: &str, device: &str) -> rumqttc::v5::MqttOptions {
    let id = format!("{user}:{device}");
    let mut opts = raw::v5_options(broker.tls_addr(), &id, user, &broker.password(user), None);
    opts.set_transport(rumqttc::Transport::Tls(broker.pki().rumqttc_tls()));
    opts
}

fn v5_wss(broker: &TestBroker, user: &str, device: &str) -> rumqttc::v5::MqttOptions {
    let id = format!("{user}:{device}");
    let mut opts = rumqttc::v5::MqttOptions::new(id, broker.wss_url(), broker.wss_addr().port());
    opts.set_transport(rumqttc::Transport::Wss(broker.pki().rumqttc_tls()))
        .set_credentials(user, broker.password(user))
        .set_keep_alive(Duration::from_secs(30));
    opts
}

/// Asserts that the next inbox envelope of a raw client is message `seq` with `text`.
macro_rules! expect_message {
    ($client:expr, $seq:expr, $text:expr) => {{
        let envelope = $client
            .next_envelope(WAIT)
            .await
            .unwrap_or_else(|| panic!("{}: no envelope", stringify!($client)));
        let message = message_of(&envelope);
        assert_eq!(
            (message.seq, message.text.as_str()),
            ($seq, $text),
            "{}",
            stringify!($client)
        );
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v4_and_v5_chat_over_tls_and_secure_websocket() {
    let broker = tls_broker().await;
    let mut alice_v4_tls = RawV4::connect(v4_tls(&broker, "alice", "v4tls"), "alice", "v4tls")
        .await
        .expect("MQTT 3.1.1 over TLS");
    let mut alice_v5_wss = RawV5::connect(v5_wss(&broker, "alice", "v5wss"), "alice", "v5wss")
        .await
        .expect("MQTT 5 over secure WebSocket");
    let mut bob_v5_tls = RawV5::connect(v5_tls(&broker, "bob", "v5tls"), "bob", "v5tls")
        .await
        .expect("MQTT 5 over TLS");
    let mut bob_v4_wss = RawV4::connect(v4_wss(&broker, "bob", "v4wss"), "bob", "v4wss")
        .await
        .expect("MQTT 3.1.1 over secure WebSocket");
    alice_v4_tls.subscribe_own().await;
    alice_v5_wss.subscribe_own().await;
    bob_v5_tls.subscribe_own().await;
    bob_v4_wss.subscribe_own().await;
    let dm = direct_channel("alice", "bob");

    let reply = alice_v4_tls
        .request(wire::send(&dm, "m1", "sent over tls, v4"))
        .await;
    assert_eq!(wire::expect_ack(&reply).seq, 1);
    expect_message!(bob_v5_tls, 1, "sent over tls, v4");
    expect_message!(bob_v4_wss, 1, "sent over tls, v4");
    expect_message!(alice_v5_wss, 1, "sent over tls, v4");
    expect_message!(alice_v4_tls, 1, "sent over tls, v4");

    let reply = bob_v4_wss
        .request(wire::send(&dm, "m2", "sent over wss, v4"))
        .await;
    assert_eq!(wire::expect_ack(&reply).seq, 2);
    let reply = alice_v5_wss
        .request(wire::send(&dm, "m3", "sent over wss, v5"))
        .await;
    assert_eq!(wire::expect_ack(&reply).seq, 3);
    let reply = bob_v5_tls
        .request(wire::send(&dm, "m4", "sent over tls, v5"))
        .await;
    assert_eq!(wire::expect_ack(&reply).seq, 4);
    for (seq, text) in [
        (2, "sent over wss, v4"),
        (3, "sent over wss, v5"),
        (4, "sent over tls, v5"),
    ] {
        expect_message!(alice_v4_tls, seq, text);
        expect_message!(alice_v5_wss, seq, text);
        expect_message!(bob_v5_tls, seq, text);
        expect_message!(bob_v4_wss, seq, text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_chats_over_tls_and_secure_websocket() {
    let broker = tls_broker().await;
    let alice = broker
        .connect(sdk_options(&broker, "alice", "phone", Transport::Tls))
        .await;
    let bob = broker
        .connect(sdk_options(
            &broker,
            "bob",
            "browser",
            Transport::WebSocketTls,
        ))
        .await;
    // The URL forms select the same transports.
    let url = format!("mqtts://127.0.0.1:{}", broker.tls_addr().port());
    let bob_phone = ClientOptions::parse(&url, "bob", "phone", broker.password("bob"))
        .expect("mqtts:// URL")
        .tls_ca(broker.pki().ca_pem.clone());
    assert_eq!(bob_phone.transport, Transport::Tls);
    let bob_phone = broker.connect(bob_phone).await;
    let wss = ClientOptions::parse(&broker.wss_url(), "alice", "tab", "pw").expect("wss:// URL");
    assert_eq!(
        (wss.transport, wss.port),
        (Transport::WebSocketTls, broker.wss_addr().port())
    );

    let dm = direct_channel("alice", "bob");
    let ack = alice
        .send(&dm, "hello over tls")
        .await
        .expect("send over tls");
    assert_eq!(ack.seq, 1);
    for device in [&bob, &bob_phone] {
        let got = collect_messages(device, 1, WAIT).await;
        assert_eq!(
            (got[0].1.seq, got[0].1.text.as_str()),
            (1, "hello over tls")
        );
    }
    let ack = bob.send(&dm, "hi over wss").await.expect("send over wss");
    assert_eq!(ack.seq, 2);
    let got = collect_messages(&alice, 2, WAIT).await;
    let texts: Vec<_> = got.iter().map(|(_, m)| m.text.as_str()).collect();
    assert_eq!(texts, ["hello over tls", "hi over wss"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_ca_cannot_connect() {
    let broker = tls_broker().await;
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let other_ca = TestPki::generate(elsewhere.path()).ca_pem;
    for transport in [Transport::Tls, Transport::WebSocketTls] {
        let opts = sdk_options(&broker, "alice", "phone", transport).tls_ca(other_ca.clone());
        let error = Client::connect(opts)
            .await
            .expect_err("a certificate from an unknown CA is refused");
        assert!(
            error.to_string().contains("ertificate"),
            "{transport:?}: {error}"
        );
    }
    let mut untrusting = v5_tls(&broker, "bob", "v5");
    let other = tls::client_config_trusting(other_ca.as_bytes(), &[]);
    untrusting.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        other,
    )));
    assert!(RawV5::connect(untrusting, "bob", "v5").await.is_err());

    // The broker counted the failed handshakes and serves trusting clients.
    let counted = eventually_async(WAIT, || async {
        metrics(&broker)
            .await
            .contains("parley_refusals_total{reason=\"tls_handshake\"}")
    })
    .await;
    assert!(counted, "tls_handshake refusals in /metrics");
    let alice = broker
        .connect(sdk_options(&broker, "alice", "phone", Transport::Tls))
        .await;
    alice
        .send(&direct_channel("alice", "bob"), "still fine")
        .await
        .expect("send");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_blocks_nobody_and_is_closed_after_its_timeout() {
    let broker = TestBroker::builder()
        .users(USERS)
        .tls()
        .config(|c| c.tls_handshake_timeout_secs = 1)
        .start()
        .await;
    let opened = Instant::now();
    let mut silent = TcpStream::connect(broker.tls_addr())
        .await
        .expect("tcp connect");
    let mut half = TcpStream::connect(broker.wss_addr())
        .await
        .expect("tcp connect");
    half.write_all(HALF_CLIENT_HELLO).await.expect("write");
    let mut https_silent = TcpStream::connect(broker.http_addr())
        .await
        .expect("tcp connect");

    // Meanwhile others connect and chat over TLS and secure WebSocket, and
    // the HTTPS API answers.
    let alice = broker
        .connect(sdk_options(&broker, "alice", "phone", Transport::Tls))
        .await;
    let bob = broker
        .connect(sdk_options(
            &broker,
            "bob",
            "browser",
            Transport::WebSocketTls,
        ))
        .await;
    let dm = direct_channel("alice", "bob");
    alice
        .send(&dm, "while handshakes stall")
        .await
        .expect("send");
    collect_messages(&bob, 1, WAIT).await;
    assert_eq!(metrics_status(&broker).await, 200);
    assert!(
        opened.elapsed() < Duration::from_secs(1),
        "all that before the handshake timeout"
    );

    for (socket, what) in [
        (&mut silent, "silent tls"),
        (&mut half, "half ClientHello on wss"),
        (&mut https_silent, "silent https"),
    ] {
        expect_closed(socket, what).await;
        let after = opened.elapsed();
        assert!(
            after >= Duration::from_millis(900),
            "{what}: closed after {after:?}, before the timeout"
        );
    }
    assert!(alice.is_connected() && bob.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_is_served_over_https_with_the_certificate() {
    let broker = tls_broker().await;
    let config = tls::client_config_trusting(broker.pki().ca_pem.as_bytes(), &[b"http/1.1"]);
    let stream = tls::connect(broker.http_addr(), config)
        .await
        .expect("https handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, body) = tls::http_get(stream, "/v1/health").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));

    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let plain = TcpStream::connect(broker.http_addr())
        .await
        .expect("tcp connect");
    assert_eq!(tls::http_get(plain, "/v1/health").await.0, 0);
    // And a client that does not trust the CA does not get in.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let other = TestPki::generate(elsewhere.path()).client_config();
    assert!(tls::connect(broker.http_addr(), other).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_closed_at_once() {
    let broker = TestBroker::builder()
        .users(USERS)
        .config(|c| {
            c.max_connections = 3;
            c.connect_timeout_secs = 60;
        })
        .start()
        .await;
    // One established device and two sockets that never send CONNECT: 3.
    let alice = broker.client("alice", "phone").await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(
            TcpStream::connect(broker.mqtt_addr())
                .await
                .expect("tcp connect"),
        );
    }
    let mut extra = TcpStream::connect(broker.mqtt_addr())
        .await
        .expect("accepted by the kernel");
    let took = expect_closed(&mut extra, "a fourth connection").await;
    assert!(
        took < Duration::from_secs(5),
        "closed at once, not after a timeout: {took:?}"
    );
    for socket in &idle {
        assert_still_open(socket, "an admitted idle socket");
    }
    // The limit covers every listener.
    let mut ws = TcpStream::connect(broker.ws_addr())
        .await
        .expect("accepted by the kernel");
    expect_closed(&mut ws, "a fourth connection, on the WebSocket listener").await;
    assert!(metrics(&broker)
        .await
        .contains("parley_refusals_total{reason=\"max_connections\"}"));
    alice
        .send(&direct_channel("alice", "bob"), "unaffected")
        .await
        .expect("send");

    // Once the idle sockets are gone there is room again.
    drop(idle);
    assert!(
        connects_eventually(broker.options("bob", "phone")).await,
        "bob connects"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_have_not_completed_connect_are_limited_per_address() {
    let broker = TestBroker::builder()
        .users(USERS)
        .config(|c| {
            c.max_connecting_per_addr = 3;
            c.connect_timeout_secs = 60;
        })
        .start()
        .await;
    // Connected devices do not count: three of them from 127.0.0.1.
    let mut devices = Vec::new();
    for device in ["phone", "laptop", "tablet"] {
        devices.push(broker.client("alice", device).await);
    }
    // Three silent sockets from the same address are still connecting...
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(
            TcpStream::connect(broker.mqtt_addr())
                .await
                .expect("tcp connect"),
        );
    }
    // ...so a fourth is closed at once, and a real client is refused too.
    let mut extra = TcpStream::connect(broker.mqtt_addr())
        .await
        .expect("accepted by the kernel");
    let took = expect_closed(&mut extra, "a fourth connecting socket").await;
    assert!(
        took < Duration::from_secs(5),
        "closed at once, not after a timeout: {took:?}"
    );
    for socket in &idle {
        assert_still_open(socket, "an admitted idle socket");
    }
    assert!(Client::connect(broker.options("bob", "phone"))
        .await
        .is_err());
    assert!(metrics(&broker)
        .await
        .contains("parley_refusals_total{reason=\"max_connecting_per_addr\"}"));
    devices[0]
        .send(
            &direct_channel("alice", "bob"),
            "connected devices are unaffected",
        )
        .await
        .expect("send");

    drop(idle);
    assert!(
        connects_eventually(broker.options("bob", "phone")).await,
        "bob connects"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_frame_above_max_packet_size_is_refused_from_its_header() {
    // A CONNECT timeout far above WAIT: only the frame limit can close these.
    let broker = TestBroker::builder()
        .users(USERS)
        .tls()
        .config(|c| c.connect_timeout_secs = 60)
        .start()
        .await;
    let plain = TcpStream::connect(broker.ws_addr())
        .await
        .expect("tcp connect");
    oversized_frame_is_refused(plain, "ws").await;
    let secure = tls::connect(broker.wss_addr(), broker.pki().client_config())
        .await
        .expect("tls handshake");
    oversized_frame_is_refused(secure, "wss").await;

    // A bad path is a refused WebSocket handshake, counted as such.
    let mut stream = TcpStream::connect(broker.ws_addr())
        .await
        .expect("tcp connect");
    let response = websocket_upgrade(&mut stream, "/nope").await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    let counted = eventually_async(WAIT, || async {
        metrics(&broker)
            .await
            .contains("parley_refusals_total{reason=\"ws_handshake\"}")
    })
    .await;
    assert!(counted, "ws_handshake refusals in /metrics");
}

/// Upgrades to WebSocket on /mqtt, then announces one binary frame of
/// 15 MiB and sends 4 KiB of it: the broker must close the connection
/// after reading the header, not wait for (and buffer) the rest.
async fn oversized_frame_is_refused<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, what: &str) {
    let response = websocket_upgrade(&mut stream, "/mqtt").await;
    assert!(response.starts_with("HTTP/1.1 101"), "{what}: {response}");
    let mut frame = vec![0x82, 0x80 | 127]; // FIN + binary; masked, 64-bit length
    frame.extend_from_slice(&(15u64 << 20).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]); // masking key
    frame.extend_from_slice(&[0u8; 4096]);
    // The broker may close while this is still being written.
    let _ = stream.write_all(&frame).await;
    let _ = stream.flush().await;
    let took = expect_closed(&mut stream, what).await;
    assert!(took < WAIT, "{what}: closed after {took:?}");
}

/// Sends a WebSocket upgrade request for `path`; returns the response head.
async fn websocket_upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    path: &str,
) -> String {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write the upgrade");
    stream.flush().await.expect("flush");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(WAIT, stream.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            other => panic!(
                "no complete upgrade response ({other:?}): {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads until the broker closes; fails if it stays open for `WAIT`.
/// Returns how long that took.
async fn expect_closed<S: AsyncRead + Unpin>(stream: &mut S, what: &str) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let until_closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    if tokio::time::timeout(WAIT, until_closed).await.is_err() {
        panic!("{what}: the broker kept the connection open for {WAIT:?}");
    }
    started.elapsed()
}

/// Fails unless `socket` is open with nothing to read (no EOF, no reset).
fn assert_still_open(socket: &TcpStream, what: &str) {
    let mut buf = [0u8; 16];
    match socket.try_read(&mut buf) {
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("{what}: expected an open, silent socket, got {other:?}"),
    }
}

/// Retries connecting until the broker admits the client (it frees a
/// closed connection's slot asynchronously); false after `WAIT`.
async fn connects_eventually(opts: ClientOptions) -> bool {
    eventually_async(WAIT, || {
        let opts = opts.clone();
        async move { Client::connect(opts).await.is_ok() }
    })
    .await
}

/// `GET /metrics`, over HTTPS when the broker has TLS.
async fn metrics(broker: &TestBroker) -> String {
    get(broker, "/metrics").await.1
}

async fn metrics_status(broker: &TestBroker) -> u16 {
    get(broker, "/metrics").await.0
}

async fn get(broker: &TestBroker, path: &str) -> (u16, String) {
    if broker.tls_enabled() {
        let stream = tls::connect(broker.http_addr(), broker.pki().client_config())
            .await
            .expect("https handshake");
        tls::http_get(stream, path).await
    } else {
        let stream = TcpStream::connect(broker.http_addr())
            .await
            .expect("tcp connect");
        tls::http_get(stream, path).await
    }
}

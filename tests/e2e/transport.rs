//! Transports and framing: malformed MQTT bytes on a raw TCP socket close
//! only that connection; MQTT over WebSocket (3.1.1 and 5) works end to end.

use std::net::SocketAddr;
use std::time::Duration;

use parley_tests::{collect_messages, direct_channel, message_of, wire, RawV5, TestBroker, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USERS: &[(&str, &str)] = &[("alice", "pw-alice"), ("bob", "pw-bob")];

/// Reads until the broker closes the socket; fails the test if it stays
/// open for `WAIT`. Returns the bytes received before the close.
async fn expect_closed(socket: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    if tokio::time::timeout(WAIT, read_all).await.is_err() {
        panic!("{what}: the broker kept the connection open for {WAIT:?}");
    }
    received
}

/// A raw TCP connection that has sent a valid CONNECT (keep-alive 60 s),
/// read CONNACK accepted, and had a PINGREQ answered.
async fn connected_socket(addr: SocketAddr, device: &str) -> TcpStream {
    let mut socket = socket_with_keep_alive(addr, device, 60).await;
    ping(&mut socket).await;
    socket
}

/// A raw CONNECT with keep-alive `secs` as `alice:{device}`, CONNACK read.
async fn socket_with_keep_alive(addr: SocketAddr, device: &str, secs: u16) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.expect("tcp connect");
    let connect = wire::connect_v4(&format!("alice:{device}"), "alice", "pw-alice", true, secs);
    socket.write_all(&connect).await.expect("write CONNECT");
    let mut connack = [0u8; 4];
    tokio::time::timeout(WAIT, socket.read_exact(&mut connack))
        .await
        .expect("CONNACK in time")
        .expect("read CONNACK");
    assert_eq!(
        connack,
        [0x20, 0x02, 0x00, 0x00],
        "CONNACK accepted, no session"
    );
    socket
}

/// The connection is alive: PINGREQ -> PINGRESP within `WAIT`.
async fn ping(socket: &mut TcpStream) {
    socket.write_all(&wire::PINGREQ).await.expect("PINGREQ");
    let mut pingresp = [0u8; 2];
    tokio::time::timeout(WAIT, socket.read_exact(&mut pingresp))
        .await
        .expect("PINGRESP in time")
        .expect("read PINGRESP");
    assert_eq!(pingresp, [0xD0, 0x00]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_mqtt_closes_that_connection_and_nobody_else_notices() {
    let broker = TestBroker::start(USERS).await;
    let alice = broker.client("alice", "phone").await;
    let bob = broker.client("bob", "phone").await;
    let dm = direct_channel("alice", "bob");
    let mut expected_seq = 0;

    // Garbage instead of a CONNECT.
    let before_connect: &[(&[u8], &str)] = &[
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP on the MQTT port",
        ),
        (&[0xff; 16], "0xff bytes"),
        (&[0x30, 0x02, 0x00, 0x00], "PUBLISH before CONNECT"),
        (
            &[0x10, 0xff, 0xff, 0xff, 0xff, 0x7f],
            "CONNECT with a 5-byte remaining length",
        ),
        (
            &[
                0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x09, 0x02, 0x00, 0x3c, 0x00, 0x00,
            ],
            "protocol level 9",
        ),
    ];
    for (bytes, what) in before_connect {
        let mut socket = TcpStream::connect(broker.mqtt_addr())
            .await
            .expect("tcp connect");
        socket.write_all(bytes).await.expect("write");
        let received = expect_closed(&mut socket, what).await;
        assert!(
            received.is_empty() || received[0] >> 4 == 2,
            "{what}: only a CONNACK (refusal) may come back, got {received:?}"
        );
        expected_seq += 1;
        let ack = alice
            .send(&dm, &format!("still fine after {what}"))
            .await
            .expect("others keep working");
        assert_eq!(ack.seq, expected_seq);
    }

    // Malformed packets after a valid CONNECT.
    let after_connect: &[(&[u8], &str)] = &[
        (
            &[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f],
            "PUBLISH with a 5-byte remaining length",
        ),
        (&[0x00, 0x00], "reserved packet type 0"),
        (&[0xf0, 0x00], "reserved packet type 15"),
        (
            &[0x30, 0x03, 0x00, 0x10, b'a'],
            "PUBLISH whose topic length crosses the packet",
        ),
        (
            &[0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'b', 0x03],
            "SUBSCRIBE with QoS 3",
        ),
        (&[0x82, 0x02, 0x00, 0x01], "SUBSCRIBE without a filter"),
        (
            &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
            "PUBLISH with QoS 3",
        ),
        (
            &[
                0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00,
            ],
            "a second CONNECT",
        ),
    ];
    for (i, (bytes, what)) in after_connect.iter().enumerate() {
        let mut socket = connected_socket(broker.mqtt_addr(), &format!("tcp{i}")).await;
        socket.write_all(bytes).await.expect("write");
        expect_closed(&mut socket, what).await;
        expected_seq += 1;
        let ack = alice
            .send(&dm, &format!("still fine after {what}"))
            .await
            .expect("others keep working");
        assert_eq!(ack.seq, expected_seq);
    }

    // bob saw every message, in order: nobody else was affected.
    let got = collect_messages(&bob, expected_seq as usize, WAIT).await;
    assert_eq!(
        got.iter().map(|(_, m)| m.seq).collect::<Vec<_>>(),
        (1..=expected_seq).collect::<Vec<_>>()
    );
    assert!(alice.is_connected() && bob.is_connected());

    // A silent socket is closed after the connect timeout (not tested here:
    // 10 s by default); a half-written CONNECT does not block others either.
    let mut half = TcpStream::connect(broker.mqtt_addr())
        .await
        .expect("tcp connect");
    half.write_all(&wire::connect_v4("alice:half", "alice", "pw-alice", true, 60)[..5])
        .await
        .expect("write");
    let ack = alice
        .send(&dm, "while a CONNECT is half written")
        .await
        .expect("send");
    assert_eq!(ack.seq, expected_seq + 1);
    drop(half);
}

/// MQTT 5 over WebSocket as `alice:ws5`, durable (session expiry 600 s).
fn v5_ws_options(broker: &TestBroker) -> rumqttc::v5::MqttOptions {
    let mut opts =
        rumqttc::v5::MqttOptions::new("alice:ws5", broker.ws_url(), broker.ws_addr().port());
    opts.set_transport(rumqttc::Transport::Ws)
        .set_credentials("alice", broker.password("alice"))
        .set_keep_alive(Duration::from_secs(30))
        .set_session_expiry_interval(Some(600))
        .set_clean_start(false);
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_websocket_works_end_to_end() {
    let broker = TestBroker::start(USERS).await;
    let alice_ws = broker.ws_client("alice", "browser").await;
    let bob_tcp = broker.client("bob", "phone").await;
    let bob_ws = broker.ws_client("bob", "browser").await;
    let dm = direct_channel("alice", "bob");

    // MQTT 5 over WebSocket too (rumqttc v5, ws://addr/mqtt), durable.
    let mut alice_v5 = RawV5::connect(v5_ws_options(&broker), "alice", "ws5")
        .await
        .expect("MQTT 5 over WebSocket");
    assert!(!alice_v5.session_present);
    alice_v5.subscribe_own().await;

    let ack = alice_ws
        .send(&dm, "over websocket")
        .await
        .expect("send over websocket");
    assert_eq!((ack.seq, ack.duplicate), (1, false));
    for device in [&bob_tcp, &bob_ws, &alice_ws] {
        let got = collect_messages(device, 1, WAIT).await;
        assert_eq!(
            (got[0].0, got[0].1.text.as_str()),
            (1, "over websocket"),
            "{}:{}",
            device.user(),
            device.device()
        );
    }
    let envelope = alice_v5
        .next_envelope(WAIT)
        .await
        .expect("the v5 websocket device gets it");
    assert_eq!(
        (envelope.inbox_seq, message_of(&envelope).text.as_str()),
        (1, "over websocket")
    );

    let answer = bob_ws
        .send(&dm, "answer over websocket")
        .await
        .expect("bob answers");
    assert_eq!(answer.seq, 2);
    let got = collect_messages(&alice_ws, 1, WAIT).await;
    assert_eq!(
        (got[0].0, got[0].1.sender.as_str(), got[0].1.seq),
        (2, "bob", 2)
    );
    let reply = alice_v5.request(wire::history(&dm, 0, 10)).await;
    let Some(parley_proto::v1::reply::Body::HistoryPage(page)) = reply.body else {
        panic!("expected a HistoryPage over MQTT 5 / WebSocket, got {reply:?}");
    };
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![2, 1]
    );

    // A durable session over WebSocket is replayed like one over TCP.
    alice_v5.disconnect().await;
    bob_tcp
        .send(&dm, "while alice's v5 device is away")
        .await
        .expect("send");
    let mut alice_v5 = RawV5::connect(v5_ws_options(&broker), "alice", "ws5")
        .await
        .expect("reconnect over WebSocket");
    assert!(alice_v5.session_present);
    let envelope = loop {
        let envelope = alice_v5
            .next_envelope(WAIT)
            .await
            .expect("replayed envelope");
        if envelope.inbox_seq > 2 {
            break envelope;
        }
    };
    assert_eq!(
        (envelope.inbox_seq, message_of(&envelope).text.as_str()),
        (3, "while alice's v5 device is away")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_after_its_keep_alive_and_a_pinging_one_stays() {
    let broker = TestBroker::start(USERS).await;
    let mut silent = socket_with_keep_alive(broker.mqtt_addr(), "silent", 1).await;
    let mut pinging = socket_with_keep_alive(broker.mqtt_addr(), "pinging", 1).await;
    let connected = tokio::time::Instant::now();

    // The pinging device sends a PINGREQ every 300 ms for 2.4 s (more than
    // one and a half keep-alives) and gets every PINGRESP.
    let pings = tokio::spawn(async move {
        for _ in 0..8 {
            ping(&mut pinging).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        pinging
    });

    let received = expect_closed(&mut silent, "a silent device with keep-alive 1 s").await;
    assert!(received.is_empty(), "nothing but the close: {received:?}");
    assert!(
        connected.elapsed() >= Duration::from_secs(1),
        "closed before its keep-alive ran out"
    );
    let mut pinging = pings.await.expect("the pinging device's task");
    ping(&mut pinging).await;
}

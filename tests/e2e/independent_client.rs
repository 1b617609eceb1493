//! An independent MQTT implementation against the broker: the mosquitto
//! command-line clients (`mosquitto_sub`, `mosquitto_pub`, Debian package
//! `mosquitto-clients`, installed by the README's test command).
//!
//! mosquitto_sub sends all its `-t` filters in one SUBSCRIBE. With `-d` it
//! prints the SUBACK as `Subscribed (mid: N): c1, c2` (128 = 0x80 refused in
//! 3.1.1, 135 = 0x87 in 5); when every filter is refused it prints "All
//! subscription requests were denied." and disconnects. Payloads are
//! printed in hex (`-F '%t %x'`) because envelopes are protobuf.

use std::process::Output;
use std::time::Duration;

use parley_proto::v1::{Envelope, Request};
use parley_tests::{collect_messages, direct_channel, message_of, wire, TestBroker, WAIT};
use prost::Message;
use tokio::process::Command;

const USERS: &[(&str, &str)] = &[("alice", "pw-alice"), ("bob", "pw-bob")];

/// Fails (never skips) when a mosquitto tool is missing.
fn require(tool: &str) {
    match std::process::Command::new(tool).arg("--help").output() {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
            "{tool} is not installed: run the README's test command (`bash .ci/test`), \
             which installs the Debian package mosquitto-clients"
        ),
        Err(error) => panic!("cannot run {tool}: {error}"),
    }
}

/// Runs a mosquitto tool to completion (killed after `WAIT` + 5 s).
async fn run(tool: &str, args: &[String]) -> Output {
    let mut command = Command::new(tool);
    command.args(args).kill_on_drop(true);
    match tokio::time::timeout(WAIT + Duration::from_secs(5), command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => panic!("cannot run {tool}: {error}"),
        Err(_) => panic!("{tool} {args:?} did not finish in time"),
    }
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Common arguments: host, port, protocol version, client id, credentials.
fn base_args(broker: &TestBroker, version: &str, client_id: &str, user: &str) -> Vec<String> {
    let port = broker.mqtt_addr().port().to_string();
    [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        version,
        "-i",
        client_id,
        "-u",
        user,
        "-P",
        &broker.password(user),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn args(base: &[String], more: &[&str]) -> Vec<String> {
    base.iter()
        .cloned()
        .chain(more.iter().map(|s| s.to_string()))
        .collect()
}

/// The envelopes printed as `inbox/alice <hex>` lines.
fn printed_envelopes(stdout: &[u8]) -> Vec<Envelope> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|line| line.strip_prefix("inbox/alice "))
        .map(|hex| {
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex payload"))
                .collect();
            Envelope::decode(bytes.as_slice()).expect("mosquitto_sub printed an Envelope")
        })
        .collect()
}

/// `version`: mosquitto's `-V` value; `refused`: the SUBACK code it prints
/// for a refused filter; `session`: the arguments that make it durable.
async fn subscribe_and_receive(version: &str, refused: u8, session: &[&str]) {
    require("mosquitto_sub");
    let broker = TestBroker::start(USERS).await;
    let base = base_args(&broker, version, "alice:cli", "alice");

    // `#` alone: every filter refused.
    let only_wildcard = run(
        "mosquitto_sub",
        &args(&base, &["-d", "-q", "1", "-t", "#", "-W", "5"]),
    )
    .await;
    let out = text(&only_wildcard);
    assert!(
        out.contains(&format!("Subscribed (mid: 1): {refused}")),
        "SUBACK {refused} for #:\n{out}"
    );
    assert!(
        out.contains("All subscription requests were denied"),
        "mosquitto_sub reports the refusal:\n{out}"
    );

    // inbox/alice granted (QoS 1), `#` refused, in one SUBSCRIBE; the durable
    // session is created and mosquitto_sub exits after the SUBACK (-E).
    let first = run(
        "mosquitto_sub",
        &args(
            &base,
            &[
                &["-d", "-q", "1", "-t", "inbox/alice", "-t", "#", "-E"][..],
                session,
            ]
            .concat(),
        ),
    )
    .await;
    let out = text(&first);
    assert!(first.status.success(), "{out}");
    assert!(
        out.contains(&format!("Subscribed (mid: 1): 1, {refused}")),
        "SUBACK 1 and {refused}:\n{out}"
    );

    // bob (SDK) writes while mosquitto_sub is away, and again while it is
    // back: the durable session delivers both, in order.
    let bob = broker.client("bob", "phone").await;
    let dm = direct_channel("alice", "bob");
    bob.send(&dm, "hello mosquitto").await.expect("bob sends");
    let receiver = {
        let args = args(
            &base,
            &[
                &[
                    "-q",
                    "1",
                    "-t",
                    "inbox/alice",
                    "-C",
                    "2",
                    "-W",
                    "10",
                    "-F",
                    "%t %x",
                ][..],
                session,
            ]
            .concat(),
        );
        tokio::spawn(async move { run("mosquitto_sub", &args).await })
    };
    bob.send(&dm, "and once more")
        .await
        .expect("bob sends again");
    let received = receiver.await.expect("mosquitto_sub task");
    let out = text(&received);
    assert!(
        received.status.success(),
        "mosquitto_sub got its 2 messages:\n{out}"
    );
    let envelopes = printed_envelopes(&received.stdout);
    assert_eq!(
        envelopes
            .iter()
            .map(|e| (
                e.inbox_seq,
                message_of(e).sender.clone(),
                message_of(e).text.clone()
            ))
            .collect::<Vec<_>>(),
        vec![
            (1, "bob".to_string(), "hello mosquitto".to_string()),
            (2, "bob".to_string(), "and once more".to_string())
        ],
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_v311_receives_its_inbox_and_sees_hash_refused_with_128() {
    subscribe_and_receive("mqttv311", 128, &["-c"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_v5_receives_its_inbox_and_sees_hash_refused_with_135() {
    subscribe_and_receive("mqttv5", 135, &["-c", "-x", "600"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_are_refused_with_a_foreign_client_id_or_bad_password() {
    require("mosquitto_sub");
    let broker = TestBroker::start(USERS).await;
    for (client_id, user, password) in [
        ("bob:cli", "alice", "pw-alice"),
        ("alice:cli", "alice", "wrong"),
    ] {
        let port = broker.mqtt_addr().port().to_string();
        let output = run(
            "mosquitto_sub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                "mqttv311",
                "-i",
                client_id,
                "-u",
                user,
                "-P",
                password,
                "-t",
                "inbox/alice",
                "-W",
                "5",
            ]
            .map(String::from),
        )
        .await;
        let out = text(&output);
        assert!(
            !output.status.success(),
            "{client_id}/{password} must be refused:\n{out}"
        );
        assert!(
            out.to_lowercase().contains("not authori"),
            "CONNACK not authorized reported:\n{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_requests_are_served_and_forbidden_publishes_dropped() {
    require("mosquitto_pub");
    let broker = TestBroker::start(USERS).await;
    let bob = broker.client("bob", "phone").await;
    let dm = direct_channel("alice", "bob");
    let dir = tempfile::tempdir().expect("temp dir");
    let base = base_args(&broker, "mqttv311", "alice:cli", "alice");

    // Forged envelope straight onto bob's inbox topic: dropped.
    let forged = dir.path().join("forged.bin");
    let envelope = Envelope {
        inbox_seq: 1,
        body: Some(parley_proto::v1::envelope::Body::Message(
            parley_proto::v1::ChatMessage {
                channel: dm.clone(),
                seq: 1,
                sender: "alice".into(),
                text: "forged by mosquitto_pub".into(),
                ..Default::default()
            },
        )),
    };
    std::fs::write(&forged, envelope.encode_to_vec()).expect("write payload");
    let output = run(
        "mosquitto_pub",
        &args(
            &base,
            &[
                "-q",
                "1",
                "-t",
                "inbox/bob",
                "-f",
                forged.to_str().expect("path"),
            ],
        ),
    )
    .await;
    assert!(
        output.status.success(),
        "the broker acknowledges and drops it:\n{}",
        text(&output)
    );

    // A real request on alice's own request topic: served.
    let request = dir.path().join("request.bin");
    let payload = Request {
        request_id: "cli-1".into(),
        body: Some(wire::send(&dm, "cli-msg-1", "sent with mosquitto_pub")),
    };
    std::fs::write(&request, payload.encode_to_vec()).expect("write payload");
    let output = run(
        "mosquitto_pub",
        &args(
            &base,
            &[
                "-q",
                "1",
                "-t",
                "req/alice/cli",
                "-f",
                request.to_str().expect("path"),
            ],
        ),
    )
    .await;
    assert!(output.status.success(), "{}", text(&output));

    let got = collect_messages(&bob, 1, WAIT).await;
    assert_eq!(
        (
            got[0].0,
            got[0].1.seq,
            got[0].1.sender.as_str(),
            got[0].1.text.as_str(),
            got[0].1.client_msg_id.as_str()
        ),
        (1, 1, "alice", "sent with mosquitto_pub", "cli-msg-1"),
        "bob's first envelope is the request's message, not the forged one"
    );
    let history = bob.history(&dm, 0, 10).await.expect("history");
    assert_eq!(history.messages.len(), 1);
}

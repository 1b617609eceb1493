//! System messages from a backend service, over MQTT (`SystemMessage`) and
//! HTTP (`POST /v1/system-messages`): to a channel (a `system = true`
//! message fanned out to its members) or to each listed user's own
//! `sys:{user}` channel (readable by that user only); idempotent by
//! `client_msg_id` across both transports; services only; all or nothing.

use parley_broker::accounts;
use parley_proto::v1::{self, envelope, request, Ack, ChatMessage, ErrorCode};
use parley_tests::{
    collect_envelopes, direct_channel, group_channel, inbox_head, message_of, sync_all, wire,
    Client, TestBroker, WAIT,
};
use serde_json::{json, Value};

const USERS: &[(&str, &str)] = &[
    ("alice", "pw-alice"),
    ("bob", "pw-bob"),
    ("carol", "pw-carol"),
];

const SERVICE: &str = "svc:alerts";
const PATH: &str = "/v1/system-messages";

/// A broker with the three users and the service `svc:alerts`; returns its secret.
async fn start() -> (TestBroker, String) {
    let mut broker = TestBroker::start(USERS).await;
    let secret = broker
        .with_store_while_stopped(|store| accounts::add_service(store, "alerts").expect("add"))
        .await;
    (broker, secret)
}

/// The service's SDK client, `svc:alerts:worker`, with its secret.
async fn service(broker: &TestBroker, secret: &str) -> Client {
    broker
        .connect(broker.options_with(SERVICE, "worker", secret))
        .await
}

fn to_channel(channel: &str, client_msg_id: &str, text: &str) -> request::Body {
    request::Body::System(v1::SystemMessage {
        channel: channel.to_string(),
        client_msg_id: client_msg_id.to_string(),
        text: text.to_string(),
        users: vec![],
    })
}

fn to_users(users: &[&str], client_msg_id: &str, text: &str) -> request::Body {
    request::Body::System(v1::SystemMessage {
        channel: String::new(),
        client_msg_id: client_msg_id.to_string(),
        text: text.to_string(),
        users: users.iter().map(|u| u.to_string()).collect(),
    })
}

async fn ack_of(client: &Client, body: request::Body) -> Ack {
    let reply = client.request(body).await.expect("a reply");
    wire::expect_ack(&reply)
}

async fn error_of(client: &Client, body: request::Body, code: ErrorCode, what: &str) {
    let reply = client
        .request(body)
        .await
        .unwrap_or_else(|e| panic!("{what}: no reply: {e}"));
    match &reply.body {
        Some(v1::reply::Body::Error(_)) => {
            wire::expect_error(&reply, code);
        }
        other => panic!("{what}: expected Error {code:?}, got {other:?}"),
    }
}

/// The next live message of `client`, which must be a system message.
async fn next_system_message(client: &Client) -> (u64, ChatMessage) {
    let got = collect_envelopes(client, 1, WAIT).await;
    let message = message_of(&got[0]).clone();
    assert!(
        message.system,
        "{}: system = true: {message:?}",
        client.user()
    );
    assert_eq!(message.sender, SERVICE, "{}", client.user());
    (got[0].inbox_seq, message)
}

/// `(seq, text, system)` of a channel's history, newest first.
async fn history(client: &Client, channel: &str) -> Vec<(u64, String, bool)> {
    client
        .history(channel, 0, 100)
        .await
        .unwrap_or_else(|e| panic!("{}: history of {channel}: {e}", client.user()))
        .messages
        .into_iter()
        .map(|m| (m.seq, m.text, m.system))
        .collect()
}

async fn heads(clients: &[&Client]) -> Vec<u64> {
    let mut out = Vec::new();
    for client in clients {
        out.push(inbox_head(client).await);
    }
    out
}

/// `POST /v1/system-messages` with the body as it is.
async fn post(
    broker: &TestBroker,
    bearer: Option<&str>,
    body: Value,
) -> parley_tests::http::Answer {
    broker.http("POST", PATH, bearer, Some(body)).await
}

fn entries(answer: &parley_tests::http::Answer) -> Vec<(String, u64)> {
    answer.json["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages array: {}", answer.text))
        .iter()
        .map(|m| {
            (
                m["channel"].as_str().expect("channel").to_string(),
                m["seq"].as_u64().expect("seq"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_posts_system_messages_to_a_dm_a_group_and_a_system_channel_over_mqtt() {
    let (broker, secret) = start().await;
    let svc = service(&broker, &secret).await;
    let alice = broker.client("alice", "phone").await;
    let bob = broker.client("bob", "phone").await;
    let carol = broker.client("carol", "phone").await;
    alice
        .create_group("team", "Team", ["bob"])
        .await
        .expect("create the group");
    for client in [&alice, &bob] {
        collect_envelopes(client, 1, WAIT).await;
    }
    let dm = direct_channel("alice", "bob");
    let team = group_channel("team");

    let ack = ack_of(&svc, to_channel(&dm, "c1", "maintenance at noon")).await;
    assert_eq!(
        (ack.channel.as_str(), ack.seq, ack.duplicate),
        (dm.as_str(), 1, false)
    );
    assert!(ack.ts_ms > 0);
    for client in [&alice, &bob] {
        let (inbox_seq, message) = next_system_message(client).await;
        assert_eq!(inbox_seq, 2);
        assert_eq!(
            (message.channel.as_str(), message.seq, message.text.as_str()),
            (dm.as_str(), 1, "maintenance at noon")
        );
        assert_eq!(message.ts_ms, ack.ts_ms);
        assert_eq!(message.client_msg_id, "c1");
    }
    // It takes its place in the channel's sequence.
    assert_eq!(alice.send(&dm, "ok").await.expect("send").seq, 2);
    for client in [&alice, &bob] {
        collect_envelopes(client, 1, WAIT).await;
    }
    assert_eq!(
        history(&bob, &dm).await,
        vec![
            (2, "ok".to_string(), false),
            (1, "maintenance at noon".to_string(), true)
        ]
    );

    let ack = ack_of(&svc, to_channel(&team, "c2", "the team is archived soon")).await;
    assert_eq!((ack.channel.as_str(), ack.seq), (team.as_str(), 1));
    for client in [&alice, &bob] {
        let (_, message) = next_system_message(client).await;
        assert_eq!((message.channel.as_str(), message.seq), (team.as_str(), 1));
    }

    // Straight to a system channel: its owner only.
    let ack = ack_of(&svc, to_channel("sys:alice", "c3", "your plan renews")).await;
    assert_eq!((ack.channel.as_str(), ack.seq), ("sys:alice", 1));
    let (_, message) = next_system_message(&alice).await;
    assert_eq!((message.channel.as_str(), message.seq), ("sys:alice", 1));

    // A retry is the original Ack, duplicate, and stores nothing.
    let before = heads(&[&alice, &bob, &carol]).await;
    assert_eq!(before, vec![5, 4, 0]);
    let retry = ack_of(&svc, to_channel(&dm, "c1", "maintenance at noon")).await;
    assert_eq!(
        (retry.channel.as_str(), retry.seq, retry.duplicate),
        (dm.as_str(), 1, true)
    );
    // The same client_msg_id in another channel is another message.
    let other = ack_of(&svc, to_channel("sys:bob", "c1", "hello bob")).await;
    assert_eq!(
        (other.channel.as_str(), other.seq, other.duplicate),
        ("sys:bob", 1, false)
    );
    let (inbox_seq, message) = next_system_message(&bob).await;
    assert_eq!((inbox_seq, message.channel.as_str()), (5, "sys:bob"));
    assert_eq!(heads(&[&alice, &bob, &carol]).await, vec![5, 5, 0]);
    assert_eq!(history(&alice, &dm).await.len(), 2);

    // Targets that do not exist: NOT_FOUND, nothing stored.
    error_of(
        &svc,
        to_channel("g:nope", "c4", "x"),
        ErrorCode::NotFound,
        "no group",
    )
    .await;
    error_of(
        &svc,
        to_channel("dm:alice:ghost", "c5", "x"),
        ErrorCode::NotFound,
        "dm with ghost",
    )
    .await;
    error_of(
        &svc,
        to_channel("sys:ghost", "c6", "x"),
        ErrorCode::NotFound,
        "sys of ghost",
    )
    .await;
    assert_eq!(heads(&[&alice, &bob, &carol]).await, vec![5, 5, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_message_to_users_lands_in_each_users_own_system_channel() {
    let (broker, secret) = start().await;
    let svc = service(&broker, &secret).await;
    let alice = broker.client("alice", "phone").await;
    let bob = broker.client("bob", "phone").await;
    let carol = broker.client("carol", "phone").await;

    let ack = ack_of(&svc, to_users(&["bob", "alice"], "u1", "welcome")).await;
    assert_eq!(
        (ack.channel.as_str(), ack.seq, ack.duplicate),
        ("", 0, false)
    );
    assert!(ack.ts_ms > 0);
    for (client, channel) in [(&alice, "sys:alice"), (&bob, "sys:bob")] {
        let (inbox_seq, message) = next_system_message(client).await;
        assert_eq!(
            (
                inbox_seq,
                message.channel.as_str(),
                message.seq,
                message.text.as_str()
            ),
            (1, channel, 1, "welcome")
        );
        assert_eq!(message.ts_ms, ack.ts_ms);
    }
    let ack = ack_of(&svc, to_users(&["alice"], "u2", "second")).await;
    assert_eq!((ack.channel.as_str(), ack.seq), ("", 0));
    let (_, message) = next_system_message(&alice).await;
    assert_eq!((message.channel.as_str(), message.seq), ("sys:alice", 2));

    // The owner reads it with Sync and History; nobody else can.
    let synced: Vec<(u64, String, u64)> = sync_all(&alice, 0)
        .await
        .iter()
        .map(|e| {
            (
                e.inbox_seq,
                message_of(e).channel.clone(),
                message_of(e).seq,
            )
        })
        .collect();
    assert_eq!(
        synced,
        vec![
            (1, "sys:alice".to_string(), 1),
            (2, "sys:alice".to_string(), 2)
        ]
    );
    assert_eq!(
        history(&alice, "sys:alice").await,
        vec![
            (2, "second".to_string(), true),
            (1, "welcome".to_string(), true)
        ]
    );
    for (client, channel) in [
        (&bob, "sys:alice"),
        (&alice, "sys:bob"),
        (&carol, "sys:bob"),
    ] {
        let reply = client
            .request(wire::history(channel, 0, 10))
            .await
            .expect("reply");
        wire::expect_error(&reply, ErrorCode::NotMember);
    }
    assert!(
        history(&carol, "sys:carol").await.is_empty(),
        "carol was not listed"
    );
    assert_eq!(inbox_head(&carol).await, 0);

    // A retry: duplicate, no new copy (the users' order does not matter).
    let retry = ack_of(&svc, to_users(&["alice", "bob"], "u1", "welcome")).await;
    assert_eq!(
        (retry.channel.as_str(), retry.seq, retry.duplicate),
        ("", 0, true)
    );
    assert_eq!(heads(&[&alice, &bob, &carol]).await, vec![2, 1, 0]);
    assert_eq!(history(&bob, "sys:bob").await.len(), 1);

    // One unknown user: NOT_FOUND, and nobody gets a copy.
    error_of(
        &svc,
        to_users(&["alice", "ghost", "carol"], "u3", "all or nothing"),
        ErrorCode::NotFound,
        "an unknown user",
    )
    .await;
    assert_eq!(heads(&[&alice, &bob, &carol]).await, vec![2, 1, 0]);
    assert!(history(&carol, "sys:carol").await.is_empty());
    // The refused id was not used up, and sys:alice has no gap.
    let ack = ack_of(&svc, to_users(&["alice", "carol"], "u3", "all or nothing")).await;
    assert!(!ack.duplicate);
    let (_, message) = next_system_message(&alice).await;
    assert_eq!((message.channel.as_str(), message.seq), ("sys:alice", 3));
    let (_, message) = next_system_message(&carol).await;
    assert_eq!((message.channel.as_str(), message.seq), ("sys:carol", 1));

    // Malformed requests: BAD_REQUEST, nothing stored.
    let both = request::Body::System(v1::SystemMessage {
        channel: "sys:alice".into(),
        client_msg_id: "b1".into(),
        text: "x".into(),
        users: vec!["alice".into()],
    });
    error_of(&svc, both, ErrorCode::BadRequest, "channel and users").await;
    error_of(
        &svc,
        to_users(&[], "b2", "x"),
        ErrorCode::BadRequest,
        "no target",
    )
    .await;
    error_of(
        &svc,
        to_users(&["alice"], "b3", ""),
        ErrorCode::BadRequest,
        "empty text",
    )
    .await;
    error_of(
        &svc,
        to_users(&[SERVICE], "b4", "x"),
        ErrorCode::BadRequest,
        "a service",
    )
    .await;
    error_of(
        &svc,
        to_users(&["a b"], "b5", "x"),
        ErrorCode::BadRequest,
        "a bad id",
    )
    .await;
    error_of(
        &svc,
        to_channel("nope", "b6", "x"),
        ErrorCode::BadRequest,
        "a bad channel",
    )
    .await;

    // Users may not send system messages, not even to their own channel.
    for channel in ["sys:alice", "dm:alice:bob"] {
        error_of(
            &alice,
            to_channel(channel, "f1", "fake"),
            ErrorCode::Forbidden,
            channel,
        )
        .await;
    }
    error_of(
        &alice,
        to_users(&["bob"], "f2", "fake"),
        ErrorCode::Forbidden,
        "users",
    )
    .await;
    assert_eq!(heads(&[&alice, &bob, &carol]).await, vec![3, 1, 1]);
    assert_eq!(history(&alice, "sys:alice").await.len(), 3);
    assert!(history(&alice, "dm:alice:bob").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_system_messages_are_idempotent_across_transports_and_restarts() {
    let (mut broker, secret) = start().await;
    let dm = direct_channel("alice", "bob");

    let body = json!({ "channel": dm, "client_msg_id": "h1", "text": "from http" });
    let answer = post(&broker, Some(&secret), body.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(entries(&answer), vec![(dm.clone(), 1)]);
    assert_eq!(answer.json["duplicate"], json!(false));
    let ts_ms = answer.json["ts_ms"].as_i64().expect("ts_ms");
    assert!(ts_ms > 0);

    let users = json!({ "users": ["bob", "alice"], "client_msg_id": "h2", "text": "to each" });
    let answer = post(&broker, Some(&secret), users.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let mut copies = entries(&answer);
    copies.sort();
    assert_eq!(
        copies,
        vec![("sys:alice".to_string(), 1), ("sys:bob".to_string(), 1)]
    );
    assert_eq!(answer.json["duplicate"], json!(false));

    // What was stored: system = true, in the right channels.
    let alice = broker.client("alice", "phone").await;
    let bob = broker.client("bob", "phone").await;
    assert_eq!(
        history(&alice, &dm).await,
        vec![(1, "from http".to_string(), true)]
    );
    assert_eq!(
        history(&bob, "sys:bob").await,
        vec![(1, "to each".to_string(), true)]
    );
    let events = sync_all(&alice, 0).await;
    let got: Vec<(String, u64, bool, String)> = events
        .iter()
        .map(|e| {
            let m = message_of(e);
            (m.channel.clone(), m.seq, m.system, m.sender.clone())
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (dm.clone(), 1, true, SERVICE.to_string()),
            ("sys:alice".to_string(), 1, true, SERVICE.to_string())
        ]
    );
    assert!(events
        .iter()
        .all(|e| matches!(e.body, Some(envelope::Body::Message(_)))));

    // Retries over HTTP: the originals, duplicate.
    let answer = post(&broker, Some(&secret), body.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(entries(&answer), vec![(dm.clone(), 1)]);
    assert_eq!(answer.json["duplicate"], json!(true));
    assert_eq!(
        answer.json["ts_ms"].as_i64(),
        Some(ts_ms),
        "the original ts_ms"
    );
    let answer = post(&broker, Some(&secret), users.clone()).await;
    let mut again = entries(&answer);
    again.sort();
    assert_eq!(again, copies);
    assert_eq!(answer.json["duplicate"], json!(true));

    // Retries over MQTT of what was sent over HTTP: duplicates too.
    let svc = service(&broker, &secret).await;
    let retry = ack_of(&svc, to_channel(&dm, "h1", "from http")).await;
    assert_eq!(
        (
            retry.channel.as_str(),
            retry.seq,
            retry.duplicate,
            retry.ts_ms
        ),
        (dm.as_str(), 1, true, ts_ms)
    );
    let retry = ack_of(&svc, to_users(&["alice", "bob"], "h2", "to each")).await;
    assert_eq!(
        (retry.channel.as_str(), retry.seq, retry.duplicate),
        ("", 0, true)
    );
    // And an HTTP retry of an MQTT send.
    let ack = ack_of(&svc, to_channel(&dm, "m1", "from mqtt")).await;
    assert_eq!((ack.seq, ack.duplicate), (2, false));
    let answer = post(
        &broker,
        Some(&secret),
        json!({ "channel": dm, "client_msg_id": "m1", "text": "from mqtt" }),
    )
    .await;
    assert_eq!(entries(&answer), vec![(dm.clone(), 2)]);
    assert_eq!(answer.json["duplicate"], json!(true));
    assert_eq!(heads(&[&alice, &bob]).await, vec![3, 3]);
    drop((alice, bob, svc));

    // Idempotence keys are durable.
    broker.restart().await;
    let answer = post(&broker, Some(&secret), body).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(entries(&answer), vec![(dm.clone(), 1)]);
    assert_eq!(answer.json["duplicate"], json!(true));
    let answer = post(&broker, Some(&secret), users).await;
    assert_eq!(answer.json["duplicate"], json!(true), "{}", answer.text);
    let alice = broker.client("alice", "phone").await;
    let bob = broker.client("bob", "phone").await;
    assert_eq!(heads(&[&alice, &bob]).await, vec![3, 3]);
    assert_eq!(history(&alice, &dm).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_system_messages_refuse_bad_bearers_and_bad_bodies_with_json_errors() {
    let (broker, secret) = start().await;
    let token = broker.login("alice", "phone").await;
    let good = json!({ "users": ["alice"], "client_msg_id": "g1", "text": "hi" });

    for (bearer, status, code, what) in [
        (None, 401, "UNAUTHORIZED", "no bearer"),
        (Some("not-a-secret"), 401, "UNAUTHORIZED", "a bad bearer"),
        (Some("pw-alice"), 401, "UNAUTHORIZED", "a user's password"),
        (
            Some(token.as_str()),
            403,
            "FORBIDDEN",
            "a user's login token",
        ),
    ] {
        let answer = post(&broker, bearer, good.clone()).await;
        assert_eq!(
            (answer.status, answer.error_code()),
            (status, code),
            "{what}: {}",
            answer.text
        );
        assert!(
            answer.json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: a message: {}",
            answer.text
        );
    }

    // Not JSON at all.
    let stream = tokio::net::TcpStream::connect(broker.http_addr())
        .await
        .expect("connect");
    let answer = parley_tests::http::send(
        stream,
        &broker.http_addr().to_string(),
        "POST",
        PATH,
        Some(&secret),
        Some("{not json"),
    )
    .await;
    assert_eq!(
        (answer.status, answer.error_code()),
        (400, "BAD_REQUEST"),
        "{}",
        answer.text
    );

    for (body, status, code, what) in [
        (
            json!({ "users": ["alice"], "client_msg_id": "b1" }),
            400,
            "BAD_REQUEST",
            "no text",
        ),
        (
            json!({ "users": ["alice"], "text": 5 }),
            400,
            "BAD_REQUEST",
            "text not a string",
        ),
        (
            json!({ "users": "alice", "text": "x" }),
            400,
            "BAD_REQUEST",
            "users not a list",
        ),
        (json!({ "text": "x" }), 400, "BAD_REQUEST", "no target"),
        (
            json!({ "channel": "sys:alice", "users": ["alice"], "text": "x" }),
            400,
            "BAD_REQUEST",
            "both targets",
        ),
        (
            json!({ "users": ["alice"], "text": "" }),
            400,
            "BAD_REQUEST",
            "empty text",
        ),
        (
            json!({ "channel": "nope", "text": "x" }),
            400,
            "BAD_REQUEST",
            "a bad channel",
        ),
        (
            json!({ "users": ["alice", "ghost"], "text": "x" }),
            404,
            "NOT_FOUND",
            "an unknown user",
        ),
        (
            json!({ "channel": "g:nope", "text": "x" }),
            404,
            "NOT_FOUND",
            "no such group",
        ),
        (
            json!({ "channel": "sys:ghost", "text": "x" }),
            404,
            "NOT_FOUND",
            "sys of ghost",
        ),
    ] {
        let answer = post(&broker, Some(&secret), body).await;
        assert_eq!(
            (answer.status, answer.error_code()),
            (status, code),
            "{what}: {}",
            answer.text
        );
    }

    // Nothing was stored by any refused request; the good one gets seq 1.
    let alice = broker.client("alice", "phone").await;
    assert_eq!(inbox_head(&alice).await, 0);
    let answer = post(&broker, Some(&secret), good).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(entries(&answer), vec![("sys:alice".to_string(), 1)]);
    let (inbox_seq, message) = next_system_message(&alice).await;
    assert_eq!(
        (inbox_seq, message.channel.as_str(), message.seq),
        (1, "sys:alice", 1)
    );
}

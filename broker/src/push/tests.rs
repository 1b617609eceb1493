//! The push service against a real HTTP gateway: an axum server on
//! 127.0.0.1 that records each request and answers as its script says,
//! and a store in a temp dir.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use parley_proto::v1::ChatMessage;
use parley_storage::Store;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::time::Instant;

use super::*;

/// Retries in tests: 20 ms, 40 ms, ... at most 100 ms.
const FAST: Backoff = Backoff {
    first: Duration::from_millis(20),
    max: Duration::from_millis(100),
};
/// How long a test waits for a condition.
const PATIENCE: Duration = Duration::from_secs(15);

/// How the fake gateway answers one request.
#[derive(Clone, Debug)]
enum Reply {
    /// This status and body.
    Status(u16, &'static str),
    /// Never answers.
    Hang,
    /// 200 `{}` after this long.
    Slow(Duration),
    /// 200 with a body larger than the client reads.
    Huge,
}

/// One request the gateway received.
#[derive(Clone, Debug)]
struct Recorded {
    path: String,
    content_type: Option<String>,
    body: Bytes,
}

impl Recorded {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the notification is JSON")
    }
}

#[derive(Default)]
struct Seen {
    script: VecDeque<Reply>,
    requests: Vec<Recorded>,
    in_flight: usize,
    max_in_flight: usize,
}

type Shared = Arc<Mutex<Seen>>;

/// A push gateway on 127.0.0.1: answers each request with the next reply of
/// its script, 200 `{}` once the script is used up.
struct FakeGateway {
    url: String,
    seen: Shared,
}

impl FakeGateway {
    async fn start(script: Vec<Reply>) -> FakeGateway {
        let seen: Shared = Arc::new(Mutex::new(Seen {
            script: script.into(),
            ..Seen::default()
        }));
        let app = axum::Router::new()
            .route(NOTIFY_PATH, post(answer))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeGateway {
            url: format!("http://{addr}{NOTIFY_PATH}"),
            seen,
        }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().requests.clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().requests.len()
    }

    fn max_in_flight(&self) -> usize {
        self.seen.lock().unwrap().max_in_flight
    }
}

/// Counts a request in flight until the handler ends (or is dropped).
struct InFlight(Shared);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().unwrap().in_flight -= 1;
    }
}

async fn answer(State(seen): State<Shared>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let reply = {
        let mut seen = seen.lock().unwrap();
        seen.requests.push(Recorded {
            path: uri.path().to_owned(),
            content_type: headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body,
        });
        seen.in_flight += 1;
        seen.max_in_flight = seen.max_in_flight.max(seen.in_flight);
        seen.script.pop_front().unwrap_or(Reply::Status(200, "{}"))
    };
    let _in_flight = InFlight(seen);
    match reply {
        Reply::Status(code, body) => {
            let status = StatusCode::from_u16(code).unwrap();
            (status, body).into_response()
        }
        Reply::Hang => std::future::pending().await,
        Reply::Slow(delay) => {
            tokio::time::sleep(delay).await;
            (StatusCode::OK, "{}").into_response()
        }
        Reply::Huge => (StatusCode::OK, "x".repeat(200_000)).into_response(),
    }
}

/// Polls `check` every 10 ms until it holds; panics after [`PATIENCE`].
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn config(gateway: &FakeGateway) -> PushConfig {
    PushConfig {
        gateway: Some(gateway.url.clone()),
        max_attempts: 3,
        timeout: Duration::from_secs(5),
    }
}

fn message(channel: &str, seq: u64, sender: &str, text: &str) -> ChatMessage {
    ChatMessage {
        channel: channel.to_owned(),
        seq,
        sender: sender.to_owned(),
        text: text.to_owned(),
        ts_ms: 1_700_000_000_000 + seq as i64,
        client_msg_id: format!("c{seq}"),
        system: false,
    }
}

fn temp_store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

/// Commits a job notifying `user` of `message`, as the engine does, and wakes
/// the worker.
fn notify(push: &Push, store: &Store, user: &str, message: &ChatMessage) {
    let mut batch = Batch::new();
    push.queue(&mut batch, user, message).unwrap();
    store.commit(batch, true).unwrap();
    push.wake();
}

fn jobs(store: &Store) -> Vec<(u64, PushJob)> {
    store.push_jobs(0, 1000).unwrap()
}

/// Stores `messages` in their channel and gives `user` the channel, so
/// they count as unread.
fn unread_messages(store: &Store, user: &str, messages: &[ChatMessage]) {
    let mut batch = Batch::new();
    for message in messages {
        batch.put_message(message).unwrap();
        batch.put_user_channel(user, &message.channel).unwrap();
    }
    store.commit(batch, true).unwrap();
}

#[tokio::test]
async fn the_notification_carries_every_field_of_the_contract() {
    let metrics = crate::metrics::install();
    let gateway = FakeGateway::start(vec![]).await;
    let (_dir, store) = temp_store();
    let push = Push::start_with(store.clone(), config(&gateway), FAST).unwrap();
    assert!(push.enabled());
    push.register("bob", "phone", "com.example.ios", "key-1")
        .await
        .unwrap();
    push.register("bob", "tablet", "com.example.android", "key-2")
        .await
        .unwrap();
    let text = format!("hello {}", "ü".repeat(120));
    let messages: Vec<_> = (1..=3)
        .map(|seq| message("dm:alice:bob", seq, "alice", &text))
        .collect();
    unread_messages(&store, "bob", &messages);

    notify(&push, &store, "bob", &messages[2]);
    until("the job is sent and deleted", || {
        gateway.count() == 1 && jobs(&store).is_empty()
    })
    .await;

    let request = &gateway.requests()[0];
    assert_eq!(request.path, NOTIFY_PATH);
    assert_eq!(request.content_type.as_deref(), Some("application/json"));
    let registered = store.push_registrations("bob").unwrap();
    let ts = |device: usize| registered[device].1.registered_ms / 1000;
    let body: String = text.chars().take(100).collect();
    let expected = json!({
        "notification": {
            "event_id": "dm:alice:bob/3",
            "room_id": "dm:alice:bob",
            "type": "chat.v1.message",
            "sender": "alice",
            "content": { "msgtype": "m.text", "body": body },
            "counts": { "unread": 3 },
            "prio": "high",
            "devices": [
                { "app_id": "com.example.ios", "pushkey": "key-1",
                  "pushkey_ts": ts(0), "data": {} },
                { "app_id": "com.example.android", "pushkey": "key-2",
                  "pushkey_ts": ts(1), "data": {} },
            ],
        }
    });
    assert_eq!(request.json(), expected);
    assert!(ts(0) > 1_600_000_000, "pushkey_ts is in seconds");
    let metrics = crate::metrics::render(&metrics);
    assert!(
        metrics.contains("parley_push_notifications_total{result=\"sent\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("parley_push_send_seconds"), "{metrics}");
    push.stop().await;
}

#[tokio::test]
async fn a_5xx_is_retried_until_it_is_sent() {
    let gateway =
        FakeGateway::start(vec![Reply::Status(500, "oops"), Reply::Status(503, "")]).await;
    let (_dir, store) = temp_store();
    let push = Push::start_with(store.clone(), config(&gateway), FAST).unwrap();
    push.register("bob", "phone", "app", "key").await.unwrap();
    notify(&push, &store, "bob", &message("g:team", 1, "alice", "hi"));
    until("the third attempt is sent and the job deleted", || {
        gateway.count() == 3 && jobs(&store).is_empty()
    })
    .await;
    let bodies: Vec<Value> = gateway.requests().iter().map(Recorded::json).collect();
    assert_eq!(bodies[0], bodies[2], "the same notification each time");
    push.stop().await;
}

#[tokio::test]
async fn a_4xx_is_dropped_and_never_retried() {
    let gateway = FakeGateway::start(vec![Reply::Status(400, "{\"error\": \"bad\"}")]).await;
    let (_dir, store) = temp_store();
    let push = Push::start_with(store.clone(), config(&gateway), FAST).unwrap();
    push.register("bob", "phone", "app", "key").await.unwrap();
    notify(&push, &store, "bob", &message("g:team", 1, "alice", "hi"));
    until("the job is deleted", || {
        gateway.count() == 1 && jobs(&store).is_empty()
    })
    .await;
    // several retry delays later, still one request
    tokio::time::sleep(FAST.max * 3).await;
    assert_eq!(gateway.count(), 1);
    assert!(
        push.has_registrations("bob"),
        "a refusal is not a rejection"
    );
    push.stop().await;
}

#[tokio::test]
async fn a_429_is_retried() {
    let gateway = FakeGateway::start(vec![Reply::Status(429, "slow down")]).await;
    let (_dir, store) = temp_store();
    let push = Push::start_with(store.clone(), config(&gateway), FAST).unwrap();
    push.register("bob", "phone", "app", "key").await.unwrap();
    notify(&push, &store, "bob", &message("g:team", 1, "alice", "hi"));
    until("the retry is sent", || {
        gateway.count() == 2 && jobs(&store).is_empty()
    })
    .await;
    push.stop().await;
}

#[tokio::test]
async fn out_of_attempts_the_job_is_dropped() {
    let gateway = FakeGateway::start(vec![Reply::Status(502, ""); 10]).await;
    let (_dir, store) = temp_store();
    let push = Push::start_with(store.clone(), config(&gateway), FAST).unwrap();
    push.register("bob", "phone", "app", "key").await.unwrap();
    notify(&push, &store, "bob", &message("g:team", 1, "alice", "hi"));
    until("max_attempts (3) requests, then the job is deleted", || {
        gateway.count() == 3 && jobs(&store).is_empty()
    })
    .await;
    tokio::time::sleep(FAST.max * 3).await;
    assert_eq!(gateway.count(), 3);
    push.stop().await;
}

#[tokio::test]
async fn rejected_pushkeys_are_unregistered() {
    let gateway = FakeGateway::start(vec![
        Reply::Status(200, r#"{"rejected": ["key-1"]}"#),
        Reply::Status(200, r#"{"rejected": ["key-2"]}"#),
    ])
    .await;
    let (_dir, store) = temp_store();
    let push = Push::start_with(store.clone(), config(&gateway), FAST).unwrap();
    push.register("bob", "phone", "app", "key-1").await.unwrap();
    push.register("bob", "tablet", "app", "key-2")
        .await
        .unwrap();
    push.register("carol", "phone", "app", "key-1")
        .await
        .unwrap();

    notify(&push, &store, "bob", &message("g:team", 1, "alice", "one"));
    until("key-1 is unregistered", || {
        let left = store.push_registrations("bob").unwrap();
        left.len() == 1 && jobs(&store).is_empty()
    })
    .await;
    assert_eq!(store.push_registrations("bob").unwrap()[0].0, "tablet");
    assert!(push.has_registrations("bob"));
    assert_eq!(
        store.push_registrations("carol").unwrap().len(),
        1,
        "only the notified user's pushkeys"
    );

    notify(&push, &store, "bob", &message("g:team", 2, "alice", "two"));
    until("bob has no registration left", || {
        !push.has_registrations("bob")
    })
    .await;
    let devices = &gateway.requests()[1].json()["notification"]["devices"];
    assert_eq!(devices.as_array().unwrap().len(), 1, "{devices}");
    assert!(store.push_registrations("bob").unwrap().is_empty());

    // no device left: the job is dropped without a request
    notify(
        &push,
        &store,
        "bob",
        &message("g:team", 3, "alice", "three"),
    );
    until("the job is deleted", || jobs(&store).is_empty()).await;
    assert_eq!(gateway.count(), 2);
    push.stop().await;
}

#[tokio::test]
async fn a_hanging_gateway_is_cut_off_by_the_timeout_and_retried() {
    let gateway = FakeGateway::start(vec![Reply::Hang]).await;
    let (_dir, store) = temp_store();
    let config = PushConfig {
        timeout: Duration::from_millis(300),
        ..config(&gateway)
    };
    let push = Push::start_with(store.clone(), config, FAST).unwrap();
    push.register("bob", "phone", "app", "key").await.unwrap();
    let started = Instant::now();
    notify(&push, &store, "bob", &message("g:team", 1, "alice", "hi"));
    until("the retry is sent and the job deleted", || {
        gateway.count() == 2 && jobs(&store).is_empty()
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    push.stop().await;
}

#[tokio::test]
async fn unreadable_answers_count_as_sent() {
    let gateway = FakeGateway::start(vec![
        Reply::Status(200, "<html>not json</html>"),
        Reply::Status(202, r#"{"rejected": "key"}"#),
        Reply::Huge,
        Reply::Status(200, ""),
    ])
    .await;
    let (_dir, store) = temp_store();
    let push = Push::start_with(store.clone(), config(&gateway), FAST).unwrap();
    push.register("bob", "phone", "app", "key").await.unwrap();
    for seq in 1..=4 {
        notify(&push, &store, "bob", &message("g:team", seq, "alice", "hi"));
    }
    until("every job is deleted", || {
        gateway.count() == 4 && jobs(&store).is_empty()
    })
    .await;
    tokio::time::sleep(FAST.max * 3).await;
    assert_eq!(gateway.count(), 4, "none was retried");
    assert!(push.has_registrations("bob"));
    push.stop().await;
}

#[tokio::test]
async fn at_most_eight_notifications_are_in_flight() {
    let gateway = FakeGateway::start(vec![Reply::Slow(Duration::from_millis(300)); 30]).await;
    let (_dir, store) = temp_store();
    let push = Push::start_with(store.clone(), config(&gateway), FAST).unwrap();
    push.register("bob", "phone", "app", "key").await.unwrap();
    let mut batch = Batch::new();
    for seq in 1..=30 {
        let message = message("g:team", seq, "alice", "hi");
        push.queue(&mut batch, "bob", &message).unwrap();
    }
    store.commit(batch, true).unwrap();
    push.wake();
    until("all 30 are sent", || {
        gateway.count() == 30 && jobs(&store).is_empty()
    })
    .await;
    assert_eq!(gateway.max_in_flight(), MAX_IN_FLIGHT);
    push.stop().await;
}

#[tokio::test]
async fn jobs_left_in_the_store_are_sent_after_a_restart() {
    let down = FakeGateway::start(vec![Reply::Status(500, ""); 10]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let slow = Backoff {
        first: Duration::from_secs(3600),
        max: Duration::from_secs(3600),
    };
    let push = Push::start_with(store.clone(), config(&down), slow).unwrap();
    push.register("bob", "phone", "app", "key").await.unwrap();
    notify(&push, &store, "bob", &message("g:team", 1, "alice", "one"));
    notify(&push, &store, "bob", &message("g:team", 2, "alice", "two"));
    until("both failed once", || {
        jobs(&store).iter().all(|(_, job)| job.attempts == 1) && down.count() == 2
    })
    .await;
    push.stop().await;
    drop(push);
    drop(store);

    let store = Store::open(dir.path()).unwrap();
    let left = jobs(&store);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|(_, job)| job.attempts == 1), "{left:?}");

    let up = FakeGateway::start(vec![]).await;
    let push = Push::start_with(store.clone(), config(&up), FAST).unwrap();
    assert!(
        push.has_registrations("bob"),
        "the index is loaded at start"
    );
    let stored = store.last_push_job_id().unwrap();
    assert_eq!(
        push.next_job_id(),
        stored + 1,
        "ids go on after the stored ones"
    );
    until("both are sent after the restart", || {
        up.count() == 2 && jobs(&store).is_empty()
    })
    .await;
    let mut events: Vec<String> = up
        .requests()
        .iter()
        .map(|r| r.json()["notification"]["event_id"].to_string())
        .collect();
    events.sort();
    assert_eq!(events, vec!["\"g:team/1\"", "\"g:team/2\""], "sent at once");
    push.stop().await;
}

#[tokio::test]
async fn without_a_gateway_jobs_are_only_logged_and_deleted() {
    let (_dir, store) = temp_store();
    let config = PushConfig {
        gateway: None,
        max_attempts: 8,
        timeout: Duration::from_secs(10),
    };
    let push = Push::start_with(store.clone(), config, FAST).unwrap();
    assert!(!push.enabled());
    push.register("bob", "phone", "app", "key").await.unwrap();
    notify(&push, &store, "bob", &message("g:team", 1, "alice", "hi"));
    until("the job is deleted", || jobs(&store).is_empty()).await;
    push.stop().await;
}

#[tokio::test]
async fn registrations_keep_the_index_in_step() {
    let (dir, store) = temp_store();
    let config = PushConfig {
        gateway: None,
        max_attempts: 8,
        timeout: Duration::from_secs(10),
    };
    let push = Push::start(store.clone(), config.clone()).unwrap();
    assert!(!push.has_registrations("bob"));
    push.register("bob", "phone", "app", "k1").await.unwrap();
    push.register("bob", "tablet", "app", "k2").await.unwrap();
    assert!(push.has_registrations("bob"));
    assert!(!push.has_registrations("bo"));
    assert!(push.unregister("bob", "phone").await.unwrap());
    assert!(!push.unregister("bob", "phone").await.unwrap());
    assert!(push.has_registrations("bob"), "the tablet is left");
    push.register("bob", "tablet", "app2", "k3").await.unwrap();
    let left = store.push_registrations("bob").unwrap();
    assert_eq!(
        (
            left.len(),
            left[0].1.app_id.as_str(),
            left[0].1.pushkey.as_str()
        ),
        (1, "app2", "k3"),
        "a device re-registers in place"
    );
    assert!(push.unregister("bob", "tablet").await.unwrap());
    assert!(!push.has_registrations("bob"));
    push.register("carol", "phone", "app", "k").await.unwrap();
    push.stop().await;
    drop(push);
    drop(store);

    let store = Store::open(dir.path()).unwrap();
    let push = Push::start(store, config).unwrap();
    assert!(push.has_registrations("carol"));
    assert!(!push.has_registrations("bob"));
    push.stop().await;
}

#[test]
fn bad_settings_name_their_key() {
    let good = PushConfig {
        gateway: Some("https://push.example.com/_matrix/push/v1/notify".to_owned()),
        max_attempts: 8,
        timeout: Duration::from_secs(10),
    };
    good.validate().unwrap();
    let cases = [
        (
            PushConfig {
                gateway: Some("ftp://push.example.com".to_owned()),
                ..good.clone()
            },
            "push_gateway",
        ),
        (
            PushConfig {
                max_attempts: 0,
                ..good.clone()
            },
            "push_max_attempts",
        ),
        (
            PushConfig {
                timeout: Duration::ZERO,
                ..good.clone()
            },
            "push_timeout_secs",
        ),
    ];
    for (config, key) in cases {
        assert_eq!(config.validate().unwrap_err().key(), Some(key));
    }
}

#[tokio::test]
async fn start_refuses_a_bad_gateway_url() {
    let (_dir, store) = temp_store();
    let config = PushConfig {
        gateway: Some("push.example.com/notify".to_owned()),
        max_attempts: 8,
        timeout: Duration::from_secs(10),
    };
    let error = Push::start(store, config).unwrap_err();
    assert!(error.to_string().contains("push_gateway"), "{error}");
}

#[test]
fn start_needs_a_runtime() {
    let (_dir, store) = temp_store();
    let config = PushConfig {
        gateway: None,
        max_attempts: 8,
        timeout: Duration::from_secs(10),
    };
    assert!(Push::start(store, config).is_err());
}

#[test]
fn the_config_keys_reach_the_push_config() {
    let mut config = Config::defaults();
    config.push_gateway = Some("http://gw/_matrix/push/v1/notify".to_owned());
    config.push_max_attempts = 4;
    config.push_timeout_secs = 3;
    assert_eq!(
        PushConfig::from_config(&config),
        PushConfig {
            gateway: Some("http://gw/_matrix/push/v1/notify".to_owned()),
            max_attempts: 4,
            timeout: Duration::from_secs(3),
        }
    );
}

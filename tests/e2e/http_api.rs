//! The HTTP API against a real broker: register, login with service
//! discovery, the JSON errors of every bad input, failed-login limits.

use parley_tests::TestBroker;
use serde_json::{json, Value};

const USERS: &[(&str, &str)] = &[("alice", "alice-password"), ("bob", "bob-password")];

fn register_body(user: &str, password: &str) -> Option<Value> {
    Some(json!({ "user_id": user, "password": password }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_creates_an_account_once_and_refuses_bad_ones_with_json_errors() {
    let broker = TestBroker::start(USERS).await;
    let created = broker
        .http(
            "POST",
            "/v1/register",
            None,
            register_body("carol", "carol-password"),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.json["user_id"], "carol");

    let taken = broker
        .http(
            "POST",
            "/v1/register",
            None,
            register_body("carol", "another-password"),
        )
        .await;
    assert_eq!(
        (taken.status, taken.error_code()),
        (409, "CONFLICT"),
        "{}",
        taken.text
    );
    let taken = broker
        .http(
            "POST",
            "/v1/register",
            None,
            register_body("alice", "whatever-pw"),
        )
        .await;
    assert_eq!(
        taken.status, 409,
        "an account made another way is taken too"
    );

    let long_id = "x".repeat(65);
    for (user, password, what) in [
        ("bad id", "long-enough", "an id with a space"),
        ("svc:bot", "long-enough", "a service id"),
        (long_id.as_str(), "long-enough", "a 65-character id"),
        ("", "long-enough", "an empty id"),
        ("dave", "short", "a 5-character password"),
        ("dave", "", "an empty password"),
    ] {
        let answer = broker
            .http("POST", "/v1/register", None, register_body(user, password))
            .await;
        assert_eq!(
            (answer.status, answer.error_code()),
            (400, "BAD_REQUEST"),
            "{what}: {}",
            answer.text
        );
        assert!(
            !answer.json["error"]["message"]
                .as_str()
                .unwrap_or("")
                .is_empty(),
            "{what}"
        );
    }
    for raw in [
        "not json",
        "{\"user_id\": \"dave\"}",
        "[]",
        "{\"user_id\": 5, \"password\": \"long-enough\"}",
    ] {
        let answer =
            parley_tests::http::call_raw(broker.http_addr(), "POST", "/v1/register", raw).await;
        assert_eq!(
            (answer.status, answer.error_code()),
            (400, "BAD_REQUEST"),
            "{raw}: {}",
            answer.text
        );
    }
    let huge = json!({ "user_id": "dave", "password": "p".repeat(100_000) });
    let answer = broker.http("POST", "/v1/register", None, Some(huge)).await;
    assert_eq!(
        (answer.status, answer.error_code()),
        (413, "TOO_LARGE"),
        "{}",
        answer.text
    );

    // The registered account logs in; the refused ones do not exist.
    let token = broker_login(&broker, "carol", "carol-password", "phone").await;
    assert!(token.starts_with("pt_"), "{token}");
    let dave = json!({ "user_id": "dave", "password": "long-enough", "device_id": "phone" });
    assert_eq!(
        broker
            .http("POST", "/v1/login", None, Some(dave))
            .await
            .status,
        401
    );
}

async fn broker_login(broker: &TestBroker, user: &str, password: &str, device: &str) -> String {
    let body = json!({ "user_id": user, "password": password, "device_id": device });
    let answer = broker.http("POST", "/v1/login", None, Some(body)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.json["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_answers_a_token_its_expiry_and_the_mqtt_endpoints() {
    let broker = TestBroker::start(USERS).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let answer = broker.login_answer("alice", "phone").await;
    let token = answer["token"].as_str().unwrap();
    assert!(token.starts_with("pt_") && token.len() == 67, "{token}");
    let expires_at = answer["expires_at"].as_i64().unwrap();
    let ttl = broker.config().token_ttl_secs as i64;
    assert!(
        (before + ttl - 5..=before + ttl + 5).contains(&expires_at),
        "{expires_at}"
    );
    let host = broker.http_addr().ip();
    let mqtt = &answer["mqtt"];
    assert_eq!(
        mqtt["tcp"],
        format!("mqtt://{host}:{}", broker.mqtt_addr().port())
    );
    assert_eq!(
        mqtt["ws"],
        format!("ws://{host}:{}/mqtt", broker.ws_addr().port())
    );
    assert_eq!(
        (&mqtt["tls"], &mqtt["wss"]),
        (&Value::Null, &Value::Null),
        "TLS is off"
    );

    let second = broker.login("alice", "phone").await;
    assert_ne!(second, token, "every login issues a new token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_discovery_urls_are_advertised_as_they_are() {
    let broker = TestBroker::builder()
        .users(USERS)
        .config(|c| {
            c.discovery_tcp = Some("mqtt://chat.example.com:1883".into());
            c.discovery_wss = Some("wss://chat.example.com/mqtt".into());
        })
        .start()
        .await;
    let mqtt = broker.login_answer("alice", "phone").await["mqtt"].clone();
    assert_eq!(mqtt["tcp"], "mqtt://chat.example.com:1883");
    assert_eq!(mqtt["wss"], "wss://chat.example.com/mqtt");
    assert!(
        mqtt["ws"].as_str().unwrap().starts_with("ws://127.0.0.1:"),
        "{mqtt}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_unknown_users_and_bad_devices_are_refused() {
    let broker = TestBroker::start(USERS).await;
    for (user, password, device, status, code) in [
        ("alice", "wrong-password", "phone", 401, "UNAUTHORIZED"),
        ("nobody", "alice-password", "phone", 401, "UNAUTHORIZED"),
        ("not an id", "alice-password", "phone", 401, "UNAUTHORIZED"),
        ("alice", "alice-password", "bad/device", 400, "BAD_REQUEST"),
        ("alice", "alice-password", "", 400, "BAD_REQUEST"),
    ] {
        let body = json!({ "user_id": user, "password": password, "device_id": device });
        let answer = broker.http("POST", "/v1/login", None, Some(body)).await;
        assert_eq!(
            (answer.status, answer.error_code()),
            (status, code),
            "{user}/{device}: {}",
            answer.text
        );
    }
    let missing = broker
        .http(
            "POST",
            "/v1/login",
            None,
            Some(json!({ "user_id": "alice" })),
        )
        .await;
    assert_eq!(missing.status, 400);
    let get = broker.http("GET", "/v1/login", None, None).await;
    assert_eq!((get.status, get.error_code()), (405, "BAD_REQUEST"));
    let unknown = broker.http("GET", "/v1/nope", None, None).await;
    assert_eq!((unknown.status, unknown.error_code()), (404, "NOT_FOUND"));
    assert!(unknown.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v1/nope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_limited_per_user_and_address_but_successes_never() {
    let broker = TestBroker::builder()
        .users(USERS)
        .config(|c| {
            c.login_failures_per_user = 3;
            c.login_failures_per_addr = 6;
        })
        .start()
        .await;
    // Many successful logins from one address pass.
    for n in 0..20 {
        broker.login("alice", &format!("device{n}")).await;
    }
    let wrong = |user: &str| {
        Some(json!({ "user_id": user, "password": "wrong-password", "device_id": "d" }))
    };
    for _ in 0..3 {
        assert_eq!(
            broker
                .http("POST", "/v1/login", None, wrong("alice"))
                .await
                .status,
            401
        );
    }
    let limited = broker.http("POST", "/v1/login", None, wrong("alice")).await;
    assert_eq!(
        (limited.status, limited.error_code()),
        (429, "RATE_LIMITED"),
        "{}",
        limited.text
    );
    let right = json!({ "user_id": "alice", "password": "alice-password", "device_id": "d" });
    let locked = broker.http("POST", "/v1/login", None, Some(right)).await;
    assert_eq!(
        locked.status, 429,
        "a locked user is refused even with the right password"
    );
    let connect = parley_tests::Client::connect(broker.options("alice", "phone")).await;
    assert!(connect.is_err(), "the lock covers password CONNECTs too");
    // bob still has his own allowance, until the address runs out.
    for _ in 0..3 {
        assert_eq!(
            broker
                .http("POST", "/v1/login", None, wrong("bob"))
                .await
                .status,
            401
        );
    }
    let carol = broker.http("POST", "/v1/login", None, wrong("carol")).await;
    assert_eq!(carol.status, 429, "the address has used its failures");
    let metrics = broker.http("GET", "/metrics", None, None).await.text;
    assert!(
        metrics.contains("parley_logins_total{result=\"rate_limited\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("parley_refusals_total{reason=\"login_rate_limited\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_answer() {
    let broker = TestBroker::start(USERS).await;
    let health = broker.http("GET", "/v1/health", None, None).await;
    assert_eq!(
        (health.status, health.json.clone()),
        (200, json!({ "status": "ok" }))
    );
    let _alice = broker.client("alice", "phone").await;
    let metrics = broker.http("GET", "/metrics", None, None).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text.contains("parley_connections_total"),
        "{}",
        metrics.text
    );
}

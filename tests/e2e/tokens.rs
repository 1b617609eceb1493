//! Session tokens and service accounts at CONNECT, against a real broker:
//! a token lets in its own client id only, until logout, a password change,
//! expiry; tokens survive a restart; services connect with their secret and
//! may only read their own inbox; the MQTT `Logout` request.

use std::time::Duration;

use parley_broker::accounts;
use parley_proto::v1::{request, ErrorCode};
use parley_tests::{direct_channel, wire, ClientError, RawV5, TestBroker, WAIT};
use serde_json::json;

const USERS: &[(&str, &str)] = &[("alice", "alice-password"), ("bob", "bob-password")];

/// A broker whose CONNECT takes tokens only.
async fn tokens_only() -> TestBroker {
    TestBroker::builder()
        .users(USERS)
        .config(|c| c.allow_password_login = false)
        .start()
        .await
}

async fn refused(broker: &TestBroker, user: &str, device: &str, password: &str) -> bool {
    let opts = broker.options_with(user, device, password);
    matches!(
        parley_tests::Client::connect(opts).await,
        Err(ClientError::Refused(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_connects_its_own_client_id_only_and_passwords_are_off() {
    let broker = tokens_only().await;
    let token = broker.login("alice", "phone").await;
    let alice = broker
        .connect(broker.options_with("alice", "phone", &token))
        .await;
    let bob_token = broker.login("bob", "phone").await;
    let bob = broker
        .connect(broker.options_with("bob", "phone", &bob_token))
        .await;
    let ack = alice
        .send(&direct_channel("alice", "bob"), "hi with a token")
        .await
        .unwrap();
    assert_eq!(ack.seq, 1);
    let got = parley_tests::collect_messages(&bob, 1, WAIT).await;
    assert_eq!(got[0].1.text, "hi with a token");

    assert!(
        refused(&broker, "alice", "laptop", &token).await,
        "another device of alice"
    );
    assert!(
        refused(&broker, "bob", "phone", &token).await,
        "spoofing bob with alice's token"
    );
    assert!(
        refused(&broker, "alice", "phone", "alice-password").await,
        "password CONNECT is off"
    );
    let forged = format!("pt_{}", "0".repeat(64));
    assert!(
        refused(&broker, "alice", "phone", &forged).await,
        "a forged token"
    );
    let metrics = broker.http("GET", "/metrics", None, None).await.text;
    for reason in [
        "token_of_another_client_id",
        "password_login_disabled",
        "unknown_or_revoked_token",
    ] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "{reason} not counted:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_over_http_revokes_the_token_closes_the_connection_and_drops_the_session() {
    let broker = tokens_only().await;
    let token = broker.login("alice", "phone").await;
    let durable = broker
        .options_with("alice", "phone", &token)
        .clean_session(false);
    let alice = broker.connect(durable.clone()).await;
    let laptop_token = broker.login("alice", "laptop").await;
    let laptop = broker
        .connect(broker.options_with("alice", "laptop", &laptop_token))
        .await;

    let answer = broker.http("POST", "/v1/logout", Some(&token), None).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let closed = parley_tests::eventually(Duration::from_secs(1), || !alice.is_connected()).await;
    assert!(closed, "the device's connection is closed within a second");
    assert!(laptop.is_connected(), "other devices stay");
    assert!(
        refused(&broker, "alice", "phone", &token).await,
        "the token is revoked"
    );

    let again = broker.http("POST", "/v1/logout", Some(&token), None).await;
    assert_eq!((again.status, again.error_code()), (401, "UNAUTHORIZED"));
    let none = broker.http("POST", "/v1/logout", None, None).await;
    assert_eq!((none.status, none.error_code()), (401, "UNAUTHORIZED"));

    let fresh = broker.login("alice", "phone").await;
    let back = broker
        .connect(
            broker
                .options_with("alice", "phone", &fresh)
                .clean_session(false),
        )
        .await;
    assert!(!back.session_present(), "the durable session was dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_revokes_every_other_login_and_the_old_password() {
    let broker = TestBroker::start(USERS).await;
    let keep = broker.login("alice", "phone").await;
    let other = broker.login("alice", "tablet").await;
    let phone = broker
        .connect(broker.options_with("alice", "phone", &keep))
        .await;
    let tablet = broker
        .connect(broker.options_with("alice", "tablet", &other))
        .await;
    // A password connection, verified (and cached) before the change.
    let laptop = broker.client("alice", "laptop").await;
    let bob = broker.client("bob", "phone").await;

    let wrong = json!({ "old_password": "not-the-password", "new_password": "brand-new-password" });
    let answer = broker
        .http("POST", "/v1/password", Some(&keep), Some(wrong))
        .await;
    assert_eq!((answer.status, answer.error_code()), (401, "UNAUTHORIZED"));
    let short = json!({ "old_password": "alice-password", "new_password": "short" });
    let answer = broker
        .http("POST", "/v1/password", Some(&keep), Some(short))
        .await;
    assert_eq!((answer.status, answer.error_code()), (400, "BAD_REQUEST"));
    assert!(
        tablet.is_connected() && laptop.is_connected(),
        "refused changes change nothing"
    );

    let change = json!({ "old_password": "alice-password", "new_password": "brand-new-password" });
    let answer = broker
        .http("POST", "/v1/password", Some(&keep), Some(change))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let closed =
        parley_tests::eventually(WAIT, || !tablet.is_connected() && !laptop.is_connected()).await;
    assert!(
        closed,
        "every other connection of alice is closed, the password one included"
    );
    assert!(phone.is_connected() && bob.is_connected());
    assert!(
        refused(&broker, "alice", "tablet", &other).await,
        "other tokens are revoked"
    );
    assert!(
        refused(&broker, "alice", "laptop", "alice-password").await,
        "the cached old password is refused"
    );
    let new = broker.options_with("alice", "laptop", "brand-new-password");
    broker.connect(new).await;
    assert!(
        !refused(&broker, "alice", "phone", &keep).await,
        "the token that asked stays valid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_survive_a_restart_and_expire() {
    let mut broker = TestBroker::builder()
        .users(USERS)
        .config(|c| c.token_ttl_secs = 2)
        .start()
        .await;
    let token = broker.login("alice", "phone").await;
    broker.restart().await;
    let alice = broker
        .connect(broker.options_with("alice", "phone", &token))
        .await;
    alice.disconnect().await.unwrap();
    let expired = parley_tests::eventually_async(Duration::from_secs(10), || async {
        refused(&broker, "alice", "phone", &token).await
    })
    .await;
    assert!(expired, "the token stops working once expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_logout_replies_then_closes_and_revokes_the_token() {
    let broker = tokens_only().await;
    let token = broker.login("alice", "phone").await;
    let opts = parley_tests::raw::v5_options(
        broker.mqtt_addr(),
        "alice:phone",
        "alice",
        &token,
        Some(3600),
    );
    let mut alice = RawV5::connect(opts, "alice", "phone").await.unwrap();
    alice.subscribe_own().await;
    let reply = alice
        .request(request::Body::Logout(Default::default()))
        .await;
    wire::expect_ack(&reply);
    assert!(
        alice.wait_closed(WAIT).await.is_some(),
        "closed after the reply"
    );
    assert!(
        refused(&broker, "alice", "phone", &token).await,
        "the token is revoked"
    );
    let fresh = broker.login("alice", "phone").await;
    let opts = parley_tests::raw::v5_options(
        broker.mqtt_addr(),
        "alice:phone",
        "alice",
        &fresh,
        Some(3600),
    );
    let back = RawV5::connect(opts, "alice", "phone").await.unwrap();
    assert!(!back.session_present, "the durable session is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_connects_with_its_secret_and_may_only_read() {
    let mut broker = tokens_only().await;
    let secret = broker
        .with_store_while_stopped(|store| accounts::add_service(store, "billing").unwrap())
        .await;
    let opts = parley_tests::raw::v5_options(
        broker.mqtt_addr(),
        "svc:billing:worker-1",
        "svc:billing",
        &secret,
        None,
    );
    let mut service = RawV5::connect(opts, "svc:billing", "worker-1")
        .await
        .expect("the secret lets it in");
    let codes = service
        .subscribe(&[
            "inbox/svc:billing",
            "reply/svc:billing/worker-1",
            "inbox/alice",
        ])
        .await;
    assert_eq!(codes.len(), 3);
    assert!(
        format!("{:?}", codes[2]).contains("NotAuthorized"),
        "{codes:?}"
    );
    let page = service
        .request(request::Body::Sync(Default::default()))
        .await;
    assert!(
        matches!(page.body, Some(parley_proto::v1::reply::Body::SyncPage(_))),
        "{page:?}"
    );
    let send = service
        .request(wire::send(&direct_channel("alice", "bob"), "c1", "hi"))
        .await;
    wire::expect_error(&send, ErrorCode::Forbidden);
    let group = service
        .request(wire::create_group("ops", "Ops", &["alice"]))
        .await;
    wire::expect_error(&group, ErrorCode::Forbidden);

    // Another device of the service, the same secret.
    let opts = parley_tests::raw::v5_options(
        broker.mqtt_addr(),
        "svc:billing:worker-2",
        "svc:billing",
        &secret,
        None,
    );
    RawV5::connect(opts, "svc:billing", "worker-2")
        .await
        .expect("any device");
    // The secret is not a password of a user, and not another service's.
    for (client_id, user) in [
        ("billing:x", "billing"),
        ("svc:other:x", "svc:other"),
        ("alice:x", "alice"),
    ] {
        let opts =
            parley_tests::raw::v5_options(broker.mqtt_addr(), client_id, user, &secret, None);
        assert!(
            RawV5::connect(opts, user, "x").await.is_err(),
            "{client_id}"
        );
    }
    let login = json!({ "user_id": "svc:billing", "password": secret, "device_id": "x" });
    assert_eq!(
        broker
            .http("POST", "/v1/login", None, Some(login))
            .await
            .status,
        401
    );
    let logout = broker.http("POST", "/v1/logout", Some(&secret), None).await;
    assert_eq!((logout.status, logout.error_code()), (403, "FORBIDDEN"));
}

//! Presence end to end: a device is online from its CONNECT and while any
//! packet (heartbeat, request, PINGREQ) arrives within `presence_timeout`;
//! offline near its deadline when silent, at once on DISCONNECT, Logout or
//! a password change, only after the timeout when its connection drops. A
//! subscription to `presence/+/{me}` gets each friend's state at once
//! (RETAIN=1), then every change live (RETAIN=0); `last_active_ms`
//! survives a restart. The brokers run with timeouts of 1 to 5 s, so each
//! test takes a few seconds; the ACL on presence topics is in `acl.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parley_proto::v1::Presence;
use parley_tests::{
    befriend, next_presence, wire, Client, PresenceUpdate, RawV4, TestBroker, WAIT,
};
use prost::Message;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const USERS: &[(&str, &str)] = &[
    ("alice", "pw-alice"),
    ("bob", "pw-bob"),
    ("carol", "pw-carol"),
    ("dave", "pw-dave"),
    ("erin", "pw-erin"),
];

/// After a barrier, how long to listen for what must not arrive.
const QUIET: Duration = Duration::from_millis(300);

/// "At once": well within this, whatever the presence timeout.
const AT_ONCE: Duration = Duration::from_secs(2);

/// How often the helpers below send a packet to stay online.
const BEAT: Duration = Duration::from_millis(200);

async fn broker_with_timeout(secs: u64) -> TestBroker {
    TestBroker::builder()
        .users(USERS)
        .config(move |c| c.presence_timeout_secs = secs)
        .start()
        .await
}

/// An SDK client subscribed to `presence/+/{user}` from its CONNECT on.
async fn observer(broker: &TestBroker, user: &str, device: &str) -> Client {
    broker
        .connect(broker.options(user, device).presence(true))
        .await
}

/// An SDK client that sends nothing by itself (keep-alive far above the
/// presence timeout).
async fn quiet_client(broker: &TestBroker, user: &str, device: &str) -> Client {
    broker
        .connect(broker.options(user, device).keep_alive_secs(60))
        .await
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `(subject, online, retained)`; `online` is None for a cleared topic.
fn brief(update: &PresenceUpdate) -> (&str, Option<bool>, bool) {
    (update.subject.as_str(), update.online(), update.retained)
}

/// Reads `client`'s presence updates until one satisfies `want`; returns
/// the updates before it, the match, and when it arrived. Fails the test
/// after `timeout`.
async fn wait_for(
    client: &Client,
    timeout: Duration,
    want: impl Fn(&PresenceUpdate) -> bool,
) -> (Vec<PresenceUpdate>, PresenceUpdate, Instant) {
    let deadline = Instant::now() + timeout;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_presence(left).await {
            Ok(Some(update)) if want(&update) => return (before, update, Instant::now()),
            Ok(Some(update)) => before.push(update),
            Ok(None) => panic!(
                "{}:{}: the awaited presence update did not come within {timeout:?}; got {before:#?}",
                client.user(),
                client.device()
            ),
            Err(e) => panic!("{}: presence closed: {e}", client.user()),
        }
    }
}

/// Waits for `subject` going `online` (live), returns when it arrived.
async fn wait_state(client: &Client, subject: &str, online: bool) -> (PresenceUpdate, Instant) {
    let (before, update, at) = wait_for(client, WAIT, |u| {
        u.subject == subject && u.online() == Some(online)
    })
    .await;
    assert!(
        before.is_empty(),
        "{}: nothing before {subject} online={online}, got {before:#?}",
        client.user()
    );
    assert!(!update.retained, "a live change has RETAIN=0: {update:?}");
    (update, at)
}

/// Fails the test if a presence update arrives within `wait`.
async fn assert_no_presence(client: &Client, wait: Duration, why: &str) {
    if let Some(update) = client.next_presence(wait).await.expect("presence open") {
        panic!("{}: {why}, but got {update:?}", client.user());
    }
}

/// Heartbeats on `hb/{user}/{device}` every [`BEAT`] until dropped.
struct Beat(JoinHandle<()>);

impl Beat {
    fn start(client: &Client) -> Beat {
        let client = client.clone();
        Beat(tokio::spawn(async move {
            loop {
                let _ = client.heartbeat().await;
                tokio::time::sleep(BEAT).await;
            }
        }))
    }

    /// Stops beating and waits until the task (and its client clone) is gone.
    async fn stop(self) {
        self.0.abort();
        let _ = self.0.await;
    }
}

/// A raw MQTT 3.1.1 TCP connection (keep-alive 60) that sends PINGREQ
/// every [`BEAT`] until `stop` is set; the socket stays open after that.
async fn pinging_socket(broker: &TestBroker, user: &str, device: &str) -> Arc<AtomicBool> {
    let mut socket = TcpStream::connect(broker.mqtt_addr()).await.unwrap();
    let password = broker.password(user);
    let connect = wire::connect_v4(&format!("{user}:{device}"), user, &password, true, 60);
    socket.write_all(&connect).await.unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(WAIT, socket.read_exact(&mut connack))
        .await
        .expect("CONNACK in time")
        .unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    let (mut read, mut write) = socket.into_split();
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while matches!(read.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    tokio::spawn(async move {
        while !stopped.load(Ordering::SeqCst) {
            if write.write_all(&wire::PINGREQ).await.is_err() {
                return;
            }
            tokio::time::sleep(BEAT).await;
        }
        // silent, but connected: hold the socket open
        std::future::pending::<()>().await;
        drop(write);
    });
    stop
}

/// Makes each of `others` a friend of `user` with short-lived devices that
/// leave gracefully, so the tests' own devices start with no traffic
/// behind. Returns once `user`'s setup device has seen each friend go
/// offline: the broker publishes presence changes in order, so every change
/// so far has gone out (a subscription made later gets no stale live update).
async fn befriend_all(broker: &TestBroker, user: &str, others: &[&str]) {
    let me = observer(broker, user, "setup").await;
    for other in others {
        let them = broker.client(other, "setup").await;
        befriend(&me, &them).await;
        them.disconnect().await.unwrap();
        wait_for(&me, WAIT, |u| {
            u.subject == *other && u.online() == Some(false)
        })
        .await;
    }
    me.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friends_get_each_others_state_at_once_retained_and_every_change_live() {
    let broker = broker_with_timeout(5).await;
    let carol = observer(&broker, "carol", "phone").await;
    befriend_all(&broker, "alice", &["bob"]).await;
    let alice = observer(&broker, "alice", "phone").await;
    let retained = next_presence(&alice, AT_ONCE).await;
    assert_eq!(brief(&retained), ("bob", Some(false), true));
    let bob_connected_ms = wall_ms();
    let bob = broker.client("bob", "phone").await;
    let bob_beat = Beat::start(&bob);
    let (update, _) = wait_state(&alice, "bob", true).await;
    let bob_state = update.presence.clone().unwrap();
    assert_eq!(bob_state.user, "bob");
    assert!(bob_state.last_active_ms >= bob_connected_ms - 50);

    // A new subscription gets the current state at once, retained.
    let asked = Instant::now();
    let tablet = observer(&broker, "alice", "tablet").await;
    let retained = next_presence(&tablet, AT_ONCE).await;
    assert!(asked.elapsed() < AT_ONCE, "at once");
    assert_eq!(brief(&retained), ("bob", Some(true), true));
    bob.subscribe_presence().await.unwrap();
    let retained = next_presence(&bob, AT_ONCE).await;
    assert_eq!(brief(&retained), ("alice", Some(true), true));
    assert_no_presence(&tablet, QUIET, "one state per friend").await;

    // Live changes reach every subscribed device of the friend, RETAIN=0.
    bob_beat.stop().await;
    let left = Instant::now();
    bob.disconnect().await.unwrap();
    let left_ms = wall_ms();
    for device in [&alice, &tablet] {
        let (offline, at) = wait_state(device, "bob", false).await;
        assert!(at - left < AT_ONCE, "a DISCONNECT is offline at once");
        let last_active = offline.last_active_ms().unwrap();
        assert!(
            (bob_connected_ms - 50..=left_ms + 50).contains(&last_active),
            "last_active_ms {last_active} is bob's last packet, between {bob_connected_ms} and {left_ms}"
        );
    }
    let back_ms = wall_ms();
    let bob = broker.client("bob", "laptop").await;
    for device in [&alice, &tablet] {
        let (online, _) = wait_state(device, "bob", true).await;
        assert!(online.last_active_ms().unwrap() >= back_ms - 50);
    }
    bob.disconnect().await.unwrap();
    assert_no_presence(&carol, QUIET, "carol is nobody's friend").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_to_one_friend_gets_that_friend_only() {
    let broker = broker_with_timeout(5).await;
    befriend_all(&broker, "alice", &["bob", "carol"]).await;
    let watch = observer(&broker, "alice", "watch").await;
    for _ in 0..2 {
        next_presence(&watch, AT_ONCE).await; // offline, retained
    }
    let bob = broker.client("bob", "phone").await;
    let carol = broker.client("carol", "phone").await;
    for _ in 0..2 {
        wait_for(&watch, WAIT, |u| u.online() == Some(true) && !u.retained).await;
    }
    let mut alice = broker.raw_v4("alice", "raw", true).await;
    let codes = alice.subscribe(&["presence/bob/alice"]).await;
    assert!(format!("{codes:?}").contains("Success"), "{codes:?}");

    let publish = alice
        .next_publish_on("presence/bob/alice", AT_ONCE)
        .await
        .expect("bob's state at once");
    assert!(publish.retain, "the state on subscribe has RETAIN=1");
    let state = Presence::decode(publish.payload.as_ref()).unwrap();
    assert_eq!((state.user.as_str(), state.online), ("bob", true));

    carol.disconnect().await.unwrap();
    bob.disconnect().await.unwrap();
    let publish = alice
        .next_publish_on("presence/bob/alice", WAIT)
        .await
        .expect("bob going offline");
    assert!(!publish.retain, "a live change has RETAIN=0");
    let state = Presence::decode(publish.payload.as_ref()).unwrap();
    assert!(!state.online);
    // carol's change came first: it would be buffered by now.
    assert!(
        alice
            .next_publish_on("presence/carol/alice", Duration::ZERO)
            .await
            .is_none(),
        "carol's topic is not subscribed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_friend_gets_nothing_on_presence_topics() {
    let broker = broker_with_timeout(5).await;
    befriend_all(&broker, "alice", &["bob"]).await;
    befriend_all(&broker, "carol", &["dave"]).await;
    let alice = broker.client("alice", "phone").await;
    let bob = broker.client("bob", "phone").await;
    // carol asked alice (pending) and shares a group with her: neither is
    // a friendship.
    let carol_setup = broker.client("carol", "setup").await;
    carol_setup
        .change_friends(["alice"], None::<&str>)
        .await
        .unwrap();
    carol_setup
        .create_group("club", "Club", ["alice"])
        .await
        .unwrap();

    let carol = observer(&broker, "carol", "phone").await;
    let retained = next_presence(&carol, AT_ONCE).await;
    assert_eq!(brief(&retained), ("dave", Some(false), true));
    assert_no_presence(&carol, QUIET, "only friends' topics are retained").await;
    let dave = broker.client("dave", "phone").await;
    wait_state(&carol, "dave", true).await;

    // alice's and bob's changes go to their friends only.
    alice.disconnect().await.unwrap();
    bob.disconnect().await.unwrap();
    let alice = broker.client("alice", "phone").await;
    dave.disconnect().await.unwrap();
    let (before, barrier, _) = wait_for(&carol, WAIT, |u| u.subject == "dave").await;
    assert!(before.is_empty(), "nothing of non-friends: {before:#?}");
    assert_eq!(brief(&barrier), ("dave", Some(false), false));
    alice.disconnect().await.unwrap();
    carol_setup.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_pings_and_requests_keep_a_device_online_and_silence_takes_it_offline() {
    let broker = broker_with_timeout(1).await;
    let timeout = Duration::from_secs(1);
    befriend_all(&broker, "alice", &["bob", "carol", "dave", "erin"]).await;
    let alice = observer(&broker, "alice", "phone").await;
    for _ in 0..4 {
        let retained = next_presence(&alice, AT_ONCE).await;
        assert_eq!(retained.online(), Some(false), "{retained:?}");
        assert!(retained.retained);
    }

    // bob heartbeats, carol pings (raw 3.1.1), dave sends requests, erin is silent.
    let bob = quiet_client(&broker, "bob", "phone").await;
    let _bob_beat = Beat::start(&bob);
    let carol_stop = pinging_socket(&broker, "carol", "pc").await;
    let dave = quiet_client(&broker, "dave", "phone").await;
    let dave_requests = {
        let dave = dave.clone();
        tokio::spawn(async move {
            loop {
                dave.sync(0, 1).await.expect("sync");
                tokio::time::sleep(BEAT).await;
            }
        })
    };
    let erin_before = Instant::now();
    let erin_before_ms = wall_ms();
    let erin = quiet_client(&broker, "erin", "phone").await;
    let erin_after = Instant::now();
    let erin_after_ms = wall_ms();

    let (before, offline, at) = wait_for(&alice, WAIT, |u| {
        u.subject == "erin" && u.online() == Some(false)
    })
    .await;
    let mut came_online: Vec<&str> = before
        .iter()
        .inspect(|u| assert_eq!(u.online(), Some(true), "only arrivals: {u:?}"))
        .map(|u| u.subject.as_str())
        .collect();
    came_online.sort();
    assert_eq!(came_online, ["bob", "carol", "dave", "erin"]);
    assert!(
        at - erin_before >= timeout - Duration::from_millis(50),
        "erin offline after {:?}, before her timeout",
        at - erin_before
    );
    assert!(
        at - erin_after < timeout + Duration::from_secs(1),
        "erin offline {:?} after her last packet: within a second of the deadline",
        at - erin_after
    );
    let last_active = offline.last_active_ms().unwrap();
    assert!(
        (erin_before_ms - 50..=erin_after_ms + 50).contains(&last_active),
        "erin's last_active_ms {last_active} is her last packet ({erin_before_ms}..{erin_after_ms})"
    );

    // Over twice the timeout: the others stay online.
    let until = erin_after + timeout * 2 + Duration::from_millis(200);
    let wait = until.saturating_duration_since(Instant::now());
    assert_no_presence(
        &alice,
        wait,
        "heartbeats, PINGREQs and requests keep devices online",
    )
    .await;

    // Any packet brings the silent device back.
    erin.heartbeat().await.unwrap();
    wait_state(&alice, "erin", true).await;

    // carol's socket stays open but goes silent: offline after the timeout.
    let stopped = Instant::now();
    carol_stop.store(true, Ordering::SeqCst);
    let (carol_offline, at) = wait_state(&alice, "carol", false).await;
    assert!(
        at - stopped >= timeout - BEAT - Duration::from_millis(50),
        "carol offline only after her timeout ({:?})",
        at - stopped
    );
    assert!(at - stopped < timeout + Duration::from_secs(1));
    assert!(carol_offline.last_active_ms().unwrap() <= wall_ms());
    dave_requests.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_disconnect_is_offline_at_once() {
    let broker = broker_with_timeout(5).await;
    befriend_all(&broker, "alice", &["bob"]).await;
    let alice = observer(&broker, "alice", "phone").await;
    next_presence(&alice, AT_ONCE).await; // bob offline, retained
    let bob = broker.client("bob", "phone").await;
    wait_state(&alice, "bob", true).await;

    let left = Instant::now();
    bob.disconnect().await.unwrap();
    let (_, at) = wait_state(&alice, "bob", false).await;
    assert!(
        at - left < AT_ONCE,
        "3.1.1 DISCONNECT: offline after {:?}, the timeout is 5 s",
        at - left
    );

    let bob = broker.raw_v5("bob", "v5", None).await;
    wait_state(&alice, "bob", true).await;
    let left = Instant::now();
    bob.disconnect().await;
    let (_, at) = wait_state(&alice, "bob", false).await;
    assert!(
        at - left < AT_ONCE,
        "5 DISCONNECT: offline after {:?}",
        at - left
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_and_a_password_change_are_offline_at_once() {
    let broker = broker_with_timeout(5).await;
    befriend_all(&broker, "alice", &["bob"]).await;
    let alice = observer(&broker, "alice", "phone").await;
    assert_eq!(
        brief(&next_presence(&alice, AT_ONCE).await),
        ("bob", Some(false), true)
    );

    // Logout over MQTT.
    let token = broker.login("bob", "phone").await;
    let bob = broker
        .connect(broker.options_with("bob", "phone", &token))
        .await;
    wait_state(&alice, "bob", true).await;
    let left = Instant::now();
    bob.logout().await.expect("Logout is answered");
    assert!(!bob.is_connected());
    let (_, at) = wait_state(&alice, "bob", false).await;
    assert!(
        at - left < AT_ONCE,
        "MQTT Logout: offline after {:?}",
        at - left
    );

    // POST /v1/logout for a connected device.
    let token = broker.login("bob", "tablet").await;
    let tablet = broker
        .connect(broker.options_with("bob", "tablet", &token))
        .await;
    wait_state(&alice, "bob", true).await;
    let left = Instant::now();
    let answer = broker.http("POST", "/v1/logout", Some(&token), None).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let (_, at) = wait_state(&alice, "bob", false).await;
    assert!(
        at - left < AT_ONCE,
        "HTTP logout: offline after {:?}",
        at - left
    );
    assert!(
        parley_tests::eventually(AT_ONCE, || !tablet.is_connected()).await,
        "the logged-out device is closed"
    );

    // A password change closes the other connections: offline at once.
    let laptop = broker.client("bob", "laptop").await;
    wait_state(&alice, "bob", true).await;
    let web = broker.login("bob", "web").await;
    let change = json!({ "old_password": "pw-bob", "new_password": "bob-brand-new-password" });
    let left = Instant::now();
    let answer = broker
        .http("POST", "/v1/password", Some(&web), Some(change))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let (_, at) = wait_state(&alice, "bob", false).await;
    assert!(
        at - left < AT_ONCE,
        "password change: offline after {:?}",
        at - left
    );
    assert!(parley_tests::eventually(AT_ONCE, || !laptop.is_connected()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_offline_only_after_the_timeout() {
    let broker = broker_with_timeout(2).await;
    let timeout = Duration::from_secs(2);
    befriend_all(&broker, "alice", &["bob"]).await;
    let alice = observer(&broker, "alice", "phone").await;
    next_presence(&alice, AT_ONCE).await; // bob offline, retained
    let bob = quiet_client(&broker, "bob", "phone").await;
    wait_state(&alice, "bob", true).await;

    let last_packet = Instant::now();
    let last_packet_ms = wall_ms();
    bob.heartbeat().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await; // let the heartbeat out
    let dropped = Instant::now();
    drop(bob); // no DISCONNECT: like a lost network
    let (offline, at) = wait_state(&alice, "bob", false).await;
    assert!(
        at - last_packet >= timeout - Duration::from_millis(50),
        "offline {:?} after the last packet: not before the timeout",
        at - last_packet
    );
    assert!(
        at - dropped < timeout + Duration::from_secs(1),
        "offline {:?} after the drop: within a second of the deadline",
        at - dropped
    );
    let last_active = offline.last_active_ms().unwrap();
    assert!(
        (last_packet_ms - 50..=last_packet_ms + 500).contains(&last_active),
        "last_active_ms {last_active} is the heartbeat at ~{last_packet_ms}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_and_a_reconnect_within_the_grace_period_never_show_offline() {
    let broker = broker_with_timeout(2).await;
    let timeout = Duration::from_secs(2);
    befriend_all(&broker, "alice", &["bob"]).await;
    let alice = observer(&broker, "alice", "phone").await;
    next_presence(&alice, AT_ONCE).await; // bob offline, retained
    let bob = quiet_client(&broker, "bob", "phone").await;
    wait_state(&alice, "bob", true).await;

    bob.heartbeat().await.unwrap();
    drop(bob); // through a tunnel...
    tokio::time::sleep(Duration::from_millis(500)).await;
    let back = Instant::now();
    let bob = quiet_client(&broker, "bob", "phone").await; // ...and back
    let beat = Beat::start(&bob);
    // Past the dropped connection's deadline, with margin: no change at all.
    assert_no_presence(
        &alice,
        timeout + Duration::from_millis(700),
        "a reconnect within the grace period never shows offline",
    )
    .await;
    assert!(back.elapsed() >= timeout);

    beat.stop().await;
    bob.disconnect().await.unwrap();
    let (_, at) = wait_state(&alice, "bob", false).await;
    assert!(at.elapsed() < AT_ONCE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_online_until_the_last_device_leaves() {
    let broker = broker_with_timeout(2).await;
    let timeout = Duration::from_secs(2);
    befriend_all(&broker, "alice", &["bob"]).await;
    let alice = observer(&broker, "alice", "phone").await;
    next_presence(&alice, AT_ONCE).await; // bob offline, retained

    let phone = broker.client("bob", "phone").await;
    let phone_beat = Beat::start(&phone);
    wait_state(&alice, "bob", true).await;
    let laptop = broker.client("bob", "laptop").await;
    let laptop_beat = Beat::start(&laptop);
    assert_no_presence(&alice, QUIET, "a second device changes nothing").await;
    phone_beat.stop().await;
    phone.disconnect().await.unwrap();
    assert_no_presence(&alice, QUIET, "the laptop is still online").await;
    laptop_beat.stop().await;
    let left = Instant::now();
    laptop.disconnect().await.unwrap();
    let (_, at) = wait_state(&alice, "bob", false).await;
    assert!(at - left < AT_ONCE, "the last device left gracefully");

    // One device dropped, the other leaves gracefully: online until the
    // dropped one's timeout.
    let phone = quiet_client(&broker, "bob", "phone").await;
    wait_state(&alice, "bob", true).await;
    let laptop = quiet_client(&broker, "bob", "laptop").await;
    let last_packet = Instant::now();
    phone.heartbeat().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(phone);
    laptop.disconnect().await.unwrap();
    let (_, at) = wait_state(&alice, "bob", false).await;
    assert!(
        at - last_packet >= timeout - Duration::from_millis(50),
        "the dropped phone keeps bob online for its timeout ({:?})",
        at - last_packet
    );
    assert!(at - last_packet < timeout + Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_active_survives_a_restart() {
    let mut broker = broker_with_timeout(5).await;
    befriend_all(&broker, "alice", &["bob", "carol"]).await;
    let alice = observer(&broker, "alice", "phone").await;
    for _ in 0..2 {
        next_presence(&alice, AT_ONCE).await; // both offline, retained
    }
    let bob = broker.client("bob", "phone").await;
    wait_state(&alice, "bob", true).await;
    bob.disconnect().await.unwrap();
    let (offline, _) = wait_state(&alice, "bob", false).await;
    let bob_last = offline.last_active_ms().unwrap();

    // carol is online when the broker stops: her last packet is saved.
    let carol = quiet_client(&broker, "carol", "phone").await;
    wait_state(&alice, "carol", true).await;
    let carol_from = wall_ms();
    carol.heartbeat().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let carol_until = wall_ms();
    broker.restart().await;

    let alice = observer(&broker, "alice", "phone").await;
    let mut retained = Vec::new();
    for _ in 0..2 {
        retained.push(next_presence(&alice, AT_ONCE).await);
    }
    retained.sort_by(|a, b| a.subject.cmp(&b.subject));
    assert_eq!(brief(&retained[0]), ("bob", Some(false), true));
    assert_eq!(
        retained[0].last_active_ms(),
        Some(bob_last),
        "bob's last_active_ms survives the restart"
    );
    assert_eq!(
        brief(&retained[1]),
        ("carol", Some(false), true),
        "nobody is online after a restart"
    );
    let carol_last = retained[1].last_active_ms().unwrap();
    assert!(
        (carol_from - 50..=carol_until + 50).contains(&carol_last),
        "carol's last packet ({carol_from}..{carol_until}) was saved at shutdown: {carol_last}"
    );
    let queried = alice.query_presence(["bob", "carol"]).await.unwrap();
    let queried: Vec<(bool, i64)> = queried
        .iter()
        .map(|p| (p.online, p.last_active_ms))
        .collect();
    assert_eq!(queried, [(false, bob_last), (false, carol_last)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_durable_session_gets_the_current_states() {
    let broker = broker_with_timeout(5).await;
    befriend_all(&broker, "alice", &["bob"]).await;
    let watch = observer(&broker, "alice", "watch").await;
    next_presence(&watch, AT_ONCE).await; // bob offline, retained
    let bob = broker.client("bob", "phone").await;
    wait_state(&watch, "bob", true).await;
    let mut alice = broker.raw_v4("alice", "raw", false).await;
    alice.subscribe_own().await;
    alice.subscribe(&["presence/+/alice"]).await;
    let publish = alice
        .next_publish_on("presence/bob/alice", AT_ONCE)
        .await
        .expect("bob's state");
    assert!(publish.retain);
    assert!(Presence::decode(publish.payload.as_ref()).unwrap().online);
    alice.disconnect().await;

    bob.disconnect().await.unwrap(); // while alice is away
    wait_state(&watch, "bob", false).await; // published before she is back
    let mut alice = RawV4::connect(broker.v4_options("alice", "raw", false), "alice", "raw")
        .await
        .unwrap();
    assert!(alice.session_present);
    let publish = alice
        .next_publish_on("presence/bob/alice", AT_ONCE)
        .await
        .expect("the current state, without subscribing again");
    assert!(publish.retain, "sent as retained");
    let state = Presence::decode(publish.payload.as_ref()).unwrap();
    assert_eq!((state.user.as_str(), state.online), ("bob", false));
}

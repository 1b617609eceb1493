//! Typing notices: forwarded live (QoS 0, `inbox_seq` 0) to every connected
//! device of the channel's other members, never to the typer, never stored
//! (not in `Sync`, not replayed to a durable session), limited per device
//! (burst 5, 2 per second), refused like a send for a channel one may not
//! post to.

use std::time::Duration;

use parley_proto::v1::{self, envelope, request, Envelope, ErrorCode};
use parley_tests::{
    collect_envelopes, direct_channel, group_channel, inbox_head, message_of, sync_all, wire,
    Client, TestBroker, WAIT,
};
use tokio::time::Instant;

const USERS: &[(&str, &str)] = &[
    ("alice", "pw-alice"),
    ("bob", "pw-bob"),
    ("carol", "pw-carol"),
];

/// The broker's allowance per device (chat/typing.rs).
const TYPING_BURST: usize = 5;
const TYPING_PER_SEC: f64 = 2.0;

fn typing(channel: &str) -> request::Body {
    request::Body::Typing(v1::Typing {
        channel: channel.to_string(),
    })
}

/// Sends `Typing` and returns the raw reply.
async fn type_in(client: &Client, channel: &str) -> v1::Reply {
    client
        .request(typing(channel))
        .await
        .unwrap_or_else(|e| panic!("{}: typing in {channel}: {e}", client.user()))
}

/// Sends `Typing` and checks its `Ack{channel, seq 0}`.
async fn type_ok(client: &Client, channel: &str) {
    let ack = wire::expect_ack(&type_in(client, channel).await);
    assert_eq!(
        (ack.channel.as_str(), ack.seq, ack.duplicate),
        (channel, 0, false),
        "the Ack of a typing notice"
    );
}

/// `(channel, user)` of a typing envelope, which must have `inbox_seq` 0.
fn typing_of(envelope: &Envelope) -> (String, String) {
    match &envelope.body {
        Some(envelope::Body::Typing(t)) => {
            assert_eq!(envelope.inbox_seq, 0, "typing is live only: {envelope:?}");
            (t.channel.clone(), t.user.clone())
        }
        other => panic!(
            "expected a TypingEvent, got {other:?} (inbox_seq {})",
            envelope.inbox_seq
        ),
    }
}

/// The next envelope of every client must be this typing notice.
async fn expect_typing(clients: &[&Client], channel: &str, user: &str) {
    for client in clients {
        let got = collect_envelopes(client, 1, WAIT).await;
        assert_eq!(
            typing_of(&got[0]),
            (channel.to_string(), user.to_string()),
            "{}:{}",
            client.user(),
            client.device()
        );
    }
}

/// The next envelope of every client must be message `seq` of `channel`:
/// a barrier proving that no typing notice came before it.
async fn expect_message_next(clients: &[&Client], channel: &str, seq: u64) {
    for client in clients {
        let got = collect_envelopes(client, 1, WAIT).await;
        let message = message_of(&got[0]);
        assert_eq!(
            (message.channel.as_str(), message.seq),
            (channel, seq),
            "{}:{}: the next envelope is the message, no typing before it",
            client.user(),
            client.device()
        );
    }
}

fn has_typing(events: &[Envelope]) -> bool {
    events
        .iter()
        .any(|e| matches!(e.body, Some(envelope::Body::Typing(_))) || e.inbox_seq == 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_every_device_of_the_other_members_and_never_the_typer() {
    let broker = TestBroker::start(USERS).await;
    let alice = broker.client("alice", "phone").await;
    let alice_laptop = broker.client("alice", "laptop").await;
    let bob = broker.client("bob", "phone").await;
    let bob_tablet = broker.client("bob", "tablet").await;
    let dm = direct_channel("alice", "bob");

    type_ok(&alice, &dm).await;
    expect_typing(&[&bob, &bob_tablet], &dm, "alice").await;
    // The typer's devices got nothing: their next envelope is bob's message.
    bob.send(&dm, "yes?").await.expect("send");
    expect_message_next(&[&alice, &alice_laptop, &bob, &bob_tablet], &dm, 1).await;

    // The other way round.
    type_ok(&bob_tablet, &dm).await;
    expect_typing(&[&alice, &alice_laptop], &dm, "bob").await;
    alice.send(&dm, "typing back").await.expect("send");
    expect_message_next(&[&alice, &alice_laptop, &bob, &bob_tablet], &dm, 2).await;

    // Never stored: the inboxes hold the two messages only.
    for client in [&alice, &bob] {
        let events = sync_all(client, 0).await;
        assert_eq!(
            events.iter().map(|e| e.inbox_seq).collect::<Vec<_>>(),
            vec![1, 2],
            "{}: {events:?}",
            client.user()
        );
        assert!(!has_typing(&events), "{}: {events:?}", client.user());
    }

    // In a group: every other member, not the typer.
    let carol = broker.client("carol", "phone").await;
    alice
        .create_group("crew", "Crew", ["bob", "carol"])
        .await
        .expect("create the group");
    for client in [&alice, &alice_laptop, &bob, &bob_tablet, &carol] {
        let got = collect_envelopes(client, 1, WAIT).await;
        assert!(matches!(got[0].body, Some(envelope::Body::Group(_))));
    }
    let crew = group_channel("crew");
    type_ok(&carol, &crew).await;
    expect_typing(&[&alice, &alice_laptop, &bob, &bob_tablet], &crew, "carol").await;
    alice.send(&crew, "who's typing?").await.expect("send");
    expect_message_next(&[&carol], &crew, 1).await;
    let events = sync_all(&carol, 0).await;
    assert_eq!(events.len(), 2, "group event and message: {events:?}");
    assert!(!has_typing(&events));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_not_replayed_to_a_durable_session_that_was_offline() {
    let broker = TestBroker::start(USERS).await;
    let dm = direct_channel("alice", "bob");
    let bob = broker.durable_client("bob", "phone").await;
    bob.disconnect().await.expect("bob goes offline");
    let alice = broker.client("alice", "phone").await;
    type_ok(&alice, &dm).await;
    alice.send(&dm, "while you were away").await.expect("send");

    let bob = broker.durable_client("bob", "phone").await;
    assert!(bob.session_present(), "the durable session is resumed");
    let got = collect_envelopes(&bob, 1, WAIT).await;
    assert_eq!(
        (got[0].inbox_seq, message_of(&got[0]).seq),
        (1, 1),
        "the replay starts with the message, no typing notice: {got:?}"
    );
    // Live typing still reaches the resumed session.
    type_ok(&alice, &dm).await;
    expect_typing(&[&bob], &dm, "alice").await;
    assert_eq!(inbox_head(&bob).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_rate_limited_per_device_and_refused_notices_are_not_forwarded() {
    let broker = TestBroker::start(USERS).await;
    let alice = broker.client("alice", "phone").await;
    let alice_laptop = broker.client("alice", "laptop").await;
    let bob = broker.client("bob", "phone").await;
    let dm = direct_channel("alice", "bob");

    let started = Instant::now();
    let mut accepted = 0usize;
    // Typing as fast as possible: the burst passes, then RATE_LIMITED comes
    // (a few more may pass if the machine is slow: 2 per second refill).
    let mut limited = 0usize;
    for _ in 0..TYPING_BURST * 8 {
        let reply = type_in(&alice, &dm).await;
        match &reply.body {
            Some(v1::reply::Body::Ack(_)) => accepted += 1,
            Some(v1::reply::Body::Error(_)) => {
                wire::expect_error(&reply, ErrorCode::RateLimited);
                limited += 1;
            }
            other => panic!("typing: unexpected reply {other:?}"),
        }
        if limited == 2 {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = TYPING_BURST + (elapsed * TYPING_PER_SEC).ceil() as usize;
    assert!(
        accepted >= TYPING_BURST && accepted <= allowed,
        "{accepted} accepted in {elapsed:.3}s: a burst of {TYPING_BURST} then {TYPING_PER_SEC}/s"
    );
    assert_eq!(
        limited, 2,
        "{accepted} accepted in {elapsed:.3}s, too few RATE_LIMITED"
    );

    // The allowance is per device: the laptop may type at once.
    type_ok(&alice_laptop, &dm).await;
    accepted += 1;

    // Bob got one notice per accepted request, none for the refused ones.
    alice.send(&dm, "barrier").await.expect("send");
    let deadline = Instant::now() + WAIT;
    let mut notices = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let envelope = bob
            .next_envelope(left)
            .await
            .expect("bob's inbox")
            .expect("the barrier message arrives");
        match &envelope.body {
            Some(envelope::Body::Typing(_)) => {
                assert_eq!(typing_of(&envelope), (dm.clone(), "alice".to_string()));
                notices += 1;
            }
            Some(envelope::Body::Message(m)) if m.seq == 1 => break,
            other => panic!("bob: unexpected envelope {other:?}"),
        }
    }
    assert_eq!(notices, accepted, "one notice per accepted typing request");

    // The allowance refills: within a second or so the phone may type again.
    let refilled = parley_tests::eventually_async(Duration::from_secs(3), || async {
        let ok = matches!(
            type_in(&alice, &dm).await.body,
            Some(v1::reply::Body::Ack(_))
        );
        if !ok {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ok
    })
    .await;
    assert!(refilled, "typing is allowed again after a pause");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_where_one_may_not_post_is_refused_and_forwarded_to_nobody() {
    let broker = TestBroker::start(USERS).await;
    let alice = broker.client("alice", "phone").await;
    let bob = broker.client("bob", "phone").await;
    let carol = broker.client("carol", "phone").await;
    alice
        .create_group("duo", "Duo", ["bob"])
        .await
        .expect("create the group");
    for client in [&alice, &bob] {
        collect_envelopes(client, 1, WAIT).await;
    }
    let dm = direct_channel("alice", "bob");

    // At most a few per device: refused notices count against the allowance.
    let cases: Vec<(&Client, &str, ErrorCode, &str)> = vec![
        (
            &carol,
            dm.as_str(),
            ErrorCode::NotMember,
            "another pair's dm",
        ),
        (
            &carol,
            "g:duo",
            ErrorCode::NotMember,
            "a group one is not in",
        ),
        (
            &alice,
            "sys:alice",
            ErrorCode::Forbidden,
            "one's own system channel",
        ),
        (
            &alice,
            "sys:bob",
            ErrorCode::Forbidden,
            "another user's system channel",
        ),
        (
            &alice,
            "dm:alice:ghost",
            ErrorCode::NotFound,
            "a dm with an unknown user",
        ),
        (
            &bob,
            "g:nope",
            ErrorCode::NotFound,
            "a group that does not exist",
        ),
        (&bob, "dm:bob", ErrorCode::BadRequest, "a malformed channel"),
        (&bob, "", ErrorCode::BadRequest, "no channel"),
    ];
    for (client, channel, code, what) in cases {
        let reply = type_in(client, channel).await;
        let message = wire::expect_error(&reply, code);
        assert!(!message.is_empty(), "{what}");
    }

    // Nothing reached anyone: the next envelope everywhere is a message.
    alice.send(&dm, "barrier").await.expect("send");
    expect_message_next(&[&alice, &bob], &dm, 1).await;
    alice.send("g:duo", "barrier").await.expect("send");
    expect_message_next(&[&alice, &bob], "g:duo", 1).await;
    carol
        .send(&direct_channel("alice", "carol"), "barrier")
        .await
        .expect("send");
    expect_message_next(&[&carol], &direct_channel("alice", "carol"), 1).await;
}

//! Read receipts: a user's cursor per channel only moves forward (READ
//! implies DELIVERED), every accepted receipt appends a `ReceiptEvent` to
//! the inbox of every member — the reader's own too, so its other devices
//! learn its read position — and a stale, repeated or refused receipt
//! changes nothing and appends nothing. Cursors are durable.

use parley_proto::v1::{self, envelope, request, Ack, Envelope, ErrorCode, ReceiptKind};
use parley_tests::{
    collect_envelopes, direct_channel, group_channel, inbox_head, message_of, sync_all, wire,
    Client, TestBroker, WAIT,
};

const USERS: &[(&str, &str)] = &[
    ("alice", "pw-alice"),
    ("bob", "pw-bob"),
    ("carol", "pw-carol"),
];

const DELIVERED: ReceiptKind = ReceiptKind::Delivered;
const READ: ReceiptKind = ReceiptKind::Read;

fn receipt(channel: &str, seq: u64, kind: ReceiptKind) -> request::Body {
    request::Body::Receipt(v1::MarkReceipt {
        channel: channel.to_string(),
        seq,
        kind: kind as i32,
    })
}

/// Sends a `MarkReceipt` and returns its `Ack` (failing on an error reply).
async fn mark(client: &Client, channel: &str, seq: u64, kind: ReceiptKind) -> Ack {
    let reply = client
        .request(receipt(channel, seq, kind))
        .await
        .unwrap_or_else(|e| panic!("{}: receipt {kind:?} {seq}: {e}", client.user()));
    let ack = wire::expect_ack(&reply);
    assert_eq!(
        (ack.channel.as_str(), ack.seq),
        (channel, seq),
        "{}: the Ack of receipt {kind:?} {seq} names its channel and seq",
        client.user()
    );
    ack
}

/// A receipt that must move the cursor: `duplicate = false`.
async fn mark_new(client: &Client, channel: &str, seq: u64, kind: ReceiptKind) {
    let ack = mark(client, channel, seq, kind).await;
    assert!(
        !ack.duplicate,
        "{}: receipt {kind:?} {seq} in {channel} moves the cursor, not a duplicate",
        client.user()
    );
}

/// A receipt that must change nothing: `duplicate = true`.
async fn mark_stale(client: &Client, channel: &str, seq: u64, kind: ReceiptKind) {
    let ack = mark(client, channel, seq, kind).await;
    assert!(
        ack.duplicate,
        "{}: receipt {kind:?} {seq} in {channel} is stale or repeated: duplicate",
        client.user()
    );
}

/// `(channel, user, seq, kind)` of a receipt envelope, failing otherwise.
fn receipt_of(envelope: &Envelope) -> (String, String, u64, ReceiptKind) {
    match &envelope.body {
        Some(envelope::Body::Receipt(r)) => (
            r.channel.clone(),
            r.user.clone(),
            r.seq,
            ReceiptKind::try_from(r.kind).unwrap_or(ReceiptKind::Unspecified),
        ),
        other => panic!(
            "expected a ReceiptEvent, got {other:?} (inbox_seq {})",
            envelope.inbox_seq
        ),
    }
}

/// The next live envelope of `client` must be this receipt at `inbox_seq`.
async fn expect_receipt_event(
    client: &Client,
    inbox_seq: u64,
    (channel, user, seq, kind): (&str, &str, u64, ReceiptKind),
) {
    let got = collect_envelopes(client, 1, WAIT).await;
    let who = format!("{}:{}", client.user(), client.device());
    assert_eq!(got[0].inbox_seq, inbox_seq, "{who}: {got:?}");
    assert_eq!(
        receipt_of(&got[0]),
        (channel.to_string(), user.to_string(), seq, kind),
        "{who}"
    );
}

/// The next live envelope of every client must be message `seq` of
/// `channel` (a barrier: nothing was published before it).
async fn expect_message_next(clients: &[&Client], channel: &str, seq: u64) {
    for client in clients {
        let got = collect_envelopes(client, 1, WAIT).await;
        let message = message_of(&got[0]);
        assert_eq!(
            (message.channel.as_str(), message.seq),
            (channel, seq),
            "{}:{}: the next envelope is the message, no receipt before it",
            client.user(),
            client.device()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_move_forward_and_reach_every_member_and_the_readers_other_devices() {
    let broker = TestBroker::start(USERS).await;
    let alice = broker.client("alice", "phone").await;
    let alice_laptop = broker.client("alice", "laptop").await;
    let bob = broker.client("bob", "phone").await;
    let bob_laptop = broker.client("bob", "laptop").await;
    let everyone = [&alice, &alice_laptop, &bob, &bob_laptop];
    let dm = direct_channel("alice", "bob");
    for i in 1..=3 {
        alice.send(&dm, &format!("hello {i}")).await.expect("send");
    }
    for client in everyone {
        collect_envelopes(client, 3, WAIT).await;
    }

    // DELIVERED 2: every device of both users sees bob's position.
    mark_new(&bob, &dm, 2, DELIVERED).await;
    for client in everyone {
        expect_receipt_event(client, 4, (&dm, "bob", 2, DELIVERED)).await;
    }
    // READ 3 moves both cursors on.
    mark_new(&bob, &dm, 3, READ).await;
    for client in everyone {
        expect_receipt_event(client, 5, (&dm, "bob", 3, READ)).await;
    }

    // Backwards or repeated, from any device of bob's: duplicates. READ 3
    // implied DELIVERED 3, so that is stale too.
    mark_stale(&bob, &dm, 1, DELIVERED).await;
    mark_stale(&bob_laptop, &dm, 2, DELIVERED).await;
    mark_stale(&bob_laptop, &dm, 3, DELIVERED).await;
    mark_stale(&bob, &dm, 3, READ).await;
    mark_stale(&bob, &dm, 1, READ).await;
    for client in [&alice, &bob] {
        assert_eq!(
            inbox_head(client).await,
            5,
            "{}: nothing appended",
            client.user()
        );
    }
    // Nothing was published live either: the next envelope everywhere is
    // the next message.
    alice.send(&dm, "hello 4").await.expect("send");
    expect_message_next(&everyone, &dm, 4).await;

    // DELIVERED first, READ of the same seq later: both move a cursor.
    mark_new(&bob_laptop, &dm, 4, DELIVERED).await;
    for client in everyone {
        expect_receipt_event(client, 7, (&dm, "bob", 4, DELIVERED)).await;
    }
    mark_new(&bob, &dm, 4, READ).await;
    for client in everyone {
        expect_receipt_event(client, 8, (&dm, "bob", 4, READ)).await;
    }

    // The durable inbox holds the same events: Sync agrees with what came live.
    let events = sync_all(&alice, 0).await;
    let receipts: Vec<(u64, (String, String, u64, ReceiptKind))> = events
        .iter()
        .filter(|e| matches!(e.body, Some(envelope::Body::Receipt(_))))
        .map(|e| (e.inbox_seq, receipt_of(e)))
        .collect();
    let expected: Vec<(u64, (String, String, u64, ReceiptKind))> = [
        (4, 2, DELIVERED),
        (5, 3, READ),
        (7, 4, DELIVERED),
        (8, 4, READ),
    ]
    .into_iter()
    .map(|(inbox_seq, seq, kind)| (inbox_seq, (dm.clone(), "bob".to_string(), seq, kind)))
    .collect();
    assert_eq!(receipts, expected, "alice's stored receipt events");
    assert_eq!(
        sync_all(&bob, 0).await,
        events,
        "both sides of the dm have the same inbox"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_implies_delivered_and_the_senders_own_messages_count_as_read() {
    let broker = TestBroker::start(USERS).await;
    let alice = broker.client("alice", "phone").await;
    let bob = broker.client("bob", "phone").await;
    let dm = direct_channel("alice", "bob");
    for i in 1..=2 {
        alice.send(&dm, &format!("m{i}")).await.expect("send");
    }

    // READ 1 without any DELIVERED: DELIVERED 1 is then stale, DELIVERED 2 is not.
    mark_new(&bob, &dm, 1, READ).await;
    mark_stale(&bob, &dm, 1, DELIVERED).await;
    mark_new(&bob, &dm, 2, DELIVERED).await;
    // Reading behind the delivered cursor still moves the read cursor.
    mark_new(&bob, &dm, 2, READ).await;
    mark_stale(&bob, &dm, 2, DELIVERED).await;

    // Sending moves the sender's own cursors to their message, silently.
    mark_stale(&alice, &dm, 2, READ).await;
    mark_stale(&alice, &dm, 1, DELIVERED).await;
    // A message from the other side is not read by alice until she says so.
    bob.send(&dm, "m3").await.expect("send");
    mark_new(&alice, &dm, 3, READ).await;
    mark_stale(&alice, &dm, 3, DELIVERED).await;

    let kinds: Vec<(String, u64, ReceiptKind)> = sync_all(&alice, 0)
        .await
        .iter()
        .filter(|e| matches!(e.body, Some(envelope::Body::Receipt(_))))
        .map(|e| {
            let (_, user, seq, kind) = receipt_of(e);
            (user, seq, kind)
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("bob".to_string(), 1, READ),
            ("bob".to_string(), 2, DELIVERED),
            ("bob".to_string(), 2, READ),
            ("alice".to_string(), 3, READ),
        ],
        "one event per accepted receipt, none for the sender's own messages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_read_state_is_kept_per_member_and_seen_by_all() {
    let broker = TestBroker::start(USERS).await;
    let alice = broker.client("alice", "phone").await;
    let bob = broker.client("bob", "phone").await;
    let carol = broker.client("carol", "phone").await;
    let members = [&alice, &bob, &carol];
    alice
        .create_group("team", "Team", ["bob", "carol"])
        .await
        .expect("create the group");
    let team = group_channel("team");
    for i in 1..=2 {
        alice.send(&team, &format!("team {i}")).await.expect("send");
    }
    for member in members {
        collect_envelopes(member, 3, WAIT).await;
    }

    mark_new(&bob, &team, 2, READ).await;
    for member in members {
        expect_receipt_event(member, 4, (&team, "bob", 2, READ)).await;
    }
    // Bob's read position is his own: carol still moves hers from the start.
    mark_new(&carol, &team, 1, DELIVERED).await;
    mark_new(&carol, &team, 1, READ).await;
    mark_stale(&bob, &team, 1, READ).await;
    mark_stale(&bob, &team, 2, DELIVERED).await;
    mark_new(&carol, &team, 2, READ).await;
    // Alice wrote both messages: she has read them.
    mark_stale(&alice, &team, 2, READ).await;
    for member in members {
        for (inbox_seq, seq, kind) in [(5, 1, DELIVERED), (6, 1, READ), (7, 2, READ)] {
            expect_receipt_event(member, inbox_seq, (&team, "carol", seq, kind)).await;
        }
    }

    // Every member's inbox holds the same receipt events, in the same order.
    let mut inboxes = Vec::new();
    for member in members {
        let receipts: Vec<(u64, (String, String, u64, ReceiptKind))> = sync_all(member, 0)
            .await
            .iter()
            .filter(|e| matches!(e.body, Some(envelope::Body::Receipt(_))))
            .map(|e| (e.inbox_seq, receipt_of(e)))
            .collect();
        inboxes.push(receipts);
    }
    assert_eq!(inboxes[0].len(), 4, "{:?}", inboxes[0]);
    assert_eq!(inboxes[0], inboxes[1]);
    assert_eq!(inboxes[0], inboxes[2]);

    // A new message from bob: everyone else's position is behind it, bob's is not.
    bob.send(&team, "team 3").await.expect("send");
    mark_stale(&bob, &team, 3, READ).await;
    mark_new(&alice, &team, 3, DELIVERED).await;
    mark_new(&carol, &team, 3, READ).await;
    for member in members {
        let got = collect_envelopes(member, 3, WAIT).await;
        assert_eq!(message_of(&got[0]).seq, 3);
        assert_eq!(
            receipt_of(&got[1]),
            (team.clone(), "alice".into(), 3, DELIVERED)
        );
        assert_eq!(receipt_of(&got[2]), (team.clone(), "carol".into(), 3, READ));
        assert_eq!(
            got.iter().map(|e| e.inbox_seq).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_receipts_change_nothing_and_append_nothing() {
    let broker = TestBroker::start(USERS).await;
    let alice = broker.client("alice", "phone").await;
    let bob = broker.client("bob", "phone").await;
    let carol = broker.client("carol", "phone").await;
    let dm = direct_channel("alice", "bob");
    alice
        .create_group("duo", "Duo", ["bob"])
        .await
        .expect("create the group");
    alice.send(&dm, "one").await.expect("send");
    alice.send(&dm, "two").await.expect("send");
    alice.send("g:duo", "one").await.expect("send");
    let mut before = Vec::new();
    for client in [&alice, &bob, &carol] {
        before.push(inbox_head(client).await);
    }
    assert_eq!(before, vec![4, 4, 0]);

    let cases: Vec<(&Client, request::Body, ErrorCode, &str)> = vec![
        (
            &bob,
            receipt(&dm, 3, READ),
            ErrorCode::NotFound,
            "seq beyond the newest",
        ),
        (
            &bob,
            receipt(&dm, 99, DELIVERED),
            ErrorCode::NotFound,
            "seq far beyond",
        ),
        (
            &bob,
            receipt("g:duo", 2, READ),
            ErrorCode::NotFound,
            "group seq beyond",
        ),
        (&bob, receipt(&dm, 0, READ), ErrorCode::BadRequest, "seq 0"),
        (
            &bob,
            receipt(&dm, 1, ReceiptKind::Unspecified),
            ErrorCode::BadRequest,
            "kind unspecified",
        ),
        (
            &bob,
            request::Body::Receipt(v1::MarkReceipt {
                channel: dm.clone(),
                seq: 1,
                kind: 9,
            }),
            ErrorCode::BadRequest,
            "an unknown kind",
        ),
        (
            &bob,
            receipt("dm:bob", 1, READ),
            ErrorCode::BadRequest,
            "a malformed channel",
        ),
        (
            &carol,
            receipt(&dm, 1, READ),
            ErrorCode::NotMember,
            "another pair's dm",
        ),
        (
            &carol,
            receipt("g:duo", 1, READ),
            ErrorCode::NotMember,
            "a group one is not in",
        ),
        (
            &bob,
            receipt("g:nope", 1, READ),
            ErrorCode::NotFound,
            "a group that does not exist",
        ),
        (
            &bob,
            receipt("sys:alice", 1, READ),
            ErrorCode::NotMember,
            "another user's system channel",
        ),
    ];
    for (client, body, code, what) in cases {
        let reply = client
            .request(body)
            .await
            .unwrap_or_else(|e| panic!("{what}: no reply: {e}"));
        wire::expect_error(&reply, code);
        let mut after = Vec::new();
        for client in [&alice, &bob, &carol] {
            after.push(inbox_head(client).await);
        }
        assert_eq!(after, before, "inbox heads after a refused receipt: {what}");
    }

    // None of them moved bob's cursor (a NOT_FOUND READ 3 did not read 1
    // and 2): the first receipts are new, at the next inbox_seq.
    mark_new(&bob, &dm, 1, DELIVERED).await;
    mark_new(&bob, &dm, 2, READ).await;
    mark_new(&bob, "g:duo", 1, READ).await;
    let events = sync_all(&alice, 4).await;
    assert_eq!(
        events
            .iter()
            .map(|e| (e.inbox_seq, receipt_of(e)))
            .collect::<Vec<_>>(),
        vec![
            (5, (dm.clone(), "bob".into(), 1, DELIVERED)),
            (6, (dm.clone(), "bob".into(), 2, READ)),
            (7, ("g:duo".into(), "bob".into(), 1, READ)),
        ]
    );
    assert_eq!(inbox_head(&carol).await, 0, "carol is in neither channel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_cursors_survive_a_restart() {
    let mut broker = TestBroker::start(USERS).await;
    let dm = direct_channel("alice", "bob");
    {
        let alice = broker.client("alice", "phone").await;
        let bob = broker.client("bob", "phone").await;
        for i in 1..=3 {
            alice.send(&dm, &format!("m{i}")).await.expect("send");
        }
        mark_new(&bob, &dm, 2, READ).await;
        mark_new(&bob, &dm, 3, DELIVERED).await;
        assert_eq!(inbox_head(&bob).await, 5);
        alice.disconnect().await.expect("disconnect");
        bob.disconnect().await.expect("disconnect");
    }
    broker.restart().await;

    let alice = broker.client("alice", "phone").await;
    let bob = broker.client("bob", "phone").await;
    // Still stale after the restart, and still nothing appended.
    mark_stale(&bob, &dm, 2, READ).await;
    mark_stale(&bob, &dm, 1, READ).await;
    mark_stale(&bob, &dm, 3, DELIVERED).await;
    mark_stale(&alice, &dm, 3, READ).await;
    assert_eq!(inbox_head(&bob).await, 5);
    assert_eq!(inbox_head(&alice).await, 5);
    // Forward from where it stopped: READ 3 is new (delivered was 3, read 2).
    mark_new(&bob, &dm, 3, READ).await;
    for client in [&alice, &bob] {
        expect_receipt_event(client, 6, (&dm, "bob", 3, READ)).await;
    }
}

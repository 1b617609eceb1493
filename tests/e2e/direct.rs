//! Direct chats: Ack, delivery to every device of both users, per-user
//! inbox sequences, idempotent retries.

use parley_proto::v1::envelope;
use parley_tests::{
    collect_envelopes, collect_messages, direct_channel, message_of, TestBroker, WAIT,
};

const USERS: &[(&str, &str)] = &[
    ("alice", "pw-alice"),
    ("bob", "pw-bob"),
    ("carol", "pw-carol"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_send_acks_and_reaches_every_device_of_both_users() {
    let broker = TestBroker::start(USERS).await;
    let alice_phone = broker.client("alice", "phone").await;
    let alice_laptop = broker.client("alice", "laptop").await;
    let bob_phone = broker.client("bob", "phone").await;
    let bob_tablet = broker.client("bob", "tablet").await;
    let carol = broker.client("carol", "phone").await;

    // Give alice's inbox a head start so that her inbox_seq and bob's differ:
    // each user's inbox has its own sequence.
    alice_phone
        .create_group("book-club", "Books", ["carol"])
        .await
        .expect("create a group");
    for device in [&alice_phone, &alice_laptop, &carol] {
        let events = collect_envelopes(device, 1, WAIT).await;
        assert_eq!(events[0].inbox_seq, 1);
        assert!(
            matches!(events[0].body, Some(envelope::Body::Group(_))),
            "{:?}",
            events[0]
        );
    }

    let dm = direct_channel("bob", "alice");
    assert_eq!(dm, "dm:alice:bob");
    let first = alice_phone
        .send(&dm, "hello bob")
        .await
        .expect("first send");
    let second = alice_phone
        .send(&dm, "are you there?")
        .await
        .expect("second send");
    assert_eq!(
        (first.channel.as_str(), first.seq, first.duplicate),
        ("dm:alice:bob", 1, false)
    );
    assert_eq!(
        (second.channel.as_str(), second.seq, second.duplicate),
        ("dm:alice:bob", 2, false)
    );
    assert!(
        first.ts_ms > 0 && second.ts_ms >= first.ts_ms,
        "{first:?} {second:?}"
    );

    // Both of bob's devices, and both of alice's (the sender's other device
    // too), get both messages in order; bob's inbox starts at 1, alice's at 2.
    for (device, first_inbox_seq) in [
        (&bob_phone, 1),
        (&bob_tablet, 1),
        (&alice_laptop, 2),
        (&alice_phone, 2),
    ] {
        let got = collect_messages(device, 2, WAIT).await;
        let who = format!("{}:{}", device.user(), device.device());
        assert_eq!(
            got.iter()
                .map(|(inbox_seq, m)| (*inbox_seq, m.seq))
                .collect::<Vec<_>>(),
            vec![(first_inbox_seq, 1), (first_inbox_seq + 1, 2)],
            "{who}: (inbox_seq, seq)"
        );
        for ((_, message), (ack, text)) in got
            .iter()
            .zip([(&first, "hello bob"), (&second, "are you there?")])
        {
            assert_eq!(message.channel, "dm:alice:bob", "{who}");
            assert_eq!(message.sender, "alice", "{who}");
            assert_eq!(message.text, text, "{who}");
            assert_eq!(message.ts_ms, ack.ts_ms, "{who}: ts_ms is the Ack's");
            assert!(
                !message.client_msg_id.is_empty(),
                "{who}: client_msg_id as sent"
            );
            assert!(!message.system, "{who}");
        }
    }

    // The answer goes the other way with the next seq of the same channel.
    let reply = bob_tablet.send(&dm, "yes!").await.expect("bob answers");
    assert_eq!((reply.seq, reply.duplicate), (3, false));
    for (device, inbox_seq) in [
        (&bob_phone, 3),
        (&bob_tablet, 3),
        (&alice_laptop, 4),
        (&alice_phone, 4),
    ] {
        let got = collect_messages(device, 1, WAIT).await;
        assert_eq!(
            (got[0].0, got[0].1.seq, got[0].1.sender.as_str()),
            (inbox_seq, 3, "bob")
        );
    }

    // carol is not in the chat: her inbox holds only the group event.
    let carol_inbox = parley_tests::sync_all(&carol, 0).await;
    assert_eq!(carol_inbox.len(), 1, "carol's inbox: {carol_inbox:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_client_msg_id_returns_the_original_ack() {
    let broker = TestBroker::start(USERS).await;
    let alice = broker.client("alice", "phone").await;
    let alice_laptop = broker.client("alice", "laptop").await;
    let bob = broker.client("bob", "phone").await;
    let dm = direct_channel("alice", "bob");

    let original = alice
        .send_with_id(&dm, "cmid-1", "first")
        .await
        .expect("send");
    assert_eq!((original.seq, original.duplicate), (1, false));
    let retry = alice
        .send_with_id(&dm, "cmid-1", "first")
        .await
        .expect("retry");
    assert_eq!(retry.seq, original.seq, "a retry gets the original seq");
    assert_eq!(
        retry.ts_ms, original.ts_ms,
        "a retry gets the original ts_ms"
    );
    assert!(retry.duplicate, "a retry is flagged duplicate: {retry:?}");
    assert_eq!(retry.channel, original.channel);
    let changed = alice
        .send_with_id(&dm, "cmid-1", "different text, same id")
        .await
        .expect("retry with other text");
    assert_eq!((changed.seq, changed.duplicate), (1, true));
    let other_device = alice_laptop
        .send_with_id(&dm, "cmid-1", "first")
        .await
        .expect("retry from alice's other device");
    assert_eq!(
        (other_device.seq, other_device.duplicate),
        (1, true),
        "same sender, same id"
    );

    let next = alice
        .send_with_id(&dm, "cmid-2", "second")
        .await
        .expect("next send");
    assert_eq!(
        (next.seq, next.duplicate),
        (2, false),
        "no seq was used by the retries"
    );

    // bob got exactly two envelopes: the retries appended nothing.
    let got = collect_messages(&bob, 2, WAIT).await;
    assert_eq!(
        got.iter()
            .map(|(i, m)| (*i, m.seq, m.text.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, 1, "first"), (2, 2, "second")]
    );
    let history = bob.history(&dm, 0, 50).await.expect("history");
    assert_eq!(
        history.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![2, 1]
    );
    assert_eq!(
        history
            .messages
            .iter()
            .filter(|m| m.client_msg_id == "cmid-1")
            .count(),
        1,
        "one message for cmid-1: {history:?}"
    );
    assert_eq!(history.messages[1].text, "first");

    // The key is (sender, client_msg_id): bob may use the same id.
    let bobs = bob
        .send_with_id(&dm, "cmid-1", "bob's own")
        .await
        .expect("bob sends");
    assert_eq!((bobs.seq, bobs.duplicate), (3, false));

    // An empty client_msg_id means no idempotence: two messages.
    let a = alice
        .send_with_id(&dm, "", "no id 1")
        .await
        .expect("send without id");
    let b = alice
        .send_with_id(&dm, "", "no id 2")
        .await
        .expect("send without id");
    assert_eq!(
        (a.seq, a.duplicate, b.seq, b.duplicate),
        (4, false, 5, false)
    );

    let got = collect_envelopes(&bob, 3, WAIT).await;
    assert_eq!(
        got.iter()
            .map(|e| (e.inbox_seq, message_of(e).seq))
            .collect::<Vec<_>>(),
        vec![(3, 3), (4, 4), (5, 5)]
    );
}

//! A restart on the same data dir keeps every acknowledged message, and
//! every sequence (channel seq, inbox_seq) continues where it stopped.

use parley_tests::{
    direct_channel, group_channel, message_of, next_message, sync_all, TestBroker, WAIT,
};

const USERS: &[(&str, &str)] = &[
    ("alice", "pw-alice"),
    ("bob", "pw-bob"),
    ("carol", "pw-carol"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_every_acked_message_and_sequences_continue() {
    let mut broker = TestBroker::start(USERS).await;
    let dm = direct_channel("alice", "bob");
    let crew = group_channel("crew");
    let (mut dm_acks, mut crew_acks) = (Vec::new(), Vec::new());
    let (inboxes_before, dm_before, crew_before) = {
        let alice = broker.client("alice", "phone").await;
        let bob = broker.client("bob", "phone").await;
        let carol = broker.client("carol", "phone").await;
        alice
            .create_group("crew", "Crew", ["bob", "carol"])
            .await
            .expect("create crew");
        for i in 1..=5 {
            dm_acks.push(
                alice
                    .send_with_id(&dm, &format!("dm-{i}"), &format!("dm {i}"))
                    .await
                    .expect("dm send"),
            );
        }
        for i in 1..=3 {
            crew_acks.push(
                alice
                    .send(&crew, &format!("crew from alice {i}"))
                    .await
                    .expect("group send"),
            );
        }
        for i in 1..=2 {
            crew_acks.push(
                bob.send(&crew, &format!("crew from bob {i}"))
                    .await
                    .expect("group send"),
            );
        }
        assert_eq!(
            dm_acks.iter().map(|a| a.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(
            crew_acks.iter().map(|a| a.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        let mut inboxes = Vec::new();
        for client in [&alice, &bob, &carol] {
            inboxes.push(sync_all(client, 0).await);
        }
        let dm_history = alice.history(&dm, 0, 100).await.expect("history").messages;
        let crew_history = alice
            .history(&crew, 0, 100)
            .await
            .expect("history")
            .messages;
        (inboxes, dm_history, crew_history)
    };
    assert_eq!(
        inboxes_before.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![11, 11, 6],
        "alice and bob: group event + 5 dm + 5 group; carol: group event + 5 group"
    );

    broker.restart().await;

    let alice = broker.client("alice", "phone").await;
    let bob = broker.client("bob", "phone").await;
    let carol = broker.client("carol", "phone").await;
    for (client, before) in [&alice, &bob, &carol].into_iter().zip(&inboxes_before) {
        let after = sync_all(client, 0).await;
        assert_eq!(
            &after,
            before,
            "{}'s inbox after the restart",
            client.user()
        );
    }
    assert_eq!(
        alice.history(&dm, 0, 100).await.expect("history").messages,
        dm_before
    );
    assert_eq!(
        alice
            .history(&crew, 0, 100)
            .await
            .expect("history")
            .messages,
        crew_before
    );
    for (ack, message) in dm_acks.iter().rev().zip(&dm_before) {
        assert_eq!(
            (ack.seq, ack.ts_ms),
            (message.seq, message.ts_ms),
            "acked message kept as acked"
        );
    }

    // Sequences continue: channel seqs and every user's inbox_seq.
    let next_dm = alice.send(&dm, "dm after restart").await.expect("send");
    assert_eq!((next_dm.seq, next_dm.duplicate), (6, false));
    let next_crew = carol.send(&crew, "crew after restart").await.expect("send");
    assert_eq!(next_crew.seq, 6);
    let (bob_seq, m) = next_message(&bob, WAIT).await;
    assert_eq!((bob_seq, m.seq, m.channel.as_str()), (12, 6, dm.as_str()));
    let (bob_seq, m) = next_message(&bob, WAIT).await;
    assert_eq!((bob_seq, m.seq, m.channel.as_str()), (13, 6, crew.as_str()));
    let (carol_seq, m) = next_message(&carol, WAIT).await;
    assert_eq!((carol_seq, m.seq), (7, 6));

    // Idempotence survives the restart: a retry of an acked message.
    let retry = alice
        .send_with_id(&dm, "dm-3", "dm 3")
        .await
        .expect("retry");
    assert_eq!(
        (retry.seq, retry.ts_ms, retry.duplicate),
        (3, dm_acks[2].ts_ms, true)
    );

    // And a second restart right after writes loses nothing either.
    broker.restart().await;
    let alice = broker.client("alice", "laptop").await;
    let newest = alice.history(&dm, 0, 1).await.expect("history").messages;
    assert_eq!(
        (newest[0].seq, newest[0].text.as_str()),
        (6, "dm after restart")
    );
    let inbox = sync_all(&alice, 11).await;
    assert_eq!(
        inbox
            .iter()
            .map(|e| (e.inbox_seq, message_of(e).seq))
            .collect::<Vec<_>>(),
        vec![(12, 6), (13, 6)]
    );
}

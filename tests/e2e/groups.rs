//! Groups: fan-out to 100 members, gapless seqs under concurrent senders.

use std::collections::BTreeSet;
use std::time::Duration;

use parley_proto::v1::envelope;
use parley_tests::{collect_envelopes, group_channel, message_of, Client, TestBroker, WAIT};
use tokio::task::JoinSet;

fn member_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i:03}")).collect()
}

/// Connects one SDK client per user, concurrently.
async fn connect_all(broker: &TestBroker, users: &[String]) -> Vec<Client> {
    let mut tasks = JoinSet::new();
    for (i, user) in users.iter().enumerate() {
        let opts = broker
            .options(user, "phone")
            .connect_timeout(Duration::from_secs(60));
        tasks.spawn(async move { (i, Client::connect(opts).await) });
    }
    let mut clients: Vec<Option<Client>> = (0..users.len()).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (i, client) = joined.expect("connect task");
        clients[i] = Some(client.unwrap_or_else(|e| panic!("{} could not connect: {e}", users[i])));
    }
    clients
        .into_iter()
        .map(|c| c.expect("every client connected"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_of_100_gets_one_message_in_all_100_inboxes() {
    let users = member_ids(100);
    let broker = TestBroker::builder()
        .bulk_users(users.clone(), "pw-member")
        .start()
        .await;
    let clients = connect_all(&broker, &users).await;
    let owner = &clients[0];

    let others: Vec<String> = users[1..].to_vec();
    let ack = owner
        .create_group("hundred", "All hands", others)
        .await
        .expect("create a group of 100");
    assert_eq!(ack.channel, "g:hundred");

    let sent = owner
        .send(&group_channel("hundred"), "hello, all 100")
        .await
        .expect("send to the group");
    assert_eq!(
        (sent.channel.as_str(), sent.seq, sent.duplicate),
        ("g:hundred", 1, false)
    );

    // Every member's inbox: 1 = the group event (100 members), 2 = the message.
    let mut tasks = JoinSet::new();
    for client in clients.clone() {
        tasks.spawn(async move {
            let got = collect_envelopes(&client, 2, WAIT).await;
            (client.user().to_string(), got)
        });
    }
    let mut reached = BTreeSet::new();
    while let Some(joined) = tasks.join_next().await {
        let (user, got) = joined.expect("a member's inbox check panicked");
        match &got[0].body {
            Some(envelope::Body::Group(event)) => {
                assert_eq!(got[0].inbox_seq, 1, "{user}");
                assert_eq!(event.group_id, "hundred", "{user}");
                assert_eq!(event.members.len(), 100, "{user}: members after the change");
                assert_eq!(event.actor, "m000", "{user}");
            }
            other => panic!("{user}: expected the group event first, got {other:?}"),
        }
        let message = message_of(&got[1]);
        assert_eq!(got[1].inbox_seq, 2, "{user}");
        assert_eq!(
            (
                message.channel.as_str(),
                message.seq,
                message.sender.as_str()
            ),
            ("g:hundred", 1, "m000"),
            "{user}"
        );
        assert_eq!(message.text, "hello, all 100", "{user}");
        assert_eq!(message.ts_ms, sent.ts_ms, "{user}");
        reached.insert(user);
    }
    assert_eq!(reached.len(), 100, "members reached: {reached:?}");

    // The inboxes are durable, not only the live publishes: Sync agrees.
    for client in [&clients[1], &clients[50], &clients[99]] {
        let page = client.sync(1, 0).await.expect("sync");
        assert_eq!(page.events.len(), 1, "{}: {page:?}", client.user());
        assert_eq!(message_of(&page.events[0]).seq, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_senders_get_exactly_seqs_1_to_n() {
    const SENDERS: usize = 5;
    const EACH: usize = 20;
    const TOTAL: u64 = (SENDERS * EACH) as u64;
    let mut users: Vec<String> = (0..SENDERS).map(|i| format!("sender{i}")).collect();
    users.push("watcher".into());
    let broker = TestBroker::builder()
        .bulk_users(users.clone(), "pw-group")
        .start()
        .await;
    let clients = connect_all(&broker, &users).await;
    let watcher = clients.last().expect("watcher").clone();
    clients[0]
        .create_group("race", "Race", users[1..].to_vec())
        .await
        .expect("create the group");

    let channel = group_channel("race");
    let mut sends = JoinSet::new();
    for client in clients[..SENDERS].iter() {
        for n in 0..EACH {
            let (client, channel) = (client.clone(), channel.clone());
            sends.spawn(async move {
                let text = format!("{} #{n}", client.user());
                let ack = client.send(&channel, &text).await;
                (text, ack)
            });
        }
    }
    let mut seqs = Vec::new();
    while let Some(joined) = sends.join_next().await {
        let (text, ack) = joined.expect("send task");
        let ack = ack.unwrap_or_else(|e| panic!("send {text:?} failed: {e}"));
        assert!(!ack.duplicate);
        seqs.push(ack.seq);
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=TOTAL).collect::<Vec<_>>(),
        "acked seqs must be exactly 1..={TOTAL}"
    );

    // History holds exactly those, newest first, with no gap.
    let history = watcher.history(&channel, 0, 1000).await.expect("history");
    assert_eq!(
        history.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=TOTAL).rev().collect::<Vec<_>>()
    );
    assert!(!history.more);

    // A member receives them in seq order, with consecutive inbox_seqs.
    let got = collect_envelopes(&watcher, 1 + TOTAL as usize, WAIT).await;
    assert!(matches!(got[0].body, Some(envelope::Body::Group(_))));
    let pairs: Vec<(u64, u64)> = got[1..]
        .iter()
        .map(|e| (e.inbox_seq, message_of(e).seq))
        .collect();
    let expected: Vec<(u64, u64)> = (1..=TOTAL).map(|seq| (seq + 1, seq)).collect();
    assert_eq!(pairs, expected, "(inbox_seq, seq) at the watcher");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_changes_reach_every_affected_member_and_ownership_passes_on() {
    use parley_proto::v1::ErrorCode;
    use parley_tests::wire;
    let users = ["alice", "bob", "carol", "dave"].map(String::from);
    let broker = TestBroker::builder()
        .bulk_users(users.clone(), "pw-group")
        .start()
        .await;
    let clients = connect_all(&broker, &users).await;
    let [alice, bob, carol, dave] = [0, 1, 2, 3].map(|i| clients[i].clone());
    let event_of = |e: &parley_proto::v1::Envelope| match &e.body {
        Some(envelope::Body::Group(event)) => (event.members.clone(), event.actor.clone()),
        other => panic!("expected a GroupEvent, got {other:?}"),
    };

    alice
        .create_group("club", "Club", ["bob", "carol"])
        .await
        .expect("create");
    for member in [&alice, &bob, &carol] {
        let got = collect_envelopes(member, 1, WAIT).await;
        assert_eq!(
            event_of(&got[0]),
            (
                vec!["alice".into(), "bob".into(), "carol".into()],
                "alice".into()
            )
        );
    }
    // Any member may add; the added member learns of it too.
    carol
        .change_members("club", ["dave"], Vec::<String>::new())
        .await
        .expect("carol adds dave");
    for member in [&alice, &bob, &carol, &dave] {
        let got = collect_envelopes(member, 1, WAIT).await;
        assert_eq!(event_of(&got[0]).1, "carol", "{}", member.user());
        assert_eq!(event_of(&got[0]).0.len(), 4);
    }
    // Only the owner removes others.
    let reply = bob
        .request(parley_proto::v1::request::Body::ChangeMembers(
            parley_proto::v1::ChangeMembers {
                group_id: "club".into(),
                add: vec![],
                remove: vec!["dave".into()],
            },
        ))
        .await
        .expect("reply");
    wire::expect_error(&reply, ErrorCode::Forbidden);

    // The owner leaves: the smallest remaining id (bob) becomes the owner;
    // alice, who left, gets the event too.
    alice.leave_group("club").await.expect("alice leaves");
    for member in [&alice, &bob, &carol, &dave] {
        let got = collect_envelopes(member, 1, WAIT).await;
        let expected = (
            vec!["bob".to_string(), "carol".into(), "dave".into()],
            "alice".to_string(),
        );
        assert_eq!(event_of(&got[0]), expected, "{}", member.user());
    }
    let reply = alice
        .request(wire::send("g:club", "", "still here?"))
        .await
        .expect("reply");
    wire::expect_error(&reply, ErrorCode::NotMember);
    bob.change_members("club", Vec::<String>::new(), ["dave"])
        .await
        .expect("bob, the new owner, removes dave");
    for member in [&bob, &carol, &dave] {
        let got = collect_envelopes(member, 1, WAIT).await;
        assert_eq!(
            event_of(&got[0]),
            (vec!["bob".to_string(), "carol".into()], "bob".to_string())
        );
    }
    let reply = carol
        .request(parley_proto::v1::request::Body::ChangeMembers(
            parley_proto::v1::ChangeMembers {
                group_id: "club".into(),
                add: vec![],
                remove: vec!["bob".into()],
            },
        ))
        .await
        .expect("reply");
    wire::expect_error(&reply, ErrorCode::Forbidden);

    // The last members leave: the group is deleted.
    bob.leave_group("club").await.expect("bob leaves");
    carol.leave_group("club").await.expect("carol leaves");
    let got = collect_envelopes(&carol, 2, WAIT).await;
    assert_eq!(
        event_of(&got[1]),
        (Vec::<String>::new(), "carol".to_string()),
        "empty members: deleted"
    );
    let reply = carol
        .request(wire::send("g:club", "", "anyone?"))
        .await
        .expect("reply");
    wire::expect_error(&reply, ErrorCode::NotFound);
}

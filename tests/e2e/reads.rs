//! Reads: Sync from a remembered inbox_seq with paging, History newest
//! first with before_seq.

use parley_proto::v1::ErrorCode;
use parley_tests::{direct_channel, message_of, wire, TestBroker};

const USERS: &[(&str, &str)] = &[
    ("alice", "pw-alice"),
    ("bob", "pw-bob"),
    ("carol", "pw-carol"),
];

async fn seven_messages(broker: &TestBroker) -> String {
    let alice = broker.client("alice", "phone").await;
    let dm = direct_channel("alice", "bob");
    for i in 1..=7 {
        let ack = alice
            .send(&dm, &format!("message {i}"))
            .await
            .expect("send");
        assert_eq!(ack.seq, i);
    }
    dm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_resumes_from_a_remembered_inbox_seq_and_pages_with_more() {
    let broker = TestBroker::start(USERS).await;
    seven_messages(&broker).await;
    // bob was offline: his device catches up.
    let bob = broker.client("bob", "phone").await;

    let all = bob.sync(0, 0).await.expect("sync from the start");
    assert_eq!(
        all.events.iter().map(|e| e.inbox_seq).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    assert!(!all.more);
    for (i, event) in all.events.iter().enumerate() {
        let message = message_of(event);
        assert_eq!(
            (message.seq, message.text.clone()),
            (i as u64 + 1, format!("message {}", i + 1))
        );
    }

    // The device remembers inbox_seq 2 and pages by 2.
    let mut after = 2;
    let mut pages = Vec::new();
    loop {
        let page = bob.sync(after, 2).await.expect("sync page");
        assert!(page.events.len() <= 2, "limit respected: {page:?}");
        pages.push((
            page.events.iter().map(|e| e.inbox_seq).collect::<Vec<_>>(),
            page.more,
        ));
        match page.events.last() {
            Some(last) if page.more => after = last.inbox_seq,
            _ => break,
        }
    }
    assert_eq!(
        pages,
        vec![(vec![3, 4], true), (vec![5, 6], true), (vec![7], false)],
        "pages as (inbox_seqs, more)"
    );

    // A page that ends exactly at the head says more = false.
    let exact = bob.sync(5, 2).await.expect("sync");
    assert_eq!(
        exact.events.iter().map(|e| e.inbox_seq).collect::<Vec<_>>(),
        vec![6, 7]
    );
    assert!(!exact.more, "nothing after inbox_seq 7");
    // Nothing after the head.
    let empty = bob.sync(7, 0).await.expect("sync at the head");
    assert!(empty.events.is_empty() && !empty.more, "{empty:?}");
    // A limit above 1000 is clamped, not refused.
    let clamped = bob.sync(0, 5000).await.expect("sync with a large limit");
    assert_eq!(clamped.events.len(), 7);

    // alice's inbox is her own: the same 7 messages, her own inbox_seqs.
    let alice = broker.client("alice", "laptop").await;
    let hers = alice.sync(3, 0).await.expect("alice syncs");
    assert_eq!(
        hers.events.iter().map(|e| e.inbox_seq).collect::<Vec<_>>(),
        vec![4, 5, 6, 7]
    );
    // carol's inbox is empty.
    let carol = broker.client("carol", "phone").await;
    let none = carol.sync(0, 0).await.expect("carol syncs");
    assert!(none.events.is_empty() && !none.more);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_newest_first_with_before_seq() {
    let broker = TestBroker::start(USERS).await;
    let dm = seven_messages(&broker).await;
    let bob = broker.client("bob", "phone").await;

    let mut before = 0;
    let mut pages = Vec::new();
    loop {
        let page = bob.history(&dm, before, 3).await.expect("history page");
        pages.push((
            page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            page.more,
        ));
        for message in &page.messages {
            assert_eq!(message.text, format!("message {}", message.seq));
            assert_eq!(
                (message.channel.as_str(), message.sender.as_str()),
                ("dm:alice:bob", "alice")
            );
        }
        match page.messages.last() {
            Some(oldest) if page.more => before = oldest.seq,
            _ => break,
        }
    }
    assert_eq!(
        pages,
        vec![
            (vec![7, 6, 5], true),
            (vec![4, 3, 2], true),
            (vec![1], false)
        ],
        "pages as (seqs, more)"
    );

    let exact = bob.history(&dm, 4, 3).await.expect("history");
    assert_eq!(
        exact.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
    assert!(!exact.more, "nothing older than seq 1");
    let default_limit = bob
        .history(&dm, 0, 0)
        .await
        .expect("history with the default limit");
    assert_eq!(default_limit.messages.len(), 7);
    assert!(!default_limit.more);
    let none = bob
        .history(&dm, 1, 10)
        .await
        .expect("history before the first message");
    assert!(none.messages.is_empty() && !none.more);

    // Members only; bad channel ids are refused.
    let carol = broker.client("carol", "phone").await;
    let reply = carol
        .request(wire::history(&dm, 0, 10))
        .await
        .expect("reply");
    wire::expect_error(&reply, ErrorCode::NotMember);
    let reply = carol
        .request(wire::history("g:nosuch", 0, 10))
        .await
        .expect("reply");
    wire::expect_error(&reply, ErrorCode::NotFound);
    let reply = bob
        .request(wire::history("dm:bob:alice", 0, 10))
        .await
        .expect("reply");
    wire::expect_error(&reply, ErrorCode::BadRequest);
}

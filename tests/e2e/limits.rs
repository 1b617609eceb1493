//! Limits: the text limit counted in Unicode scalar values (100,000 emoji,
//! ~400 KB, pass; 100,001 characters are TOO_LARGE) and
//! `max_group_members` (LIMIT_EXCEEDED, creator included).

use parley_proto::v1::{self, request, ErrorCode};
use parley_tests::{direct_channel, group_channel, inbox_head, wire, TestBroker, WAIT};

const USERS: &[(&str, &str)] = &[("alice", "pw-alice"), ("bob", "pw-bob")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_length_is_counted_in_unicode_scalar_values() {
    let broker = TestBroker::start(USERS).await;
    let alice = broker.client("alice", "phone").await;
    let bob = broker.client("bob", "phone").await;
    let dm = direct_channel("alice", "bob");

    let emoji = "\u{1F600}".repeat(100_000);
    assert_eq!(emoji.len(), 400_000, "four bytes of UTF-8 each");
    let ack = alice
        .send(&dm, &emoji)
        .await
        .expect("100,000 emoji are 100,000 characters: accepted");
    assert_eq!(ack.seq, 1);
    let (inbox_seq, message) = parley_tests::next_message(&bob, WAIT).await;
    assert_eq!((inbox_seq, message.seq), (1, 1));
    assert_eq!(message.text.chars().count(), 100_000);
    assert!(message.text == emoji, "the 400 KB text arrives intact");

    for (text, what) in [
        ("\u{1F600}".repeat(100_001), "100,001 emoji"),
        ("a".repeat(100_001), "100,001 ASCII characters"),
        (
            format!("{}\u{e9}", "a".repeat(100_000)),
            "100,000 ASCII + one accented letter",
        ),
    ] {
        let reply = alice
            .request(wire::send(&dm, "", &text))
            .await
            .expect("reply");
        match &reply.body {
            Some(v1::reply::Body::Error(_)) => {
                wire::expect_error(&reply, ErrorCode::TooLarge);
            }
            other => panic!("{what}: expected TOO_LARGE, got {other:?}"),
        }
    }
    let ack = alice
        .send(&dm, &"a".repeat(100_000))
        .await
        .expect("100,000 ASCII characters: accepted");
    assert_eq!(ack.seq, 2, "the refused texts used no seq");
    let (inbox_seq, message) = parley_tests::next_message(&bob, WAIT).await;
    assert_eq!(
        (inbox_seq, message.seq, message.text.len()),
        (2, 2, 100_000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_over_max_group_members_is_refused_with_limit_exceeded() {
    let members: Vec<String> = (1..=100).map(|i| format!("m{i:03}")).collect();
    let mut users = members.clone();
    users.push("boss".into());
    let broker = TestBroker::builder()
        .bulk_users(users, "pw-bulk")
        .start()
        .await;
    let boss = broker.client("boss", "phone").await;

    // boss + 100 = 101 members: over the default limit of 100.
    let reply = boss
        .request(wire::create_group(
            "big",
            "Big",
            &members.iter().map(String::as_str).collect::<Vec<_>>(),
        ))
        .await
        .expect("reply");
    wire::expect_error(&reply, ErrorCode::LimitExceeded);
    assert_eq!(
        inbox_head(&boss).await,
        0,
        "a refused creation appends nothing"
    );
    let reply = boss
        .request(wire::send(&group_channel("big"), "", "hi"))
        .await
        .expect("reply");
    wire::expect_error(&reply, ErrorCode::NotFound);

    // boss + 99 = 100: exactly the limit.
    boss.create_group("big", "Big", members[..99].to_vec())
        .await
        .expect("a group of exactly 100");
    assert_eq!(inbox_head(&boss).await, 1);
    let reply = boss
        .request(request::Body::ChangeMembers(v1::ChangeMembers {
            group_id: "big".into(),
            add: vec![members[99].clone()],
            remove: vec![],
        }))
        .await
        .expect("reply");
    wire::expect_error(&reply, ErrorCode::LimitExceeded);
    assert_eq!(
        inbox_head(&boss).await,
        1,
        "a refused change appends nothing"
    );
    let last = broker.client(&members[99], "phone").await;
    let reply = last
        .request(wire::send(&group_channel("big"), "", "am I in?"))
        .await
        .expect("reply");
    wire::expect_error(&reply, ErrorCode::NotMember);
    assert_eq!(
        boss.send(&group_channel("big"), "still works")
            .await
            .expect("send")
            .seq,
        1
    );
}

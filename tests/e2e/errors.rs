//! Every error path of a request: the right code, a message, and no change
//! of state (the next send still gets the next seq, no inbox grows).

use parley_proto::v1::{self, request, ErrorCode, Request};
use parley_tests::{direct_channel, group_channel, inbox_head, message_of, wire, Client, TestBroker, WAIT};
use prost::Message;

const USERS: &[(&str, &str)] = &[("alice", "pw-alice"), ("bob", "pw-bob"), ("carol", "pw-carol")];

/// What no failed request may change.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    inbox_heads: Vec<u64>,
    dm_newest: Vec<u64>,
    team_newest: Vec<u64>,
}

struct World {
    alice: Client,
    bob: Client,
    carol: Client,
}

impl World {
    async fn snapshot(&self) -> Snapshot {
        let mut inbox_heads = Vec::new();
        for client in [&self.alice, &self.bob, &self.carol] {
            inbox_heads.push(inbox_head(client).await);
        }
        let newest = |page: v1::HistoryPage| page.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
        Snapshot {
            inbox_heads,
            dm_newest: newest(self.alice.history(&direct_channel("alice", "bob"), 0, 1).await.expect("dm history")),
            team_newest: newest(self.alice.history("g:team", 0, 1).await.expect("group history")),
        }
    }
}

fn long_id(n: usize) -> String {
    "x".repeat(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_error_and_change_nothing() {
    let broker = TestBroker::start(USERS).await;
    let world = World {
        alice: broker.client("alice", "phone").await,
        bob: broker.client("bob", "phone").await,
        carol: broker.client("carol", "phone").await,
    };
    let mut alice_raw = broker.raw_v4("alice", "raw", true).await;
    alice_raw.subscribe_own().await;
    let dm = direct_channel("alice", "bob");
    world.alice.create_group("team", "Team", ["bob"]).await.expect("create team");
    assert_eq!(world.alice.send(&dm, "before").await.expect("send").seq, 1);
    assert_eq!(world.alice.send("g:team", "before").await.expect("send").seq, 1);
    let before = world.snapshot().await;
    assert_eq!(before.inbox_heads, vec![3, 3, 0], "group event + 2 messages for alice and bob");

    // Payloads that are not a Request: BAD_REQUEST, request_id "".
    for payload in [vec![0xff, 0xff, 0xff, 0xff], vec![0x0a, 0x10, b'a'], b"\x0a\x03abc\xff".to_vec()] {
        let reply = alice_raw.request_payload(payload.clone()).await;
        assert_eq!(reply.request_id, "", "undecodable {payload:?}");
        wire::expect_error(&reply, ErrorCode::BadRequest);
        assert_eq!(world.snapshot().await, before, "after undecodable {payload:?}");
    }
    // A Request with no body.
    let reply = alice_raw.request_payload(Request { request_id: "empty-1".into(), body: None }.encode_to_vec()).await;
    assert_eq!(reply.request_id, "empty-1");
    wire::expect_error(&reply, ErrorCode::BadRequest);

    let too_long_cmid = "c".repeat(129);
    let id65 = long_id(65);
    let g65 = format!("g:{id65}");
    let dm65 = format!("dm:alice:{id65}");
    let cases: Vec<(&Client, request::Body, ErrorCode, &str)> = vec![
        // channel forms
        (&world.alice, wire::send("chan:alice:bob", "", "hi"), ErrorCode::BadRequest, "unknown channel form"),
        (&world.alice, wire::send("", "", "hi"), ErrorCode::BadRequest, "empty channel"),
        (&world.alice, wire::send("dm:alice", "", "hi"), ErrorCode::BadRequest, "dm with one user"),
        (&world.alice, wire::send("dm:alice:bob:carol", "", "hi"), ErrorCode::BadRequest, "dm with three users"),
        (&world.alice, wire::send("g:", "", "hi"), ErrorCode::BadRequest, "empty group id"),
        (&world.alice, wire::send("DM:alice:bob", "", "hi"), ErrorCode::BadRequest, "upper-case prefix"),
        (&world.alice, wire::send("dm:bob:alice", "", "hi"), ErrorCode::BadRequest, "non-canonical dm"),
        (&world.alice, wire::send("dm:alice:alice", "", "hi"), ErrorCode::BadRequest, "dm with oneself"),
        // invalid ids
        (&world.alice, wire::send("dm:al ice:bob", "", "hi"), ErrorCode::BadRequest, "space in a user id"),
        (&world.alice, wire::send("dm:alice:b/ob", "", "hi"), ErrorCode::BadRequest, "slash in a user id"),
        (&world.alice, wire::send(&dm65, "", "hi"), ErrorCode::BadRequest, "65-character user id"),
        (&world.alice, wire::send("g:te am", "", "hi"), ErrorCode::BadRequest, "space in a group id"),
        (&world.alice, wire::send(&g65, "", "hi"), ErrorCode::BadRequest, "65-character group id"),
        (&world.alice, wire::send(&dm, &too_long_cmid, "hi"), ErrorCode::BadRequest, "client_msg_id over 128 bytes"),
        (&world.alice, wire::create_group("bad id", "x", &["bob"]), ErrorCode::BadRequest, "invalid group id"),
        (&world.alice, wire::create_group(&id65, "x", &["bob"]), ErrorCode::BadRequest, "65-character group id"),
        (&world.alice, wire::create_group("ok-id", "x", &["b ob"]), ErrorCode::BadRequest, "invalid member id"),
        (&world.alice, wire::create_group("ok-id", &"n".repeat(257), &["bob"]), ErrorCode::BadRequest, "name over 256"),
        (&world.alice, wire::create_group("team", "again", &["bob"]), ErrorCode::BadRequest, "group exists"),
        // text
        (&world.alice, wire::send(&dm, "", ""), ErrorCode::BadRequest, "empty text"),
        (&world.alice, wire::send(&dm, "", &"a".repeat(100_001)), ErrorCode::TooLarge, "100,001 characters"),
        // membership
        (&world.carol, wire::send(&dm, "", "let me in"), ErrorCode::NotMember, "carol in alice and bob's dm"),
        (&world.carol, wire::send("g:team", "", "let me in"), ErrorCode::NotMember, "carol in a group she is not in"),
        (&world.carol, wire::history("g:team", 0, 10), ErrorCode::NotMember, "history of another group"),
        (
            &world.carol,
            request::Body::ChangeMembers(v1::ChangeMembers { group_id: "team".into(), add: vec!["carol".into()], remove: vec![] }),
            ErrorCode::NotMember,
            "a non-member adds herself",
        ),
        (&world.carol, request::Body::LeaveGroup(v1::LeaveGroup { group_id: "team".into() }), ErrorCode::NotMember, "leave a group one is not in"),
        (
            &world.bob,
            request::Body::ChangeMembers(v1::ChangeMembers { group_id: "team".into(), add: vec![], remove: vec!["alice".into()] }),
            ErrorCode::Forbidden,
            "a member who is not the owner removes the owner",
        ),
        (&world.alice, wire::send("sys:alice", "", "hi"), ErrorCode::Forbidden, "a user sends to a system channel"),
        // unknown users and groups
        (&world.alice, wire::send("dm:alice:zed", "", "hi"), ErrorCode::NotFound, "dm with an unknown user"),
        (&world.alice, wire::send("dm:aaron:alice", "", "hi"), ErrorCode::NotFound, "dm with an unknown user (low side)"),
        (&world.alice, wire::send("g:nosuch", "", "hi"), ErrorCode::NotFound, "unknown group"),
        (&world.alice, wire::create_group("ghost", "x", &["bob", "nobody"]), ErrorCode::NotFound, "unknown member"),
        (
            &world.alice,
            request::Body::ChangeMembers(v1::ChangeMembers { group_id: "team".into(), add: vec!["nobody".into()], remove: vec![] }),
            ErrorCode::NotFound,
            "add an unknown user",
        ),
        (
            &world.alice,
            request::Body::ChangeMembers(v1::ChangeMembers { group_id: "nosuch".into(), add: vec!["bob".into()], remove: vec![] }),
            ErrorCode::NotFound,
            "change an unknown group",
        ),
        (&world.alice, request::Body::LeaveGroup(v1::LeaveGroup { group_id: "nosuch".into() }), ErrorCode::NotFound, "leave an unknown group"),
        // request kinds of later versions
        (
            &world.alice,
            request::Body::Receipt(v1::MarkReceipt { channel: dm.clone(), seq: 1, kind: v1::ReceiptKind::Read as i32 }),
            ErrorCode::BadRequest,
            "receipt (not supported yet)",
        ),
        (&world.alice, request::Body::Typing(v1::Typing { channel: dm.clone() }), ErrorCode::BadRequest, "typing (not supported yet)"),
        (
            &world.alice,
            request::Body::ChangeFriends(v1::ChangeFriends { add: vec!["bob".into()], remove: vec![] }),
            ErrorCode::BadRequest,
            "change_friends (not supported yet)",
        ),
        (
            &world.alice,
            request::Body::QueryPresence(v1::QueryPresence { users: vec!["bob".into()] }),
            ErrorCode::BadRequest,
            "query_presence (not supported yet)",
        ),
        (
            &world.alice,
            request::Body::RegisterPush(v1::RegisterPush { platform: "fcm".into(), token: "t".into() }),
            ErrorCode::BadRequest,
            "register_push (not supported yet)",
        ),
        (
            &world.alice,
            request::Body::System(v1::SystemMessage { channel: dm.clone(), client_msg_id: "s".into(), text: "sys".into(), users: vec![] }),
            ErrorCode::BadRequest,
            "system (not supported yet; a user may never send it)",
        ),
        (&world.alice, request::Body::Logout(v1::Logout {}), ErrorCode::BadRequest, "logout (not supported yet)"),
    ];
    // Every case runs (a wrong code is collected, not fatal at once) so
    // that one run reports every mismatch; a change of state is fatal.
    let mut wrong = Vec::new();
    for (client, body, code, what) in cases {
        let reply = client
            .request(body)
            .await
            .unwrap_or_else(|e| panic!("{what}: no reply: {e}"));
        let outcome = format!("{:?}", reply.body);
        match &reply.body {
            Some(v1::reply::Body::Error(error)) if error.code == code as i32 && !error.message.trim().is_empty() => {}
            Some(v1::reply::Body::Error(error)) => wrong.push(format!(
                "{what}: expected {code:?}, got {:?} {:?}",
                v1::ErrorCode::try_from(error.code),
                error.message
            )),
            other => wrong.push(format!("{what}: expected Error {code:?}, got {other:?}")),
        }
        assert_eq!(world.snapshot().await, before, "state changed after: {what} (reply: {outcome})");
    }
    assert!(wrong.is_empty(), "wrong replies:\n{}", wrong.join("\n"));

    // The next sends get the next seqs, and bob's inbox continues at 4, 5:
    // nothing was appended by any failed request.
    assert_eq!(world.alice.send(&dm, "after").await.expect("send").seq, 2);
    assert_eq!(world.alice.send("g:team", "after").await.expect("send").seq, 2);
    let page = world.bob.sync(3, 0).await.expect("bob syncs");
    assert_eq!(
        page.events.iter().map(|e| (e.inbox_seq, message_of(e).channel.clone(), message_of(e).seq)).collect::<Vec<_>>(),
        vec![(4, dm.clone(), 2), (5, "g:team".to_string(), 2)]
    );
    // The failed group creations left nothing behind.
    let reply = world.alice.request(wire::send("g:ghost", "", "hi")).await.expect("reply");
    wire::expect_error(&reply, ErrorCode::NotFound);
    let reply = world.alice.request(wire::send("g:ok-id", "", "hi")).await.expect("reply");
    wire::expect_error(&reply, ErrorCode::NotFound);
    // carol is still not in the team, and the owner is still in it.
    let reply = world.carol.request(wire::send("g:team", "", "hi")).await.expect("reply");
    wire::expect_error(&reply, ErrorCode::NotMember);
    assert!(world.alice.history("g:team", 0, 1).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_length_is_counted_in_unicode_scalar_values() {
    let broker = TestBroker::start(USERS).await;
    let alice = broker.client("alice", "phone").await;
    let bob = broker.client("bob", "phone").await;
    let dm = direct_channel("alice", "bob");

    let emoji = "\u{1F600}".repeat(100_000);
    assert_eq!(emoji.len(), 400_000, "four bytes of UTF-8 each");
    let ack = alice.send(&dm, &emoji).await.expect("100,000 emoji are 100,000 characters: accepted");
    assert_eq!(ack.seq, 1);
    let (inbox_seq, message) = parley_tests::next_message(&bob, WAIT).await;
    assert_eq!((inbox_seq, message.seq), (1, 1));
    assert_eq!(message.text.chars().count(), 100_000);
    assert!(message.text == emoji, "the 400 KB text arrives intact");

    for (text, what) in [
        ("\u{1F600}".repeat(100_001), "100,001 emoji"),
        ("a".repeat(100_001), "100,001 ASCII characters"),
        (format!("{}\u{e9}", "a".repeat(100_000)), "100,000 ASCII + one accented letter"),
    ] {
        let reply = alice.request(wire::send(&dm, "", &text)).await.expect("reply");
        match &reply.body {
            Some(v1::reply::Body::Error(_)) => {
                wire::expect_error(&reply, ErrorCode::TooLarge);
            }
            other => panic!("{what}: expected TOO_LARGE, got {other:?}"),
        }
    }
    let ack = alice.send(&dm, &"a".repeat(100_000)).await.expect("100,000 ASCII characters: accepted");
    assert_eq!(ack.seq, 2, "the refused texts used no seq");
    let (inbox_seq, message) = parley_tests::next_message(&bob, WAIT).await;
    assert_eq!((inbox_seq, message.seq, message.text.len()), (2, 2, 100_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_over_max_group_members_is_refused_with_limit_exceeded() {
    let members: Vec<String> = (1..=100).map(|i| format!("m{i:03}")).collect();
    let mut users = members.clone();
    users.push("boss".into());
    let broker = TestBroker::builder().bulk_users(users, "pw-bulk").start().await;
    let boss = broker.client("boss", "phone").await;

    // boss + 100 = 101 members: over the default limit of 100.
    let reply = boss.request(wire::create_group("big", "Big", &members.iter().map(String::as_str).collect::<Vec<_>>())).await.expect("reply");
    wire::expect_error(&reply, ErrorCode::LimitExceeded);
    assert_eq!(inbox_head(&boss).await, 0, "a refused creation appends nothing");
    let reply = boss.request(wire::send(&group_channel("big"), "", "hi")).await.expect("reply");
    wire::expect_error(&reply, ErrorCode::NotFound);

    // boss + 99 = 100: exactly the limit.
    boss.create_group("big", "Big", members[..99].to_vec()).await.expect("a group of exactly 100");
    assert_eq!(inbox_head(&boss).await, 1);
    let reply = boss
        .request(request::Body::ChangeMembers(v1::ChangeMembers { group_id: "big".into(), add: vec![members[99].clone()], remove: vec![] }))
        .await
        .expect("reply");
    wire::expect_error(&reply, ErrorCode::LimitExceeded);
    assert_eq!(inbox_head(&boss).await, 1, "a refused change appends nothing");
    let last = broker.client(&members[99], "phone").await;
    let reply = last.request(wire::send(&group_channel("big"), "", "am I in?")).await.expect("reply");
    wire::expect_error(&reply, ErrorCode::NotMember);
    assert_eq!(boss.send(&group_channel("big"), "still works").await.expect("send").seq, 1);
}

//! Every error path of a request: the right code, a message, and no change
//! of state (the next send still gets the next seq, no inbox grows).

mod cases;

use cases::Who;
use parley_proto::v1::{self, request, ErrorCode, Request};
use parley_tests::{direct_channel, message_of, wire, Client, RawV4, TestBroker};
use prost::Message;

const USERS: &[(&str, &str)] = &[
    ("alice", "pw-alice"),
    ("bob", "pw-bob"),
    ("carol", "pw-carol"),
];

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
    /// One raw client per user (TCP_NODELAY) to read the state quickly.
    probes: Vec<RawV4>,
}

impl World {
    async fn start(broker: &TestBroker) -> World {
        let mut probes = Vec::new();
        for user in ["alice", "bob", "carol"] {
            let mut probe = broker.raw_v4(user, "probe", true).await;
            probe.subscribe_own().await;
            probes.push(probe);
        }
        World {
            alice: broker.client("alice", "phone").await,
            bob: broker.client("bob", "phone").await,
            carol: broker.client("carol", "phone").await,
            probes,
        }
    }

    fn client(&self, who: Who) -> &Client {
        match who {
            Who::Alice => &self.alice,
            Who::Bob => &self.bob,
            Who::Carol => &self.carol,
        }
    }

    async fn snapshot(&mut self) -> Snapshot {
        let mut inbox_heads = Vec::new();
        for probe in &mut self.probes {
            let sync = request::Body::Sync(v1::Sync {
                after_inbox_seq: 0,
                limit: 1000,
            });
            let reply = probe.request(sync).await;
            let Some(v1::reply::Body::SyncPage(page)) = reply.body else {
                panic!("expected a SyncPage, got {reply:?}");
            };
            inbox_heads.push(page.events.last().map_or(0, |e| e.inbox_seq));
        }
        let alice = &mut self.probes[0];
        let mut newest = Vec::new();
        for channel in [direct_channel("alice", "bob"), "g:team".to_string()] {
            let reply = alice.request(wire::history(&channel, 0, 1)).await;
            let Some(v1::reply::Body::HistoryPage(page)) = reply.body else {
                panic!("expected a HistoryPage of {channel}, got {reply:?}");
            };
            newest.push(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>());
        }
        Snapshot {
            inbox_heads,
            team_newest: newest.pop().unwrap_or_default(),
            dm_newest: newest.pop().unwrap_or_default(),
        }
    }
}

/// Checks one reply against the expected code; returns what was wrong.
fn check(reply: &v1::Reply, code: ErrorCode, what: &str) -> Option<String> {
    match &reply.body {
        Some(v1::reply::Body::Error(error))
            if error.code == code as i32 && !error.message.trim().is_empty() =>
        {
            None
        }
        Some(v1::reply::Body::Error(error)) => Some(format!(
            "{what}: expected {code:?}, got {:?} {:?}",
            ErrorCode::try_from(error.code),
            error.message
        )),
        other => Some(format!("{what}: expected Error {code:?}, got {other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_error_and_change_nothing() {
    let broker = TestBroker::start(USERS).await;
    let mut world = World::start(&broker).await;
    let mut alice_raw = broker.raw_v4("alice", "raw", true).await;
    alice_raw.subscribe_own().await;
    let dm = direct_channel("alice", "bob");
    world
        .alice
        .create_group("team", "Team", ["bob"])
        .await
        .expect("create team");
    assert_eq!(world.alice.send(&dm, "before").await.expect("send").seq, 1);
    assert_eq!(
        world
            .alice
            .send("g:team", "before")
            .await
            .expect("send")
            .seq,
        1
    );
    let before = world.snapshot().await;
    assert_eq!(
        before.inbox_heads,
        vec![3, 3, 0],
        "group event + 2 messages for alice and bob"
    );

    // Payloads that are not a Request: BAD_REQUEST, request_id "".
    for payload in [
        vec![0xff, 0xff, 0xff, 0xff],
        vec![0x0a, 0x10, b'a'],
        b"\x0a\x03abc\xff".to_vec(),
    ] {
        let reply = alice_raw.request_payload(payload.clone()).await;
        assert_eq!(reply.request_id, "", "undecodable {payload:?}");
        wire::expect_error(&reply, ErrorCode::BadRequest);
        assert_eq!(
            world.snapshot().await,
            before,
            "after undecodable {payload:?}"
        );
    }
    // A Request with no body: BAD_REQUEST, its request_id echoed.
    let empty = Request {
        request_id: "empty-1".into(),
        body: None,
    };
    let reply = alice_raw.request_payload(empty.encode_to_vec()).await;
    assert_eq!(reply.request_id, "empty-1");
    wire::expect_error(&reply, ErrorCode::BadRequest);

    // Every case runs (a wrong code is collected, not fatal at once) so
    // that one run reports every mismatch; a change of state is fatal.
    let mut wrong = Vec::new();
    for case in cases::all(&dm) {
        let reply = world
            .client(case.who)
            .request(case.body)
            .await
            .unwrap_or_else(|e| panic!("{}: no reply: {e}", case.what));
        wrong.extend(check(&reply, case.code, case.what));
        let after = world.snapshot().await;
        assert_eq!(
            after, before,
            "state changed after: {} (reply: {:?})",
            case.what, reply.body
        );
    }
    assert!(wrong.is_empty(), "wrong replies:\n{}", wrong.join("\n"));

    // The next sends get the next seqs, and bob's inbox continues at 4, 5:
    // nothing was appended by any failed request.
    assert_eq!(world.alice.send(&dm, "after").await.expect("send").seq, 2);
    assert_eq!(
        world.alice.send("g:team", "after").await.expect("send").seq,
        2
    );
    let page = world.bob.sync(3, 0).await.expect("bob syncs");
    let got: Vec<(u64, &str, u64)> = page
        .events
        .iter()
        .map(|e| {
            (
                e.inbox_seq,
                message_of(e).channel.as_str(),
                message_of(e).seq,
            )
        })
        .collect();
    assert_eq!(got, vec![(4, dm.as_str(), 2), (5, "g:team", 2)]);

    // The failed group creations left nothing behind, carol is still not
    // in the team, and its owner still is.
    for (client, channel, code) in [
        (&world.alice, "g:ghost", ErrorCode::NotFound),
        (&world.alice, "g:ok-id", ErrorCode::NotFound),
        (&world.carol, "g:team", ErrorCode::NotMember),
    ] {
        let reply = client
            .request(wire::send(channel, "", "hi"))
            .await
            .expect("reply");
        wire::expect_error(&reply, code);
    }
    assert!(world.alice.history("g:team", 0, 1).await.is_ok());
}

//! Friends end to end: `ChangeFriends` requests, acceptances, declines and
//! removals with their `FriendEvent`s in both inboxes (every device), the
//! presence pair topics published when two become friends and cleared when
//! they stop, repeats that append nothing, refusals that change nothing,
//! friendships across a restart, and `QueryPresence` (friends, co-members,
//! oneself; anyone else makes the whole query FORBIDDEN).

use std::time::Duration;

use parley_proto::v1::{ErrorCode, FriendState};
use parley_tests::{
    befriend, collect_envelopes, eventually_async, friend_event_of, inbox_head, next_presence,
    sync_all, Client, ClientError, TestBroker, WAIT,
};
use FriendState::{Friends, Removed, RequestReceived, RequestSent};

const USERS: &[(&str, &str)] = &[
    ("alice", "pw-alice"),
    ("bob", "pw-bob"),
    ("carol", "pw-carol"),
    ("dave", "pw-dave"),
    ("erin", "pw-erin"),
    ("watcher", "pw-watcher"),
    ("pinger", "pw-pinger"),
];

/// After a barrier, how long to listen for what must not arrive.
const QUIET: Duration = Duration::from_millis(300);

const NOBODY: Option<&str> = None;

/// An SDK client subscribed to `presence/+/{user}` from its CONNECT on.
async fn observer(broker: &TestBroker, user: &str, device: &str) -> Client {
    broker
        .connect(broker.options(user, device).presence(true))
        .await
}

/// `client` adds `add` and removes `remove`; the Ack must be `{"", 0}`.
async fn change(client: &Client, add: &[&str], remove: &[&str]) {
    let ack = client
        .change_friends(add.iter().copied(), remove.iter().copied())
        .await
        .unwrap_or_else(|e| panic!("{} ChangeFriends {add:?} {remove:?}: {e}", client.user()));
    assert_eq!((ack.channel.as_str(), ack.seq), ("", 0), "{ack:?}");
}

/// The next `n` inbox envelopes of `client`, as friend events.
async fn friend_events(client: &Client, n: usize) -> Vec<(String, FriendState)> {
    collect_envelopes(client, n, WAIT)
        .await
        .iter()
        .map(friend_event_of)
        .collect()
}

fn event(user: &str, state: FriendState) -> (String, FriendState) {
    (user.to_owned(), state)
}

/// The error code of a refused request, failing the test otherwise.
fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Server { code, message }) => {
            assert!(!message.trim().is_empty(), "{code:?} without a message");
            code
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The inbox heads of `clients`' users (via Sync).
async fn heads(clients: &[&Client]) -> Vec<u64> {
    let mut heads = Vec::new();
    for client in clients {
        heads.push(inbox_head(client).await);
    }
    heads
}

/// Friends `watcher` and `pinger`, to tell when the broker has published
/// every presence change so far (it publishes them in order).
struct Settle {
    watcher: Client,
}

impl Settle {
    async fn new(broker: &TestBroker) -> Settle {
        let watcher = observer(broker, "watcher", "w").await;
        let pinger = broker.client("pinger", "p").await;
        befriend(&watcher, &pinger).await;
        pinger.disconnect().await.unwrap();
        let settle = Settle { watcher };
        settle.until_pinger(false).await;
        settle
    }

    /// Returns once every presence change before the call has gone out:
    /// a later change of pinger's has reached watcher.
    async fn settle(&self, broker: &TestBroker) {
        let pinger = broker.client("pinger", "p").await;
        self.until_pinger(true).await;
        pinger.disconnect().await.unwrap();
        self.until_pinger(false).await;
    }

    async fn until_pinger(&self, online: bool) {
        loop {
            let update = next_presence(&self.watcher, WAIT).await;
            if update.subject == "pinger" && update.online() == Some(online) {
                return;
            }
        }
    }
}

async fn assert_no_presence(client: &Client, why: &str) {
    if let Some(update) = client.next_presence(QUIET).await.expect("presence open") {
        panic!("{}: {why}, but got {update:?}", client.user());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_and_its_acceptance_reach_both_inboxes_on_every_device() {
    let broker = TestBroker::start(USERS).await;
    let alice = broker.client("alice", "phone").await;
    let laptop = broker.client("alice", "laptop").await;
    let bob = broker.client("bob", "phone").await;

    change(&alice, &["bob"], &[]).await;
    for device in [&alice, &laptop] {
        assert_eq!(
            friend_events(device, 1).await,
            [event("bob", RequestSent)],
            "{}: the asker's devices see REQUEST_SENT",
            device.device()
        );
    }
    assert_eq!(
        friend_events(&bob, 1).await,
        [event("alice", RequestReceived)]
    );

    change(&bob, &["alice"], &[]).await;
    for device in [&alice, &laptop] {
        assert_eq!(friend_events(device, 1).await, [event("bob", Friends)]);
    }
    assert_eq!(friend_events(&bob, 1).await, [event("alice", Friends)]);

    // Stored in both inboxes, in order, with no gaps.
    let stored = sync_all(&alice, 0).await;
    let seqs: Vec<u64> = stored.iter().map(|e| e.inbox_seq).collect();
    assert_eq!(seqs, [1, 2]);
    let stored: Vec<_> = stored.iter().map(friend_event_of).collect();
    assert_eq!(stored, [event("bob", RequestSent), event("bob", Friends)]);
    let stored: Vec<_> = sync_all(&bob, 0)
        .await
        .iter()
        .map(friend_event_of)
        .collect();
    assert_eq!(
        stored,
        [event("alice", RequestReceived), event("alice", Friends)]
    );
    let presence = alice.query_presence(["bob"]).await.expect("friends now");
    assert!(presence[0].online);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn becoming_friends_publishes_both_pair_topics_at_once() {
    let broker = TestBroker::start(USERS).await;
    let settle = Settle::new(&broker).await;
    let alice = observer(&broker, "alice", "phone").await;
    let bob = observer(&broker, "bob", "phone").await;
    settle.settle(&broker).await; // their connections' changes are out

    change(&alice, &["bob"], &[]).await;
    assert_no_presence(&alice, "a request is not a friendship").await;
    assert_no_presence(&bob, "a request is not a friendship").await;

    change(&bob, &["alice"], &[]).await;
    let to_alice = next_presence(&alice, Duration::from_secs(2)).await;
    let to_bob = next_presence(&bob, Duration::from_secs(2)).await;
    assert_eq!(
        (
            to_alice.subject.as_str(),
            to_alice.online(),
            to_alice.retained
        ),
        ("bob", Some(true), false)
    );
    assert_eq!(
        (to_bob.subject.as_str(), to_bob.online(), to_bob.retained),
        ("alice", Some(true), false)
    );
    assert_eq!(to_bob.presence.unwrap().user, "alice");

    // With an offline friend: their stored state, at once.
    let before_ms = now_ms();
    let carol = broker.client("carol", "phone").await;
    change(&carol, &["alice"], &[]).await;
    carol.disconnect().await.unwrap();
    let after_ms = now_ms();
    settle.settle(&broker).await;
    change(&alice, &["carol"], &[]).await;
    let (before, carol_state) = loop_until(&alice, "carol").await;
    assert!(before.is_empty(), "{before:#?}");
    assert_eq!(carol_state.online(), Some(false));
    let last_active = carol_state.last_active_ms().unwrap();
    assert!(
        (before_ms - 50..=after_ms + 50).contains(&last_active),
        "carol's last_active_ms {last_active} within her connection ({before_ms}..{after_ms})"
    );
    let carol = observer(&broker, "carol", "phone").await;
    let retained = next_presence(&carol, Duration::from_secs(2)).await;
    assert_eq!(
        (
            retained.subject.as_str(),
            retained.online(),
            retained.retained
        ),
        ("alice", Some(true), true)
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Reads `client`'s presence until an update about `subject`; returns the
/// others before it and the update.
async fn loop_until(
    client: &Client,
    subject: &str,
) -> (
    Vec<parley_tests::PresenceUpdate>,
    parley_tests::PresenceUpdate,
) {
    let mut before = Vec::new();
    loop {
        let update = next_presence(client, WAIT).await;
        if update.subject == subject {
            return (before, update);
        }
        before.push(update);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_friend_clears_both_pair_topics() {
    let broker = TestBroker::start(USERS).await;
    let settle = Settle::new(&broker).await;
    let alice = observer(&broker, "alice", "phone").await;
    let bob = observer(&broker, "bob", "phone").await;
    let carol = broker.client("carol", "phone").await;
    settle.settle(&broker).await;
    befriend(&alice, &bob).await;
    befriend(&alice, &carol).await;
    // the friendship publishes, live
    for _ in 0..2 {
        let update = next_presence(&alice, WAIT).await;
        assert_eq!((update.online(), update.retained), (Some(true), false));
    }
    next_presence(&bob, WAIT).await;
    let mut raw = broker.raw_v4("alice", "raw", true).await;
    raw.subscribe(&["presence/+/alice"]).await;
    for subject in ["bob", "carol"] {
        let topic = format!("presence/{subject}/alice");
        assert!(raw.next_publish_on(&topic, WAIT).await.is_some(), "{topic}");
    }
    friend_events(&alice, 4).await;
    friend_events(&bob, 2).await;

    change(&alice, &[], &["bob"]).await;
    assert_eq!(friend_events(&alice, 1).await, [event("bob", Removed)]);
    assert_eq!(friend_events(&bob, 1).await, [event("alice", Removed)]);
    let cleared = next_presence(&alice, Duration::from_secs(2)).await;
    assert_eq!(cleared.subject, "bob");
    assert!(cleared.is_cleared() && !cleared.retained, "{cleared:?}");
    let cleared = next_presence(&bob, Duration::from_secs(2)).await;
    assert_eq!(cleared.subject, "alice");
    assert!(cleared.is_cleared(), "{cleared:?}");
    let publish = raw
        .next_publish_on("presence/bob/alice", WAIT)
        .await
        .expect("the pair topic is cleared");
    assert!(publish.payload.is_empty(), "cleared with an empty payload");

    // A fresh subscription no longer gets bob, and bob's changes stay his.
    let tablet = observer(&broker, "alice", "tablet").await;
    let retained = next_presence(&tablet, Duration::from_secs(2)).await;
    assert_eq!(
        (retained.subject.as_str(), retained.retained),
        ("carol", true)
    );
    assert_no_presence(&tablet, "no retained state for a former friend").await;
    bob.disconnect().await.unwrap();
    carol.disconnect().await.unwrap();
    let (before, barrier) = loop_until(&alice, "carol").await;
    assert!(before.is_empty(), "nothing about bob any more: {before:#?}");
    assert_eq!(barrier.online(), Some(false));
    assert_eq!(
        refused(alice.query_presence(["bob"]).await),
        ErrorCode::Forbidden
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_can_be_declined_or_withdrawn() {
    let broker = TestBroker::start(USERS).await;
    let alice = observer(&broker, "alice", "phone").await;
    let bob = observer(&broker, "bob", "phone").await;

    // bob declines
    change(&alice, &["bob"], &[]).await;
    friend_events(&alice, 1).await;
    friend_events(&bob, 1).await;
    change(&bob, &[], &["alice"]).await;
    assert_eq!(friend_events(&bob, 1).await, [event("alice", Removed)]);
    assert_eq!(friend_events(&alice, 1).await, [event("bob", Removed)]);
    assert_no_presence(&alice, "no friendship ended, nothing to clear").await;

    // alice asks again, then withdraws
    change(&alice, &["bob"], &[]).await;
    assert_eq!(friend_events(&alice, 1).await, [event("bob", RequestSent)]);
    assert_eq!(
        friend_events(&bob, 1).await,
        [event("alice", RequestReceived)]
    );
    change(&alice, &[], &["bob"]).await;
    assert_eq!(friend_events(&alice, 1).await, [event("bob", Removed)]);
    assert_eq!(friend_events(&bob, 1).await, [event("alice", Removed)]);

    // gone on both sides: removing again appends nothing; bob may ask anew
    let before = heads(&[&alice, &bob]).await;
    change(&alice, &[], &["bob"]).await;
    change(&bob, &[], &["alice"]).await;
    assert_eq!(heads(&[&alice, &bob]).await, before);
    change(&bob, &["alice"], &[]).await;
    assert_eq!(friend_events(&bob, 1).await, [event("alice", RequestSent)]);
    assert_eq!(
        friend_events(&alice, 1).await,
        [event("bob", RequestReceived)]
    );
    assert_no_presence(&bob, "requests publish no presence").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_adds_and_removing_a_stranger_append_nothing() {
    let broker = TestBroker::start(USERS).await;
    let alice = broker.client("alice", "phone").await;
    let bob = broker.client("bob", "phone").await;
    let carol = broker.client("carol", "phone").await;
    let all = [&alice, &bob, &carol];

    change(&alice, &["bob"], &[]).await;
    assert_eq!(heads(&all).await, [1, 1, 0]);
    change(&alice, &["bob"], &[]).await;
    assert_eq!(heads(&all).await, [1, 1, 0], "a repeated request");

    change(&bob, &["alice"], &[]).await;
    assert_eq!(heads(&all).await, [2, 2, 0]);
    change(&bob, &["alice"], &[]).await;
    change(&alice, &["bob"], &[]).await;
    assert_eq!(heads(&all).await, [2, 2, 0], "adding a friend again");

    change(&alice, &[], &["carol"]).await;
    change(&carol, &[], &["alice"]).await;
    change(&alice, &["bob"], &["carol"]).await;
    assert_eq!(heads(&all).await, [2, 2, 0], "removing a stranger");

    // nothing went out live either: the first envelopes are the real ones
    collect_envelopes(&alice, 2, WAIT).await;
    assert!(alice.next_envelope(QUIET).await.unwrap().is_none());
    assert!(carol.next_envelope(QUIET).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_changes_change_nothing() {
    let broker = TestBroker::builder()
        .users(USERS)
        .config(|c| c.max_friends = 2)
        .start()
        .await;
    let alice = broker.client("alice", "phone").await;
    let bob = broker.client("bob", "phone").await;
    let carol = broker.client("carol", "phone").await;
    let dave = broker.client("dave", "phone").await;
    let all = [&alice, &bob, &carol, &dave];

    let code = refused(alice.change_friends(["bob", "zed"], NOBODY).await);
    assert_eq!(code, ErrorCode::NotFound, "an unknown user");
    let code = refused(alice.change_friends(["bob", "alice"], NOBODY).await);
    assert_eq!(code, ErrorCode::BadRequest, "oneself");
    assert_eq!(heads(&all).await, [0, 0, 0, 0], "bob was not asked");

    // alice reaches max_friends = 2 links: one request each way
    change(&alice, &["bob"], &[]).await;
    change(&carol, &["alice"], &[]).await;
    assert_eq!(heads(&all).await, [2, 1, 1, 0]);
    let code = refused(alice.change_friends(["dave"], NOBODY).await);
    assert_eq!(code, ErrorCode::LimitExceeded);
    let code = refused(alice.change_friends(["carol", "dave"], NOBODY).await);
    assert_eq!(
        code,
        ErrorCode::LimitExceeded,
        "the whole request is refused"
    );
    assert_eq!(heads(&all).await, [2, 1, 1, 0], "nothing changed");
    assert_eq!(
        refused(alice.query_presence(["carol"]).await),
        ErrorCode::Forbidden,
        "carol's request was not accepted"
    );

    // accepting a request adds no link: allowed at the limit
    change(&alice, &["carol"], &[]).await;
    assert_eq!(heads(&all).await, [3, 1, 2, 0]);
    let stored: Vec<_> = sync_all(&alice, 0)
        .await
        .iter()
        .map(friend_event_of)
        .collect();
    assert_eq!(
        stored,
        [
            event("bob", RequestSent),
            event("carol", RequestReceived),
            event("carol", Friends)
        ]
    );
    // freeing a link makes room again
    change(&alice, &[], &["bob"]).await;
    change(&alice, &["dave"], &[]).await;
    assert_eq!(heads(&all).await, [5, 2, 2, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friendships_and_requests_survive_a_restart() {
    let mut broker = TestBroker::start(USERS).await;
    {
        let alice = broker.client("alice", "phone").await;
        let bob = broker.client("bob", "phone").await;
        let carol = broker.client("carol", "phone").await;
        befriend(&alice, &bob).await;
        change(&carol, &["alice"], &[]).await;
        assert_eq!(heads(&[&alice]).await, [3]);
    }
    broker.restart().await;

    let alice = observer(&broker, "alice", "phone").await;
    let retained = next_presence(&alice, WAIT).await;
    assert_eq!(
        (
            retained.subject.as_str(),
            retained.online(),
            retained.retained
        ),
        ("bob", Some(false), true)
    );
    assert_no_presence(&alice, "carol is not a friend yet").await;
    let states = alice.query_presence(["bob"]).await.expect("still friends");
    assert!(!states[0].online);

    let carol = broker.client("carol", "phone").await;
    change(&alice, &["carol"], &[]).await; // the pending request survived
    let events = collect_envelopes(&alice, 1, WAIT).await;
    assert_eq!(events[0].inbox_seq, 4, "the inbox sequence goes on");
    assert_eq!(friend_event_of(&events[0]), event("carol", Friends));
    assert_eq!(friend_events(&carol, 1).await, [event("alice", Friends)]);
    let (_, carol_state) = loop_until(&alice, "carol").await;
    assert_eq!(carol_state.online(), Some(true));

    let bob = broker.client("bob", "phone").await;
    let (_, online) = loop_until(&alice, "bob").await;
    assert_eq!((online.online(), online.retained), (Some(true), false));
    change(&bob, &[], &["alice"]).await;
    assert_eq!(friend_events(&bob, 1).await, [event("alice", Removed)]);
    let (_, cleared) = loop_until(&alice, "bob").await;
    assert!(cleared.is_cleared(), "{cleared:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_presence_answers_for_friends_co_members_and_oneself_only() {
    let broker = TestBroker::start(USERS).await;
    let alice = broker.client("alice", "phone").await;
    let bob = broker.client("bob", "phone").await;
    let dave = broker.client("dave", "phone").await;
    let erin = broker.client("erin", "phone").await;
    befriend(&alice, &bob).await;
    alice
        .create_group("team", "Team", ["dave"])
        .await
        .expect("create team");
    change(&erin, &["alice"], &[]).await; // a request, not a friendship
    let dave_from = now_ms();
    dave.heartbeat().await.unwrap();
    dave.disconnect().await.unwrap();
    let dave_until = now_ms();
    // offline at once: as soon as dave's connection has read the DISCONNECT
    let dave_offline = eventually_async(Duration::from_secs(2), || async {
        let states = alice.query_presence(["dave"]).await.expect("a co-member");
        !states[0].online
    })
    .await;
    assert!(dave_offline, "dave's DISCONNECT makes him offline at once");

    let mut states = alice
        .query_presence(["dave", "alice", "bob", "dave"])
        .await
        .expect("a co-member, oneself and a friend");
    // one entry per user, each naming its user (the broker sorts them)
    states.sort_by(|a, b| a.user.cmp(&b.user));
    let users: Vec<(&str, bool)> = states.iter().map(|p| (p.user.as_str(), p.online)).collect();
    assert_eq!(users, [("alice", true), ("bob", true), ("dave", false)]);
    assert!(
        (dave_from - 50..=dave_until + 50).contains(&states[2].last_active_ms),
        "dave's last activity: {}",
        states[2].last_active_ms
    );
    assert!(states[0].last_active_ms > 0 && states[1].last_active_ms > 0);
    let mine = bob.query_presence(["bob"]).await.expect("oneself");
    assert!(mine[0].online);

    for (users, why) in [
        (vec!["carol"], "a stranger"),
        (vec!["bob", "carol"], "a friend and a stranger"),
        (vec!["alice", "dave", "zed"], "an unknown user"),
        (vec!["erin"], "a pending request"),
    ] {
        assert_eq!(
            refused(alice.query_presence(users).await),
            ErrorCode::Forbidden,
            "{why}"
        );
    }
    assert_eq!(
        refused(bob.query_presence(["dave"]).await),
        ErrorCode::Forbidden,
        "a friend's co-member is not bob's"
    );
    // Once dave is out of the group he is a stranger to alice.
    alice
        .change_members("team", NOBODY, ["dave"])
        .await
        .expect("remove dave");
    assert_eq!(
        refused(alice.query_presence(["dave"]).await),
        ErrorCode::Forbidden
    );
}

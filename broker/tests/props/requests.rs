//! Random valid-but-hostile requests through the real chat path
//! (`ChatService::handle`: decode, validate, the engine thread with group
//! commit, RocksDB in a temp dir), one at a time and in concurrent bursts.
//!
//! After every step, on a full dump of the store over the test's universe
//! of users, groups, channels and client_msg_ids:
//! - nothing panicked: the engine thread is alive and no reply is INTERNAL;
//! - every channel's seqs are `1..=max`; every inbox's inbox_seqs are
//!   `1..=max`; inbox entries point at stored messages, each at most once;
//!   dedup entries point at the sender's message; groups are well formed;
//! - a rejected request, a duplicate send or a read changed nothing;
//! - an accepted send added exactly its message, at the acked seq, to its
//!   channel and one entry to each member's inbox, and nothing else;
//! - an accepted group change obeyed the rules (members only, only the
//!   owner removes others, the size limit) and added no message.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use parley_broker::chat::commit::SyncedWrite;
use parley_broker::chat::engine::{self, EngineConfig};
use parley_broker::chat::{ChatService, Requester, TypingLimit};
use parley_broker::presence::Presence;
use parley_broker::push::{Push, PushConfig};
use parley_broker::router::Router;
use parley_chat_logic::limits::Limits;
use parley_proto::v1::{
    self, envelope, reply, request, ChatMessage, Envelope, ErrorCode, Reply, Request,
};
use parley_storage::{AccountKind, Group, Store, UserRecord};
use proptest::prelude::*;
use prost::Message;

/// Registered users; requests come from them (the MQTT layer lets only
/// registered users in).
const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];
/// A well-formed user id with no account.
const GHOST: &str = "ghost";
const GROUPS: [&str; 2] = ["g0", "g1"];
/// Small, so that LIMIT_EXCEEDED is reached.
const MAX_GROUP_MEMBERS: usize = 3;

fn dedup_ids() -> Vec<String> {
    vec!["c1".into(), "c2".into(), "z".repeat(128)]
}

/// Every channel whose state the dump reads.
fn universe_channels() -> Vec<String> {
    let mut channels: Vec<String> = GROUPS.iter().map(|g| format!("g:{g}")).collect();
    let mut people: Vec<&str> = USERS.to_vec();
    people.push(GHOST);
    people.sort_unstable();
    for (i, a) in people.iter().enumerate() {
        for b in &people[i + 1..] {
            channels.push(format!("dm:{a}:{b}"));
        }
    }
    channels.extend(USERS.iter().map(|u| format!("sys:{u}")));
    channels
}

fn inbox_owners() -> Vec<&'static str> {
    let mut owners = USERS.to_vec();
    owners.push(GHOST);
    owners
}

/// Everything the requests can change, read straight from the store.
#[derive(Debug, Clone, PartialEq)]
struct Dump {
    channels: BTreeMap<String, Vec<ChatMessage>>,
    inboxes: BTreeMap<String, Vec<Envelope>>,
    groups: BTreeMap<String, Option<Group>>,
    dedup: BTreeMap<(String, String, String), u64>,
}

fn dump(store: &Store) -> Dump {
    let channels = universe_channels()
        .into_iter()
        .map(|c| {
            let (mut messages, more) = store.history(&c, 0, usize::MAX).expect("history");
            assert!(!more);
            messages.reverse();
            (c, messages)
        })
        .collect();
    let inboxes = inbox_owners()
        .into_iter()
        .map(|u| {
            let (events, more) = store.inbox_after(u, 0, usize::MAX).expect("inbox");
            assert!(!more);
            (u.to_owned(), events)
        })
        .collect();
    let groups = GROUPS
        .iter()
        .map(|g| (g.to_string(), store.group(g).expect("group")))
        .collect();
    let mut dedup = BTreeMap::new();
    for sender in inbox_owners() {
        for channel in universe_channels() {
            for id in dedup_ids() {
                if let Some(seq) = store.dedup(sender, &channel, &id).expect("dedup") {
                    dedup.insert((sender.to_owned(), channel.clone(), id), seq);
                }
            }
        }
    }
    Dump {
        channels,
        inboxes,
        groups,
        dedup,
    }
}

/// Invariants that hold after any sequence of requests.
fn check_invariants(d: &Dump) {
    for (channel, messages) in &d.channels {
        let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{channel}: seq gap or duplicate"
        );
        for m in messages {
            assert_eq!(&m.channel, channel);
            assert!(
                USERS.contains(&m.sender.as_str()),
                "{channel}: message from a non-user: {m:?}"
            );
            assert!(
                !m.text.is_empty() && m.text.chars().count() <= 100_000,
                "{channel}: bad text stored"
            );
        }
        if channel.starts_with("sys:") || channel.contains(GHOST) {
            assert!(
                messages.is_empty(),
                "{channel} must stay empty: {messages:?}"
            );
        }
    }
    for (user, events) in &d.inboxes {
        let seqs: Vec<u64> = events.iter().map(|e| e.inbox_seq).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{user}: inbox_seq gap or duplicate"
        );
        let mut seen = BTreeSet::new();
        for event in events {
            if let Some(envelope::Body::Message(m)) = &event.body {
                let stored = d
                    .channels
                    .get(&m.channel)
                    .and_then(|c| c.get(m.seq as usize - 1));
                assert_eq!(
                    stored,
                    Some(m),
                    "{user}: inbox entry for a message that is not stored"
                );
                assert!(
                    seen.insert((m.channel.clone(), m.seq)),
                    "{user}: {m:?} twice in the inbox"
                );
            }
        }
        if *user == GHOST {
            assert!(
                events.is_empty(),
                "an unregistered user got inbox entries: {events:?}"
            );
        }
    }
    for ((sender, channel, id), seq) in &d.dedup {
        let m = d.channels[channel].get(*seq as usize - 1);
        assert!(
            m.is_some_and(|m| &m.sender == sender && &m.client_msg_id == id),
            "dedup ({sender}, {channel}, {id}) -> {seq} points at {m:?}"
        );
    }
    for (id, group) in &d.groups {
        let Some(g) = group else { continue };
        assert_eq!(&g.id, id);
        let mut sorted = g.members.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, g.members, "{id}: members not sorted and unique");
        assert!(
            g.members.contains(&g.owner),
            "{id}: the owner is not a member: {g:?}"
        );
        assert!(
            g.members.len() <= MAX_GROUP_MEMBERS,
            "{id}: over the member limit: {g:?}"
        );
        assert!(
            g.members.iter().all(|m| USERS.contains(&m.as_str())),
            "{id}: non-user member: {g:?}"
        );
    }
}

/// The members that get a message sent to `channel`, by the dump before it.
fn recipients(before: &Dump, channel: &str) -> Vec<String> {
    if let Some(group) = channel.strip_prefix("g:") {
        return before.groups[group]
            .as_ref()
            .map(|g| g.members.clone())
            .unwrap_or_default();
    }
    let mut parts = channel
        .strip_prefix("dm:")
        .expect("a dm channel")
        .split(':');
    parts.by_ref().take(2).map(str::to_owned).collect()
}

/// Checks one request answered alone against the dumps around it.
fn check_single(user: &str, request: &Option<Request>, reply: &Reply, before: &Dump, after: &Dump) {
    if let Some(request) = request {
        assert_eq!(
            reply.request_id, request.request_id,
            "the reply does not echo the request_id"
        );
    }
    let body = reply.body.as_ref().expect("a reply has a body");
    let send = match request.as_ref().and_then(|r| r.body.as_ref()) {
        Some(request::Body::Send(send)) => Some(send),
        _ => None,
    };
    match (body, send) {
        (reply::Body::Error(_), _)
        | (reply::Body::SyncPage(_) | reply::Body::HistoryPage(_), _) => {
            assert_eq!(
                before, after,
                "a rejected request or a read changed the store: {body:?}"
            );
        }
        (reply::Body::Ack(ack), Some(_)) if ack.duplicate => {
            assert_eq!(before, after, "a duplicate send changed the store");
        }
        (reply::Body::Ack(ack), Some(send)) => check_accepted_send(user, send, ack, before, after),
        (reply::Body::Ack(_), None) => check_group_change(user, request, before, after),
        (other, _) => panic!("unexpected reply {other:?}"),
    }
}

fn check_accepted_send(
    user: &str,
    send: &v1::SendMessage,
    ack: &v1::Ack,
    before: &Dump,
    after: &Dump,
) {
    let channel = &send.channel;
    assert_eq!(&ack.channel, channel);
    let messages = &after.channels[channel];
    assert_eq!(
        messages.len(),
        before.channels[channel].len() + 1,
        "{channel}: one new message"
    );
    let m = &messages[ack.seq as usize - 1];
    assert_eq!(
        (m.sender.as_str(), &m.text, &m.client_msg_id, m.ts_ms),
        (user, &send.text, &send.client_msg_id, ack.ts_ms)
    );
    let members = recipients(before, channel);
    assert!(
        members.iter().any(|u| u == user),
        "{user} sent to {channel} without being a member"
    );
    for (owner, events) in &after.inboxes {
        let grew = events.len() - before.inboxes[owner].len();
        let expected = usize::from(members.contains(owner));
        assert_eq!(grew, expected, "{owner}'s inbox after a send to {channel}");
    }
    for (c, messages) in &after.channels {
        if c != channel {
            assert_eq!(
                messages, &before.channels[c],
                "a send to {channel} changed {c}"
            );
        }
    }
    assert_eq!(before.groups, after.groups, "a send changed a group");
}

fn check_group_change(user: &str, request: &Option<Request>, before: &Dump, after: &Dump) {
    assert_eq!(
        before.channels, after.channels,
        "a group change added messages"
    );
    let (group_id, removed) = match request.as_ref().and_then(|r| r.body.as_ref()) {
        Some(request::Body::CreateGroup(c)) => {
            assert!(
                before.groups.get(&c.group_id).is_some_and(Option::is_none),
                "created an existing group"
            );
            return;
        }
        Some(request::Body::ChangeMembers(c)) => (&c.group_id, c.remove.clone()),
        Some(request::Body::LeaveGroup(l)) => (&l.group_id, vec![user.to_owned()]),
        Some(request::Body::Logout(_)) => return, // changes no chat state
        Some(request::Body::Typing(_)) => return, // live only, never stored
        other => panic!("an Ack to {other:?}"),
    };
    let Some(Some(group)) = before.groups.get(group_id) else {
        panic!("a change of the missing group {group_id} was accepted");
    };
    assert!(
        group.members.iter().any(|m| m == user),
        "non-member {user} changed {group_id}"
    );
    if group.owner != user {
        let others: Vec<_> = removed
            .iter()
            .filter(|r| *r != user && group.members.contains(r))
            .collect();
        assert!(
            others.is_empty(),
            "{user} (not the owner of {group:?}) removed {others:?}"
        );
    }
}

/// One request: who sends it and its payload (`None`: undecodable bytes).
#[derive(Debug, Clone)]
struct Step {
    user: usize,
    request: Option<Request>,
    garbage: Vec<u8>,
}

impl Step {
    fn payload(&self) -> Vec<u8> {
        match &self.request {
            Some(request) => request.encode_to_vec(),
            None => self.garbage.clone(),
        }
    }
}

fn user_id() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => prop::sample::select(USERS.to_vec()).prop_map(str::to_owned),
        1 => Just(GHOST.to_owned()),
        1 => prop::sample::select(vec!["", "bad id", "svc:x", "u0\0"]).prop_map(str::to_owned),
        1 => Just("x".repeat(65)),
    ]
}

fn group_id() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => prop::sample::select(GROUPS.to_vec()).prop_map(str::to_owned),
        1 => prop::sample::select(vec!["", "no/slash", "g0 "]).prop_map(str::to_owned),
        1 => Just("y".repeat(65)),
    ]
}

/// Mostly channels `sender` may post to, sometimes any channel at all.
fn channel(sender: usize) -> impl Strategy<Value = String> {
    let others: Vec<&str> = USERS
        .iter()
        .copied()
        .filter(|u| *u != USERS[sender])
        .collect();
    prop_oneof![
        5 => prop::sample::select(others).prop_map(move |other| {
            let (a, b) = if USERS[sender] < other { (USERS[sender], other) } else { (other, USERS[sender]) };
            format!("dm:{a}:{b}")
        }),
        4 => prop::sample::select(GROUPS.to_vec()).prop_map(|g| format!("g:{g}")),
        2 => prop::sample::select(universe_channels()),
        1 => prop::sample::select(vec!["dm:u1:u0", "dm:u0:u0", "dm:u0", "dm:u0:u1:u2", "g:", "G:g0", "sys:", "", "g:no/slash"])
            .prop_map(str::to_owned),
        1 => "\\PC{0,12}",
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        10 => "[a-z ]{1,16}",
        4 => "\\PC{1,24}",
        1 => Just("\0\u{7f}\u{202e}\u{feff}".to_owned()),
        1 => prop::sample::select(vec![100_000usize, 100_001]).prop_map(|n| "😀".repeat(n)),
    ]
}

fn client_msg_id() -> impl Strategy<Value = String> {
    prop_oneof![2 => Just(String::new()), 6 => prop::sample::select(dedup_ids()), 1 => Just("z".repeat(129))]
}

fn users(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(user_id(), 0..max)
}

fn body(sender: usize) -> impl Strategy<Value = request::Body> {
    use request::Body;
    prop_oneof![
        12 => (channel(sender), client_msg_id(), text())
            .prop_map(|(channel, client_msg_id, text)| Body::Send(v1::SendMessage { channel, client_msg_id, text })),
        2 => (group_id(), "\\PC{0,8}", users(5))
            .prop_map(|(group_id, name, members)| Body::CreateGroup(v1::CreateGroup { group_id, name, members })),
        3 => (group_id(), users(3), users(3))
            .prop_map(|(group_id, add, remove)| Body::ChangeMembers(v1::ChangeMembers { group_id, add, remove })),
        1 => group_id().prop_map(|group_id| Body::LeaveGroup(v1::LeaveGroup { group_id })),
        1 => (prop_oneof![0u64..4, any::<u64>()], any::<u32>())
            .prop_map(|(after_inbox_seq, limit)| Body::Sync(v1::Sync { after_inbox_seq, limit })),
        1 => (channel(sender), prop_oneof![0u64..4, any::<u64>()], any::<u32>())
            .prop_map(|(channel, before_seq, limit)| Body::History(v1::History { channel, before_seq, limit })),
        1 => prop_oneof![
            Just(Body::Typing(v1::Typing { channel: "g:g0".into() })),
            Just(Body::Logout(v1::Logout {})),
            channel(sender).prop_map(|channel| Body::System(v1::SystemMessage { channel, client_msg_id: "c1".into(), text: "x".into(), users: vec![] })),
        ],
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (0..USERS.len()).prop_flat_map(|user| {
        let request = prop::option::weighted(
            0.97,
            ("\\PC{0,6}", prop::option::weighted(0.97, body(user))),
        )
        .prop_map(|r| r.map(|(request_id, body)| Request { request_id, body }));
        (
            Just(user),
            request,
            prop::collection::vec(any::<u8>(), 0..16),
        )
            .prop_map(|(user, request, garbage)| Step {
                user,
                request,
                garbage,
            })
    })
}

/// Several requests submitted before any is answered (one batch, often).
#[derive(Debug, Clone)]
enum Action {
    One(Step),
    Burst(Vec<Step>),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![4 => step().prop_map(Action::One), 1 => prop::collection::vec(step(), 2..8).prop_map(Action::Burst)]
}

/// A store with the users, and the real engine on it.
struct World {
    _dir: tempfile::TempDir,
    store: Store,
    service: ChatService,
    engine_thread: std::thread::JoinHandle<()>,
}

impl World {
    /// Starts the engine and its services on `runtime`.
    fn new(runtime: &tokio::runtime::Runtime) -> World {
        let _entered = runtime.enter();
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open the store");
        for user in USERS {
            let record = UserRecord {
                password_hash: "not used".into(),
                kind: AccountKind::User,
                created_ms: 0,
            };
            store.put_user(user, &record).expect("put_user");
        }
        let limits = Limits {
            max_group_members: MAX_GROUP_MEMBERS,
            ..Limits::default()
        };
        let config = EngineConfig {
            limits: limits.clone(),
            batch_max: 16,
            queue: 64,
            priority_boost: 0,
        };
        let router = Router::new();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        let timeout = std::time::Duration::from_secs(30);
        let presence = Presence::start(store.clone(), router.clone(), timeout, &shutdown, &tasks);
        let push_config = PushConfig::from_config(&parley_broker::Config::defaults());
        let push = Push::start(store.clone(), push_config).expect("start push");
        let outlets = engine::Outlets {
            router: router.clone(),
            presence: presence.clone(),
            push: push.clone(),
        };
        let committer = Box::new(SyncedWrite::new(store.clone()));
        let (engine, engine_thread) =
            engine::spawn(store.clone(), committer, outlets, config).expect("spawn the engine");
        let service = ChatService {
            store: store.clone(),
            engine,
            limits: Arc::new(limits),
            router,
            presence,
            push,
        };
        World {
            _dir: dir,
            store,
            service,
            engine_thread,
        }
    }

    async fn handle(&self, step: &Step) -> impl std::future::Future<Output = Reply> {
        let mut typing = TypingLimit::default();
        let requester = Requester {
            user: USERS[step.user],
            device: "phone",
            typing: &mut typing,
        };
        self.service.handle(requester, &step.payload()).await.reply
    }

    /// Stops the engine (dropping the last handle) and fails if it panicked.
    fn finish(self) {
        let World {
            _dir,
            store,
            service,
            engine_thread,
        } = self;
        drop(service);
        if let Err(panic) = engine_thread.join() {
            std::panic::resume_unwind(panic);
        }
        drop(store);
    }
}

fn check_reply_sane(reply: &Reply) {
    if let Some(reply::Body::Error(error)) = &reply.body {
        assert_ne!(
            error.code,
            ErrorCode::Internal as i32,
            "INTERNAL error: {}",
            error.message
        );
        assert!(!error.message.is_empty(), "an error without a message");
    }
}

async fn run(world: &World, actions: &[Action]) {
    // A group to post to from the start (the steps may change or delete it).
    let members = vec![USERS[1].to_owned(), USERS[2].to_owned()];
    let create = v1::CreateGroup {
        group_id: GROUPS[0].to_owned(),
        name: "zero".into(),
        members,
    };
    let setup = Step {
        user: 0,
        request: Some(Request {
            request_id: "setup".into(),
            body: Some(request::Body::CreateGroup(create)),
        }),
        garbage: Vec::new(),
    };
    let reply = world.handle(&setup).await.await;
    assert!(
        matches!(reply.body, Some(reply::Body::Ack(_))),
        "setup: {reply:?}"
    );
    let mut before = dump(&world.store);
    check_invariants(&before);
    for action in actions {
        match action {
            Action::One(step) => {
                let reply = world.handle(step).await.await;
                check_reply_sane(&reply);
                let after = dump(&world.store);
                check_invariants(&after);
                check_single(USERS[step.user], &step.request, &reply, &before, &after);
                before = after;
            }
            Action::Burst(steps) => {
                let mut pending = Vec::new();
                for step in steps {
                    pending.push(world.handle(step).await);
                }
                let mut acked_sends = BTreeMap::<String, BTreeSet<u64>>::new();
                for (step, reply) in steps.iter().zip(await_in_order(pending).await) {
                    check_reply_sane(&reply);
                    if let (Some(reply::Body::Ack(ack)), Some(request::Body::Send(_))) = (
                        &reply.body,
                        step.request.as_ref().and_then(|r| r.body.as_ref()),
                    ) {
                        acked_sends
                            .entry(ack.channel.clone())
                            .or_default()
                            .insert(ack.seq);
                    }
                }
                let after = dump(&world.store);
                check_invariants(&after);
                for (channel, messages) in &after.channels {
                    let new: BTreeSet<u64> = messages
                        .iter()
                        .map(|m| m.seq)
                        .filter(|s| *s as usize > before.channels[channel].len())
                        .collect();
                    let acked: BTreeSet<u64> = acked_sends
                        .get(channel)
                        .map(|s| {
                            s.iter()
                                .copied()
                                .filter(|s| *s as usize > before.channels[channel].len())
                                .collect()
                        })
                        .unwrap_or_default();
                    assert_eq!(
                        new, acked,
                        "{channel}: the new messages are exactly the acked sends"
                    );
                }
                before = after;
            }
        }
        assert!(
            !world.engine_thread.is_finished(),
            "the engine thread stopped (panicked?)"
        );
    }
}

async fn await_in_order<F: std::future::Future<Output = Reply>>(pending: Vec<F>) -> Vec<Reply> {
    let mut replies = Vec::with_capacity(pending.len());
    for future in pending {
        replies.push(future.await);
    }
    replies
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::cases(128)))]

    #[test]
    fn hostile_requests_never_panic_nor_corrupt_the_store(actions in prop::collection::vec(action(), 1..24)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let world = World::new(&runtime);
        runtime.block_on(run(&world, &actions));
        world.finish();
    }
}

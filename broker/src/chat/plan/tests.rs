//! Planning against a `MemoryStore`: what each request writes, whom it
//! delivers to with which numbers, and what it answers. Each planned batch
//! is applied to the store, as the engine's commit would.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;

use parley_chat_logic::channel::Channel;
use parley_chat_logic::command::{
    ChangeFriends, Command, CreateGroup, LeaveGroup, MarkReceipt, SendMessage, SystemMessage,
    SystemTarget,
};
use parley_chat_logic::limits::Limits;
use parley_chat_logic::ReadCursor;
use parley_proto::v1::{
    envelope, Ack, ChatMessage, Envelope, ErrorCode, FriendEvent, FriendState, ReceiptKind,
};
use parley_storage::{
    AccountKind, Batch, ChatState, MemoryStore, PushJob, StorageError, UserRecord,
};
use prost::Message as _;

use super::{
    BatchPlan, Committed, Effect, JobResult, KnownUsers, PlannedBatch, Sequences, Services,
};

const NOW: i64 = 1_700_000_000_000;

/// The broker's in-memory knowledge, scripted.
#[derive(Default)]
struct FakeServices {
    enabled: bool,
    registered: HashSet<String>,
    online: HashSet<String>,
    next_job_id: Cell<u64>,
    /// `(job id, user, channel, seq)` of every job queued.
    queued: RefCell<Vec<(u64, String, String, u64)>>,
}

impl Services for FakeServices {
    fn push_enabled(&self) -> bool {
        self.enabled
    }

    fn has_push_registrations(&self, user: &str) -> bool {
        self.registered.contains(user)
    }

    fn offline_among<'u>(&self, users: Vec<&'u String>) -> Vec<&'u String> {
        users
            .into_iter()
            .filter(|user| !self.online.contains(*user))
            .collect()
    }

    fn queue_push(
        &self,
        batch: &mut Batch,
        user: &str,
        message: &ChatMessage,
    ) -> Result<(), StorageError> {
        let id = self.next_job_id.get() + 1;
        self.next_job_id.set(id);
        let job = (id, user.to_owned(), message.channel.clone(), message.seq);
        self.queued.borrow_mut().push(job);
        batch.put_push_job(id, &PushJob::for_message(user, message))
    }
}

/// What the engine keeps between batches, over a `MemoryStore`.
struct Harness {
    store: MemoryStore,
    known_users: RefCell<KnownUsers>,
    sequences: Sequences,
    limits: Limits,
    services: FakeServices,
    now_ms: i64,
}

/// What one batch produced.
struct Planned {
    results: Vec<JobResult>,
    writes: usize,
    /// `(user, inbox_seq, envelope body)`, in delivery order.
    deliveries: Vec<(String, u64, envelope::Body)>,
    effects: Vec<Effect>,
}

impl Planned {
    /// The `inbox_seq`s delivered to `user`, in order.
    fn inbox_seqs(&self, user: &str) -> Vec<u64> {
        self.deliveries
            .iter()
            .filter(|(to, _, _)| to == user)
            .map(|(_, inbox_seq, _)| *inbox_seq)
            .collect()
    }

    fn nothing_written(&self) -> bool {
        self.writes == 0 && self.deliveries.is_empty() && self.effects.is_empty()
    }
}

impl Harness {
    /// A store holding the accounts `users`.
    fn with_users(users: &[&str]) -> Harness {
        let store = MemoryStore::new();
        let mut batch = Batch::new();
        for user in users {
            let record = UserRecord {
                password_hash: String::new(),
                kind: AccountKind::User,
                created_ms: 0,
            };
            batch.put_user(user, &record).unwrap();
        }
        store.apply(batch);
        Harness {
            store,
            known_users: RefCell::default(),
            sequences: Sequences::default(),
            limits: Limits::default(),
            services: FakeServices::default(),
            now_ms: NOW,
        }
    }

    /// Plans `jobs` as one batch and applies it, like the engine.
    fn batch(&mut self, jobs: &[(&str, Command)]) -> Planned {
        let PlannedBatch {
            results,
            batch,
            deliveries,
            effects,
            poisoned,
        } = BatchPlan::new(
            &self.store,
            &self.known_users,
            &mut self.sequences,
            &self.limits,
            &self.services,
            self.now_ms,
        )
        .plan_jobs(jobs.iter().map(|(user, command)| (*user, command)));
        assert!(poisoned.is_none(), "{poisoned:?}");
        let deliveries = deliveries
            .into_iter()
            .map(|delivery| {
                let envelope = Envelope::decode(&delivery.body[..]).expect("an envelope body");
                let body = envelope.body.expect("a body");
                (delivery.user, delivery.inbox_seq, body)
            })
            .collect();
        let writes = batch.len();
        self.store.apply(batch);
        Planned {
            results,
            writes,
            deliveries,
            effects,
        }
    }

    /// Plans one job that must succeed as its own batch.
    fn ok(&mut self, user: &str, command: Command) -> Planned {
        let (result, planned) = self.one(user, command);
        assert!(result.is_ok(), "{result:?}");
        planned
    }

    /// Plans one job as its own batch.
    fn one(&mut self, user: &str, command: Command) -> (JobResult, Planned) {
        let mut planned = self.batch(&[(user, command)]);
        (planned.results.remove(0), planned)
    }
}

fn channel(id: &str) -> Channel {
    Channel::parse(id).unwrap()
}

fn send(to: &str, text: &str, client_msg_id: &str) -> Command {
    Command::Send(SendMessage {
        channel: channel(to),
        client_msg_id: client_msg_id.to_owned(),
        text: text.to_owned(),
    })
}

fn receipt(of: &str, seq: u64, kind: ReceiptKind) -> Command {
    Command::Receipt(MarkReceipt {
        channel: channel(of),
        seq,
        kind,
    })
}

fn create_group(id: &str, members: &[&str]) -> Command {
    Command::CreateGroup(CreateGroup {
        group_id: id.to_owned(),
        name: format!("Group {id}"),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
    })
}

fn friends(add: &[&str], remove: &[&str]) -> Command {
    let ids = |users: &[&str]| users.iter().map(|u| (*u).to_owned()).collect();
    Command::ChangeFriends(ChangeFriends {
        add: ids(add),
        remove: ids(remove),
    })
}

fn ack(channel: &str, seq: u64, ts_ms: i64, duplicate: bool) -> Ack {
    Ack {
        channel: channel.to_owned(),
        seq,
        ts_ms,
        duplicate,
    }
}

fn code(result: &JobResult) -> ErrorCode {
    result.as_ref().expect_err("an error").code
}

#[test]
fn a_direct_message_takes_seq_1_and_the_next_inbox_seq_of_both_users() {
    let mut h = Harness::with_users(&["alice", "bob"]);
    // bob already has two events in his inbox
    h.ok("alice", friends(&["bob"], &[]));
    h.ok("alice", friends(&[], &["bob"]));
    assert_eq!(h.store.last_inbox_seq("bob").unwrap(), 2);

    let (result, planned) = h.one("alice", send("dm:alice:bob", "hi", "c1"));
    let dm = "dm:alice:bob";
    assert_eq!(result, Ok(Committed::stored(ack(dm, 1, NOW, false))));
    assert_eq!(planned.inbox_seqs("alice"), vec![3]);
    assert_eq!(planned.inbox_seqs("bob"), vec![3]);
    let envelope::Body::Message(message) = &planned.deliveries[0].2 else {
        panic!("a message: {:?}", planned.deliveries[0]);
    };
    assert_eq!(
        (message.seq, message.sender.as_str(), message.text.as_str()),
        (1, "alice", "hi")
    );
    assert_eq!((message.ts_ms, message.system), (NOW, false));

    let stored = h.store.message(dm, 1).unwrap().expect("the message");
    assert_eq!(&stored, message);
    assert_eq!(h.store.last_channel_seq(dm).unwrap(), 1);
    assert_eq!(h.store.last_inbox_seq("alice").unwrap(), 3);
    assert_eq!(h.store.last_inbox_seq("bob").unwrap(), 3);
    assert_eq!(h.store.dedup("alice", dm, "c1").unwrap(), Some(1));
    // the sender has read what she wrote; bob has read nothing
    let read = ReadCursor {
        delivered: 1,
        read: 1,
    };
    assert_eq!(h.store.cursor("alice", dm).unwrap(), read);
    assert_eq!(h.store.cursor("bob", dm).unwrap(), ReadCursor::default());

    let (result, _) = h.one("bob", send(dm, "hello", "c1"));
    assert_eq!(result, Ok(Committed::stored(ack(dm, 2, NOW, false))));
}

#[test]
fn a_repeated_client_msg_id_gets_the_original_ack_as_a_duplicate_and_writes_nothing() {
    let mut h = Harness::with_users(&["alice", "bob"]);
    let dm = "dm:alice:bob";
    h.ok("alice", send(dm, "hi", "c1"));

    h.now_ms = NOW + 5_000;
    let (result, planned) = h.one("alice", send(dm, "hi again", "c1"));
    assert_eq!(result, Ok(Committed::stored(ack(dm, 1, NOW, true))));
    assert!(planned.nothing_written());
    assert_eq!(h.store.last_channel_seq(dm).unwrap(), 1);

    // within one batch too: the second copy is the first one's duplicate
    let planned = h.batch(&[
        ("alice", send(dm, "two", "c2")),
        ("alice", send(dm, "two", "c2")),
        ("bob", send(dm, "two", "c2")),
    ]);
    let now = NOW + 5_000;
    assert_eq!(
        planned.results,
        vec![
            Ok(Committed::stored(ack(dm, 2, now, false))),
            Ok(Committed::stored(ack(dm, 2, now, true))),
            // the key is the sender's: bob's c2 is another message
            Ok(Committed::stored(ack(dm, 3, now, false))),
        ]
    );
    assert_eq!(planned.inbox_seqs("alice"), vec![2, 3]);
    assert_eq!(h.store.last_channel_seq(dm).unwrap(), 3);

    // without a client_msg_id nothing is deduplicated
    let planned = h.batch(&[("alice", send(dm, "x", "")), ("alice", send(dm, "x", ""))]);
    let seqs: Vec<u64> = planned
        .results
        .iter()
        .map(|result| result.as_ref().unwrap().ack.seq)
        .collect();
    assert_eq!(seqs, vec![4, 5]);
}

#[test]
fn a_group_message_reaches_every_member_with_gapless_inbox_seqs() {
    let mut h = Harness::with_users(&["alice", "bob", "carol", "dave"]);
    let (created, planned) = h.one("alice", create_group("team", &["bob", "carol"]));
    assert_eq!(created, Ok(Committed::ack(ack("g:team", 0, NOW, false))));
    for member in ["alice", "bob", "carol"] {
        assert_eq!(planned.inbox_seqs(member), vec![1], "{member}");
    }
    assert!(planned.inbox_seqs("dave").is_empty());
    let group = h.store.group("team").unwrap().expect("the group");
    assert_eq!((group.owner.as_str(), group.members.len()), ("alice", 3));

    let planned = h.batch(&[
        ("alice", send("g:team", "one", "a1")),
        ("bob", send("g:team", "two", "b1")),
        ("alice", send("g:team", "three", "a2")),
    ]);
    let seqs: Vec<u64> = planned
        .results
        .iter()
        .map(|result| result.as_ref().unwrap().ack.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    for member in ["alice", "bob", "carol"] {
        assert_eq!(planned.inbox_seqs(member), vec![2, 3, 4], "{member}");
        assert_eq!(h.store.last_inbox_seq(member).unwrap(), 4);
    }
    assert_eq!(planned.deliveries.len(), 9);
    assert_eq!(h.store.last_channel_seq("g:team").unwrap(), 3);
    // each sender's cursor is at their own newest message
    assert_eq!(h.store.cursor("bob", "g:team").unwrap().read, 2);
    assert_eq!(h.store.cursor("alice", "g:team").unwrap().read, 3);
    assert_eq!(h.store.cursor("carol", "g:team").unwrap().read, 0);
}

#[test]
fn a_refused_send_writes_nothing_and_leaves_no_gap() {
    let mut h = Harness::with_users(&["alice", "bob", "dave"]);
    h.ok("alice", create_group("team", &["bob"]));

    let (result, planned) = h.one("dave", send("g:team", "let me in", "d1"));
    assert_eq!(code(&result), ErrorCode::NotMember);
    assert!(planned.nothing_written());

    let (result, planned) = h.one("alice", send("sys:alice", "to myself", "s1"));
    assert_eq!(code(&result), ErrorCode::Forbidden);
    assert!(planned.nothing_written());

    let (result, planned) = h.one("alice", send("dm:alice:ghost", "anyone?", "g1"));
    assert_eq!(code(&result), ErrorCode::NotFound);
    assert!(planned.nothing_written());

    let (result, planned) = h.one("alice", send("g:nowhere", "hello?", "n1"));
    assert_eq!(code(&result), ErrorCode::NotFound);
    assert!(planned.nothing_written());

    // a refused job in a batch does not stop the others, nor leave a gap
    let planned = h.batch(&[
        ("alice", send("g:team", "one", "a1")),
        ("dave", send("g:team", "no", "d2")),
        ("bob", send("g:team", "two", "b1")),
    ]);
    assert_eq!(code(&planned.results[1]), ErrorCode::NotMember);
    assert_eq!(planned.results[2].as_ref().unwrap().ack.seq, 2);
    assert_eq!(planned.inbox_seqs("alice"), vec![2, 3]);
    assert!(planned.inbox_seqs("dave").is_empty());
}

#[test]
fn receipts_move_the_cursor_forward_only_and_reach_both_users() {
    let mut h = Harness::with_users(&["alice", "bob", "carol"]);
    let dm = "dm:alice:bob";
    h.batch(&[
        ("alice", send(dm, "one", "c1")),
        ("alice", send(dm, "two", "c2")),
    ]);

    let (result, planned) = h.one("bob", receipt(dm, 2, ReceiptKind::Read));
    assert_eq!(result, Ok(Committed::ack(ack(dm, 2, NOW, false))));
    let cursor = ReadCursor {
        delivered: 2,
        read: 2,
    };
    assert_eq!(h.store.cursor("bob", dm).unwrap(), cursor);
    assert_eq!(planned.inbox_seqs("alice"), vec![3]);
    assert_eq!(planned.inbox_seqs("bob"), vec![3]);
    let envelope::Body::Receipt(event) = &planned.deliveries[0].2 else {
        panic!("a receipt: {:?}", planned.deliveries[0]);
    };
    assert_eq!((event.user.as_str(), event.seq), ("bob", 2));

    // backwards or repeated: a duplicate, nothing stored or sent
    for (seq, kind) in [(1, ReceiptKind::Delivered), (2, ReceiptKind::Read)] {
        let (result, planned) = h.one("bob", receipt(dm, seq, kind));
        assert_eq!(result, Ok(Committed::ack(ack(dm, seq, NOW, true))));
        assert!(planned.nothing_written());
    }
    assert_eq!(h.store.cursor("bob", dm).unwrap(), cursor);

    let (result, planned) = h.one("bob", receipt(dm, 3, ReceiptKind::Read));
    assert_eq!(code(&result), ErrorCode::NotFound);
    assert!(planned.nothing_written());

    let (result, planned) = h.one("carol", receipt(dm, 1, ReceiptKind::Read));
    assert_eq!(code(&result), ErrorCode::NotMember);
    assert!(planned.nothing_written());
}

#[test]
fn a_friend_request_and_its_acceptance_make_friends_once() {
    let mut h = Harness::with_users(&["alice", "bob"]);
    let event = |body: &envelope::Body| match body {
        envelope::Body::Friend(FriendEvent { user, state }) => (user.clone(), *state),
        other => panic!("a friend event: {other:?}"),
    };

    let (result, planned) = h.one("alice", friends(&["bob"], &[]));
    assert_eq!(result, Ok(Committed::ack(ack("", 0, NOW, false))));
    assert_eq!(
        h.store.friend("alice", "bob").unwrap(),
        Some(FriendState::RequestSent)
    );
    assert_eq!(
        h.store.friend("bob", "alice").unwrap(),
        Some(FriendState::RequestReceived)
    );
    let events: Vec<_> = planned.deliveries.iter().map(|d| event(&d.2)).collect();
    assert_eq!(
        events,
        vec![
            ("bob".to_owned(), FriendState::RequestSent as i32),
            ("alice".to_owned(), FriendState::RequestReceived as i32),
        ]
    );
    assert!(planned.effects.is_empty(), "a request is not a friendship");

    // asking again changes nothing
    let (_, planned) = h.one("alice", friends(&["bob"], &[]));
    assert!(planned.nothing_written());

    let (_, planned) = h.one("bob", friends(&["alice"], &[]));
    for (user, other) in [("alice", "bob"), ("bob", "alice")] {
        assert_eq!(
            h.store.friend(user, other).unwrap(),
            Some(FriendState::Friends)
        );
    }
    assert_eq!(
        planned.effects,
        vec![Effect::Friendship {
            a: "bob".to_owned(),
            b: "alice".to_owned(),
            friends: true,
        }]
    );

    let (_, planned) = h.one("alice", friends(&[], &["bob"]));
    assert_eq!(h.store.friend("alice", "bob").unwrap(), None);
    assert_eq!(h.store.friend("bob", "alice").unwrap(), None);
    assert_eq!(
        planned.effects,
        vec![Effect::Friendship {
            a: "alice".to_owned(),
            b: "bob".to_owned(),
            friends: false,
        }]
    );

    let (result, planned) = h.one("alice", friends(&["bob", "ghost"], &[]));
    assert_eq!(code(&result), ErrorCode::NotFound);
    assert!(planned.nothing_written());
}

#[test]
fn push_jobs_go_to_registered_members_with_no_online_device() {
    let mut h = Harness::with_users(&["alice", "bob", "carol", "dave"]);
    h.ok("alice", create_group("team", &["bob", "carol", "dave"]));
    h.services.enabled = true;
    // alice (the sender) and carol (online) get none; dave has no registration
    h.services.registered = ["alice", "bob", "carol"].map(String::from).into();
    h.services.online = ["carol"].map(String::from).into();

    let (_, planned) = h.one("alice", send("g:team", "standup", "a1"));
    assert_eq!(
        *h.services.queued.borrow(),
        vec![(1, "bob".to_owned(), "g:team".to_owned(), 1)]
    );
    assert_eq!(planned.effects, vec![Effect::PushQueued]);

    // no gateway: nothing queued, nothing to wake
    h.services.enabled = false;
    let (_, planned) = h.one("alice", send("g:team", "later", "a2"));
    assert_eq!(h.services.queued.borrow().len(), 1);
    assert!(planned.effects.is_empty());
}

#[test]
fn the_last_member_leaving_deletes_the_group() {
    let mut h = Harness::with_users(&["alice", "bob"]);
    h.ok("alice", create_group("team", &["bob"]));
    let leave = || {
        Command::LeaveGroup(LeaveGroup {
            group_id: "team".to_owned(),
        })
    };

    let (_, planned) = h.one("alice", leave());
    let group = h.store.group("team").unwrap().expect("bob is left");
    assert_eq!((group.owner.as_str(), group.members.len()), ("bob", 1));
    assert_eq!(planned.inbox_seqs("alice"), vec![2]);
    assert_eq!(planned.inbox_seqs("bob"), vec![2]);

    let (_, planned) = h.one("bob", leave());
    assert_eq!(h.store.group("team").unwrap(), None);
    assert_eq!(planned.inbox_seqs("bob"), vec![3]);
    let (result, _) = h.one("bob", send("g:team", "anyone?", "b1"));
    assert_eq!(code(&result), ErrorCode::NotFound);
}

#[test]
fn a_system_message_to_users_is_stored_for_all_or_none() {
    let mut h = Harness::with_users(&["alice", "bob"]);
    let system = |users: &[&str]| {
        Command::System(SystemMessage {
            target: SystemTarget::Users(users.iter().map(|u| (*u).to_owned()).collect()),
            client_msg_id: "news-1".to_owned(),
            text: "maintenance tonight".to_owned(),
        })
    };

    let (result, planned) = h.one("svc:news", system(&["alice", "ghost"]));
    assert_eq!(code(&result), ErrorCode::NotFound);
    assert!(planned.nothing_written());

    let (result, planned) = h.one("svc:news", system(&["alice", "bob"]));
    let committed = result.unwrap();
    assert_eq!(
        committed.stored,
        vec![("sys:alice".to_owned(), 1), ("sys:bob".to_owned(), 1)]
    );
    assert!(!committed.ack.duplicate);
    let envelope::Body::Message(message) = &planned.deliveries[0].2 else {
        panic!("a message: {:?}", planned.deliveries[0]);
    };
    assert!(message.system);
    assert_eq!(message.sender, "svc:news");

    let (result, planned) = h.one("svc:news", system(&["alice", "bob"]));
    assert!(result.unwrap().ack.duplicate);
    assert!(planned.nothing_written());
}

#[test]
fn the_same_requests_on_the_same_state_plan_the_same_batch() {
    let jobs = [
        ("alice", create_group("team", &["bob"])),
        ("alice", send("g:team", "one", "a1")),
        ("bob", send("dm:alice:bob", "two", "b1")),
        ("bob", receipt("g:team", 1, ReceiptKind::Read)),
        ("bob", friends(&["alice"], &[])),
    ];
    let run = || {
        let mut h = Harness::with_users(&["alice", "bob"]);
        let planned = h.batch(&jobs);
        (planned.results, planned.writes, planned.deliveries)
    };
    let first = run();
    assert!(first.0.iter().all(Result::is_ok), "{:?}", first.0);
    assert_eq!(first, run());
}

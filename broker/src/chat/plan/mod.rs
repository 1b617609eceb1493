//! Planning one batch: each job is checked against the chat state (and
//! against what earlier jobs of the same batch did), then its writes go
//! into the shared `Batch`, its inbox appends into the delivery list, and
//! what must happen once it is committed (presence of new friends, waking
//! the push worker) into the effects.
//!
//! A deterministic function of its inputs: the state is read through
//! [`ChatState`] (the data dir in the broker, a `MemoryStore` in the tests
//! beside this file), the time of the batch is given, and what the broker
//! knows in memory (who is online, who has push) is asked through
//! [`Services`]. Planning writes nothing itself: the engine commits the
//! batch, then publishes the deliveries and applies the effects.
//!
//! One file per kind of write: `messages.rs` (send, system messages, push
//! jobs), `receipts.rs`, `friends.rs`; the counters in `sequences.rs`;
//! groups and the shared steps are here.

mod friends;
mod messages;
mod receipts;
mod sequences;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use parley_chat_logic::channel::Channel;
use parley_chat_logic::command::Command;
use parley_chat_logic::group::{self, Directory, Group, GroupChange};
use parley_chat_logic::limits::Limits;
use parley_chat_logic::{ChatError, ReadCursor};
use parley_proto::v1::{envelope, Ack, ChatMessage, FriendState};
use parley_storage::{Batch, ChatState, InboxEntry, StorageError};

use super::outcome::{encode_body, internal, Committed, JobResult};
pub(super) use sequences::Sequences;

/// The registered users, as the pure chat rules ask for them: the state,
/// optionally in front of a set of ids already found there. Accounts are
/// never deleted, so an id found once stays valid for the broker's life.
pub struct StoreDirectory<'a> {
    state: &'a dyn ChatState,
    known: Option<&'a RefCell<KnownUsers>>,
}

/// Ids the engine has already found in the store.
pub(super) type KnownUsers = HashSet<String>;

impl<'a> StoreDirectory<'a> {
    /// Asks the state every time.
    pub fn new(state: &'a dyn ChatState) -> Self {
        StoreDirectory { state, known: None }
    }

    /// Asks the state only about ids not in `known`, and remembers them.
    pub(super) fn cached(state: &'a dyn ChatState, known: &'a RefCell<KnownUsers>) -> Self {
        StoreDirectory {
            state,
            known: Some(known),
        }
    }
}

impl Directory for StoreDirectory<'_> {
    fn is_user(&self, id: &str) -> Result<bool, ChatError> {
        if self.known.is_some_and(|known| known.borrow().contains(id)) {
            return Ok(true);
        }
        let exists = self.state.has_user(id).map_err(internal)?;
        if let (true, Some(known)) = (exists, self.known) {
            known.borrow_mut().insert(id.to_owned());
        }
        Ok(exists)
    }
}

type DedupKey = (String, String, String);
/// `(user, other user)` or `(user, channel)`.
type PairKey = (String, String);

/// What planning asks the broker besides the stored state, all of it in
/// memory: who has push registrations, who has no online device, and where
/// a push job goes. The engine answers from the push service and the
/// presence tracker; the tests beside this file from a script.
pub(super) trait Services {
    /// Whether a push gateway is configured (without one no job is written).
    fn push_enabled(&self) -> bool;

    /// Whether `user` has any push registration.
    fn has_push_registrations(&self, user: &str) -> bool;

    /// Those of `users` with no online device, in one look.
    fn offline_among<'u>(&self, users: Vec<&'u String>) -> Vec<&'u String>;

    /// Writes the job notifying `user` of `message` into `batch`, with a
    /// new job id.
    fn queue_push(
        &self,
        batch: &mut Batch,
        user: &str,
        message: &ChatMessage,
    ) -> Result<(), StorageError>;
}

/// An inbox append planned by a job, published after the commit.
pub struct Delivery {
    pub user: String,
    pub inbox_seq: u64,
    pub body: Arc<Bytes>,
}

/// What must happen once a batch is committed, besides live delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `a` and `b` became friends (`true`) or stopped being friends.
    Friendship { a: String, b: String, friends: bool },
    /// Push jobs were written: wake the push worker.
    PushQueued,
}

/// One batch being planned.
pub(super) struct BatchPlan<'a> {
    state: &'a dyn ChatState,
    known_users: &'a RefCell<KnownUsers>,
    sequences: &'a mut Sequences,
    limits: &'a Limits,
    services: &'a dyn Services,
    /// The time of the batch: every Ack and message of it carries it.
    now_ms: i64,
    /// Groups created, changed or deleted by earlier jobs of this batch.
    groups: HashMap<String, Option<Group>>,
    /// Messages accepted by earlier jobs of this batch, by idempotence key.
    sent: HashMap<DedupKey, Ack>,
    /// Read cursors moved by earlier jobs of this batch.
    cursors: HashMap<PairKey, ReadCursor>,
    /// Friend links changed by earlier jobs of this batch (`None`: deleted).
    friends: HashMap<PairKey, Option<FriendState>>,
    batch: Batch,
    deliveries: Vec<Delivery>,
    effects: Vec<Effect>,
    poisoned: Option<StorageError>,
}

/// A whole batch planned: each job's result, in job order, and what the
/// commit writes and, once it is durable, delivers and does.
pub(super) struct PlannedBatch {
    pub results: Vec<JobResult>,
    pub batch: Batch,
    pub deliveries: Vec<Delivery>,
    pub effects: Vec<Effect>,
    /// Set when a write could not be added to the batch: the batch must not
    /// be committed (ids are validated before, so this is a bug, not input).
    pub poisoned: Option<StorageError>,
}

impl<'a> BatchPlan<'a> {
    /// An empty plan over `state`, at `now_ms`.
    pub(super) fn new(
        state: &'a dyn ChatState,
        known_users: &'a RefCell<KnownUsers>,
        sequences: &'a mut Sequences,
        limits: &'a Limits,
        services: &'a dyn Services,
        now_ms: i64,
    ) -> Self {
        BatchPlan {
            state,
            known_users,
            sequences,
            limits,
            services,
            now_ms,
            groups: HashMap::new(),
            sent: HashMap::new(),
            cursors: HashMap::new(),
            friends: HashMap::new(),
            batch: Batch::new(),
            deliveries: Vec::new(),
            effects: Vec::new(),
            poisoned: None,
        }
    }

    /// Plans every job of a batch, in order, each seeing the ones before it.
    pub(super) fn plan_jobs<'j>(
        mut self,
        jobs: impl IntoIterator<Item = (&'j str, &'j Command)>,
    ) -> PlannedBatch {
        let results = jobs
            .into_iter()
            .map(|(user, command)| self.apply(user, command))
            .collect();
        PlannedBatch {
            results,
            batch: self.batch,
            deliveries: self.deliveries,
            effects: self.effects,
            poisoned: self.poisoned,
        }
    }

    fn directory(&self) -> StoreDirectory<'a> {
        StoreDirectory::cached(self.state, self.known_users)
    }

    /// Plans one job; on error nothing of it is in the batch.
    pub(super) fn apply(&mut self, user: &str, command: &Command) -> JobResult {
        match command {
            Command::Send(send) => self.send(user, send),
            Command::System(system) => self.system(user, system),
            Command::Receipt(mark) => self.receipt(user, mark).map(Committed::ack),
            Command::ChangeFriends(change) => self.change_friends(user, change).map(Committed::ack),
            Command::CreateGroup(create) => {
                let existing = self.group(&create.group_id)?;
                let directory = self.directory();
                let change =
                    group::create(user, create, existing.as_ref(), &directory, self.limits)?;
                self.group_change(&create.group_id, existing.as_ref(), change)
            }
            Command::ChangeMembers(change) => {
                let current = self.group(&change.group_id)?;
                let directory = self.directory();
                let planned =
                    group::change_members(current.as_ref(), user, change, &directory, self.limits)?;
                self.group_change(&change.group_id, current.as_ref(), planned)
            }
            Command::LeaveGroup(leave) => {
                let current = self.group(&leave.group_id)?;
                let change = group::leave(current.as_ref(), user, leave)?;
                self.group_change(&leave.group_id, current.as_ref(), change)
            }
            other => Err(ChatError::bad_request(format!(
                "{} is not a write request",
                other.name()
            ))),
        }
    }

    fn group(&self, id: &str) -> Result<Option<Group>, ChatError> {
        match self.groups.get(id) {
            Some(planned) => Ok(planned.clone()),
            None => self.state.group(id).map_err(internal),
        }
    }

    /// The group a channel belongs to, for `g:` channels.
    fn group_of(&self, channel: &Channel) -> Result<Option<Group>, ChatError> {
        match channel {
            Channel::Group(id) => self.group(id),
            _ => Ok(None),
        }
    }

    fn check(&mut self, written: Result<(), StorageError>) {
        if let Err(error) = written {
            self.poisoned.get_or_insert(error);
        }
    }

    fn group_change(&mut self, id: &str, before: Option<&Group>, change: GroupChange) -> JobResult {
        self.sequences.load(self.state, None, &change.notify)?;
        let written = match &change.after {
            Some(group) => self.batch.put_group(group),
            None => self.batch.delete_group(id),
        };
        self.check(written);
        let channel = Channel::Group(id.to_owned()).id();
        self.index_members(&channel, before, change.after.as_ref());
        self.groups.insert(id.to_owned(), change.after.clone());
        self.append_event(&change.notify, envelope::Body::Group(change.event));
        Ok(Committed::ack(self.ack(channel, 0)))
    }

    /// Keeps each member's conversation index in step with a group change.
    fn index_members(&mut self, channel: &str, before: Option<&Group>, after: Option<&Group>) {
        let members = |group: Option<&Group>| -> HashSet<String> {
            group.map_or_else(HashSet::new, |g| g.members.iter().cloned().collect())
        };
        let (before, after) = (members(before), members(after));
        for joined in after.difference(&before) {
            let written = self.batch.put_user_channel(joined, channel);
            self.check(written);
        }
        for left in before.difference(&after) {
            let written = self.batch.delete_user_channel(left, channel);
            self.check(written);
        }
    }

    /// An Ack at this batch's time.
    fn ack(&self, channel: String, seq: u64) -> Ack {
        Ack {
            channel,
            seq,
            ts_ms: self.now_ms,
            duplicate: false,
        }
    }

    /// Appends one entry to each user's inbox (counters loaded beforehand).
    fn append_to_inboxes(&mut self, users: &[String], entry: &InboxEntry, body: &Arc<Bytes>) {
        for user in users {
            let inbox_seq = self.sequences.next_inbox_seq(user);
            let written = self.batch.put_inbox(user, inbox_seq, entry);
            self.check(written);
            self.deliveries.push(Delivery {
                user: user.clone(),
                inbox_seq,
                body: body.clone(),
            });
        }
    }

    /// Appends an inline event to each user's inbox (counters loaded beforehand).
    fn append_event(&mut self, users: &[String], event: envelope::Body) {
        let body = encode_body(event.clone());
        self.append_to_inboxes(users, &InboxEntry::Event(event), &body);
    }
}

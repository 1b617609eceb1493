//! Planning one batch: each job is checked against the store (and against
//! what earlier jobs of the same batch did), then its writes go into the
//! shared `Batch`, its inbox appends into the delivery list, and what must
//! happen once it is committed (presence of new friends, waking the push
//! worker) into the effects.
//!
//! One file per kind of write: `messages.rs` (send, system messages, push
//! jobs), `receipts.rs`, `friends.rs`; groups and the shared steps are here.

mod friends;
mod messages;
mod receipts;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parley_chat_logic::channel::Channel;
use parley_chat_logic::command::Command;
use parley_chat_logic::group::{self, Directory, Group, GroupChange};
use parley_chat_logic::limits::Limits;
use parley_chat_logic::{ChatError, ReadCursor};
use parley_proto::v1::{envelope, Ack, FriendState};
use parley_storage::{Batch, GroupRecord, InboxEntry, StorageError, Store};

use super::engine::{encode_body, internal, Committed, Delivery, JobResult, Sequences};
use crate::clock::now_ms;
use crate::presence::Presence;
use crate::push::Push;

/// The registered users, as the pure chat rules ask for them: the store,
/// optionally in front of a set of ids already found there. Accounts are
/// never deleted, so an id found once stays valid for the broker's life.
pub struct StoreDirectory<'a> {
    store: &'a Store,
    known: Option<&'a RefCell<KnownUsers>>,
}

/// Ids the engine has already found in the store.
pub(super) type KnownUsers = HashSet<String>;

impl<'a> StoreDirectory<'a> {
    /// Asks the store every time.
    pub fn new(store: &'a Store) -> Self {
        StoreDirectory { store, known: None }
    }

    /// Asks the store only about ids not in `known`, and remembers them.
    pub(super) fn cached(store: &'a Store, known: &'a RefCell<KnownUsers>) -> Self {
        StoreDirectory {
            store,
            known: Some(known),
        }
    }
}

impl Directory for StoreDirectory<'_> {
    fn is_user(&self, id: &str) -> Result<bool, ChatError> {
        if self.known.is_some_and(|known| known.borrow().contains(id)) {
            return Ok(true);
        }
        let exists = self.store.has_user(id).map_err(internal)?;
        if let (true, Some(known)) = (exists, self.known) {
            known.borrow_mut().insert(id.to_owned());
        }
        Ok(exists)
    }
}

type DedupKey = (String, String, String);
/// `(user, other user)` or `(user, channel)`.
type PairKey = (String, String);

/// What the engine consults besides the store: who is online, who has push.
#[derive(Clone, Copy)]
pub(super) struct Services<'a> {
    pub presence: &'a Presence,
    pub push: &'a Push,
}

/// What must happen once a batch is committed, besides live delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Effect {
    /// `a` and `b` became friends (`true`) or stopped being friends.
    Friendship { a: String, b: String, friends: bool },
    /// Push jobs were written: wake the push worker.
    PushQueued,
}

/// One batch being planned.
pub(super) struct BatchPlan<'a> {
    store: &'a Store,
    known_users: &'a RefCell<KnownUsers>,
    sequences: &'a mut Sequences,
    limits: &'a Limits,
    services: Services<'a>,
    now_ms: i64,
    /// Groups created, changed or deleted by earlier jobs of this batch.
    groups: HashMap<String, Option<Group>>,
    /// Messages accepted by earlier jobs of this batch, by idempotence key.
    sent: HashMap<DedupKey, Ack>,
    /// Read cursors moved by earlier jobs of this batch.
    cursors: HashMap<PairKey, ReadCursor>,
    /// Friend links changed by earlier jobs of this batch (`None`: deleted).
    friends: HashMap<PairKey, Option<FriendState>>,
    pub batch: Batch,
    pub deliveries: Vec<Delivery>,
    pub effects: Vec<Effect>,
    /// Set when a write could not be added to the batch: the batch must not
    /// be committed (ids are validated before, so this is a bug, not input).
    pub poisoned: Option<StorageError>,
}

impl<'a> BatchPlan<'a> {
    pub(super) fn new(
        store: &'a Store,
        known_users: &'a RefCell<KnownUsers>,
        sequences: &'a mut Sequences,
        limits: &'a Limits,
        services: Services<'a>,
    ) -> Self {
        BatchPlan {
            store,
            known_users,
            sequences,
            limits,
            services,
            now_ms: now_ms(),
            groups: HashMap::new(),
            sent: HashMap::new(),
            cursors: HashMap::new(),
            friends: HashMap::new(),
            batch: store.batch(),
            deliveries: Vec::new(),
            effects: Vec::new(),
            poisoned: None,
        }
    }

    fn directory(&self) -> StoreDirectory<'a> {
        StoreDirectory::cached(self.store, self.known_users)
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
            None => Ok(self
                .store
                .group(id)
                .map_err(internal)?
                .map(group_from_record)),
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
        self.sequences.load(self.store, None, &change.notify)?;
        let written = match &change.after {
            Some(group) => self.batch.put_group(&group_record(group)),
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
    fn append_to_inboxes(
        &mut self,
        users: &[String],
        entry: &InboxEntry,
        body: &Arc<bytes::Bytes>,
    ) {
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

/// The stored form of a group.
fn group_record(group: &Group) -> GroupRecord {
    GroupRecord {
        id: group.id.clone(),
        name: group.name.clone(),
        owner: group.owner.clone(),
        members: group.members.clone(),
    }
}

/// A stored group, for the chat rules.
pub fn group_from_record(record: GroupRecord) -> Group {
    Group {
        id: record.id,
        name: record.name,
        owner: record.owner,
        members: record.members,
    }
}

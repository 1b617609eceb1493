//! Planning one batch: each job is checked against the store (and against
//! what earlier jobs of the same batch did), then its writes go into the
//! shared `Batch` and its inbox appends into the delivery list.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parley_chat_logic::channel::Channel;
use parley_chat_logic::command::{Command, SendMessage};
use parley_chat_logic::group::{self, Directory, Group, GroupChange};
use parley_chat_logic::limits::Limits;
use parley_chat_logic::{send, ChatError};
use parley_proto::v1::{envelope, Ack, ChatMessage};
use parley_storage::{Batch, GroupRecord, InboxEntry, StorageError, Store};

use super::engine::{encode_body, internal, Delivery, JobResult, Sequences};
use crate::clock::now_ms;

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

/// One batch being planned.
pub(super) struct BatchPlan<'a> {
    store: &'a Store,
    known_users: &'a RefCell<KnownUsers>,
    sequences: &'a mut Sequences,
    limits: &'a Limits,
    now_ms: i64,
    /// Groups created, changed or deleted by earlier jobs of this batch.
    groups: HashMap<String, Option<Group>>,
    /// Messages accepted by earlier jobs of this batch, by idempotence key.
    sent: HashMap<DedupKey, Ack>,
    pub batch: Batch,
    pub deliveries: Vec<Delivery>,
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
    ) -> Self {
        BatchPlan {
            store,
            known_users,
            sequences,
            limits,
            now_ms: now_ms(),
            groups: HashMap::new(),
            sent: HashMap::new(),
            batch: store.batch(),
            deliveries: Vec::new(),
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
            Command::CreateGroup(create) => {
                let existing = self.group(&create.group_id)?;
                let directory = self.directory();
                let change =
                    group::create(user, create, existing.as_ref(), &directory, self.limits)?;
                self.group_change(&create.group_id, change)
            }
            Command::ChangeMembers(change) => {
                let current = self.group(&change.group_id)?;
                let directory = self.directory();
                let planned =
                    group::change_members(current.as_ref(), user, change, &directory, self.limits)?;
                self.group_change(&change.group_id, planned)
            }
            Command::LeaveGroup(leave) => {
                let current = self.group(&leave.group_id)?;
                let change = group::leave(current.as_ref(), user, leave)?;
                self.group_change(&leave.group_id, change)
            }
            other => Err(ChatError::bad_request(format!(
                "{} is not a write request",
                other.name()
            ))),
        }
    }

    fn send(&mut self, sender: &str, send: &SendMessage) -> JobResult {
        let channel_id = send.channel.id();
        if let Some(ack) = self.duplicate_of(sender, &channel_id, &send.client_msg_id)? {
            return Ok(ack);
        }
        let group = match &send.channel {
            Channel::Group(id) => self.group(id)?,
            _ => None,
        };
        let recipients =
            send::recipients(sender, &send.channel, group.as_ref(), &self.directory())?;
        self.sequences
            .load(self.store, Some(&channel_id), &recipients)?;

        let seq = self.sequences.next_channel_seq(&channel_id);
        let message = ChatMessage {
            channel: channel_id.clone(),
            seq,
            sender: sender.to_owned(),
            text: send.text.clone(),
            ts_ms: self.now_ms,
            client_msg_id: send.client_msg_id.clone(),
            system: false,
        };
        let ack = Ack {
            channel: channel_id.clone(),
            seq,
            ts_ms: self.now_ms,
            duplicate: false,
        };
        let written = self.batch.put_message(&message);
        self.check(written);
        if !send.client_msg_id.is_empty() {
            let written = self
                .batch
                .put_dedup(sender, &channel_id, &send.client_msg_id, seq);
            self.check(written);
            let key = (
                sender.to_owned(),
                channel_id.clone(),
                send.client_msg_id.clone(),
            );
            self.sent.insert(key, ack.clone());
        }
        let body = encode_body(envelope::Body::Message(message));
        let entry = InboxEntry::Message {
            channel: channel_id,
            seq,
        };
        self.append_to_inboxes(&recipients, &entry, &body);
        Ok(ack)
    }

    /// The original Ack of an earlier send with the same idempotence key.
    fn duplicate_of(
        &self,
        sender: &str,
        channel: &str,
        client_msg_id: &str,
    ) -> Result<Option<Ack>, ChatError> {
        if client_msg_id.is_empty() {
            return Ok(None);
        }
        let key = (
            sender.to_owned(),
            channel.to_owned(),
            client_msg_id.to_owned(),
        );
        if let Some(ack) = self.sent.get(&key) {
            return Ok(Some(Ack {
                duplicate: true,
                ..ack.clone()
            }));
        }
        let Some(seq) = self
            .store
            .dedup(sender, channel, client_msg_id)
            .map_err(internal)?
        else {
            return Ok(None);
        };
        let original = self.store.message(channel, seq).map_err(internal)?;
        Ok(Some(Ack {
            channel: channel.to_owned(),
            seq,
            ts_ms: original.map_or(0, |m| m.ts_ms),
            duplicate: true,
        }))
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

    fn check(&mut self, written: Result<(), StorageError>) {
        if let Err(error) = written {
            self.poisoned.get_or_insert(error);
        }
    }

    fn group_change(&mut self, id: &str, change: GroupChange) -> JobResult {
        self.sequences.load(self.store, None, &change.notify)?;
        let written = match &change.after {
            Some(group) => self.batch.put_group(&group_record(group)),
            None => self.batch.delete_group(id),
        };
        self.check(written);
        self.groups.insert(id.to_owned(), change.after.clone());
        let event = envelope::Body::Group(change.event);
        let body = encode_body(event.clone());
        self.append_to_inboxes(&change.notify, &InboxEntry::Event(event), &body);
        Ok(Ack {
            channel: Channel::Group(id.to_owned()).id(),
            seq: 0,
            ts_ms: self.now_ms,
            duplicate: false,
        })
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

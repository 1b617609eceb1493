//! Turns a `Request` payload into a validated [`Command`].
//!
//! [`decode_request`] is the only way in: it decodes the protobuf, checks
//! every field against [`Limits`] and normalises what the contract leaves
//! open (page sizes, duplicate member ids), so the broker never sees an
//! unchecked field. Request kinds the broker does not implement yet decode to
//! [`Command::Unsupported`]; to add one, give it a struct here and a variant.

use parley_proto::v1::{self, request::Body};
use prost::Message;

use crate::channel::Channel;
use crate::error::ChatError;
use crate::ids::{self, IdKind};
use crate::limits::Limits;

/// A decoded request: the id to echo in the reply, and the command or the
/// error to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The client's `request_id`; `""` when the payload is unreadable.
    pub request_id: String,
    /// The validated command, or why the request was refused.
    pub command: Result<Command, ChatError>,
}

/// What a device asked for, with every field validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Post a message to a channel.
    Send(SendMessage),
    /// Read the user's inbox after a point.
    Sync(SyncInbox),
    /// Page through a channel, newest first.
    History(ReadHistory),
    /// Create a group with the sender as owner.
    CreateGroup(CreateGroup),
    /// Add or remove members of a group.
    ChangeMembers(ChangeMembers),
    /// Leave a group.
    LeaveGroup(LeaveGroup),
    /// Sign this device out: revoke its token, drop its durable session.
    Logout,
    /// A request kind of the contract not implemented yet, by its field name
    /// (`"receipt"`, `"typing"`, ...); answer with [`unsupported`].
    Unsupported(&'static str),
}

impl Command {
    /// The request kind, as named in the protobuf `oneof` (for logs and metrics).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Send(_) => "send",
            Command::Sync(_) => "sync",
            Command::History(_) => "history",
            Command::CreateGroup(_) => "create_group",
            Command::ChangeMembers(_) => "change_members",
            Command::LeaveGroup(_) => "leave_group",
            Command::Logout => "logout",
            Command::Unsupported(name) => name,
        }
    }

    /// True for commands that change state (they go to the chat engine);
    /// false for reads and unsupported kinds.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Command::Send(_)
                | Command::CreateGroup(_)
                | Command::ChangeMembers(_)
                | Command::LeaveGroup(_)
        )
    }
}

/// A valid `SendMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendMessage {
    /// Where to post.
    pub channel: Channel,
    /// The sender's idempotence key; `""` means no idempotence.
    pub client_msg_id: String,
    /// Non-empty, at most `max_text_chars` characters.
    pub text: String,
}

/// A valid `Sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncInbox {
    /// Return inbox events with `inbox_seq` greater than this.
    pub after_inbox_seq: u64,
    /// Page size, already defaulted and clamped (1..=max).
    pub limit: u32,
}

/// A valid `History`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadHistory {
    /// The channel to read.
    pub channel: Channel,
    /// Return messages with `seq` below this; 0 means from the newest.
    pub before_seq: u64,
    /// Page size, already defaulted and clamped (1..=max).
    pub limit: u32,
}

/// A valid `CreateGroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateGroup {
    /// The new group's id.
    pub group_id: String,
    /// Display name, at most `max_group_name_chars` characters (may be empty).
    pub name: String,
    /// Valid user ids, sorted and unique; may or may not list the creator.
    pub members: Vec<String>,
}

/// A valid `ChangeMembers`: at least one user, none both added and removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeMembers {
    /// The group to change.
    pub group_id: String,
    /// Users to add, sorted and unique.
    pub add: Vec<String>,
    /// Users to remove, sorted and unique.
    pub remove: Vec<String>,
}

/// A valid `LeaveGroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveGroup {
    /// The group to leave.
    pub group_id: String,
}

/// The answer to [`Command::Unsupported`]: `BAD_REQUEST` "... not supported yet".
pub fn unsupported(name: &str) -> ChatError {
    ChatError::bad_request(format!("request kind {name} is not supported yet"))
}

/// Decodes and validates one `Request` payload. Never panics. When the
/// protobuf cannot be decoded, the reply still echoes the `request_id` if that
/// field alone can be read, else `""`.
pub fn decode_request(payload: &[u8], limits: &Limits) -> Decoded {
    match v1::Request::decode(payload) {
        Ok(request) => Decoded {
            command: validate_body(request.body, limits),
            request_id: request.request_id,
        },
        Err(error) => Decoded {
            request_id: salvage_request_id(payload),
            command: Err(ChatError::bad_request(format!(
                "payload is not a valid chat.v1.Request: {error}"
            ))),
        },
    }
}

/// Field 1 of `Request` alone; every other field is skipped unread.
#[derive(Clone, PartialEq, Message)]
struct RequestIdOnly {
    #[prost(string, tag = "1")]
    request_id: String,
}

/// The `request_id` of a payload, reading nothing else: for answers that do
/// not need the request (a rate-limit refusal), or when it is unreadable.
pub fn salvage_request_id(payload: &[u8]) -> String {
    RequestIdOnly::decode(payload)
        .map(|header| header.request_id)
        .unwrap_or_default()
}

fn validate_body(body: Option<Body>, limits: &Limits) -> Result<Command, ChatError> {
    let Some(body) = body else {
        return Err(ChatError::bad_request(
            "request has no body: set one of send, sync, history, create_group, change_members, leave_group",
        ));
    };
    match body {
        Body::Send(send) => send_message(send, limits).map(Command::Send),
        Body::Sync(sync) => Ok(Command::Sync(sync_inbox(sync, limits))),
        Body::History(history) => read_history(history, limits).map(Command::History),
        Body::CreateGroup(create) => create_group(create, limits).map(Command::CreateGroup),
        Body::ChangeMembers(change) => change_members(change).map(Command::ChangeMembers),
        Body::LeaveGroup(leave) => leave_group(leave).map(Command::LeaveGroup),
        Body::Receipt(_) => Ok(Command::Unsupported("receipt")),
        Body::Typing(_) => Ok(Command::Unsupported("typing")),
        Body::ChangeFriends(_) => Ok(Command::Unsupported("change_friends")),
        Body::QueryPresence(_) => Ok(Command::Unsupported("query_presence")),
        Body::RegisterPush(_) => Ok(Command::Unsupported("register_push")),
        Body::System(_) => Ok(Command::Unsupported("system")),
        Body::Logout(_) => Ok(Command::Logout),
    }
}

fn send_message(send: v1::SendMessage, limits: &Limits) -> Result<SendMessage, ChatError> {
    let channel = Channel::parse(&send.channel)?;
    check_text(&send.text, limits.max_text_chars)?;
    check_client_msg_id(&send.client_msg_id, limits.max_client_msg_id_bytes)?;
    Ok(SendMessage {
        channel,
        client_msg_id: send.client_msg_id,
        text: send.text,
    })
}

fn check_text(text: &str, max_chars: usize) -> Result<(), ChatError> {
    if text.is_empty() {
        return Err(ChatError::bad_request("text must not be empty"));
    }
    check_chars("text", text, max_chars)
}

/// `TOO_LARGE` when `value` has more than `max_chars` Unicode scalar values.
fn check_chars(field: &str, value: &str, max_chars: usize) -> Result<(), ChatError> {
    // A string of at most `max_chars` bytes cannot have more characters.
    if value.len() <= max_chars {
        return Ok(());
    }
    let chars = value.chars().count();
    if chars <= max_chars {
        return Ok(());
    }
    Err(ChatError::too_large(format!(
        "{field} has {chars} characters, at most {max_chars} are allowed"
    )))
}

fn check_client_msg_id(client_msg_id: &str, max_bytes: usize) -> Result<(), ChatError> {
    if client_msg_id.len() <= max_bytes {
        return Ok(());
    }
    Err(ChatError::too_large(format!(
        "client_msg_id has {} bytes, at most {max_bytes} are allowed",
        client_msg_id.len()
    )))
}

fn sync_inbox(sync: v1::Sync, limits: &Limits) -> SyncInbox {
    SyncInbox {
        after_inbox_seq: sync.after_inbox_seq,
        limit: limits.sync_page(sync.limit),
    }
}

fn read_history(history: v1::History, limits: &Limits) -> Result<ReadHistory, ChatError> {
    Ok(ReadHistory {
        channel: Channel::parse(&history.channel)?,
        before_seq: history.before_seq,
        limit: limits.history_page(history.limit),
    })
}

fn create_group(create: v1::CreateGroup, limits: &Limits) -> Result<CreateGroup, ChatError> {
    ids::validate_id(IdKind::Group, &create.group_id)?;
    check_chars("group name", &create.name, limits.max_group_name_chars)?;
    Ok(CreateGroup {
        group_id: create.group_id,
        name: create.name,
        members: user_set(create.members)?,
    })
}

fn change_members(change: v1::ChangeMembers) -> Result<ChangeMembers, ChatError> {
    ids::validate_id(IdKind::Group, &change.group_id)?;
    let add = user_set(change.add)?;
    let remove = user_set(change.remove)?;
    if add.is_empty() && remove.is_empty() {
        return Err(ChatError::bad_request(
            "change_members needs at least one user to add or remove",
        ));
    }
    if let Some(both) = add.iter().find(|user| remove.binary_search(user).is_ok()) {
        return Err(ChatError::bad_request(format!(
            "user {both} is both added and removed"
        )));
    }
    Ok(ChangeMembers {
        group_id: change.group_id,
        add,
        remove,
    })
}

fn leave_group(leave: v1::LeaveGroup) -> Result<LeaveGroup, ChatError> {
    ids::validate_id(IdKind::Group, &leave.group_id)?;
    Ok(LeaveGroup {
        group_id: leave.group_id,
    })
}

/// Validates user ids and returns them sorted and unique.
fn user_set(users: Vec<String>) -> Result<Vec<String>, ChatError> {
    for user in &users {
        ids::validate_id(IdKind::User, user)?;
    }
    let mut users = users;
    users.sort_unstable();
    users.dedup();
    Ok(users)
}

#[cfg(test)]
mod tests;

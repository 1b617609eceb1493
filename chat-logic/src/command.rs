//! Turns a `Request` payload into a validated [`Command`].
//!
//! [`decode_request`] is the only way in: it decodes the protobuf, checks
//! every field against [`Limits`] and normalises what the contract leaves
//! open (page sizes, duplicate user ids), so the broker never sees an
//! unchecked field. Every request kind of the contract has a variant of
//! [`Command`] and a struct here; whether the caller may send it (users vs
//! service accounts) and what the world looks like are the broker's checks.

use parley_proto::v1::{self, request::Body, ReceiptKind};
use prost::Message;

use crate::channel::Channel;
use crate::error::ChatError;
use crate::limits::Limits;

mod validate;

use validate::{
    change_friends, change_members, create_group, leave_group, mark_receipt, query_presence,
    read_history, register_push, send_message, sync_inbox, system_message,
};

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
    /// Move the user's delivered / read cursor of a channel forward.
    Receipt(MarkReceipt),
    /// Tell the other members of a channel that the user is typing.
    Typing(Typing),
    /// Create a group with the sender as owner.
    CreateGroup(CreateGroup),
    /// Add or remove members of a group.
    ChangeMembers(ChangeMembers),
    /// Leave a group.
    LeaveGroup(LeaveGroup),
    /// Ask for, accept or end friendships.
    ChangeFriends(ChangeFriends),
    /// Ask whether some users are online.
    QueryPresence(QueryPresence),
    /// Register (or unregister) this device for push notifications.
    RegisterPush(RegisterPush),
    /// A service account's system message.
    System(SystemMessage),
    /// Sign this device out: revoke its token, drop its durable session.
    Logout,
}

impl Command {
    /// The request kind, as named in the protobuf `oneof` (for logs and metrics).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Send(_) => "send",
            Command::Sync(_) => "sync",
            Command::History(_) => "history",
            Command::Receipt(_) => "receipt",
            Command::Typing(_) => "typing",
            Command::CreateGroup(_) => "create_group",
            Command::ChangeMembers(_) => "change_members",
            Command::LeaveGroup(_) => "leave_group",
            Command::ChangeFriends(_) => "change_friends",
            Command::QueryPresence(_) => "query_presence",
            Command::RegisterPush(_) => "register_push",
            Command::System(_) => "system",
            Command::Logout => "logout",
        }
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

/// A valid `MarkReceipt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkReceipt {
    /// The channel the receipt is about.
    pub channel: Channel,
    /// The message marked, at least 1 (whether it exists is the engine's check).
    pub seq: u64,
    /// `Delivered` or `Read`, never `Unspecified`.
    pub kind: ReceiptKind,
}

/// A valid `Typing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Typing {
    /// The channel the user is typing in.
    pub channel: Channel,
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

/// A valid `ChangeFriends`: at least one user, none both added and removed,
/// at most `max_users_per_request` together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeFriends {
    /// Users to ask (or to accept), sorted and unique.
    pub add: Vec<String>,
    /// Users to unfriend (or whose request to withdraw or decline), sorted
    /// and unique.
    pub remove: Vec<String>,
}

/// A valid `QueryPresence`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryPresence {
    /// The users asked about: 1 to `max_users_per_request`, sorted and unique.
    pub users: Vec<String>,
}

/// A valid `RegisterPush`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterPush {
    /// Where to push to; `None` (an empty token) unregisters this device.
    pub registration: Option<PushTarget>,
}

/// One device's push registration, as the Matrix push gateway names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    /// The `app_id`: 1 to
    /// [`MAX_PUSH_PLATFORM_BYTES`](crate::limits::MAX_PUSH_PLATFORM_BYTES)
    /// printable ASCII characters without spaces, e.g. `com.example.app.ios`.
    pub platform: String,
    /// The `pushkey`: 1 to
    /// [`MAX_PUSH_TOKEN_BYTES`](crate::limits::MAX_PUSH_TOKEN_BYTES) bytes,
    /// no control characters.
    pub token: String,
}

/// A valid `SystemMessage` (who may send it is the broker's check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemMessage {
    /// Where it goes: one channel, or each listed user's `sys:` channel.
    pub target: SystemTarget,
    /// The service's idempotence key; `""` means no idempotence.
    pub client_msg_id: String,
    /// Non-empty, at most `max_text_chars` characters.
    pub text: String,
}

/// Where a system message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemTarget {
    /// One channel of any form; its members get a `system = true` message.
    Channel(Channel),
    /// Each user's own system channel `sys:{user}`: 1 to
    /// `max_users_per_request` user ids, sorted and unique.
    Users(Vec<String>),
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
            "request has no body: set one of send, sync, history, receipt, typing, create_group, \
             change_members, leave_group, change_friends, query_presence, register_push, system, logout",
        ));
    };
    match body {
        Body::Send(send) => send_message(send, limits).map(Command::Send),
        Body::Sync(sync) => Ok(Command::Sync(sync_inbox(sync, limits))),
        Body::History(history) => read_history(history, limits).map(Command::History),
        Body::Receipt(receipt) => mark_receipt(receipt).map(Command::Receipt),
        Body::Typing(typing) => Ok(Command::Typing(Typing {
            channel: Channel::parse(&typing.channel)?,
        })),
        Body::CreateGroup(create) => create_group(create, limits).map(Command::CreateGroup),
        Body::ChangeMembers(change) => change_members(change).map(Command::ChangeMembers),
        Body::LeaveGroup(leave) => leave_group(leave).map(Command::LeaveGroup),
        Body::ChangeFriends(change) => change_friends(change, limits).map(Command::ChangeFriends),
        Body::QueryPresence(query) => query_presence(query, limits).map(Command::QueryPresence),
        Body::RegisterPush(push) => register_push(push).map(Command::RegisterPush),
        Body::System(system) => system_message(system, limits).map(Command::System),
        Body::Logout(_) => Ok(Command::Logout),
    }
}

#[cfg(test)]
mod tests;

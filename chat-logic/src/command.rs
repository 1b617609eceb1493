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
use crate::ids::{self, IdKind};
use crate::limits::{Limits, MAX_PUSH_PLATFORM_BYTES, MAX_PUSH_TOKEN_BYTES};

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

    /// True for commands that change chat state: they go through the chat
    /// engine's group commit (sends, receipts, group and friend changes,
    /// system messages). False for reads, for `Typing` (live only, never
    /// stored) and for the per-device `RegisterPush` and `Logout`.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Command::Send(_)
                | Command::CreateGroup(_)
                | Command::ChangeMembers(_)
                | Command::LeaveGroup(_)
                | Command::Receipt(_)
                | Command::ChangeFriends(_)
                | Command::System(_)
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
    /// The `app_id`: 1 to [`MAX_PUSH_PLATFORM_BYTES`] printable ASCII
    /// characters without spaces, e.g. `com.example.app.ios`.
    pub platform: String,
    /// The `pushkey`: 1 to [`MAX_PUSH_TOKEN_BYTES`] bytes, no control characters.
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
    let (add, remove) = additions_and_removals("change_members", change.add, change.remove)?;
    Ok(ChangeMembers {
        group_id: change.group_id,
        add,
        remove,
    })
}

/// Users to add and to remove, each sorted and unique: `BAD_REQUEST` when
/// both are empty or a user is in both.
fn additions_and_removals(
    kind: &str,
    add: Vec<String>,
    remove: Vec<String>,
) -> Result<(Vec<String>, Vec<String>), ChatError> {
    let (add, remove) = (user_set(add)?, user_set(remove)?);
    if add.is_empty() && remove.is_empty() {
        return Err(ChatError::bad_request(format!(
            "{kind} needs at least one user to add or remove"
        )));
    }
    if let Some(both) = add.iter().find(|user| remove.binary_search(user).is_ok()) {
        return Err(ChatError::bad_request(format!(
            "user {both} is both added and removed"
        )));
    }
    Ok((add, remove))
}

fn leave_group(leave: v1::LeaveGroup) -> Result<LeaveGroup, ChatError> {
    ids::validate_id(IdKind::Group, &leave.group_id)?;
    Ok(LeaveGroup {
        group_id: leave.group_id,
    })
}

fn mark_receipt(receipt: v1::MarkReceipt) -> Result<MarkReceipt, ChatError> {
    let channel = Channel::parse(&receipt.channel)?;
    if receipt.seq == 0 {
        return Err(ChatError::bad_request(
            "receipt seq must be at least 1 (the seq of a message)",
        ));
    }
    let kind = match ReceiptKind::try_from(receipt.kind) {
        Ok(kind @ (ReceiptKind::Delivered | ReceiptKind::Read)) => kind,
        Ok(ReceiptKind::Unspecified) | Err(_) => {
            return Err(ChatError::bad_request(format!(
                "receipt kind must be DELIVERED (1) or READ (2), got {}",
                receipt.kind
            )))
        }
    };
    Ok(MarkReceipt {
        channel,
        seq: receipt.seq,
        kind,
    })
}

fn change_friends(change: v1::ChangeFriends, limits: &Limits) -> Result<ChangeFriends, ChatError> {
    let (add, remove) = additions_and_removals("change_friends", change.add, change.remove)?;
    check_user_count("change_friends", add.len() + remove.len(), limits)?;
    Ok(ChangeFriends { add, remove })
}

fn query_presence(query: v1::QueryPresence, limits: &Limits) -> Result<QueryPresence, ChatError> {
    let users = user_set(query.users)?;
    if users.is_empty() {
        return Err(ChatError::bad_request(
            "query_presence needs at least one user",
        ));
    }
    check_user_count("query_presence", users.len(), limits)?;
    Ok(QueryPresence { users })
}

fn register_push(push: v1::RegisterPush) -> Result<RegisterPush, ChatError> {
    if push.token.is_empty() {
        return Ok(RegisterPush { registration: None });
    }
    check_push_platform(&push.platform)?;
    check_push_token(&push.token)?;
    Ok(RegisterPush {
        registration: Some(PushTarget {
            platform: push.platform,
            token: push.token,
        }),
    })
}

fn check_push_platform(platform: &str) -> Result<(), ChatError> {
    let printable = platform.bytes().all(|b| b.is_ascii_graphic());
    if !platform.is_empty() && platform.len() <= MAX_PUSH_PLATFORM_BYTES && printable {
        return Ok(());
    }
    Err(ChatError::bad_request(format!(
        "invalid push platform {}: must be 1 to {MAX_PUSH_PLATFORM_BYTES} printable ASCII \
         characters without spaces (an app id such as com.example.app.ios)",
        ids::quote(platform)
    )))
}

fn check_push_token(token: &str) -> Result<(), ChatError> {
    if token.len() > MAX_PUSH_TOKEN_BYTES {
        return Err(ChatError::too_large(format!(
            "push token has {} bytes, at most {MAX_PUSH_TOKEN_BYTES} are allowed",
            token.len()
        )));
    }
    if token.chars().any(char::is_control) {
        return Err(ChatError::bad_request(
            "push token must not contain control characters",
        ));
    }
    Ok(())
}

fn system_message(system: v1::SystemMessage, limits: &Limits) -> Result<SystemMessage, ChatError> {
    let target =
        match (system.channel.is_empty(), system.users.is_empty()) {
            (false, true) => SystemTarget::Channel(Channel::parse(&system.channel)?),
            (true, false) => {
                let users = user_set(system.users)?;
                check_user_count("system", users.len(), limits)?;
                SystemTarget::Users(users)
            }
            (false, false) => return Err(ChatError::bad_request(
                "a system message goes to a channel or to users, not both: set channel or users",
            )),
            (true, true) => {
                return Err(ChatError::bad_request(
                    "a system message needs a target: set channel or users",
                ))
            }
        };
    check_text(&system.text, limits.max_text_chars)?;
    check_client_msg_id(&system.client_msg_id, limits.max_client_msg_id_bytes)?;
    Ok(SystemMessage {
        target,
        client_msg_id: system.client_msg_id,
        text: system.text,
    })
}

/// `LIMIT_EXCEEDED` when a `kind` request names more than
/// `max_users_per_request` distinct users.
fn check_user_count(kind: &str, users: usize, limits: &Limits) -> Result<(), ChatError> {
    let max = limits.max_users_per_request;
    if users <= max {
        return Ok(());
    }
    Err(ChatError::limit_exceeded(format!(
        "{kind} names {users} users, at most {max} are allowed in one request"
    )))
}

/// Validates user ids (service accounts are not users) and returns them
/// sorted and unique.
fn user_set(users: Vec<String>) -> Result<Vec<String>, ChatError> {
    for user in &users {
        if ids::service_name(user).is_some() {
            return Err(ChatError::bad_request(format!(
                "invalid user id {user}: a service account is not a user"
            )));
        }
        ids::validate_id(IdKind::User, user)?;
    }
    let mut users = users;
    users.sort_unstable();
    users.dedup();
    Ok(users)
}

#[cfg(test)]
mod tests;

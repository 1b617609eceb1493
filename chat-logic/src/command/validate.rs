//! One check per request kind: its wire message -> the validated struct of
//! [`Command`](super::Command), every field checked against [`Limits`] and
//! normalised (page sizes, sorted and deduplicated user ids).

use parley_proto::v1::{self, ReceiptKind};

use super::{
    ChangeFriends, ChangeMembers, CreateGroup, LeaveGroup, MarkReceipt, PushTarget, QueryPresence,
    ReadHistory, RegisterPush, SendMessage, SyncInbox, SystemMessage, SystemTarget,
};
use crate::channel::Channel;
use crate::error::ChatError;
use crate::ids::{self, IdKind};
use crate::limits::{Limits, MAX_PUSH_PLATFORM_BYTES, MAX_PUSH_TOKEN_BYTES};

pub(super) fn send_message(
    send: v1::SendMessage,
    limits: &Limits,
) -> Result<SendMessage, ChatError> {
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

pub(super) fn sync_inbox(sync: v1::Sync, limits: &Limits) -> SyncInbox {
    SyncInbox {
        after_inbox_seq: sync.after_inbox_seq,
        limit: limits.sync_page(sync.limit),
    }
}

pub(super) fn read_history(
    history: v1::History,
    limits: &Limits,
) -> Result<ReadHistory, ChatError> {
    Ok(ReadHistory {
        channel: Channel::parse(&history.channel)?,
        before_seq: history.before_seq,
        limit: limits.history_page(history.limit),
    })
}

pub(super) fn create_group(
    create: v1::CreateGroup,
    limits: &Limits,
) -> Result<CreateGroup, ChatError> {
    ids::validate_id(IdKind::Group, &create.group_id)?;
    check_chars("group name", &create.name, limits.max_group_name_chars)?;
    Ok(CreateGroup {
        group_id: create.group_id,
        name: create.name,
        members: user_set(create.members)?,
    })
}

pub(super) fn change_members(change: v1::ChangeMembers) -> Result<ChangeMembers, ChatError> {
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

pub(super) fn leave_group(leave: v1::LeaveGroup) -> Result<LeaveGroup, ChatError> {
    ids::validate_id(IdKind::Group, &leave.group_id)?;
    Ok(LeaveGroup {
        group_id: leave.group_id,
    })
}

pub(super) fn mark_receipt(receipt: v1::MarkReceipt) -> Result<MarkReceipt, ChatError> {
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

pub(super) fn change_friends(
    change: v1::ChangeFriends,
    limits: &Limits,
) -> Result<ChangeFriends, ChatError> {
    let (add, remove) = additions_and_removals("change_friends", change.add, change.remove)?;
    check_user_count("change_friends", add.len() + remove.len(), limits)?;
    Ok(ChangeFriends { add, remove })
}

pub(super) fn query_presence(
    query: v1::QueryPresence,
    limits: &Limits,
) -> Result<QueryPresence, ChatError> {
    let users = user_set(query.users)?;
    if users.is_empty() {
        return Err(ChatError::bad_request(
            "query_presence needs at least one user",
        ));
    }
    check_user_count("query_presence", users.len(), limits)?;
    Ok(QueryPresence { users })
}

pub(super) fn register_push(push: v1::RegisterPush) -> Result<RegisterPush, ChatError> {
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

pub(super) fn system_message(
    system: v1::SystemMessage,
    limits: &Limits,
) -> Result<SystemMessage, ChatError> {
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

//! Group rules: create, change members, leave.
//!
//! The functions here decide; they never store. Each takes the group as it is
//! now (the engine reads it) and returns a [`GroupChange`]: the group after the
//! change, who must hear about it, and the event to append to their inboxes.
//!
//! Rules: the creator is the owner and always a member; any member may add
//! users; only the owner may remove others; anyone may remove themselves or
//! leave; members must be registered users; a group has at most
//! `max_group_members` members, creator included. When the owner leaves, the
//! smallest remaining member id becomes owner; when the last member leaves,
//! the group is deleted.

use parley_proto::v1;

use crate::channel::Channel;
use crate::command::{ChangeMembers, CreateGroup, LeaveGroup};
use crate::error::ChatError;
use crate::limits::Limits;

/// Who the registered users are (the accounts store, behind a narrow trait).
pub trait Directory {
    /// True when `id` is a registered user. Storage failures are `INTERNAL`.
    fn is_user(&self, id: &str) -> Result<bool, ChatError>;
}

/// Any `Fn(&str) -> Result<bool, ChatError>` is a directory.
impl<F> Directory for F
where
    F: Fn(&str) -> Result<bool, ChatError>,
{
    fn is_user(&self, id: &str) -> Result<bool, ChatError> {
        self(id)
    }
}

/// A group chat as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The group id; its channel is `g:{id}`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The one member who may remove others.
    pub owner: String,
    /// Member user ids, sorted and unique; always contains `owner`.
    pub members: Vec<String>,
}

impl Group {
    /// True when `user` is a member.
    pub fn is_member(&self, user: &str) -> bool {
        self.members
            .binary_search_by(|member| member.as_str().cmp(user))
            .is_ok()
    }

    /// The group's channel, `g:{id}`.
    pub fn channel(&self) -> Channel {
        Channel::Group(self.id.clone())
    }

    /// The inbox event announcing this membership, caused by `actor`.
    pub fn event(&self, actor: &str) -> v1::GroupEvent {
        v1::GroupEvent {
            group_id: self.id.clone(),
            name: self.name.clone(),
            members: self.members.clone(),
            actor: actor.to_owned(),
        }
    }
}

/// The outcome of a group rule, for the engine to store and deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupChange {
    /// The group after the change; `None` when it is now empty and deleted.
    pub after: Option<Group>,
    /// Members before and after the change (sorted, unique): each gets `event`.
    pub notify: Vec<String>,
    /// The `GroupEvent` to append to every inbox in `notify`; it lists the
    /// membership after the change (empty when deleted).
    pub event: v1::GroupEvent,
}

/// `BAD_REQUEST` "group exists" when a group with this id already exists.
pub fn ensure_new(group_id: &str, existing: Option<&Group>) -> Result<(), ChatError> {
    match existing {
        Some(_) => Err(ChatError::bad_request(format!("group {group_id} exists"))),
        None => Ok(()),
    }
}

/// The group the engine read for `group_id`, or `NOT_FOUND`.
pub fn require<'a>(group_id: &str, group: Option<&'a Group>) -> Result<&'a Group, ChatError> {
    match group {
        Some(group) if group.id == group_id => Ok(group),
        Some(group) => Err(ChatError::internal(format!(
            "asked for group {group_id}, was given group {}",
            group.id
        ))),
        None => Err(ChatError::not_found(format!("no group {group_id}"))),
    }
}

/// Creates the group `cmd.group_id` owned by `creator`. `existing` is what the
/// store holds under that id. Errors, in order: `BAD_REQUEST` "group exists",
/// `LIMIT_EXCEEDED`, `NOT_FOUND` (unknown users).
pub fn create(
    creator: &str,
    cmd: &CreateGroup,
    existing: Option<&Group>,
    directory: &dyn Directory,
    limits: &Limits,
) -> Result<GroupChange, ChatError> {
    ensure_new(&cmd.group_id, existing)?;
    let members = sorted_union(&cmd.members, &[creator.to_owned()]);
    check_size(members.len(), limits)?;
    let invited: Vec<String> = cmd
        .members
        .iter()
        .filter(|m| *m != creator)
        .cloned()
        .collect();
    check_registered(&invited, directory)?;
    let group = Group {
        id: cmd.group_id.clone(),
        name: cmd.name.clone(),
        owner: creator.to_owned(),
        members,
    };
    Ok(finish(&[], Some(group), &cmd.group_id, &cmd.name, creator))
}

/// Adds and removes members of `group` (the engine's read of `cmd.group_id`)
/// on behalf of `actor`. Adding a member or removing a non-member changes
/// nothing for that user. Errors, in order: `NOT_FOUND` (no group),
/// `NOT_MEMBER` (actor), `FORBIDDEN` (non-owner removing others),
/// `LIMIT_EXCEEDED`, `NOT_FOUND` (unknown users added).
pub fn change_members(
    group: Option<&Group>,
    actor: &str,
    cmd: &ChangeMembers,
    directory: &dyn Directory,
    limits: &Limits,
) -> Result<GroupChange, ChatError> {
    let group = require(&cmd.group_id, group)?;
    ensure_member(group, actor)?;
    if actor != group.owner && cmd.remove.iter().any(|user| user != actor) {
        return Err(ChatError::forbidden(format!(
            "only the owner of group {} may remove other members",
            group.id
        )));
    }
    let new_members: Vec<String> = cmd
        .add
        .iter()
        .filter(|u| !group.is_member(u))
        .cloned()
        .collect();
    let kept: Vec<String> = group
        .members
        .iter()
        .filter(|m| !cmd.remove.contains(m))
        .cloned()
        .collect();
    let members = sorted_union(&kept, &new_members);
    if !new_members.is_empty() {
        check_size(members.len(), limits)?;
    }
    check_registered(&new_members, directory)?;
    let after = rebuild(group, members);
    Ok(finish(&group.members, after, &group.id, &group.name, actor))
}

/// `actor` leaves `group` (the engine's read of `cmd.group_id`). Errors:
/// `NOT_FOUND` (no group), `NOT_MEMBER`.
pub fn leave(
    group: Option<&Group>,
    actor: &str,
    cmd: &LeaveGroup,
) -> Result<GroupChange, ChatError> {
    let group = require(&cmd.group_id, group)?;
    ensure_member(group, actor)?;
    let members: Vec<String> = group
        .members
        .iter()
        .filter(|m| *m != actor)
        .cloned()
        .collect();
    let after = rebuild(group, members);
    Ok(finish(&group.members, after, &group.id, &group.name, actor))
}

/// `NOT_MEMBER` unless `user` is a member of `group`.
pub fn ensure_member(group: &Group, user: &str) -> Result<(), ChatError> {
    if group.is_member(user) {
        return Ok(());
    }
    Err(ChatError::not_member(format!(
        "{user} is not a member of group {}",
        group.id
    )))
}

/// The group with `members` (sorted, unique) and a valid owner; `None` when
/// no member is left. A departed owner is replaced by the smallest member id.
fn rebuild(group: &Group, members: Vec<String>) -> Option<Group> {
    let first = members.first()?.clone();
    let owner = if members.contains(&group.owner) {
        group.owner.clone()
    } else {
        first
    };
    Some(Group {
        id: group.id.clone(),
        name: group.name.clone(),
        owner,
        members,
    })
}

fn finish(
    before: &[String],
    after: Option<Group>,
    id: &str,
    name: &str,
    actor: &str,
) -> GroupChange {
    let after_members = after.as_ref().map_or(&[][..], |g| g.members.as_slice());
    let notify = sorted_union(before, after_members);
    let event = v1::GroupEvent {
        group_id: id.to_owned(),
        name: name.to_owned(),
        members: after_members.to_vec(),
        actor: actor.to_owned(),
    };
    GroupChange {
        after,
        notify,
        event,
    }
}

fn sorted_union(a: &[String], b: &[String]) -> Vec<String> {
    let mut all: Vec<String> = a.iter().chain(b).cloned().collect();
    all.sort_unstable();
    all.dedup();
    all
}

fn check_size(members: usize, limits: &Limits) -> Result<(), ChatError> {
    if members <= limits.max_group_members {
        return Ok(());
    }
    Err(ChatError::limit_exceeded(format!(
        "a group has at most {} members, this one would have {members}",
        limits.max_group_members
    )))
}

/// `NOT_FOUND` naming (up to 10 of) the users the directory does not know.
fn check_registered(users: &[String], directory: &dyn Directory) -> Result<(), ChatError> {
    const SHOWN: usize = 10;
    let mut unknown = Vec::new();
    for user in users {
        if !directory.is_user(user)? {
            unknown.push(user.as_str());
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    let mut names = unknown
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if unknown.len() > SHOWN {
        names.push_str(&format!(" and {} more", unknown.len() - SHOWN));
    }
    Err(ChatError::not_found(format!("unknown users: {names}")))
}

#[cfg(test)]
mod tests;

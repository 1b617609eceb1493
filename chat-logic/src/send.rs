//! Who a message goes to, and who may read a channel.
//!
//! [`recipients`] is the fan-out plan of a `SendMessage`: every member of the
//! channel, sender included (so the sender's other devices see the message).
//! [`typing_recipients`] is the same rule for a typing notice, which goes to
//! the other members only; [`system_recipients`] is the plan of a service's
//! system message, which needs no membership. [`check_reader`] is the
//! membership rule for reads (`History`).

use crate::channel::Channel;
use crate::error::ChatError;
use crate::group::{self, Directory, Group};

/// The users whose inboxes get a message `sender` posts to `channel`, sorted
/// and unique, sender included. `group` is the engine's read of the group for
/// a `g:` channel (ignored otherwise).
///
/// Errors: `dm:` — `NOT_MEMBER` when the sender is not one of the two users,
/// `NOT_FOUND` when either user is not registered; `g:` — `NOT_FOUND` when
/// the group does not exist, `NOT_MEMBER` when the sender is not a member;
/// `sys:` — `FORBIDDEN` (only service accounts post there).
pub fn recipients(
    sender: &str,
    channel: &Channel,
    group: Option<&Group>,
    directory: &dyn Directory,
) -> Result<Vec<String>, ChatError> {
    match channel {
        Channel::Direct { low, high } => direct_recipients(sender, channel, low, high, directory),
        Channel::Group(group_id) => group_recipients(sender, group_id, group),
        Channel::System(_) => Err(ChatError::forbidden(
            "only service accounts may post to system channels",
        )),
    }
}

fn direct_recipients(
    sender: &str,
    channel: &Channel,
    low: &str,
    high: &str,
    directory: &dyn Directory,
) -> Result<Vec<String>, ChatError> {
    check_direct_member(sender, channel, low, high)?;
    for user in [sender, other_side(sender, low, high)] {
        check_registered(user, directory)?;
    }
    Ok(vec![low.to_owned(), high.to_owned()])
}

fn other_side<'a>(me: &str, low: &'a str, high: &'a str) -> &'a str {
    if me == low {
        high
    } else {
        low
    }
}

fn group_recipients(
    sender: &str,
    group_id: &str,
    group: Option<&Group>,
) -> Result<Vec<String>, ChatError> {
    let group = group::require(group_id, group)?;
    group::ensure_member(group, sender)?;
    Ok(group.members.clone())
}

/// The users who see that `user` is typing in `channel`: every member but
/// `user`, sorted and unique. Same errors as [`recipients`], except that a
/// `sys:` channel is `FORBIDDEN` for typing (nobody types there).
pub fn typing_recipients(
    user: &str,
    channel: &Channel,
    group: Option<&Group>,
    directory: &dyn Directory,
) -> Result<Vec<String>, ChatError> {
    if let Channel::System(_) = channel {
        return Err(ChatError::forbidden(format!(
            "nobody types in {channel}: system channels are written by services only"
        )));
    }
    let mut members = recipients(user, channel, group, directory)?;
    members.retain(|member| member != user);
    Ok(members)
}

/// The users whose inboxes get a system message a service posts to
/// `channel`, sorted and unique (a service is never a member).
///
/// Errors: `dm:` — `NOT_FOUND` when either user is not registered; `g:` —
/// `NOT_FOUND` when the group does not exist; `sys:{user}` — `NOT_FOUND`
/// when `user` is not registered.
pub fn system_recipients(
    channel: &Channel,
    group: Option<&Group>,
    directory: &dyn Directory,
) -> Result<Vec<String>, ChatError> {
    let users = match channel {
        Channel::Direct { low, high } => vec![low.clone(), high.clone()],
        Channel::Group(group_id) => return Ok(group::require(group_id, group)?.members.clone()),
        Channel::System(user) => vec![user.clone()],
    };
    for user in &users {
        check_registered(user, directory)?;
    }
    Ok(users)
}

fn check_registered(user: &str, directory: &dyn Directory) -> Result<(), ChatError> {
    if directory.is_user(user)? {
        return Ok(());
    }
    Err(ChatError::not_found(format!("unknown user {user}")))
}

/// `Ok` when `user` may read `channel` (`History`): one of the two users of a
/// `dm:`, a member of an existing group (`NOT_FOUND` / `NOT_MEMBER`), or the
/// owner of a `sys:` channel; otherwise `NOT_MEMBER`.
pub fn check_reader(user: &str, channel: &Channel, group: Option<&Group>) -> Result<(), ChatError> {
    match channel {
        Channel::Direct { low, high } => check_direct_member(user, channel, low, high),
        Channel::Group(group_id) => group::ensure_member(group::require(group_id, group)?, user),
        Channel::System(owner) if owner == user => Ok(()),
        Channel::System(_) => Err(ChatError::not_member(format!(
            "{channel} is the system channel of another user"
        ))),
    }
}

fn check_direct_member(
    user: &str,
    channel: &Channel,
    low: &str,
    high: &str,
) -> Result<(), ChatError> {
    if user == low || user == high {
        return Ok(());
    }
    Err(ChatError::not_member(format!(
        "{user} is not one of the two users of {channel}"
    )))
}

#[cfg(test)]
mod tests {
    use parley_proto::v1::ErrorCode;

    use super::*;

    fn directory(id: &str) -> Result<bool, ChatError> {
        Ok(!id.starts_with("ghost"))
    }

    fn channel(id: &str) -> Channel {
        Channel::parse(id).unwrap()
    }

    fn team() -> Group {
        Group {
            id: "team".into(),
            name: "Team".into(),
            owner: "bob".into(),
            members: vec!["alice".into(), "bob".into(), "carol".into()],
        }
    }

    #[test]
    fn direct_goes_to_both_users() {
        let dm = channel("dm:alice:bob");
        let expected = vec!["alice".to_owned(), "bob".to_owned()];
        assert_eq!(
            recipients("alice", &dm, None, &directory),
            Ok(expected.clone())
        );
        assert_eq!(recipients("bob", &dm, None, &directory), Ok(expected));
    }

    #[test]
    fn direct_needs_the_sender_to_be_one_side() {
        let error = recipients("carol", &channel("dm:alice:bob"), None, &directory).unwrap_err();
        assert_eq!(error.code, ErrorCode::NotMember);
        assert!(error.message.contains("dm:alice:bob"), "{error}");
    }

    #[test]
    fn direct_needs_both_users_registered() {
        let error = recipients("alice", &channel("dm:alice:ghost"), None, &directory).unwrap_err();
        assert_eq!(error.code, ErrorCode::NotFound);
        assert!(error.message.contains("unknown user ghost"), "{error}");
        let error = recipients("ghost", &channel("dm:alice:ghost"), None, &directory).unwrap_err();
        assert_eq!(error.code, ErrorCode::NotFound);
    }

    #[test]
    fn non_member_is_refused_before_the_directory_is_asked() {
        let never = |_: &str| -> Result<bool, ChatError> { panic!("directory consulted") };
        let error = recipients("carol", &channel("dm:alice:ghost"), None, &never).unwrap_err();
        assert_eq!(error.code, ErrorCode::NotMember);
    }

    #[test]
    fn directory_failure_is_passed_on() {
        let broken = |_: &str| Err(ChatError::internal("io"));
        let error = recipients("alice", &channel("dm:alice:bob"), None, &broken).unwrap_err();
        assert_eq!(error.code, ErrorCode::Internal);
    }

    #[test]
    fn group_goes_to_every_member() {
        let g = team();
        let got = recipients("carol", &channel("g:team"), Some(&g), &directory);
        assert_eq!(got, Ok(g.members.clone()));
    }

    #[test]
    fn group_errors() {
        let g = team();
        let missing = recipients("alice", &channel("g:team"), None, &directory).unwrap_err();
        assert_eq!(missing.code, ErrorCode::NotFound);
        let outsider = recipients("dave", &channel("g:team"), Some(&g), &directory).unwrap_err();
        assert_eq!(outsider.code, ErrorCode::NotMember);
        let wrong = recipients("alice", &channel("g:other"), Some(&g), &directory).unwrap_err();
        assert_eq!(wrong.code, ErrorCode::Internal);
    }

    #[test]
    fn users_may_not_post_to_system_channels() {
        for id in ["sys:alice", "sys:bob"] {
            let error = recipients("alice", &channel(id), None, &directory).unwrap_err();
            assert_eq!(error.code, ErrorCode::Forbidden);
        }
    }

    #[test]
    fn typing_goes_to_the_other_members() {
        let g = team();
        assert_eq!(
            typing_recipients("carol", &channel("g:team"), Some(&g), &directory),
            Ok(vec!["alice".to_owned(), "bob".to_owned()])
        );
        assert_eq!(
            typing_recipients("alice", &channel("dm:alice:bob"), None, &directory),
            Ok(vec!["bob".to_owned()])
        );
        assert_eq!(
            typing_recipients("bob", &channel("dm:alice:bob"), None, &directory),
            Ok(vec!["alice".to_owned()])
        );
        let alone = Group {
            members: vec!["bob".into()],
            ..team()
        };
        assert_eq!(
            typing_recipients("bob", &channel("g:team"), Some(&alone), &directory),
            Ok(vec![])
        );
    }

    #[test]
    fn typing_errors_follow_send() {
        let g = team();
        let code = |r: Result<Vec<String>, ChatError>| r.unwrap_err().code;
        assert_eq!(
            code(typing_recipients(
                "carol",
                &channel("dm:alice:bob"),
                None,
                &directory
            )),
            ErrorCode::NotMember
        );
        assert_eq!(
            code(typing_recipients(
                "alice",
                &channel("dm:alice:ghost"),
                None,
                &directory
            )),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(typing_recipients(
                "dave",
                &channel("g:team"),
                Some(&g),
                &directory
            )),
            ErrorCode::NotMember
        );
        assert_eq!(
            code(typing_recipients(
                "alice",
                &channel("g:team"),
                None,
                &directory
            )),
            ErrorCode::NotFound
        );
        for id in ["sys:alice", "sys:bob"] {
            let error = typing_recipients("alice", &channel(id), None, &directory).unwrap_err();
            assert_eq!(error.code, ErrorCode::Forbidden);
            assert!(error.message.contains("nobody types"), "{error}");
        }
    }

    #[test]
    fn system_messages_reach_every_member() {
        let g = team();
        assert_eq!(
            system_recipients(&channel("dm:alice:bob"), None, &directory),
            Ok(vec!["alice".to_owned(), "bob".to_owned()])
        );
        assert_eq!(
            system_recipients(&channel("g:team"), Some(&g), &directory),
            Ok(g.members.clone())
        );
        assert_eq!(
            system_recipients(&channel("sys:alice"), None, &directory),
            Ok(vec!["alice".to_owned()])
        );
    }

    #[test]
    fn system_message_errors() {
        let g = team();
        let code = |r: Result<Vec<String>, ChatError>| r.unwrap_err().code;
        for id in ["dm:alice:ghost", "dm:ghost:zed", "sys:ghost"] {
            let error = system_recipients(&channel(id), None, &directory).unwrap_err();
            assert_eq!(error.code, ErrorCode::NotFound, "{id}");
            assert!(error.message.contains("unknown user ghost"), "{error}");
        }
        assert_eq!(
            code(system_recipients(&channel("g:team"), None, &directory)),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(system_recipients(&channel("g:other"), Some(&g), &directory)),
            ErrorCode::Internal
        );
        let broken = |_: &str| Err(ChatError::internal("io"));
        assert_eq!(
            code(system_recipients(&channel("sys:alice"), None, &broken)),
            ErrorCode::Internal
        );
        // A group's members are not looked up again.
        let never = |_: &str| -> Result<bool, ChatError> { panic!("directory consulted") };
        assert!(system_recipients(&channel("g:team"), Some(&g), &never).is_ok());
    }

    #[test]
    fn readers() {
        let g = team();
        assert_eq!(
            check_reader("alice", &channel("dm:alice:bob"), None),
            Ok(())
        );
        assert_eq!(check_reader("bob", &channel("dm:alice:bob"), None), Ok(()));
        assert_eq!(check_reader("alice", &channel("g:team"), Some(&g)), Ok(()));
        assert_eq!(check_reader("alice", &channel("sys:alice"), None), Ok(()));
        let code = |r: Result<(), ChatError>| r.unwrap_err().code;
        assert_eq!(
            code(check_reader("carol", &channel("dm:alice:bob"), None)),
            ErrorCode::NotMember
        );
        assert_eq!(
            code(check_reader("dave", &channel("g:team"), Some(&g))),
            ErrorCode::NotMember
        );
        assert_eq!(
            code(check_reader("alice", &channel("g:team"), None)),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(check_reader("bob", &channel("sys:alice"), None)),
            ErrorCode::NotMember
        );
    }
}

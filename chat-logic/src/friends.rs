//! Friendship as a pure state machine: mutual, by request and acceptance.
//!
//! Each side of a pair stores its own link about the other, and the two
//! always mirror each other: `RequestSent` on the asking side with
//! `RequestReceived` on the asked side, or `Friends` on both. No link means
//! no relation (`FriendState::Removed` is an event, never stored).
//!
//! Rules (the contract's Friends bullet): `add` of a user who has not asked
//! you is a request (`REQUEST_SENT` in your inbox, `REQUEST_RECEIVED` in
//! theirs); `add` of a user who asked you makes you friends (`FRIENDS` in
//! both); `remove` ends a friendship or a request, either way (`REMOVED` in
//! both). Repeating an `add` or removing a stranger changes nothing and sends
//! nothing.
//!
//! The functions decide; they never store. The engine reads `me`'s link
//! about `other`, checks that `other` is a registered user (`NOT_FOUND`),
//! and stores and delivers the [`FriendChange`].

use parley_proto::v1::{FriendEvent, FriendState};

use crate::error::ChatError;
use crate::limits::Limits;

/// The outcome of a friend rule, for the engine to store and deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FriendChange {
    /// `me`'s link about `other` to store afterwards; `None`: delete it.
    pub mine: Option<FriendState>,
    /// `other`'s link about `me` to store afterwards; `None`: delete it.
    pub theirs: Option<FriendState>,
    /// For `me`'s inbox: the event about `other`.
    pub to_me: FriendEvent,
    /// For `other`'s inbox: the event about `me`.
    pub to_them: FriendEvent,
    /// True when the two have just become friends (publish both presence
    /// pair topics).
    pub became_friends: bool,
    /// True when a friendship (not a mere request) has just ended (clear the
    /// retained presence pair topics).
    pub unfriended: bool,
}

/// `me` adds `other`. `mine_now` is `me`'s stored link about `other`;
/// `my_link_count` is how many links `me` has now (friends and pending
/// requests, both ways).
///
/// - no link: a request — `RequestSent` for me, `RequestReceived` for them;
///   `LIMIT_EXCEEDED` when `my_link_count >= limits.max_friends`;
/// - they asked me (`RequestReceived`): friends on both sides, `became_friends`;
/// - I asked already (`RequestSent`) or we are friends: `Ok(None)`, nothing
///   changes and nothing is sent.
///
/// `BAD_REQUEST` when `me == other`.
pub fn add(
    me: &str,
    other: &str,
    mine_now: Option<FriendState>,
    my_link_count: usize,
    limits: &Limits,
) -> Result<Option<FriendChange>, ChatError> {
    if me == other {
        return Err(ChatError::bad_request(
            "you cannot add yourself as a friend",
        ));
    }
    match stored(mine_now) {
        None => {
            if my_link_count >= limits.max_friends {
                return Err(ChatError::limit_exceeded(format!(
                    "{me} has {my_link_count} friends and friend requests, at most {} are allowed",
                    limits.max_friends
                )));
            }
            Ok(Some(change(
                me,
                other,
                FriendState::RequestSent,
                FriendState::RequestReceived,
            )))
        }
        Some(FriendState::RequestReceived) => Ok(Some(FriendChange {
            became_friends: true,
            ..change(me, other, FriendState::Friends, FriendState::Friends)
        })),
        Some(_) => Ok(None),
    }
}

/// `me` removes `other`: a friendship, my request or their request all end
/// the same way — both links deleted, `REMOVED` to both inboxes, `unfriended`
/// when they were friends. `None` when there is no link (nothing is sent).
pub fn remove(me: &str, other: &str, mine_now: Option<FriendState>) -> Option<FriendChange> {
    let now = stored(mine_now)?;
    let mut change = change(me, other, FriendState::Removed, FriendState::Removed);
    change.mine = None;
    change.theirs = None;
    change.unfriended = now == FriendState::Friends;
    Some(change)
}

/// A stored link; `Unspecified` and `Removed` are never stored and count as
/// no link.
fn stored(link: Option<FriendState>) -> Option<FriendState> {
    link.filter(|state| !matches!(state, FriendState::Unspecified | FriendState::Removed))
}

/// Both links set to the states of the events, no flags.
fn change(me: &str, other: &str, mine: FriendState, theirs: FriendState) -> FriendChange {
    FriendChange {
        mine: Some(mine),
        theirs: Some(theirs),
        to_me: event(other, mine),
        to_them: event(me, theirs),
        became_friends: false,
        unfriended: false,
    }
}

fn event(user: &str, state: FriendState) -> FriendEvent {
    FriendEvent {
        user: user.to_owned(),
        state: state as i32,
    }
}

#[cfg(test)]
mod tests {
    use parley_proto::v1::ErrorCode;

    use super::*;

    fn ev(user: &str, state: FriendState) -> FriendEvent {
        event(user, state)
    }

    fn add_now(mine_now: Option<FriendState>) -> Result<Option<FriendChange>, ChatError> {
        add("alice", "bob", mine_now, 0, &Limits::default())
    }

    #[test]
    fn adding_a_stranger_is_a_request() {
        let change = add_now(None).unwrap().unwrap();
        assert_eq!(
            change,
            FriendChange {
                mine: Some(FriendState::RequestSent),
                theirs: Some(FriendState::RequestReceived),
                to_me: ev("bob", FriendState::RequestSent),
                to_them: ev("alice", FriendState::RequestReceived),
                became_friends: false,
                unfriended: false,
            }
        );
    }

    #[test]
    fn adding_who_asked_me_makes_friends() {
        let change = add_now(Some(FriendState::RequestReceived))
            .unwrap()
            .unwrap();
        assert_eq!(
            change,
            FriendChange {
                mine: Some(FriendState::Friends),
                theirs: Some(FriendState::Friends),
                to_me: ev("bob", FriendState::Friends),
                to_them: ev("alice", FriendState::Friends),
                became_friends: true,
                unfriended: false,
            }
        );
    }

    #[test]
    fn repeated_adds_change_nothing() {
        assert_eq!(add_now(Some(FriendState::RequestSent)), Ok(None));
        assert_eq!(add_now(Some(FriendState::Friends)), Ok(None));
    }

    #[test]
    fn states_that_are_never_stored_count_as_no_link() {
        for state in [FriendState::Unspecified, FriendState::Removed] {
            let change = add_now(Some(state)).unwrap().unwrap();
            assert_eq!(change.mine, Some(FriendState::RequestSent));
            assert_eq!(remove("alice", "bob", Some(state)), None);
        }
    }

    #[test]
    fn adding_oneself_is_a_bad_request() {
        for now in [None, Some(FriendState::Friends)] {
            let error = add("alice", "alice", now, 0, &Limits::default()).unwrap_err();
            assert_eq!(error.code, ErrorCode::BadRequest);
            assert!(error.message.contains("yourself"), "{error}");
        }
    }

    #[test]
    fn new_requests_respect_max_friends() {
        let limits = Limits {
            max_friends: 2,
            ..Limits::default()
        };
        assert!(add("alice", "bob", None, 1, &limits).unwrap().is_some());
        let error = add("alice", "bob", None, 2, &limits).unwrap_err();
        assert_eq!(error.code, ErrorCode::LimitExceeded);
        assert!(error.message.contains("at most 2"), "{error}");
        assert_eq!(
            add("alice", "bob", None, 3, &limits).unwrap_err().code,
            ErrorCode::LimitExceeded
        );
        // Accepting turns an existing link into a friendship: no new link.
        let accepted = add(
            "alice",
            "bob",
            Some(FriendState::RequestReceived),
            2,
            &limits,
        );
        assert!(accepted.unwrap().unwrap().became_friends);
        assert_eq!(
            add("alice", "bob", Some(FriendState::Friends), 5, &limits),
            Ok(None)
        );
    }

    #[test]
    fn removing_a_friend_unfriends_both() {
        let change = remove("alice", "bob", Some(FriendState::Friends)).unwrap();
        assert_eq!(
            change,
            FriendChange {
                mine: None,
                theirs: None,
                to_me: ev("bob", FriendState::Removed),
                to_them: ev("alice", FriendState::Removed),
                became_friends: false,
                unfriended: true,
            }
        );
    }

    #[test]
    fn removing_a_request_ends_it_either_way() {
        for state in [FriendState::RequestSent, FriendState::RequestReceived] {
            let change = remove("alice", "bob", Some(state)).unwrap();
            assert_eq!((change.mine, change.theirs), (None, None), "{state:?}");
            assert_eq!(change.to_me, ev("bob", FriendState::Removed));
            assert_eq!(change.to_them, ev("alice", FriendState::Removed));
            assert!(!change.unfriended && !change.became_friends, "{state:?}");
        }
    }

    #[test]
    fn removing_a_stranger_changes_nothing() {
        assert_eq!(remove("alice", "bob", None), None);
    }

    #[test]
    fn a_full_round_keeps_both_sides_mirrored() {
        // alice asks bob; bob accepts; bob unfriends alice.
        let asked = add_now(None).unwrap().unwrap();
        let accepted = add("bob", "alice", asked.theirs, 0, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            (accepted.mine, accepted.theirs),
            (Some(FriendState::Friends), Some(FriendState::Friends))
        );
        let ended = remove("bob", "alice", accepted.mine).unwrap();
        assert!(ended.unfriended);
        // Afterwards alice may ask again.
        assert!(add_now(ended.theirs).unwrap().is_some());
    }
}

//! Channel ids: `dm:{low}:{high}` (direct chat), `g:{group_id}` (group chat)
//! and `sys:{user_id}` (a user's system channel).
//!
//! A direct channel has exactly one spelling: the two users in byte-wise
//! order, so both sides always name the same channel and the same `seq`.

use std::fmt;
use std::str::FromStr;

use crate::error::ChatError;
use crate::ids::{self, IdKind};

const DIRECT_PREFIX: &str = "dm:";
const GROUP_PREFIX: &str = "g:";
const SYSTEM_PREFIX: &str = "sys:";

/// A parsed, valid channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// Direct chat between two different users; `low < high` byte-wise.
    Direct {
        /// The smaller user id.
        low: String,
        /// The larger user id.
        high: String,
    },
    /// Group chat `g:{group_id}`.
    Group(String),
    /// The system channel `sys:{user_id}` of one user.
    System(String),
}

impl Channel {
    /// Parses a channel id; `BAD_REQUEST` for anything that is not one of the
    /// three forms with valid ids (and, for `dm:`, canonical order).
    pub fn parse(s: &str) -> Result<Channel, ChatError> {
        if let Some(rest) = s.strip_prefix(DIRECT_PREFIX) {
            return parse_direct(rest);
        }
        if let Some(group_id) = s.strip_prefix(GROUP_PREFIX) {
            ids::validate_id(IdKind::Group, group_id)?;
            return Ok(Channel::Group(group_id.to_owned()));
        }
        if let Some(user) = s.strip_prefix(SYSTEM_PREFIX) {
            ids::validate_id(IdKind::User, user)?;
            return Ok(Channel::System(user.to_owned()));
        }
        Err(ChatError::bad_request(format!(
            "unknown channel form {}: expected dm:{{a}}:{{b}}, g:{{group_id}} or sys:{{user_id}}",
            ids::quote(s)
        )))
    }

    /// The direct channel between `a` and `b`, in either order.
    /// `BAD_REQUEST` when an id is invalid or `a == b`.
    pub fn direct(a: &str, b: &str) -> Result<Channel, ChatError> {
        ids::validate_id(IdKind::User, a)?;
        ids::validate_id(IdKind::User, b)?;
        if a == b {
            return Err(self_chat_error());
        }
        let (low, high) = if a < b { (a, b) } else { (b, a) };
        Ok(Channel::Direct {
            low: low.to_owned(),
            high: high.to_owned(),
        })
    }

    /// The group channel `g:{group_id}`; `BAD_REQUEST` for an invalid id.
    pub fn group(group_id: &str) -> Result<Channel, ChatError> {
        ids::validate_id(IdKind::Group, group_id)?;
        Ok(Channel::Group(group_id.to_owned()))
    }

    /// The system channel `sys:{user}`; `BAD_REQUEST` for an invalid id.
    pub fn system(user: &str) -> Result<Channel, ChatError> {
        ids::validate_id(IdKind::User, user)?;
        Ok(Channel::System(user.to_owned()))
    }

    /// The group id of a group channel.
    pub fn group_id(&self) -> Option<&str> {
        match self {
            Channel::Group(id) => Some(id),
            _ => None,
        }
    }

    /// The canonical channel id (same as `to_string()`).
    pub fn id(&self) -> String {
        self.to_string()
    }
}

fn parse_direct(rest: &str) -> Result<Channel, ChatError> {
    let Some((low, high)) = rest.split_once(':') else {
        return Err(ChatError::bad_request(format!(
            "direct channel must be dm:{{a}}:{{b}}, got dm:{}",
            ids::quote(rest)
        )));
    };
    ids::validate_id(IdKind::User, low)?;
    ids::validate_id(IdKind::User, high)?;
    if low == high {
        return Err(self_chat_error());
    }
    if low > high {
        return Err(ChatError::bad_request(format!(
            "direct channel is not canonical: write dm:{high}:{low} (user ids in byte-wise order)"
        )));
    }
    Ok(Channel::Direct {
        low: low.to_owned(),
        high: high.to_owned(),
    })
}

fn self_chat_error() -> ChatError {
    ChatError::bad_request("a direct channel needs two different users")
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Channel::Direct { low, high } => write!(f, "{DIRECT_PREFIX}{low}:{high}"),
            Channel::Group(id) => write!(f, "{GROUP_PREFIX}{id}"),
            Channel::System(user) => write!(f, "{SYSTEM_PREFIX}{user}"),
        }
    }
}

impl FromStr for Channel {
    type Err = ChatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_proto::v1::ErrorCode;

    fn bad(s: &str) -> String {
        let error = Channel::parse(s).unwrap_err();
        assert_eq!(error.code, ErrorCode::BadRequest, "{s:?}");
        error.message
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            Channel::parse("dm:alice:bob"),
            Ok(Channel::Direct {
                low: "alice".into(),
                high: "bob".into()
            })
        );
        assert_eq!(
            Channel::parse("g:team-1"),
            Ok(Channel::Group("team-1".into()))
        );
        assert_eq!(
            Channel::parse("sys:alice"),
            Ok(Channel::System("alice".into()))
        );
    }

    #[test]
    fn display_round_trips() {
        for id in ["dm:Bob:alice", "dm:a:b", "g:x", "sys:y_z"] {
            let channel: Channel = id.parse().unwrap();
            assert_eq!(channel.to_string(), id);
            assert_eq!(channel.id(), id);
        }
    }

    #[test]
    fn direct_order_is_byte_wise() {
        // 'B' (0x42) < 'a' (0x61): upper case sorts first.
        assert!(Channel::parse("dm:Bob:alice").is_ok());
        let message = bad("dm:alice:Bob");
        assert!(message.contains("dm:Bob:alice"), "{message}");
        assert!(message.contains("not canonical"), "{message}");
        // A prefix sorts before its extensions.
        assert!(Channel::parse("dm:a:a1").is_ok());
        assert!(bad("dm:a1:a").contains("not canonical"));
        // '-' (0x2d) < '0' (0x30) < '_' (0x5f).
        assert!(Channel::parse("dm:-:0").is_ok());
        assert!(Channel::parse("dm:0:_").is_ok());
        assert!(bad("dm:_:0").contains("not canonical"));
    }

    #[test]
    fn direct_with_oneself_is_refused() {
        assert!(bad("dm:alice:alice").contains("two different users"));
    }

    #[test]
    fn malformed_direct_channels() {
        for s in [
            "dm:",
            "dm:alice",
            "dm:alice:",
            "dm::bob",
            "dm:a:b:c",
            "dm:a b:c",
            "dm:a:b/c",
        ] {
            bad(s);
        }
        assert!(bad("dm:alice").contains("dm:{a}:{b}"));
        assert!(bad("dm:a:b:c").contains("user id"));
    }

    #[test]
    fn id_length_edges_in_channels() {
        let max = "a".repeat(64);
        let long = "a".repeat(65);
        assert!(Channel::parse(&format!("g:{max}")).is_ok());
        assert!(bad(&format!("g:{long}")).contains("group id"));
        assert!(Channel::parse(&format!("sys:{max}")).is_ok());
        assert!(bad(&format!("sys:{long}")).contains("user id"));
        assert!(Channel::parse(&format!("dm:{max}:z")).is_ok());
        bad(&format!("dm:{long}:z"));
    }

    #[test]
    fn unknown_forms() {
        for s in [
            "",
            "dm",
            "g",
            "sys",
            "x:alice",
            "DM:a:b",
            "G:x",
            " g:x",
            "group:x",
            "inbox/alice",
        ] {
            assert!(bad(s).contains("unknown channel form"), "{s:?}");
        }
        bad("g:");
        bad("g:a:b");
        bad("sys:");
        bad("sys:a b");
    }

    #[test]
    fn direct_constructor_orders_and_validates() {
        let expected = Channel::parse("dm:alice:bob").unwrap();
        assert_eq!(Channel::direct("bob", "alice"), Ok(expected.clone()));
        assert_eq!(Channel::direct("alice", "bob"), Ok(expected));
        assert_eq!(
            Channel::direct("alice", "alice").unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert!(Channel::direct("alice", "b:c").is_err());
        assert!(Channel::direct("", "bob").is_err());
    }

    #[test]
    fn group_and_system_constructors() {
        assert_eq!(Channel::group("g1"), Ok(Channel::Group("g1".into())));
        assert!(Channel::group("g 1").is_err());
        assert_eq!(Channel::system("al"), Ok(Channel::System("al".into())));
        assert!(Channel::system("").is_err());
    }

    #[test]
    fn group_id_only_for_groups() {
        assert_eq!(Channel::Group("g1".into()).group_id(), Some("g1"));
        assert_eq!(Channel::System("u".into()).group_id(), None);
        assert_eq!(Channel::direct("a", "b").unwrap().group_id(), None);
    }
}

//! Identities: user, device and group ids, and the MQTT client identifier.
//!
//! An id is 1 to [`MAX_ID_LEN`] characters of `[A-Za-z0-9_-]`. The alphabet
//! never contains `/`, `+`, `#`, `:` or `$`, so an id can be put into a topic
//! or a channel id without escaping.

use std::fmt;

use crate::error::ChatError;

/// The longest id, in characters (all id characters are ASCII, so also bytes).
pub const MAX_ID_LEN: usize = 64;

/// Prefix of a service account's username: `svc:{name}`.
pub const SERVICE_PREFIX: &str = "svc:";

/// What an id names; used in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// A user account (`user_id`).
    User,
    /// One device of a user (`device_id`).
    Device,
    /// A group chat (`group_id`).
    Group,
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            IdKind::User => "user id",
            IdKind::Device => "device id",
            IdKind::Group => "group id",
        };
        f.write_str(name)
    }
}

/// True when `s` is 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN && s.bytes().all(is_id_byte)
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Checks an id; `BAD_REQUEST` naming the kind of id when it is invalid.
pub fn validate_id(kind: IdKind, s: &str) -> Result<(), ChatError> {
    if is_valid_id(s) {
        return Ok(());
    }
    Err(ChatError::bad_request(format!(
        "invalid {kind} {}: must be 1 to {MAX_ID_LEN} characters of [A-Za-z0-9_-]",
        quote(s)
    )))
}

/// `s` quoted for an error message, cut to a readable length.
pub(crate) fn quote(s: &str) -> String {
    const SHOWN: usize = 80;
    match s.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}...", &s[..cut]),
        None => format!("{s:?}"),
    }
}

/// The name of a service account when `username` is `svc:{name}` with a valid
/// id as name; `None` for anything else (including every user account).
pub fn service_name(username: &str) -> Option<&str> {
    let name = username.strip_prefix(SERVICE_PREFIX)?;
    is_valid_id(name).then_some(name)
}

/// The kind of an account, read off its id: `svc:{name}` is a service, a
/// plain id a user. (User ids never hold `:`, so the two cannot be confused.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountKind {
    /// A person: `user_id`.
    User,
    /// A backend service: `svc:{name}`.
    Service,
}

impl AccountKind {
    /// The kind of `account` when it is a valid account id, else `None`.
    pub fn of(account: &str) -> Option<AccountKind> {
        if is_valid_id(account) {
            Some(AccountKind::User)
        } else if service_name(account).is_some() {
            Some(AccountKind::Service)
        } else {
            None
        }
    }
}

/// True for a valid account id: a user id or `svc:{name}`. This is the user
/// part of a service's topics (`req/svc:{name}/{device}`).
pub fn is_valid_account_id(s: &str) -> bool {
    AccountKind::of(s).is_some()
}

/// The service account id of `name`: `svc:{name}`.
pub fn service_account(name: &str) -> String {
    format!("{SERVICE_PREFIX}{name}")
}

/// The MQTT client identifier of an account's device: `{user_id}:{device_id}`,
/// or `svc:{name}:{device_id}` for a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId {
    /// The account (user id or `svc:{name}`), equal to the CONNECT username.
    pub user: String,
    /// The device of that account.
    pub device: String,
}

impl ClientId {
    /// Parses a CONNECT client identifier. It must be exactly
    /// `{username}:{device}` where the username is a valid account id and
    /// the device a valid id; anything else (another user's prefix, a
    /// missing or invalid device, an invalid username) gives `None`, which
    /// the broker answers "not authorized".
    pub fn parse(client_id: &str, username: &str) -> Option<ClientId> {
        if !is_valid_account_id(username) {
            return None;
        }
        let device = client_id.strip_prefix(username)?.strip_prefix(':')?;
        if !is_valid_id(device) {
            return None;
        }
        Some(ClientId {
            user: username.to_owned(),
            device: device.to_owned(),
        })
    }
}

impl ClientId {
    /// Whether this is a user's or a service's device.
    pub fn kind(&self) -> AccountKind {
        AccountKind::of(&self.user).unwrap_or(AccountKind::User)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.user, self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_proto::v1::ErrorCode;

    #[test]
    fn accepts_every_allowed_character() {
        assert!(is_valid_id("a"));
        assert!(is_valid_id("Alice_Bob-42"));
        assert!(is_valid_id("-"));
        assert!(is_valid_id("_"));
        assert!(is_valid_id(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
        ));
    }

    #[test]
    fn length_edges() {
        assert!(!is_valid_id(""));
        assert!(is_valid_id("a"));
        assert!(is_valid_id(&"a".repeat(63)));
        assert!(is_valid_id(&"a".repeat(64)));
        assert!(!is_valid_id(&"a".repeat(65)));
    }

    #[test]
    fn refuses_other_characters() {
        for bad in [
            "a b", "a/b", "a:b", "a+b", "a#b", "$sys", "a.b", "é", "a\0", "日本", "a\n", "ab@c",
        ] {
            assert!(!is_valid_id(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn validate_id_names_the_kind() {
        assert_eq!(validate_id(IdKind::Group, "g1"), Ok(()));
        let error = validate_id(IdKind::Device, "a/b").unwrap_err();
        assert_eq!(error.code, ErrorCode::BadRequest);
        assert!(error.message.contains("device id"), "{}", error.message);
        assert!(error.message.contains("\"a/b\""), "{}", error.message);
        let error = validate_id(IdKind::User, &"x".repeat(65)).unwrap_err();
        assert!(error.message.contains("user id"), "{}", error.message);
    }

    #[test]
    fn error_message_shortens_huge_ids() {
        let error = validate_id(IdKind::User, &"é".repeat(10_000)).unwrap_err();
        assert!(error.message.len() < 400, "{}", error.message);
    }

    #[test]
    fn client_id_is_username_colon_device() {
        let id = ClientId::parse("alice:phone", "alice");
        assert_eq!(
            id,
            Some(ClientId {
                user: "alice".into(),
                device: "phone".into()
            })
        );
        assert_eq!(id.map(|id| id.to_string()).as_deref(), Some("alice:phone"));
    }

    #[test]
    fn client_id_refusals() {
        let refused = [
            ("bob:phone", "alice"),
            ("alice", "alice"),
            ("alice:", "alice"),
            ("alice:phone:2", "alice"),
            ("alice:ph/one", "alice"),
            ("alicex:phone", "alice"),
            ("alice-phone", "alice"),
            (":phone", ""),
            ("a/b:phone", "a/b"),
            ("svc:bot:dev", "svc:other"),
            ("svc::dev", "svc:"),
            ("svc:bot", "svc:bot"),
            ("svc:bot:a:b", "svc:bot"),
            ("", "alice"),
        ];
        for (client_id, username) in refused {
            assert_eq!(
                ClientId::parse(client_id, username),
                None,
                "{client_id:?} with username {username:?}"
            );
        }
    }

    #[test]
    fn client_id_length_edges() {
        let user = "u".repeat(64);
        let device = "d".repeat(64);
        assert!(ClientId::parse(&format!("{user}:{device}"), &user).is_some());
        let long_device = "d".repeat(65);
        assert!(ClientId::parse(&format!("{user}:{long_device}"), &user).is_none());
        let long_user = "u".repeat(65);
        assert!(ClientId::parse(&format!("{long_user}:{device}"), &long_user).is_none());
    }

    #[test]
    fn service_client_ids_parse_with_their_kind() {
        let id = ClientId::parse("svc:billing:worker-1", "svc:billing").unwrap();
        assert_eq!(
            (id.user.as_str(), id.device.as_str()),
            ("svc:billing", "worker-1")
        );
        assert_eq!(id.kind(), AccountKind::Service);
        let user = ClientId::parse("alice:phone", "alice").unwrap();
        assert_eq!(user.kind(), AccountKind::User);
    }

    #[test]
    fn account_kinds() {
        assert_eq!(AccountKind::of("alice"), Some(AccountKind::User));
        assert_eq!(AccountKind::of("svc:bot"), Some(AccountKind::Service));
        for bad in ["", "svc:", "svc:a:b", "svc:a/b", "a:b", "SVC:x"] {
            assert_eq!(AccountKind::of(bad), None, "{bad:?}");
        }
        assert_eq!(service_account("bot"), "svc:bot");
    }

    #[test]
    fn service_names() {
        assert_eq!(service_name("svc:billing"), Some("billing"));
        assert_eq!(service_name("svc:"), None);
        assert_eq!(service_name("svc:a:b"), None);
        assert_eq!(service_name("billing"), None);
        assert_eq!(service_name("SVC:billing"), None);
    }
}

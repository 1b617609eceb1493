//! The typed records this crate stores and how their values are encoded.
//!
//! Small, rarely written records (users, groups, sessions) are JSON, easy to
//! inspect and to extend with defaulted fields. The chat log is protobuf:
//! messages are `ChatMessage` bytes and inbox entries are [`InboxEntry`] in
//! a one-byte-tagged format.

use parley_chat_logic::group::Group;
use parley_proto::v1::{envelope, ChatMessage, Envelope};
use prost::Message as _;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::StorageError;
use crate::keys::{decode_seq, encode_seq, SEQ_LEN};

/// What kind of account a user id belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// A person using the chat apps.
    User,
    /// A backend service (`svc:{name}`), allowed to send system messages.
    Service,
}

/// One account, keyed by its user id in `users`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Password (or service secret) hash, in PHC string format.
    pub password_hash: String,
    /// User or service account.
    pub kind: AccountKind,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: i64,
}

/// The stored form of a [`Group`], keyed by its id in `groups`: JSON with
/// the field names below, in this order. serde's remote derive keeps one
/// definition of the struct (the chat rules'), and fails to compile if
/// this mirror misses one of its fields.
#[derive(Serialize, Deserialize)]
#[serde(remote = "Group")]
struct StoredGroup {
    id: String,
    name: String,
    owner: String,
    members: Vec<String>,
}

/// One device's durable MQTT session, keyed by `user 0x00 device`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Subscribed topic filters with their granted QoS.
    pub subscriptions: Vec<(String, u8)>,
    /// The highest `inbox_seq` the device acknowledged.
    pub acked_inbox_seq: u64,
    /// Session expiry interval in seconds; [`SessionRecord::NEVER_EXPIRES`] = never.
    pub expiry_secs: u32,
    /// When the device last disconnected (ms since the epoch), 0 while connected.
    pub disconnected_ms: i64,
}

impl SessionRecord {
    /// `expiry_secs` of a session that never expires (MQTT 3.1.1 clean session off).
    pub const NEVER_EXPIRES: u32 = u32::MAX;
}

/// One session token, keyed by the SHA-256 digest of the token in `tokens`
/// (the token itself is never stored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The account the token logs in.
    pub user: String,
    /// The device it was issued to: valid only for client id
    /// `{user}:{device}`. `None` for a service secret, valid for any device.
    pub device: Option<String>,
    /// When it was issued, ms since the Unix epoch.
    pub issued_ms: i64,
    /// When it stops being valid, ms since the Unix epoch.
    pub expires_ms: i64,
}

/// One entry of a user's inbox, keyed by `user 0x00 inbox_seq_be64`.
///
/// Messages are stored once in `messages` and referenced from each member's
/// inbox; other events are small and stored inline.
#[derive(Clone, Debug, PartialEq)]
pub enum InboxEntry {
    /// A reference to the message `seq` of `channel`.
    Message {
        /// Channel id of the message.
        channel: String,
        /// Its sequence number in the channel.
        seq: u64,
    },
    /// Any other event (receipt, group change, ...), stored inline.
    Event(envelope::Body),
}

/// Tag byte of [`InboxEntry::Message`]: `0x01 seq_be64 channel_utf8`.
const TAG_MESSAGE: u8 = 0x01;
/// Tag byte of [`InboxEntry::Event`]: `0x02 Envelope{body}` (protobuf, inbox_seq 0).
const TAG_EVENT: u8 = 0x02;

impl InboxEntry {
    /// The stored bytes: a tag byte, then the tag's payload.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            InboxEntry::Message { channel, seq } => {
                let mut bytes = Vec::with_capacity(1 + SEQ_LEN + channel.len());
                bytes.push(TAG_MESSAGE);
                bytes.extend_from_slice(&encode_seq(*seq));
                bytes.extend_from_slice(channel.as_bytes());
                bytes
            }
            InboxEntry::Event(body) => {
                let envelope = Envelope {
                    inbox_seq: 0,
                    body: Some(body.clone()),
                };
                let mut bytes = Vec::with_capacity(1 + envelope.encoded_len());
                bytes.push(TAG_EVENT);
                bytes.extend_from_slice(&envelope.encode_to_vec());
                bytes
            }
        }
    }

    /// Parses bytes written by [`InboxEntry::encode`]; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<InboxEntry, String> {
        let Some((tag, payload)) = bytes.split_first() else {
            return Err("empty inbox entry".to_owned());
        };
        match *tag {
            TAG_MESSAGE => decode_message_ref(payload),
            TAG_EVENT => decode_event(payload),
            other => Err(format!("unknown inbox entry tag {other:#04x}")),
        }
    }
}

fn decode_message_ref(payload: &[u8]) -> Result<InboxEntry, String> {
    if payload.len() < SEQ_LEN {
        return Err("message reference shorter than its sequence number".to_owned());
    }
    let (seq, channel) = payload.split_at(SEQ_LEN);
    let seq = decode_seq(seq).ok_or("bad sequence number")?;
    let channel = std::str::from_utf8(channel).map_err(|e| format!("channel: {e}"))?;
    Ok(InboxEntry::Message {
        channel: channel.to_owned(),
        seq,
    })
}

fn decode_event(payload: &[u8]) -> Result<InboxEntry, String> {
    let envelope = Envelope::decode(payload).map_err(|e| format!("event: {e}"))?;
    let body = envelope.body.ok_or("event without a body")?;
    Ok(InboxEntry::Event(body))
}

/// JSON bytes of a small record.
pub(crate) fn to_json<T: Serialize>(
    what: &'static str,
    record: &T,
) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(record).map_err(|source| StorageError::Encode { what, source })
}

/// A small record from JSON; `cf` and `key` name it in the error.
pub(crate) fn from_json<T: DeserializeOwned>(
    cf: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::corrupt(cf, key, e))
}

/// The JSON bytes of a group ([`StoredGroup`]).
pub(crate) fn group_to_json(group: &Group) -> Result<Vec<u8>, StorageError> {
    let mut bytes = Vec::new();
    StoredGroup::serialize(group, &mut serde_json::Serializer::new(&mut bytes)).map_err(
        |source| StorageError::Encode {
            what: "group",
            source,
        },
    )?;
    Ok(bytes)
}

/// A group from its JSON bytes at `key` in `groups`.
pub(crate) fn group_from_json(key: &[u8], bytes: &[u8]) -> Result<Group, StorageError> {
    let mut json = serde_json::Deserializer::from_slice(bytes);
    StoredGroup::deserialize(&mut json)
        .and_then(|group| json.end().map(|()| group))
        .map_err(|e| StorageError::corrupt("groups", key, e))
}

/// A `ChatMessage` from its protobuf bytes in `messages`.
pub(crate) fn decode_chat_message(key: &[u8], bytes: &[u8]) -> Result<ChatMessage, StorageError> {
    ChatMessage::decode(bytes).map_err(|e| StorageError::corrupt("messages", key, e))
}

/// A sequence number stored as a value (`dedup`).
pub(crate) fn decode_seq_value(
    cf: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<u64, StorageError> {
    decode_seq(bytes).ok_or_else(|| {
        let reason = format!(
            "expected an 8-byte sequence number, found {} bytes",
            bytes.len()
        );
        StorageError::corrupt(cf, key, reason)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_proto::v1::{GroupEvent, ReceiptEvent};

    fn receipt() -> envelope::Body {
        envelope::Body::Receipt(ReceiptEvent {
            channel: "dm:alice:bob".to_owned(),
            user: "bob".to_owned(),
            seq: 7,
            kind: 2,
        })
    }

    #[test]
    fn message_reference_is_compact_and_round_trips() {
        let entry = InboxEntry::Message {
            channel: "g:team".to_owned(),
            seq: 300,
        };
        let bytes = entry.encode();
        assert_eq!(bytes.len(), 1 + 8 + "g:team".len());
        assert_eq!(InboxEntry::decode(&bytes), Ok(entry));
    }

    #[test]
    fn events_round_trip() {
        let group = envelope::Body::Group(GroupEvent {
            group_id: "team".to_owned(),
            name: "Team".to_owned(),
            members: vec!["alice".to_owned(), "bob".to_owned()],
            actor: "alice".to_owned(),
        });
        for body in [receipt(), group] {
            let entry = InboxEntry::Event(body);
            assert_eq!(InboxEntry::decode(&entry.encode()), Ok(entry));
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let cases: [&[u8]; 6] = [
            b"",
            b"\x09abc",
            b"\x01short",
            b"\x01\0\0\0\0\0\0\0\x01\xff\xfe",
            b"\x02\xff\xff\xff",
            b"\x02",
        ];
        for bytes in cases {
            assert!(InboxEntry::decode(bytes).is_err(), "{bytes:?} decoded");
        }
    }

    #[test]
    fn records_round_trip_as_json() {
        let session = SessionRecord {
            subscriptions: vec![("inbox/alice".to_owned(), 1)],
            acked_inbox_seq: 42,
            expiry_secs: SessionRecord::NEVER_EXPIRES,
            disconnected_ms: 0,
        };
        let bytes = to_json("session", &session).unwrap();
        let back: SessionRecord = from_json("sessions", b"k", &bytes).unwrap();
        assert_eq!(back, session);

        let user = UserRecord {
            password_hash: "$argon2id$...".to_owned(),
            kind: AccountKind::Service,
            created_ms: 1,
        };
        let json = String::from_utf8(to_json("user", &user).unwrap()).unwrap();
        assert!(json.contains("\"service\""), "{json}");
    }

    #[test]
    fn groups_keep_their_json_encoding() {
        // the bytes every data dir holds since the first format version
        let stored = br#"{"id":"team","name":"Team","owner":"alice","members":["alice","bob"]}"#;
        let group = Group {
            id: "team".to_owned(),
            name: "Team".to_owned(),
            owner: "alice".to_owned(),
            members: vec!["alice".to_owned(), "bob".to_owned()],
        };
        assert_eq!(group_to_json(&group).unwrap(), stored.to_vec());
        assert_eq!(group_from_json(b"team", stored).unwrap(), group);

        let err = group_from_json(b"team", br#"{"id":"team"}"#).unwrap_err();
        assert!(
            matches!(err, StorageError::Corrupt { cf: "groups", .. }),
            "{err}"
        );
        let trailing = br#"{"id":"t","name":"","owner":"a","members":["a"]} x"#;
        assert!(group_from_json(b"t", trailing).is_err());
    }

    #[test]
    fn bad_json_names_the_key() {
        let err = from_json::<UserRecord>("users", b"alice", b"{not json").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("users") && text.contains("alice"), "{text}");
    }
}

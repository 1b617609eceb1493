//! Key encodings, the column family names and the `meta` family's keys.
//!
//! Every key is built here and nowhere else. Parts are joined with 0x00,
//! which never occurs inside an id or a channel (checked: a part holding it
//! is refused with [`StorageError::InvalidKey`]), and sequence numbers are
//! big-endian `u64`, so byte order equals numeric order and one channel's
//! (or one inbox's) keys form a contiguous, ordered range:
//! `owner 0x00 ..` up to, not including, `owner 0x01`.

use crate::error::StorageError;

/// Separator between key parts.
const SEP: u8 = 0x00;
/// The byte after [`SEP`]: `owner 0x01` is the exclusive end of `owner`'s range.
const SEP_END: u8 = 0x01;
/// Length of an encoded sequence number.
pub(crate) const SEQ_LEN: usize = 8;

/// The column families, see the table in the crate docs. Ordered as
/// declared: a [`Batch`](crate::Batch) is applied in family, then key order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Cf {
    Users,
    Groups,
    Messages,
    Inbox,
    Dedup,
    Sessions,
    Tokens,
    UserTokens,
    Friends,
    UserChannels,
    Cursors,
    LastActive,
    PushDevices,
    PushJobs,
    Meta,
}

impl Cf {
    /// Every column family, in the order they are opened.
    pub(crate) const ALL: [Cf; 15] = [
        Cf::Users,
        Cf::Groups,
        Cf::Messages,
        Cf::Inbox,
        Cf::Dedup,
        Cf::Sessions,
        Cf::Tokens,
        Cf::UserTokens,
        Cf::Friends,
        Cf::UserChannels,
        Cf::Cursors,
        Cf::LastActive,
        Cf::PushDevices,
        Cf::PushJobs,
        Cf::Meta,
    ];

    /// The RocksDB name of the column family.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Cf::Users => "users",
            Cf::Groups => "groups",
            Cf::Messages => "messages",
            Cf::Inbox => "inbox",
            Cf::Dedup => "dedup",
            Cf::Sessions => "sessions",
            Cf::Tokens => "tokens",
            Cf::UserTokens => "user_tokens",
            Cf::Friends => "friends",
            Cf::UserChannels => "user_channels",
            Cf::Cursors => "cursors",
            Cf::LastActive => "last_active",
            Cf::PushDevices => "push_devices",
            Cf::PushJobs => "push_jobs",
            Cf::Meta => "meta",
        }
    }

    /// The family's number in an encoded [`Batch`](crate::Batch)
    /// ([`Batch::encode`](crate::Batch::encode)): stable across versions,
    /// so never renumber one; a new family takes the next unused number.
    /// Unlike the declaration order, it does not change when families are
    /// added (or reordered) later.
    pub(crate) fn code(self) -> u8 {
        match self {
            Cf::Users => 1,
            Cf::Groups => 2,
            Cf::Messages => 3,
            Cf::Inbox => 4,
            Cf::Dedup => 5,
            Cf::Sessions => 6,
            Cf::Tokens => 7,
            Cf::UserTokens => 8,
            Cf::Friends => 9,
            Cf::UserChannels => 10,
            Cf::Cursors => 11,
            Cf::LastActive => 12,
            Cf::PushDevices => 13,
            Cf::PushJobs => 14,
            Cf::Meta => 15,
        }
    }

    /// The family whose [`Cf::code`] is `code`, `None` for an unknown one.
    pub(crate) fn from_code(code: u8) -> Option<Cf> {
        Cf::ALL.into_iter().find(|cf| cf.code() == code)
    }

    /// True for the large, append-mostly families (the chat log).
    pub(crate) fn is_log(self) -> bool {
        matches!(self, Cf::Messages | Cf::Inbox | Cf::Dedup)
    }
}

/// The `meta` key holding the on-disk format version (`u32` big-endian).
pub(crate) const FORMAT_VERSION_KEY: &[u8] = b"format_version";

/// The `meta` key present once `user_channels` indexes every channel a user
/// is in (set in a new data dir, or by the one-time backfill).
pub(crate) const USER_CHANNELS_BUILT_KEY: &[u8] = b"user_channels_built";

/// The `meta` key holding the position (`u64` big-endian) of the last entry
/// of the cluster's log applied to this data dir.
pub(crate) const APPLIED_SEQ_KEY: &[u8] = b"cluster_applied_seq";

/// `part` as bytes, refused if it contains the separator.
fn part(part: &str) -> Result<&[u8], StorageError> {
    if part.as_bytes().contains(&SEP) {
        return Err(StorageError::InvalidKey(part.escape_debug().to_string()));
    }
    Ok(part.as_bytes())
}

/// Big-endian bytes of a sequence number.
pub(crate) fn encode_seq(seq: u64) -> [u8; SEQ_LEN] {
    seq.to_be_bytes()
}

/// A sequence number from exactly [`SEQ_LEN`] big-endian bytes.
pub(crate) fn decode_seq(bytes: &[u8]) -> Option<u64> {
    let array: [u8; SEQ_LEN] = bytes.try_into().ok()?;
    Some(u64::from_be_bytes(array))
}

/// `id`: the keys of `users` and `groups`.
pub(crate) fn id_key(id: &str) -> Result<Vec<u8>, StorageError> {
    Ok(part(id)?.to_vec())
}

/// `owner 0x00 seq_be64`: the keys of `messages` (owner = channel id) and
/// `inbox` (owner = user id).
pub(crate) fn seq_key(owner: &str, seq: u64) -> Result<Vec<u8>, StorageError> {
    let owner = part(owner)?;
    let mut key = Vec::with_capacity(owner.len() + 1 + SEQ_LEN);
    key.extend_from_slice(owner);
    key.push(SEP);
    key.extend_from_slice(&encode_seq(seq));
    Ok(key)
}

/// `owner 0x01`: the exclusive upper bound of every `seq_key(owner, _)`.
pub(crate) fn seq_range_end(owner: &str) -> Result<Vec<u8>, StorageError> {
    let owner = part(owner)?;
    let mut key = Vec::with_capacity(owner.len() + 1);
    key.extend_from_slice(owner);
    key.push(SEP_END);
    Ok(key)
}

/// Splits `owner 0x00 seq_be64` into `(owner, seq)`.
pub(crate) fn decode_seq_key(key: &[u8]) -> Option<(&[u8], u64)> {
    let split = key.len().checked_sub(SEQ_LEN + 1)?;
    let (owner, rest) = key.split_at(split);
    let (sep, seq) = rest.split_first()?;
    if *sep != SEP || owner.contains(&SEP) {
        return None;
    }
    Some((owner, decode_seq(seq)?))
}

/// `sender 0x00 channel 0x00 client_msg_id`: the keys of `dedup`.
/// The client's id is last, so it may hold any bytes.
pub(crate) fn dedup_key(
    sender: &str,
    channel: &str,
    client_msg_id: &str,
) -> Result<Vec<u8>, StorageError> {
    let sender = part(sender)?;
    let channel = part(channel)?;
    let mut key = Vec::with_capacity(sender.len() + channel.len() + client_msg_id.len() + 2);
    key.extend_from_slice(sender);
    key.push(SEP);
    key.extend_from_slice(channel);
    key.push(SEP);
    key.extend_from_slice(client_msg_id.as_bytes());
    Ok(key)
}

/// `user 0x00 device`: the keys of `sessions`.
pub(crate) fn session_key(user: &str, device: &str) -> Result<Vec<u8>, StorageError> {
    let user = part(user)?;
    let device = part(device)?;
    let mut key = Vec::with_capacity(user.len() + device.len() + 1);
    key.extend_from_slice(user);
    key.push(SEP);
    key.extend_from_slice(device);
    Ok(key)
}

/// `owner 0x00 item`: the keys of the families that hold one small entry
/// per pair (`friends`: user, friend; `user_channels` and `cursors`: user,
/// channel; `push_devices`: user, device). Same shape as a session key.
pub(crate) fn pair_key(owner: &str, item: &str) -> Result<Vec<u8>, StorageError> {
    session_key(owner, item)
}

/// `owner 0x00`: the start of every [`pair_key`] of `owner`.
pub(crate) fn pair_prefix(owner: &str) -> Result<Vec<u8>, StorageError> {
    let mut key = part(owner)?.to_vec();
    key.push(SEP);
    Ok(key)
}

/// `owner 0x01`: the exclusive upper bound of every [`pair_key`] of `owner`.
pub(crate) fn pair_range_end(owner: &str) -> Result<Vec<u8>, StorageError> {
    seq_range_end(owner)
}

/// The item of a [`pair_key`] whose owner part (with its separator) is
/// `skip` bytes long; a key whose item is not UTF-8 or holds the separator
/// is corrupt.
pub(crate) fn pair_item(cf: Cf, key: &[u8], skip: usize) -> Result<&str, StorageError> {
    key.get(skip..)
        .and_then(|item| std::str::from_utf8(item).ok())
        .filter(|item| !item.as_bytes().contains(&SEP))
        .ok_or_else(|| StorageError::corrupt(cf.name(), key, "malformed key"))
}

/// Splits `user 0x00 device` into `(user, device)`.
pub(crate) fn decode_session_key(key: &[u8]) -> Option<(&str, &str)> {
    let at = key.iter().position(|b| *b == SEP)?;
    let user = std::str::from_utf8(&key[..at]).ok()?;
    let device = std::str::from_utf8(&key[at + 1..]).ok()?;
    if device.as_bytes().contains(&SEP) {
        return None;
    }
    Some((user, device))
}

/// `user 0x00 device 0x00 digest`: the keys of `user_tokens`, the index of
/// each account's tokens. The digest is last, so it may hold any bytes.
pub(crate) fn user_token_key(
    user: &str,
    device: &str,
    digest: &[u8],
) -> Result<Vec<u8>, StorageError> {
    let mut key = user_token_prefix(user, Some(device))?;
    key.extend_from_slice(digest);
    Ok(key)
}

/// `user 0x00` or `user 0x00 device 0x00`: the start of one account's (or
/// one device's) keys in `user_tokens`.
pub(crate) fn user_token_prefix(user: &str, device: Option<&str>) -> Result<Vec<u8>, StorageError> {
    let mut key = part(user)?.to_vec();
    key.push(SEP);
    if let Some(device) = device {
        key.extend_from_slice(part(device)?);
        key.push(SEP);
    }
    Ok(key)
}

/// Splits `user 0x00 device 0x00 digest` into `(device, digest)`.
pub(crate) fn decode_user_token_key(key: &[u8]) -> Option<(&str, &[u8])> {
    let mut parts = key.splitn(3, |b| *b == SEP);
    let (_user, device, digest) = (parts.next()?, parts.next()?, parts.next()?);
    Some((std::str::from_utf8(device).ok()?, digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn user_token_keys_group_by_user_then_device() {
        let key = user_token_key("alice", "phone", &[0, 1, 2]).unwrap();
        assert!(key.starts_with(&user_token_prefix("alice", None).unwrap()));
        assert!(key.starts_with(&user_token_prefix("alice", Some("phone")).unwrap()));
        assert!(!key.starts_with(&user_token_prefix("alic", None).unwrap()));
        assert!(!key.starts_with(&user_token_prefix("alice", Some("pho")).unwrap()));
        assert_eq!(
            decode_user_token_key(&key),
            Some(("phone", &[0u8, 1, 2][..]))
        );
    }

    #[test]
    fn family_codes_are_stable_and_round_trip() {
        // The codes are in replicated logs: this table never changes, it
        // only grows.
        let pinned = [
            (Cf::Users, 1),
            (Cf::Groups, 2),
            (Cf::Messages, 3),
            (Cf::Inbox, 4),
            (Cf::Dedup, 5),
            (Cf::Sessions, 6),
            (Cf::Tokens, 7),
            (Cf::UserTokens, 8),
            (Cf::Friends, 9),
            (Cf::UserChannels, 10),
            (Cf::Cursors, 11),
            (Cf::LastActive, 12),
            (Cf::PushDevices, 13),
            (Cf::PushJobs, 14),
            (Cf::Meta, 15),
        ];
        assert_eq!(pinned.len(), Cf::ALL.len(), "a new family needs a code");
        for (cf, code) in pinned {
            assert_eq!(cf.code(), code, "{cf:?}");
            assert_eq!(Cf::from_code(code), Some(cf));
        }
        assert_eq!(Cf::from_code(0), None);
        assert_eq!(Cf::from_code(16), None);
        assert_eq!(Cf::from_code(u8::MAX), None);
    }

    #[test]
    fn seq_keys_sort_numerically_under_byte_order() {
        let keys: Vec<Vec<u8>> = [1u64, 255, 256, 65_535, 65_536, u64::MAX]
            .iter()
            .map(|seq| seq_key("g:team", *seq).unwrap())
            .collect();
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn one_owner_range_never_holds_a_longer_owner() {
        let end = seq_range_end("al").unwrap();
        let start = seq_key("al", 0).unwrap();
        for seq in [0, 1, u64::MAX] {
            let alice = seq_key("alice", seq).unwrap();
            assert!(!(start <= alice && alice < end), "alice inside al's range");
            let al = seq_key("al", seq).unwrap();
            assert!(start <= al && al < end);
        }
        let a_end = seq_range_end("a").unwrap();
        assert!(seq_key("al", 1).unwrap() >= a_end);
    }

    #[test]
    fn parts_with_the_separator_are_refused() {
        assert!(matches!(
            seq_key("a\0b", 1),
            Err(StorageError::InvalidKey(_))
        ));
        assert!(id_key("x\0").is_err());
        assert!(dedup_key("a", "dm:a\0:b", "c").is_err());
        assert!(session_key("a\0", "phone").is_err());
        assert!(dedup_key("a", "dm:a:b", "any\0bytes").is_ok());
    }

    #[test]
    fn malformed_seq_keys_do_not_decode() {
        assert_eq!(decode_seq_key(b""), None);
        assert_eq!(decode_seq_key(b"short"), None);
        assert_eq!(decode_seq_key(b"abc\x01\0\0\0\0\0\0\0\x01"), None);
        assert_eq!(decode_seq_key(b"a\0b\0\0\0\0\0\0\0\0\x01"), None);
        assert_eq!(decode_seq_key(b"\0\0\0\0\0\0\0\0\x07"), Some((&b""[..], 7)));
    }

    #[test]
    fn session_keys_round_trip() {
        let key = session_key("alice", "phone").unwrap();
        assert_eq!(decode_session_key(&key), Some(("alice", "phone")));
        assert_eq!(decode_session_key(b"no-separator"), None);
    }

    fn owner() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_:-]{0,70}"
    }

    proptest! {
        #[test]
        fn seq_key_round_trips(owner in owner(), seq in any::<u64>()) {
            let key = seq_key(&owner, seq).unwrap();
            prop_assert_eq!(decode_seq_key(&key), Some((owner.as_bytes(), seq)));
            prop_assert!(key < seq_range_end(&owner).unwrap());
        }

        #[test]
        fn seq_key_order_is_numeric_order(owner in owner(), a in any::<u64>(), b in any::<u64>()) {
            let (ka, kb) = (seq_key(&owner, a).unwrap(), seq_key(&owner, b).unwrap());
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }

        #[test]
        fn owner_ranges_are_disjoint(a in owner(), b in owner(), seq in any::<u64>()) {
            prop_assume!(a != b);
            let key = seq_key(&b, seq).unwrap();
            let inside = seq_key(&a, 0).unwrap() <= key && key < seq_range_end(&a).unwrap();
            prop_assert!(!inside);
        }

        #[test]
        fn session_key_round_trips(user in "[A-Za-z0-9_:-]{1,70}", device in "[A-Za-z0-9_-]{1,64}") {
            let key = session_key(&user, &device).unwrap();
            prop_assert_eq!(decode_session_key(&key), Some((user.as_str(), device.as_str())));
        }

        #[test]
        fn any_text_without_separator_round_trips(owner in "[^\u{0}]{0,40}", seq in any::<u64>()) {
            let key = seq_key(&owner, seq).unwrap();
            prop_assert_eq!(decode_seq_key(&key), Some((owner.as_bytes(), seq)));
        }
    }
}

//! Session tokens and service secrets: their text form, their digest, and
//! checking one against the store.
//!
//! A token is 256 random bits, written `pt_` + 64 lowercase hex digits. Only
//! its SHA-256 digest is stored (`parley_storage::TokenRecord`): a fast hash
//! is right for a high-entropy secret, so a token CONNECT costs one hash and
//! one point read, microseconds, where a password costs an argon2 run. A
//! service secret has the same form and is stored the same way, for any
//! device of its service and without expiry.

use parley_storage::{Store, TokenRecord};
use sha2::{Digest, Sha256};

use crate::error::BrokerError;

/// The prefix of every token and service secret.
pub const TOKEN_PREFIX: &str = "pt_";
/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;

/// The SHA-256 digest of a token: its key in the store.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest(pub [u8; 32]);

impl std::fmt::Debug for TokenDigest {
    /// Only a prefix, enough to tell tokens apart in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TokenDigest({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// A freshly made token: the text to hand out once, and its digest to store.
pub struct NewToken {
    pub text: String,
    pub digest: TokenDigest,
}

/// Makes a new random token.
pub fn generate() -> NewToken {
    let bytes: [u8; TOKEN_BYTES] = rand::random();
    let mut text = String::with_capacity(TOKEN_PREFIX.len() + 2 * TOKEN_BYTES);
    text.push_str(TOKEN_PREFIX);
    for byte in bytes {
        text.push_str(&format!("{byte:02x}"));
    }
    let digest = digest(&text);
    NewToken { text, digest }
}

/// Whether `text` has the form of a token (so it is never taken for a password).
pub fn is_token_shaped(text: &str) -> bool {
    text.strip_prefix(TOKEN_PREFIX).is_some_and(|hex| {
        hex.len() == 2 * TOKEN_BYTES && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The digest under which `text` is stored.
pub fn digest(text: &str) -> TokenDigest {
    TokenDigest(Sha256::digest(text.as_bytes()).into())
}

/// What a presented token turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    /// Valid: whose it is.
    Valid(TokenDigest, TokenRecord),
    /// Not a token of this broker: never issued, forged, or revoked.
    Unknown,
    /// It was valid until `expires_ms`.
    Expired,
}

/// Looks `text` up in the store; an expired token is deleted on the way.
/// Blocks on one point read (and, for an expired token, a synced delete).
pub fn check(store: &Store, text: &str, now_ms: i64) -> Result<TokenCheck, BrokerError> {
    if !is_token_shaped(text) {
        return Ok(TokenCheck::Unknown);
    }
    let digest = digest(text);
    let record = match store.token(&digest.0)? {
        Some(record) => Some(record),
        // in a cluster, a login on another node may not be applied here yet
        None if store.is_replicated() => {
            store.catch_up()?;
            store.token(&digest.0)?
        }
        None => None,
    };
    let Some(record) = record else {
        return Ok(TokenCheck::Unknown);
    };
    if record.expires_ms <= now_ms {
        store.delete_token(&digest.0)?;
        return Ok(TokenCheck::Expired);
    }
    Ok(TokenCheck::Valid(digest, record))
}

/// Whether a valid token's record lets `user` connect as `device`.
pub fn admits(record: &TokenRecord, user: &str, device: &str) -> bool {
    record.user == user && record.device.as_deref().is_none_or(|bound| bound == device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(device: Option<&str>, expires_ms: i64) -> TokenRecord {
        TokenRecord {
            user: "alice".into(),
            device: device.map(str::to_owned),
            issued_ms: 0,
            expires_ms,
        }
    }

    #[test]
    fn tokens_are_random_shaped_and_digested() {
        let (a, b) = (generate(), generate());
        assert_ne!(a.text, b.text);
        assert!(is_token_shaped(&a.text), "{}", a.text);
        assert_eq!(a.text.len(), 3 + 64);
        assert_eq!(digest(&a.text), a.digest);
        assert_ne!(a.digest, b.digest);
        for bad in [
            "",
            "pt_",
            "pt_xyz",
            &a.text[1..],
            &a.text.to_uppercase(),
            &format!("{}0", a.text),
        ] {
            assert!(!is_token_shaped(bad), "{bad}");
        }
        assert!(!format!("{:?}", a.digest).contains(&a.text[3..]));
    }

    #[test]
    fn check_finds_valid_refuses_unknown_and_deletes_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let live = generate();
        store
            .put_token(&live.digest.0, &record(Some("phone"), 1_000))
            .unwrap();
        let old = generate();
        store
            .put_token(&old.digest.0, &record(Some("phone"), 10))
            .unwrap();
        assert!(
            matches!(check(&store, &live.text, 500).unwrap(), TokenCheck::Valid(d, _) if d == live.digest)
        );
        assert_eq!(
            check(&store, &generate().text, 500).unwrap(),
            TokenCheck::Unknown
        );
        assert_eq!(
            check(&store, "not a token", 500).unwrap(),
            TokenCheck::Unknown
        );
        assert_eq!(check(&store, &old.text, 500).unwrap(), TokenCheck::Expired);
        assert_eq!(
            check(&store, &old.text, 500).unwrap(),
            TokenCheck::Unknown,
            "deleted"
        );
    }

    #[test]
    fn a_token_admits_its_client_id_only_and_a_secret_any_device() {
        let token = record(Some("phone"), 1);
        assert!(admits(&token, "alice", "phone"));
        assert!(!admits(&token, "alice", "laptop"));
        assert!(!admits(&token, "bob", "phone"));
        let secret = record(None, i64::MAX);
        assert!(admits(&secret, "alice", "any"));
        assert!(!admits(&secret, "bob", "any"));
    }
}

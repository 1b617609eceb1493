//! Accounts: user ids and argon2 password hashes in the store.
//!
//! Hashes are PHC strings (`$argon2id$v=19$m=...`) with a random 16-byte salt,
//! so the parameters travel with each hash and can be raised later without
//! breaking old ones.
//!
//! Every function here blocks: it reads or writes RocksDB, and hashing or
//! verifying a password with argon2 takes tens of milliseconds of CPU by
//! design. Async callers must run them off the runtime: CONNECT goes through
//! the fixed verification pool in [`crate::auth`].
//!
//! Later issue (service accounts): `add_service` creating `svc:{name}` with a
//! generated secret goes here; [`verify`] already accepts either kind.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use parley_storage::{AccountKind, Store, UserRecord};

use crate::error::BrokerError;

/// One account as listed (never the hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub kind: AccountKind,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: i64,
}

/// Creates the user account `id` with `password`.
///
/// Refuses an invalid id (1 to 64 of `[A-Za-z0-9_-]`), an existing id and an
/// empty password. The check for an existing id and the write are not one
/// atomic step: callers that may race (the HTTP API) serialise adds.
pub fn add_user(store: &Store, id: &str, password: &str) -> Result<(), BrokerError> {
    check_user_id(id)?;
    check_password(password)?;
    if store.user(id)?.is_some() {
        return Err(BrokerError::UserExists(id.to_owned()));
    }
    let record = UserRecord {
        password_hash: hash_password(password)?,
        kind: AccountKind::User,
        created_ms: now_ms(),
    };
    store.put_user(id, &record)?;
    Ok(())
}

/// Replaces the password of the existing account `id` (user or service).
pub fn set_password(store: &Store, id: &str, password: &str) -> Result<(), BrokerError> {
    check_password(password)?;
    let Some(mut record) = store.user(id)? else {
        return Err(BrokerError::UnknownUser(id.to_owned()));
    };
    record.password_hash = hash_password(password)?;
    store.put_user(id, &record)?;
    Ok(())
}

/// Verifies passwords with one argon2 working area, allocated once and
/// reused: argon2 needs ~19 MiB per verification, and allocating it afresh
/// each time leaves the allocator holding several such areas per thread.
/// One per verifying thread (it is `&mut`).
#[derive(Default)]
pub struct Verifier {
    memory: Vec<Block>,
}

impl Verifier {
    /// Whether `password` is the password of account `user`.
    ///
    /// An unknown user, an empty password and a wrong password are all
    /// `false`. An unknown user still costs one argon2 verification, so the
    /// answer time does not tell which user ids exist. The comparison is
    /// constant time. Errors are storage failures and unreadable stored
    /// hashes.
    pub fn verify(
        &mut self,
        store: &Store,
        user: &str,
        password: &str,
    ) -> Result<bool, BrokerError> {
        let Some(record) = store.user(user)? else {
            if let Some(dummy) = dummy_hash() {
                let _ = self.verify_password(dummy, password);
            }
            return Ok(false);
        };
        if password.is_empty() {
            return Ok(false);
        }
        self.verify_password(&record.password_hash, password)
    }

    /// Whether `password` matches the PHC string `phc` (algorithm, version
    /// and parameters from `phc`). An unreadable `phc` is an error, a
    /// mismatch is `Ok(false)`.
    pub fn verify_password(&mut self, phc: &str, password: &str) -> Result<bool, BrokerError> {
        let unreadable =
            |e: &dyn std::fmt::Display| BrokerError::PasswordHash(format!("stored hash: {e}"));
        let hash = PasswordHash::new(phc).map_err(|e| unreadable(&e))?;
        let algorithm = Algorithm::try_from(hash.algorithm).map_err(|e| unreadable(&e))?;
        let version = match hash.version {
            Some(version) => Version::try_from(version).map_err(|e| unreadable(&e))?,
            None => Version::default(),
        };
        let params = Params::try_from(&hash).map_err(|e| unreadable(&e))?;
        let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
            return Err(unreadable(&"no salt or no hash"));
        };
        let mut salt_bytes = [0u8; 64];
        let salt = salt
            .decode_b64(&mut salt_bytes)
            .map_err(|e| unreadable(&e))?;
        if self.memory.len() < params.block_count() {
            self.memory.resize(params.block_count(), Block::default());
        }
        let mut computed = [0u8; 64];
        let computed = &mut computed[..expected.len()];
        Argon2::new(algorithm, version, params)
            .hash_password_into_with_memory(
                password.as_bytes(),
                salt,
                computed,
                &mut self.memory[..],
            )
            .map_err(|e| unreadable(&e))?;
        // `Output`'s equality is constant time.
        let computed = Output::new(computed).map_err(|e| unreadable(&e))?;
        Ok(computed == expected)
    }
}

/// Every account, ordered by id.
pub fn list(store: &Store) -> Result<Vec<Account>, BrokerError> {
    let users = store.list_users()?;
    let accounts = users
        .into_iter()
        .map(|(id, record)| Account {
            id,
            kind: record.kind,
            created_ms: record.created_ms,
        })
        .collect();
    Ok(accounts)
}

/// Hashes `password` with argon2id (default parameters) and a fresh random
/// salt; returns the PHC string.
pub fn hash_password(password: &str) -> Result<String, BrokerError> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| BrokerError::PasswordHash(e.to_string()))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| BrokerError::PasswordHash(e.to_string()))?;
    Ok(hash.to_string())
}

/// The contract's id rule: 1 to 64 characters of `[A-Za-z0-9_-]`.
fn check_user_id(id: &str) -> Result<(), BrokerError> {
    let valid_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    if id.is_empty() || id.len() > 64 || !id.bytes().all(valid_char) {
        return Err(BrokerError::InvalidUserId(id.to_owned()));
    }
    Ok(())
}

fn check_password(password: &str) -> Result<(), BrokerError> {
    if password.is_empty() {
        return Err(BrokerError::EmptyPassword);
    }
    Ok(())
}

/// A hash of a random password, verified against for unknown users.
fn dummy_hash() -> Option<&'static str> {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    DUMMY
        .get_or_init(|| hash_password(&format!("{:x}", rand::random::<u128>())).ok())
        .as_deref()
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::PasswordVerifier;

    use super::*;

    fn verify(store: &Store, user: &str, password: &str) -> Result<bool, BrokerError> {
        Verifier::default().verify(store, user, password)
    }

    fn verify_password(phc: &str, password: &str) -> Result<bool, BrokerError> {
        Verifier::default().verify_password(phc, password)
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn add_then_verify() {
        let (_dir, store) = store();
        add_user(&store, "alice", "s3cret").unwrap();
        assert!(verify(&store, "alice", "s3cret").unwrap());
        assert!(!verify(&store, "alice", "wrong").unwrap());
        assert!(!verify(&store, "alice", "").unwrap());
        assert!(!verify(&store, "bob", "s3cret").unwrap(), "unknown user");
        let record = store.user("alice").unwrap().unwrap();
        assert!(
            record.password_hash.starts_with("$argon2id$"),
            "{}",
            record.password_hash
        );
        assert!(!record.password_hash.contains("s3cret"));
        assert_eq!(record.kind, AccountKind::User);
    }

    #[test]
    fn refuses_duplicates_bad_ids_and_empty_passwords() {
        let (_dir, store) = store();
        add_user(&store, "alice", "pw").unwrap();
        assert!(matches!(
            add_user(&store, "alice", "other"),
            Err(BrokerError::UserExists(_))
        ));
        assert!(
            verify(&store, "alice", "pw").unwrap(),
            "the duplicate changed nothing"
        );
        let too_long = "a".repeat(65);
        for bad in ["", "a b", "al:ice", "é", too_long.as_str()] {
            assert!(
                matches!(
                    add_user(&store, bad, "pw"),
                    Err(BrokerError::InvalidUserId(_))
                ),
                "{bad:?}"
            );
        }
        add_user(&store, &"a".repeat(64), "pw").unwrap();
        add_user(&store, "A-z_09", "pw").unwrap();
        assert!(matches!(
            add_user(&store, "carol", ""),
            Err(BrokerError::EmptyPassword)
        ));
        assert!(store.user("carol").unwrap().is_none());
    }

    #[test]
    fn set_password_replaces_the_hash() {
        let (_dir, store) = store();
        add_user(&store, "alice", "old").unwrap();
        let created = store.user("alice").unwrap().unwrap().created_ms;
        set_password(&store, "alice", "new").unwrap();
        assert!(verify(&store, "alice", "new").unwrap());
        assert!(!verify(&store, "alice", "old").unwrap());
        assert_eq!(store.user("alice").unwrap().unwrap().created_ms, created);
        assert!(matches!(
            set_password(&store, "bob", "pw"),
            Err(BrokerError::UnknownUser(_))
        ));
        assert!(matches!(
            set_password(&store, "alice", ""),
            Err(BrokerError::EmptyPassword)
        ));
    }

    #[test]
    fn list_is_ordered_and_hides_hashes() {
        let (_dir, store) = store();
        add_user(&store, "carol", "pw").unwrap();
        add_user(&store, "alice", "pw").unwrap();
        let ids: Vec<String> = list(&store).unwrap().into_iter().map(|a| a.id).collect();
        assert_eq!(ids, ["alice", "carol"]);
    }

    #[test]
    fn salts_differ_and_bad_stored_hash_is_an_error() {
        let a = hash_password("pw").unwrap();
        let b = hash_password("pw").unwrap();
        assert_ne!(a, b);
        assert!(verify_password(&a, "pw").unwrap() && verify_password(&b, "pw").unwrap());
        assert!(matches!(
            verify_password("not a phc string", "pw"),
            Err(BrokerError::PasswordHash(_))
        ));
    }

    #[test]
    fn one_verifier_agrees_with_argon2_on_every_algorithm_version_and_size() {
        let mut verifier = Verifier::default();
        let cases = [
            (Algorithm::Argon2id, Version::V0x13, 19_456, 2, 1, 32),
            (Algorithm::Argon2i, Version::V0x13, 64, 3, 1, 16),
            (Algorithm::Argon2d, Version::V0x10, 256, 1, 2, 64),
            (Algorithm::Argon2id, Version::V0x13, 8, 1, 1, 32),
        ];
        for (algorithm, version, m, t, p, len) in cases {
            let params = Params::new(m, t, p, Some(len)).unwrap();
            let hasher = Argon2::new(algorithm, version, params);
            let salt = SaltString::encode_b64(b"sixteen byte slt").unwrap();
            let phc = hasher.hash_password(b"pw", &salt).unwrap().to_string();
            let parsed = PasswordHash::new(&phc).unwrap();
            for password in ["pw", "pW", ""] {
                let theirs = Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok();
                let ours = verifier.verify_password(&phc, password).unwrap();
                assert_eq!(ours, theirs, "{phc} with {password:?}");
                assert_eq!(ours, password == "pw");
            }
        }
    }
}

//! Accounts: users with argon2 password hashes, and service accounts with
//! a secret, in the store.
//!
//! Layout:
//! - this file: creating accounts, changing passwords, listing, the rules
//!   for a new user id and password.
//! - [`hashing`]: argon2 hashes and their verification.
//! - [`tokens`]: session tokens and service secrets (SHA-256 digests).
//!
//! Every function here blocks: it reads or writes RocksDB, and hashing a
//! password takes tens of milliseconds of CPU by design. Async callers run
//! them off the runtime (on a pool of their own, or `spawn_blocking`).
//! Accounts are never deleted. Nothing here knows who calls it: `auth`
//! and the HTTP API use this module, never the other way round.

pub mod hashing;
pub mod tokens;

use parley_chat_logic::ids;
use parley_storage::{AccountKind, Store, TokenFilter, TokenRecord, UserRecord};

pub use hashing::{hash_password, Verifier};

use crate::clock::now_ms;
use crate::error::BrokerError;

/// The shortest password a new account or a password change may set, in
/// characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// The longest password accepted, in bytes (argon2 takes any length; this
/// bounds the work a request can ask for).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// The `password_hash` of a service account: no password verifies against it.
const NO_PASSWORD: &str = "!service";

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
/// Refuses an invalid id (1 to 64 of `[A-Za-z0-9_-]`), an existing id and a
/// password that breaks [`check_new_password`]. The check for an existing
/// id and the write are not one atomic step: callers that may race (the
/// HTTP API) serialise adds.
pub fn add_user(store: &Store, id: &str, password: &str) -> Result<(), BrokerError> {
    check_new_user(store, id, password)?;
    put_new_user(store, id, hash_password(password)?)
}

/// The checks of [`add_user`] before any hashing: a valid, free id and an
/// acceptable password.
pub fn check_new_user(store: &Store, id: &str, password: &str) -> Result<(), BrokerError> {
    if !ids::is_valid_id(id) {
        return Err(BrokerError::InvalidUserId(id.to_owned()));
    }
    check_new_password(password)?;
    if store.has_user(id)? {
        return Err(BrokerError::UserExists(id.to_owned()));
    }
    Ok(())
}

/// Writes a new user account whose password hash was made beforehand.
pub fn put_new_user(store: &Store, id: &str, password_hash: String) -> Result<(), BrokerError> {
    let record = UserRecord {
        password_hash,
        kind: AccountKind::User,
        created_ms: now_ms(),
    };
    store.put_user(id, &record)?;
    Ok(())
}

/// Replaces the password of the existing user `id` and revokes all its
/// session tokens (`parley user passwd`: every device logs in again).
pub fn set_password(store: &Store, id: &str, password: &str) -> Result<(), BrokerError> {
    check_new_password(password)?;
    set_password_hash(store, id, hash_password(password)?)?;
    store.delete_tokens(id, TokenFilter::default(), now_ms())?;
    Ok(())
}

/// Replaces the password hash of the existing user `id` (hashed beforehand).
pub fn set_password_hash(
    store: &Store,
    id: &str,
    password_hash: String,
) -> Result<(), BrokerError> {
    let Some(mut record) = store.user(id)? else {
        return Err(BrokerError::UnknownUser(id.to_owned()));
    };
    if record.kind != AccountKind::User {
        return Err(BrokerError::NotAUser(id.to_owned()));
    }
    record.password_hash = password_hash;
    store.put_user(id, &record)?;
    Ok(())
}

/// Creates the service account `svc:{name}` and returns its secret, the
/// only copy there will be (only its digest is stored). The secret is the
/// service's CONNECT password and HTTP bearer, for any device.
pub fn add_service(store: &Store, name: &str) -> Result<String, BrokerError> {
    if !ids::is_valid_id(name) {
        return Err(BrokerError::InvalidServiceName(name.to_owned()));
    }
    let id = ids::service_account(name);
    if store.has_user(&id)? {
        return Err(BrokerError::UserExists(id));
    }
    let record = UserRecord {
        password_hash: NO_PASSWORD.to_owned(),
        kind: AccountKind::Service,
        created_ms: now_ms(),
    };
    let secret = tokens::generate();
    let token = TokenRecord {
        user: id.clone(),
        device: None,
        issued_ms: record.created_ms,
        expires_ms: i64::MAX,
    };
    store.put_token(&secret.digest.0, &token)?;
    store.put_user(&id, &record)?;
    Ok(secret.text)
}

/// The password rule: at least [`MIN_PASSWORD_CHARS`] characters, at most
/// [`MAX_PASSWORD_BYTES`] bytes, and not of the form of a token (so it can
/// never be mistaken for one at CONNECT).
pub fn check_new_password(password: &str) -> Result<(), BrokerError> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(BrokerError::BadPassword(format!(
            "a password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_BYTES} bytes long, got {chars} characters"
        )));
    }
    if tokens::is_token_shaped(password) {
        return Err(BrokerError::BadPassword(
            "a password must not have the form of a session token".into(),
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn verify(store: &Store, user: &str, password: &str) -> bool {
        let record = store.user(user).unwrap().unwrap();
        Verifier::default()
            .verify_record(&record, password)
            .unwrap()
    }

    #[test]
    fn add_then_verify() {
        let (_dir, store) = store();
        add_user(&store, "alice", "s3cret-pw").unwrap();
        assert!(verify(&store, "alice", "s3cret-pw"));
        assert!(!verify(&store, "alice", "wrong-pw"));
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
    fn refuses_duplicates_bad_ids_and_bad_passwords() {
        let (_dir, store) = store();
        add_user(&store, "alice", "password1").unwrap();
        assert!(matches!(
            add_user(&store, "alice", "password2"),
            Err(BrokerError::UserExists(_))
        ));
        assert!(
            verify(&store, "alice", "password1"),
            "the duplicate changed nothing"
        );
        let too_long = "a".repeat(65);
        for bad in ["", "a b", "al:ice", "é", "svc:bot", too_long.as_str()] {
            let refused = add_user(&store, bad, "password1");
            assert!(
                matches!(refused, Err(BrokerError::InvalidUserId(_))),
                "{bad:?}"
            );
        }
        add_user(&store, &"a".repeat(64), "password1").unwrap();
        add_user(&store, "A-z_09", "password1").unwrap();
        let token_like = tokens::generate().text;
        let huge = "x".repeat(MAX_PASSWORD_BYTES + 1);
        for bad in ["", "seven77", token_like.as_str(), huge.as_str()] {
            let refused = add_user(&store, "carol", bad);
            assert!(
                matches!(refused, Err(BrokerError::BadPassword(_))),
                "{bad:?}"
            );
        }
        add_user(&store, "dave", "ééééééé").unwrap_err();
        add_user(&store, "dave", "éééééééé").unwrap();
        assert!(store.user("carol").unwrap().is_none());
    }

    #[test]
    fn set_password_replaces_the_hash() {
        let (_dir, store) = store();
        add_user(&store, "alice", "old-password").unwrap();
        let created = store.user("alice").unwrap().unwrap().created_ms;
        set_password(&store, "alice", "new-password").unwrap();
        assert!(verify(&store, "alice", "new-password"));
        assert!(!verify(&store, "alice", "old-password"));
        assert_eq!(store.user("alice").unwrap().unwrap().created_ms, created);
        assert!(matches!(
            set_password(&store, "bob", "password1"),
            Err(BrokerError::UnknownUser(_))
        ));
        assert!(matches!(
            set_password(&store, "alice", "short"),
            Err(BrokerError::BadPassword(_))
        ));
    }

    #[test]
    fn a_service_gets_a_secret_that_is_a_token_for_any_device() {
        let (_dir, store) = store();
        let secret = add_service(&store, "billing").unwrap();
        assert!(tokens::is_token_shaped(&secret));
        let record = store.user("svc:billing").unwrap().unwrap();
        assert_eq!(record.kind, AccountKind::Service);
        assert!(!record.password_hash.contains(&secret[3..]));
        match tokens::check(&store, &secret, now_ms()).unwrap() {
            tokens::TokenCheck::Valid(_, token) => {
                assert!(tokens::admits(&token, "svc:billing", "worker-1"));
                assert!(!tokens::admits(&token, "billing", "worker-1"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            add_service(&store, "billing"),
            Err(BrokerError::UserExists(_))
        ));
        assert!(matches!(
            add_service(&store, "a:b"),
            Err(BrokerError::InvalidServiceName(_))
        ));
        assert!(matches!(
            set_password(&store, "svc:billing", "password1"),
            Err(BrokerError::NotAUser(_))
        ));
    }

    #[test]
    fn list_is_ordered_and_hides_hashes() {
        let (_dir, store) = store();
        add_user(&store, "carol", "password1").unwrap();
        add_user(&store, "alice", "password1").unwrap();
        let ids: Vec<String> = list(&store).unwrap().into_iter().map(|a| a.id).collect();
        assert_eq!(ids, ["alice", "carol"]);
    }
}

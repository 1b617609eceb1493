//! Argon2 password hashes: making them (argon2id, random salt, PHC
//! strings) and verifying them with a reusable working area.
//!
//! Everything here is CPU-bound for tens of milliseconds: callers run it on
//! their own pool or a blocking thread, never on the runtime.

use std::sync::OnceLock;

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use parley_storage::{AccountKind, UserRecord};

use crate::error::BrokerError;

/// Verifies passwords with one argon2 working area, allocated once and
/// reused: argon2 needs ~19 MiB per verification, and allocating it afresh
/// each time leaves the allocator holding several such areas per thread.
/// One per verifying thread (it is `&mut`).
#[derive(Default)]
pub struct Verifier {
    memory: Vec<Block>,
}

impl Verifier {
    /// Whether `password` is the password of the account `record`.
    ///
    /// An empty password, a wrong password and any password of a service
    /// account (services have a secret, not a password) are all `false`.
    /// The comparison is constant time. The error is an unreadable stored
    /// hash.
    pub fn verify_record(
        &mut self,
        record: &UserRecord,
        password: &str,
    ) -> Result<bool, BrokerError> {
        if password.is_empty() || record.kind != AccountKind::User {
            return Ok(false);
        }
        self.verify_password(&record.password_hash, password)
    }

    /// Spends one verification on a random hash, so that the answer for an
    /// unknown user takes as long as for a known one and does not tell
    /// which user ids exist.
    pub fn verify_unknown(&mut self, password: &str) {
        if let Some(dummy) = dummy_hash() {
            let _ = self.verify_password(dummy, password);
        }
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

/// A hash of a random password, verified against for unknown users.
fn dummy_hash() -> Option<&'static str> {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    DUMMY
        .get_or_init(|| hash_password(&format!("{:x}", rand::random::<u128>())).ok())
        .as_deref()
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::PasswordVerifier;

    use super::*;

    fn verify_password(phc: &str, password: &str) -> Result<bool, BrokerError> {
        Verifier::default().verify_password(phc, password)
    }

    fn user(password_hash: String, kind: AccountKind) -> UserRecord {
        UserRecord {
            password_hash,
            kind,
            created_ms: 0,
        }
    }

    #[test]
    fn a_record_verifies_its_password_only_and_a_service_never() {
        let mut verifier = Verifier::default();
        let alice = user(hash_password("s3cret-pw").unwrap(), AccountKind::User);
        assert!(verifier.verify_record(&alice, "s3cret-pw").unwrap());
        assert!(!verifier.verify_record(&alice, "wrong-pw").unwrap());
        assert!(!verifier.verify_record(&alice, "").unwrap());
        let service = user(hash_password("s3cret-pw").unwrap(), AccountKind::Service);
        assert!(!verifier.verify_record(&service, "s3cret-pw").unwrap());
        verifier.verify_unknown("anything");
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

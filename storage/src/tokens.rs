//! Session tokens: each token's record by the SHA-256 digest of the token,
//! and an index of every account's tokens by device, so a logout or a
//! password change revokes them without a scan of the whole table.
//!
//! The broker computes digests (it owns the token format); this file only
//! stores them. A record and its index entry are always written and deleted
//! together in one synced (or replicated) batch.

use rocksdb::{Direction, IteratorMode};

use crate::batch::Batch;
use crate::error::StorageError;
use crate::keys::{self, Cf};
use crate::records::{self, TokenRecord};
use crate::store::Store;

impl Batch {
    /// Stores `token` under `digest`, with its entry in the account's index.
    pub(crate) fn put_token(
        &mut self,
        digest: &[u8],
        token: &TokenRecord,
    ) -> Result<(), StorageError> {
        let value = records::to_json("token", token)?;
        let device = token.device.as_deref().unwrap_or("");
        let index = keys::user_token_key(&token.user, device, digest)?;
        self.put(Cf::Tokens, digest.to_vec(), value);
        self.put(Cf::UserTokens, index, Vec::new());
        Ok(())
    }

    /// Removes the token `digest` of `user`'s `device` and its index entry.
    pub(crate) fn delete_token(
        &mut self,
        user: &str,
        device: &str,
        digest: &[u8],
    ) -> Result<(), StorageError> {
        let index = keys::user_token_key(user, device, digest)?;
        self.delete(Cf::Tokens, digest.to_vec());
        self.delete(Cf::UserTokens, index);
        Ok(())
    }
}

impl Store {
    /// Stores a new token under `digest`; synced before it returns.
    pub fn put_token(&self, digest: &[u8], token: &TokenRecord) -> Result<(), StorageError> {
        let mut batch = Batch::new();
        batch.put_token(digest, token)?;
        self.write(batch, true)
    }

    /// The token whose digest is `digest`, if it exists (expired or not).
    pub fn token(&self, digest: &[u8]) -> Result<Option<TokenRecord>, StorageError> {
        self.get_json(Cf::Tokens, digest)
    }

    /// Deletes the token `digest`; false if there was none. Synced.
    pub fn delete_token(&self, digest: &[u8]) -> Result<bool, StorageError> {
        let Some(token) = self.token(digest)? else {
            return Ok(false);
        };
        let mut batch = Batch::new();
        let device = token.device.as_deref().unwrap_or("");
        batch.delete_token(&token.user, device, digest)?;
        self.write(batch, true)?;
        Ok(true)
    }

    /// Deletes every token of `user` (of one `device` only, if given) whose
    /// digest is not `keep`, and those that expired before `now_ms` when
    /// `only_expired` is set. Returns how many were deleted. Synced.
    pub fn delete_tokens(
        &self,
        user: &str,
        filter: TokenFilter<'_>,
        now_ms: i64,
    ) -> Result<usize, StorageError> {
        let mut batch = Batch::new();
        let mut deleted = 0;
        for (device, digest) in self.token_index(user, filter.device)? {
            if filter.keep == Some(digest.as_slice()) {
                continue;
            }
            if filter.only_expired {
                let live = self
                    .token(&digest)?
                    .is_some_and(|token| token.expires_ms > now_ms);
                if live {
                    continue;
                }
            }
            batch.delete_token(user, &device, &digest)?;
            deleted += 1;
        }
        if deleted > 0 {
            self.write(batch, true)?;
        }
        Ok(deleted)
    }

    /// `(device, digest)` of every indexed token of `user` (and `device`).
    fn token_index(
        &self,
        user: &str,
        device: Option<&str>,
    ) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let prefix = keys::user_token_prefix(user, device)?;
        let mode = IteratorMode::From(&prefix, Direction::Forward);
        let mut found = Vec::new();
        for item in self.db.iterator_cf(self.cf(Cf::UserTokens)?, mode) {
            let (key, _) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let (device, digest) = keys::decode_user_token_key(&key).ok_or_else(|| {
                StorageError::corrupt(Cf::UserTokens.name(), &key, "malformed key")
            })?;
            found.push((device.to_owned(), digest.to_vec()));
        }
        Ok(found)
    }
}

/// Which of an account's tokens [`Store::delete_tokens`] deletes.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenFilter<'a> {
    /// Only this device's tokens.
    pub device: Option<&'a str>,
    /// Never this one (the token of the request that asks).
    pub keep: Option<&'a [u8]>,
    /// Only those past their expiry.
    pub only_expired: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temp_store;

    fn token(user: &str, device: &str, expires_ms: i64) -> TokenRecord {
        TokenRecord {
            user: user.to_owned(),
            device: Some(device.to_owned()),
            issued_ms: 1,
            expires_ms,
        }
    }

    #[test]
    fn put_get_delete() {
        let (_dir, store) = temp_store();
        let record = token("alice", "phone", 100);
        store.put_token(&[7; 32], &record).unwrap();
        assert_eq!(store.token(&[7; 32]).unwrap(), Some(record));
        assert_eq!(store.token(&[8; 32]).unwrap(), None);
        assert!(store.delete_token(&[7; 32]).unwrap());
        assert!(!store.delete_token(&[7; 32]).unwrap());
        assert_eq!(store.token(&[7; 32]).unwrap(), None);
        assert!(store.token_index("alice", None).unwrap().is_empty());
    }

    #[test]
    fn delete_tokens_by_device_keep_and_expiry() {
        let (_dir, store) = temp_store();
        store
            .put_token(&[1; 32], &token("alice", "phone", 100))
            .unwrap();
        store
            .put_token(&[2; 32], &token("alice", "phone", 900))
            .unwrap();
        store
            .put_token(&[3; 32], &token("alice", "laptop", 100))
            .unwrap();
        store
            .put_token(&[4; 32], &token("alicia", "phone", 100))
            .unwrap();

        let expired = TokenFilter {
            only_expired: true,
            ..TokenFilter::default()
        };
        assert_eq!(store.delete_tokens("alice", expired, 500).unwrap(), 2);
        assert!(store.token(&[2; 32]).unwrap().is_some());

        store
            .put_token(&[5; 32], &token("alice", "laptop", 900))
            .unwrap();
        let keep = TokenFilter {
            keep: Some(&[5; 32]),
            ..TokenFilter::default()
        };
        assert_eq!(store.delete_tokens("alice", keep, 0).unwrap(), 1);
        assert!(store.token(&[5; 32]).unwrap().is_some());
        assert!(store.token(&[2; 32]).unwrap().is_none());

        let phone = TokenFilter {
            device: Some("laptop"),
            ..TokenFilter::default()
        };
        assert_eq!(store.delete_tokens("alice", phone, 0).unwrap(), 1);
        assert!(store.token(&[5; 32]).unwrap().is_none());
        assert!(
            store.token(&[4; 32]).unwrap().is_some(),
            "another user's token"
        );
    }
}

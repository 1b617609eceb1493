//! Presence: when each user was last active, in `last_active` (key: the
//! user id, value: milliseconds since the Unix epoch as a big-endian `i64`).
//!
//! Written often and worth little after a crash, so writes are not synced:
//! the broker syncs the write-ahead log at shutdown ([`Store::sync_wal`]).

use crate::batch::Batch;
use crate::error::StorageError;
use crate::keys::{self, Cf};
use crate::store::Store;

/// Length of a stored time.
const TIME_LEN: usize = 8;

impl Batch {
    /// Records that `user` was last active at `ms` (since the Unix epoch).
    pub(crate) fn set_last_active(&mut self, user: &str, ms: i64) -> Result<(), StorageError> {
        let key = keys::id_key(user)?;
        self.put(Cf::LastActive, key, ms.to_be_bytes().to_vec());
        Ok(())
    }
}

impl Store {
    /// Records that `user` was last active at `ms` (since the Unix epoch).
    /// Not synced: a crash may lose it.
    pub fn set_last_active(&self, user: &str, ms: i64) -> Result<(), StorageError> {
        let mut batch = Batch::new();
        batch.set_last_active(user, ms)?;
        self.write(batch, false)
    }

    /// When `user` was last active (ms since the Unix epoch), if ever.
    pub fn last_active(&self, user: &str) -> Result<Option<i64>, StorageError> {
        let key = keys::id_key(user)?;
        let Some(bytes) = self.get(Cf::LastActive, &key)? else {
            return Ok(None);
        };
        decode_time(&key, &bytes).map(Some)
    }

    /// [`Store::last_active`] of each of `users`, in the same order, read
    /// with one multi-get.
    pub fn last_active_many(&self, users: &[&str]) -> Result<Vec<Option<i64>>, StorageError> {
        let keys = users
            .iter()
            .map(|user| keys::id_key(user))
            .collect::<Result<Vec<_>, _>>()?;
        let cf = self.cf(Cf::LastActive)?;
        let values = self.db.batched_multi_get_cf(cf, &keys, false);
        keys.iter()
            .zip(values)
            .map(|(key, value)| match value? {
                Some(bytes) => decode_time(key, &bytes).map(Some),
                None => Ok(None),
            })
            .collect()
    }
}

/// A time from its stored bytes at `key` in `last_active`.
fn decode_time(key: &[u8], bytes: &[u8]) -> Result<i64, StorageError> {
    let array: [u8; TIME_LEN] = bytes.try_into().map_err(|_| {
        let reason = format!(
            "expected an {TIME_LEN}-byte time, found {} bytes",
            bytes.len()
        );
        StorageError::corrupt(Cf::LastActive.name(), key, reason)
    })?;
    Ok(i64::from_be_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temp_store;

    #[test]
    fn last_active_round_trips_and_is_replaced() {
        let (_dir, store) = temp_store();
        assert_eq!(store.last_active("alice").unwrap(), None);
        store.set_last_active("alice", 1_700_000_000_000).unwrap();
        store.set_last_active("alice", 1_700_000_000_500).unwrap();
        store.set_last_active("al", -5).unwrap();
        assert_eq!(store.last_active("alice").unwrap(), Some(1_700_000_000_500));
        assert_eq!(store.last_active("al").unwrap(), Some(-5));
        assert_eq!(store.last_active("ali").unwrap(), None);
        assert!(matches!(
            store.set_last_active("a\0b", 1),
            Err(StorageError::InvalidKey(_))
        ));
    }

    #[test]
    fn last_active_many_keeps_order_and_reports_missing_users() {
        let (_dir, store) = temp_store();
        store.set_last_active("bob", 20).unwrap();
        store.set_last_active("alice", 10).unwrap();
        assert_eq!(
            store
                .last_active_many(&["alice", "nobody", "bob", "alice", "al"])
                .unwrap(),
            vec![Some(10), None, Some(20), Some(10), None]
        );
        assert!(store.last_active_many(&[]).unwrap().is_empty());
        assert!(store.last_active_many(&["ok", "bad\0"]).is_err());
    }

    #[test]
    fn last_active_survives_a_reopen_after_sync_wal() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.set_last_active("alice", 42).unwrap();
            store.sync_wal().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.last_active("alice").unwrap(), Some(42));
    }

    #[test]
    fn corrupt_times_name_the_family_and_key() {
        let (_dir, store) = temp_store();
        let cf = store.cf(Cf::LastActive).unwrap();
        store.db.put_cf(cf, b"mallory", b"\x01\x02").unwrap();
        let err = store.last_active("mallory").unwrap_err();
        assert!(
            matches!(&err, StorageError::Corrupt { cf: "last_active", key, .. } if key == "mallory"),
            "{err}"
        );
        assert!(store.last_active_many(&["alice", "mallory"]).is_err());
    }
}

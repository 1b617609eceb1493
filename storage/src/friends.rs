//! Friend links: one entry per (user, other) pair in `friends`, holding the
//! link's state as seen by `user`.
//!
//! The broker decides every transition (and writes both sides in one batch);
//! this file only stores the outcome. A link that ends (`Removed`) is
//! deleted, so only `RequestReceived`, `RequestSent` and `Friends` are ever
//! stored, each as its one-byte protobuf enum number.

use parley_proto::v1::FriendState;

use crate::batch::Batch;
use crate::error::StorageError;
use crate::keys::{self, Cf};
use crate::store::Store;

impl Batch {
    /// Stores `user`'s link to `other` in `state`. `Unspecified` and
    /// `Removed` are refused with [`StorageError::InvalidValue`]: an ended
    /// link is deleted with [`Batch::delete_friend`].
    pub fn put_friend(
        &mut self,
        user: &str,
        other: &str,
        state: FriendState,
    ) -> Result<(), StorageError> {
        let value = encode_state(state)?;
        let key = keys::pair_key(user, other)?;
        self.put(Cf::Friends, key, vec![value]);
        Ok(())
    }

    /// Removes `user`'s link to `other` (nothing happens if there is none).
    pub fn delete_friend(&mut self, user: &str, other: &str) -> Result<(), StorageError> {
        let key = keys::pair_key(user, other)?;
        self.delete(Cf::Friends, key);
        Ok(())
    }
}

impl Store {
    /// The state of `user`'s link to `other`, `None` if there is none.
    pub fn friend(&self, user: &str, other: &str) -> Result<Option<FriendState>, StorageError> {
        let key = keys::pair_key(user, other)?;
        let Some(bytes) = self.get(Cf::Friends, &key)? else {
            return Ok(None);
        };
        decode_state(&key, &bytes).map(Some)
    }

    /// Every link of `user` as `(other, state)`, ordered by the other id.
    pub fn friends_of(&self, user: &str) -> Result<Vec<(String, FriendState)>, StorageError> {
        let mut links = Vec::new();
        self.for_each_pair(Cf::Friends, user, |other, key, value| {
            links.push((other.to_owned(), decode_state(key, value)?));
            Ok(())
        })?;
        Ok(links)
    }
}

/// The stored byte of a state; only the three live states are storable.
fn encode_state(state: FriendState) -> Result<u8, StorageError> {
    match state {
        FriendState::RequestReceived | FriendState::RequestSent | FriendState::Friends => {
            // The enum numbers are 1..=3, so the cast is exact.
            Ok(state as i32 as u8)
        }
        FriendState::Unspecified | FriendState::Removed => Err(StorageError::InvalidValue {
            what: "friend link",
            reason: format!(
                "state {} is not stored (delete the link instead)",
                state.as_str_name()
            ),
        }),
    }
}

/// A state from its stored byte at `key` in `friends`.
pub(crate) fn decode_state(key: &[u8], bytes: &[u8]) -> Result<FriendState, StorageError> {
    let corrupt = |reason: String| StorageError::corrupt(Cf::Friends.name(), key, reason);
    let [byte] = bytes else {
        return Err(corrupt(format!(
            "expected a 1-byte friend state, found {} bytes",
            bytes.len()
        )));
    };
    match FriendState::try_from(i32::from(*byte)) {
        Ok(
            state
            @ (FriendState::RequestReceived | FriendState::RequestSent | FriendState::Friends),
        ) => Ok(state),
        _ => Err(corrupt(format!(
            "friend state {byte} is not a stored state"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temp_store;

    fn link(store: &Store, user: &str, other: &str, state: FriendState) {
        let mut batch = Batch::new();
        batch.put_friend(user, other, state).unwrap();
        store.commit(batch, true).unwrap();
    }

    #[test]
    fn links_round_trip_and_are_deleted() {
        let (_dir, store) = temp_store();
        assert_eq!(store.friend("alice", "bob").unwrap(), None);

        let mut batch = Batch::new();
        batch
            .put_friend("alice", "bob", FriendState::RequestSent)
            .unwrap();
        batch
            .put_friend("bob", "alice", FriendState::RequestReceived)
            .unwrap();
        store.commit(batch, true).unwrap();
        assert_eq!(
            store.friend("alice", "bob").unwrap(),
            Some(FriendState::RequestSent)
        );
        assert_eq!(
            store.friend("bob", "alice").unwrap(),
            Some(FriendState::RequestReceived)
        );

        link(&store, "alice", "bob", FriendState::Friends);
        assert_eq!(
            store.friend("alice", "bob").unwrap(),
            Some(FriendState::Friends)
        );

        let mut batch = Batch::new();
        batch.delete_friend("alice", "bob").unwrap();
        batch.delete_friend("alice", "nobody").unwrap();
        store.commit(batch, true).unwrap();
        assert_eq!(store.friend("alice", "bob").unwrap(), None);
        assert_eq!(
            store.friend("bob", "alice").unwrap(),
            Some(FriendState::RequestReceived)
        );
    }

    #[test]
    fn ended_or_unknown_states_are_refused() {
        let mut batch = Batch::new();
        for state in [FriendState::Unspecified, FriendState::Removed] {
            let err = batch.put_friend("alice", "bob", state).unwrap_err();
            assert!(
                matches!(err, StorageError::InvalidValue { .. }),
                "{state:?}: {err}"
            );
        }
        assert!(batch.is_empty());
        assert!(matches!(
            batch.put_friend("al\0ice", "bob", FriendState::Friends),
            Err(StorageError::InvalidKey(_))
        ));
    }

    #[test]
    fn friends_of_is_ordered_and_isolated_by_prefix() {
        let (_dir, store) = temp_store();
        let mut batch = Batch::new();
        batch.put_friend("al", "zed", FriendState::Friends).unwrap();
        batch
            .put_friend("al", "bob", FriendState::RequestSent)
            .unwrap();
        batch
            .put_friend("al", "al2", FriendState::RequestReceived)
            .unwrap();
        batch
            .put_friend("alice", "carol", FriendState::Friends)
            .unwrap();
        batch.put_friend("a", "x", FriendState::Friends).unwrap();
        store.commit(batch, true).unwrap();

        assert_eq!(
            store.friends_of("al").unwrap(),
            vec![
                ("al2".to_owned(), FriendState::RequestReceived),
                ("bob".to_owned(), FriendState::RequestSent),
                ("zed".to_owned(), FriendState::Friends),
            ]
        );
        assert_eq!(
            store.friends_of("alice").unwrap(),
            vec![("carol".to_owned(), FriendState::Friends)]
        );
        assert!(store.friends_of("ali").unwrap().is_empty());
        assert_eq!(store.friend("al", "carol").unwrap(), None);
    }

    #[test]
    fn corrupt_links_name_the_family_and_key() {
        let (_dir, store) = temp_store();
        let friends = store.cf(Cf::Friends).unwrap();
        let removed = [FriendState::Removed as u8];
        let cases: [(&str, &[u8]); 4] = [
            ("b", &removed),
            ("c", b""),
            ("d", b"\x03\x03"),
            ("e", b"\x09"),
        ];
        for (other, value) in cases {
            let key = keys::pair_key("mallory", other).unwrap();
            store.db.put_cf(friends, key, value).unwrap();
            let err = store.friend("mallory", other).unwrap_err();
            assert!(
                matches!(&err, StorageError::Corrupt { cf: "friends", key, .. }
                    if key == &format!("mallory\\x00{other}")),
                "{err}"
            );
        }
        assert!(matches!(
            store.friends_of("mallory"),
            Err(StorageError::Corrupt { cf: "friends", .. })
        ));
    }
}

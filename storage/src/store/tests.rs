//! Tests of `store.rs` against a real RocksDB in a temp dir.

use super::*;
use crate::batch::Batch;
use crate::records::AccountKind;
use crate::test_support::{chat, put_messages, temp_store};

fn alice() -> UserRecord {
    UserRecord {
        password_hash: "$argon2id$v=19$hash".to_owned(),
        kind: AccountKind::User,
        created_ms: 1_700_000_000_000,
    }
}

fn session(acked: u64) -> SessionRecord {
    SessionRecord {
        subscriptions: vec![
            ("inbox/alice".to_owned(), 1),
            ("reply/alice/+".to_owned(), 1),
        ],
        acked_inbox_seq: acked,
        expiry_secs: 3600,
        disconnected_ms: 0,
    }
}

#[test]
fn users_round_trip_and_list_in_order() {
    let (_dir, store) = temp_store();
    assert_eq!(store.user("alice").unwrap(), None);
    store.put_user("bob", &alice()).unwrap();
    store.put_user("alice", &alice()).unwrap();
    assert_eq!(store.user("alice").unwrap(), Some(alice()));
    let ids: Vec<String> = store
        .list_users()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, ["alice", "bob"]);
}

#[test]
fn messages_and_dedup_are_found_by_their_keys() {
    let (_dir, store) = temp_store();
    put_messages(&store, &[chat("dm:alice:bob", 1, "alice")]);
    let mut batch = Batch::new();
    batch.put_dedup("alice", "dm:alice:bob", "c1", 1).unwrap();
    store.commit(batch, false).unwrap();

    assert_eq!(
        store.message("dm:alice:bob", 1).unwrap(),
        Some(chat("dm:alice:bob", 1, "alice"))
    );
    assert_eq!(store.message("dm:alice:bob", 2).unwrap(), None);
    assert_eq!(store.dedup("alice", "dm:alice:bob", "c1").unwrap(), Some(1));
    assert_eq!(store.dedup("bob", "dm:alice:bob", "c1").unwrap(), None);
    assert_eq!(store.dedup("alice", "g:team", "c1").unwrap(), None);
    assert_eq!(store.dedup("alice", "dm:alice:bob", "c2").unwrap(), None);
}

#[test]
fn sessions_round_trip_and_the_cursor_only_moves_forward() {
    let (_dir, store) = temp_store();
    assert!(!store.set_session_cursor("alice", "phone", 5).unwrap());
    store.put_session("alice", "phone", &session(3)).unwrap();
    store.put_session("alice", "laptop", &session(0)).unwrap();
    assert_eq!(store.session("alice", "phone").unwrap(), Some(session(3)));

    assert!(store.set_session_cursor("alice", "phone", 9).unwrap());
    assert!(store.set_session_cursor("alice", "phone", 4).unwrap());
    assert_eq!(store.session("alice", "phone").unwrap(), Some(session(9)));

    let listed = store.list_sessions().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(
        (listed[0].0.as_str(), listed[0].1.as_str()),
        ("alice", "laptop")
    );

    store.delete_session("alice", "phone").unwrap();
    assert_eq!(store.session("alice", "phone").unwrap(), None);
    store.delete_session("alice", "phone").unwrap();
}

#[test]
fn corrupt_values_are_errors_that_name_the_key() {
    let (_dir, store) = temp_store();
    let users = store.cf(Cf::Users).unwrap();
    store
        .db
        .put_cf(users, b"mallory", b"\xff not json")
        .unwrap();
    let dedup = store.cf(Cf::Dedup).unwrap();
    store
        .db
        .put_cf(dedup, keys::dedup_key("a", "g:x", "c").unwrap(), b"123")
        .unwrap();
    let messages = store.cf(Cf::Messages).unwrap();
    store
        .db
        .put_cf(messages, keys::seq_key("g:x", 1).unwrap(), b"\xff\xff\xff")
        .unwrap();

    let err = store.user("mallory").unwrap_err();
    assert!(matches!(&err, StorageError::Corrupt { cf: "users", key, .. } if key == "mallory"));
    assert!(store.list_users().is_err());
    assert!(matches!(
        store.dedup("a", "g:x", "c"),
        Err(StorageError::Corrupt { cf: "dedup", .. })
    ));
    assert!(matches!(
        store.message("g:x", 1),
        Err(StorageError::Corrupt { cf: "messages", .. })
    ));
}

#[test]
fn ids_with_the_separator_are_refused() {
    let (_dir, store) = temp_store();
    assert!(matches!(
        store.user("a\0b"),
        Err(StorageError::InvalidKey(_))
    ));
    assert!(store.put_user("a\0b", &alice()).is_err());
}

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.put_user("alice", &alice()).unwrap();
        store.put_session("alice", "phone", &session(2)).unwrap();
        store.set_session_cursor("alice", "phone", 7).unwrap();
        store.sync_wal().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.user("alice").unwrap(), Some(alice()));
    assert_eq!(store.session("alice", "phone").unwrap(), Some(session(7)));
}

/// A WAL file: its name and inode number.
type WalFile = (std::ffi::OsString, u64);

/// The data dir's WAL files.
fn wal_files(dir: &std::path::Path) -> Vec<WalFile> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "log"))
        .map(|entry| (entry.file_name(), entry.metadata().unwrap().ino()))
        .collect()
}

/// Flushes every family's memtable, so the WAL before it is obsolete.
fn flush_all(store: &Store) {
    for cf in Cf::ALL {
        store.db.flush_cf(store.cf(cf).unwrap()).unwrap();
    }
}

/// True if a WAL file of `now` is one of `before`'s under another name.
fn reuses_a_file(before: &[WalFile], now: &[WalFile]) -> bool {
    now.iter().any(|(name, ino)| {
        before
            .iter()
            .any(|(old, old_ino)| old_ino == ino && old != name)
    })
}

#[test]
fn a_recycled_wal_file_is_overwritten_and_replays_what_was_synced_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut last = 1;
    {
        let store = Store::open(dir.path()).unwrap();
        put_messages(&store, &[chat("g:team", last, "alice")]);
        let first_wal = wal_files(dir.path());
        // The first WAL becomes obsolete and is kept for reuse. Every round
        // then switches to a new WAL; RocksDB lists an obsolete WAL for
        // reuse just after its flush returns, so the first one's file is
        // taken by the next switch or the one after.
        flush_all(&store);
        let reused = (0..10).any(|_| {
            last += 1;
            put_messages(&store, &[chat("g:team", last, "alice")]);
            flush_all(&store);
            reuses_a_file(&first_wal, &wal_files(dir.path()))
        });
        assert!(reused, "a new WAL (another name) is an obsolete WAL's file");
        last += 1;
        put_messages(&store, &[chat("g:team", last, "alice")]);
        // dropped without a flush: the last message is only in the current
        // WAL, the reused file
    }
    let store = Store::open(dir.path()).unwrap();
    for seq in 1..=last {
        assert_eq!(
            store.message("g:team", seq).unwrap(),
            Some(chat("g:team", seq, "alice"))
        );
    }
    assert_eq!(store.message("g:team", last + 1).unwrap(), None);
}

#[test]
fn a_second_open_of_the_same_dir_is_locked() {
    let (dir, _store) = temp_store();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StorageError::Locked(_)), "{err}");
    assert!(err.to_string().contains("in use"));
}

#[test]
fn a_foreign_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let meta = store.cf(Cf::Meta).unwrap();
        store
            .db
            .put_cf(meta, FORMAT_VERSION_KEY, 99u32.to_be_bytes())
            .unwrap();
    }
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(
        err,
        StorageError::IncompatibleFormat {
            found: 99,
            expected: 1
        }
    ));
}

//! Tests of `conversations.rs` against a real RocksDB in a temp dir.

use super::*;
use crate::test_support::{chat, put_messages, temp_store};

fn cursor(delivered: u64, read: u64) -> ReadCursor {
    ReadCursor { delivered, read }
}

fn group(id: &str, members: &[&str]) -> Group {
    Group {
        id: id.to_owned(),
        name: id.to_uppercase(),
        owner: members[0].to_owned(),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
    }
}

fn join(store: &Store, user: &str, channels: &[&str]) {
    let mut batch = Batch::new();
    for channel in channels {
        batch.put_user_channel(user, channel).unwrap();
    }
    store.commit(batch, true).unwrap();
}

fn set_cursor(store: &Store, user: &str, channel: &str, value: ReadCursor) {
    let mut batch = Batch::new();
    batch.put_cursor(user, channel, value).unwrap();
    store.commit(batch, true).unwrap();
}

#[test]
fn user_channels_round_trip_sorted_and_isolated_by_prefix() {
    let (_dir, store) = temp_store();
    assert!(store.user_channels("alice").unwrap().is_empty());
    join(&store, "alice", &["sys:alice", "g:team", "dm:alice:bob"]);
    join(&store, "al", &["dm:al:bob"]);
    join(&store, "alicia", &["g:other"]);

    assert_eq!(
        store.user_channels("alice").unwrap(),
        ["dm:alice:bob", "g:team", "sys:alice"]
    );
    assert_eq!(store.user_channels("al").unwrap(), ["dm:al:bob"]);
    assert!(store.has_user_channel("alice", "g:team").unwrap());
    assert!(!store.has_user_channel("al", "g:team").unwrap());
    assert!(!store.has_user_channel("alice", "g:tea").unwrap());

    let mut batch = Batch::new();
    batch.delete_user_channel("alice", "g:team").unwrap();
    batch.delete_user_channel("alice", "g:never").unwrap();
    store.commit(batch, true).unwrap();
    assert_eq!(
        store.user_channels("alice").unwrap(),
        ["dm:alice:bob", "sys:alice"]
    );
    assert!(!store.has_user_channel("alice", "g:team").unwrap());
}

#[test]
fn cursors_default_round_trip_and_isolate_by_prefix() {
    let (_dir, store) = temp_store();
    assert_eq!(
        store.cursor("alice", "g:team").unwrap(),
        ReadCursor::default()
    );
    set_cursor(&store, "alice", "g:team", cursor(9, 4));
    set_cursor(&store, "alice", "dm:alice:bob", cursor(u64::MAX, 1));
    set_cursor(&store, "al", "g:team", cursor(1, 1));
    set_cursor(&store, "alice", "g:team", cursor(10, 10));

    assert_eq!(store.cursor("alice", "g:team").unwrap(), cursor(10, 10));
    assert_eq!(store.cursor("al", "g:team").unwrap(), cursor(1, 1));
    assert_eq!(
        store.cursor("ali", "g:team").unwrap(),
        ReadCursor::default()
    );
    assert_eq!(
        store.cursors_of("alice").unwrap(),
        vec![
            ("dm:alice:bob".to_owned(), cursor(u64::MAX, 1)),
            ("g:team".to_owned(), cursor(10, 10)),
        ]
    );
    assert_eq!(
        store.cursors_of("al").unwrap(),
        vec![("g:team".to_owned(), cursor(1, 1))]
    );
}

#[test]
fn a_corrupt_cursor_names_the_family_and_key() {
    let (_dir, store) = temp_store();
    let cursors = store.cf(Cf::Cursors).unwrap();
    let key = keys::pair_key("mallory", "g:x").unwrap();
    store.db.put_cf(cursors, &key, [0u8; 15]).unwrap();
    let err = store.cursor("mallory", "g:x").unwrap_err();
    assert!(
        matches!(&err, StorageError::Corrupt { cf: "cursors", key, .. } if key == "mallory\\x00g:x"),
        "{err}"
    );
    assert!(store.cursors_of("mallory").is_err());
}

#[test]
fn unread_total_sums_the_users_channels_only() {
    let (_dir, store) = temp_store();
    let mut messages = Vec::new();
    messages.extend((1..=5).map(|seq| chat("g:team", seq, "bob")));
    messages.extend((1..=3).map(|seq| chat("dm:alice:bob", seq, "bob")));
    messages.extend((1..=7).map(|seq| chat("g:left", seq, "bob")));
    messages.extend((1..=2).map(|seq| chat("sys:alice", seq, "svc:news")));
    put_messages(&store, &messages);
    assert_eq!(store.unread_total("alice").unwrap(), 0);

    join(
        &store,
        "alice",
        &["g:team", "dm:alice:bob", "sys:alice", "g:empty"],
    );
    // No cursors yet: everything is unread (5 + 3 + 2 + 0).
    assert_eq!(store.unread_total("alice").unwrap(), 10);

    set_cursor(&store, "alice", "g:team", cursor(5, 2));
    set_cursor(&store, "alice", "dm:alice:bob", cursor(3, 3));
    // A cursor of a channel she is no longer in does not count.
    set_cursor(&store, "alice", "g:left", cursor(7, 0));
    set_cursor(&store, "alice", "a:before-everything", cursor(0, 0));
    assert_eq!(store.unread_total("alice").unwrap(), 3 + 2);

    // Another user's channels and cursors are separate.
    join(&store, "al", &["g:team"]);
    assert_eq!(store.unread_total("al").unwrap(), 5);
    assert_eq!(store.unread_total("alice").unwrap(), 5);
}

#[test]
fn a_new_data_dir_has_a_complete_empty_index() {
    let (_dir, store) = temp_store();
    assert!(store
        .get(Cf::Meta, USER_CHANNELS_BUILT_KEY)
        .unwrap()
        .is_some());
    let index = store.cf(Cf::UserChannels).unwrap();
    let mut iter = store.db.raw_iterator_cf(index);
    iter.seek_to_first();
    assert!(!iter.valid());
}

#[test]
fn an_old_data_dir_gets_its_index_built_once_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let mut batch = Batch::new();
        batch
            .put_group(&group("team", &["alice", "bob", "carol"]))
            .unwrap();
        batch.put_group(&group("al", &["al"])).unwrap();
        for message in [
            chat("dm:alice:bob", 1, "alice"),
            chat("dm:alice:bob", 2, "bob"),
            chat("dm:al:alice", 1, "al"),
            chat("g:team", 1, "alice"),
            chat("g:gone", 1, "dave"),
            chat("sys:bob", 1, "svc:news"),
            chat("sys:bob", 2, "svc:news"),
            chat("dm:broken", 1, "x"),
        ] {
            batch.put_message(&message).unwrap();
        }
        store.commit(batch, true).unwrap();
        // Written by a build that already had the index, then made to look
        // older than it.
        join(&store, "alice", &["g:stale"]);
        store.forget_user_channels_index();
        assert!(store.user_channels("alice").unwrap().is_empty());
    }

    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.user_channels("alice").unwrap(),
        ["dm:al:alice", "dm:alice:bob", "g:team"]
    );
    assert_eq!(
        store.user_channels("bob").unwrap(),
        ["dm:alice:bob", "g:team", "sys:bob"]
    );
    assert_eq!(store.user_channels("carol").unwrap(), ["g:team"]);
    assert_eq!(store.user_channels("al").unwrap(), ["dm:al:alice", "g:al"]);
    assert!(store.user_channels("dave").unwrap().is_empty());
    assert!(store
        .get(Cf::Meta, USER_CHANNELS_BUILT_KEY)
        .unwrap()
        .is_some());

    // Built once: later changes to the index survive the next open.
    let mut batch = Batch::new();
    batch.delete_user_channel("carol", "g:team").unwrap();
    store.commit(batch, true).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert!(store.user_channels("carol").unwrap().is_empty());
    assert_eq!(
        store.user_channels("bob").unwrap(),
        ["dm:alice:bob", "g:team", "sys:bob"]
    );
}

#[test]
fn message_channels_are_found_by_seeking_past_each_range() {
    let (_dir, store) = temp_store();
    put_messages(
        &store,
        &[
            chat("a", 1, "x"),
            chat("a", u64::MAX, "x"),
            chat("a\u{1}b", 3, "x"),
            chat("ab", 2, "x"),
            chat("b", 1, "x"),
        ],
    );
    assert_eq!(
        store.message_channels().unwrap(),
        ["a", "a\u{1}b", "ab", "b"]
    );
}

#[test]
fn channel_ids_give_their_users() {
    assert!(matches!(
        channel_users("dm:alice:bob"),
        Some(ChannelUsers::Direct("alice", "bob"))
    ));
    assert!(matches!(
        channel_users("sys:bob"),
        Some(ChannelUsers::System("bob"))
    ));
    for other in ["g:team", "dm:alice", "dm::bob", "dm:a:b:c", "sys:", "x:y"] {
        assert!(channel_users(other).is_none(), "{other}");
    }
}

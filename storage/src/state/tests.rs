//! The conformance suite of [`ChatState`]: every case runs against the data
//! dir (RocksDB in a temp dir, synced commits) and against [`MemoryStore`],
//! writing through the same [`Batch`]es and expecting the same reads.

use std::ops::Deref;

use parley_chat_logic::group::Group;
use parley_chat_logic::ReadCursor;
use parley_proto::v1::{envelope, FriendState, ReceiptEvent};
use tempfile::TempDir;

use super::ChatState;
use crate::test_support::{chat, temp_store};
use crate::{AccountKind, Batch, InboxEntry, MemoryStore, StorageError, UserRecord};

/// One implementation under test: its reads, and how it applies a batch.
struct Subject {
    state: Box<dyn ChatState>,
    apply: Box<dyn Fn(Batch)>,
    /// Dropped last, after the store.
    _dir: Option<TempDir>,
}

impl Subject {
    fn rocksdb() -> Subject {
        let (dir, store) = temp_store();
        Subject {
            state: Box::new(store.clone()),
            apply: Box::new(move |batch| store.commit(batch, true).expect("commit")),
            _dir: Some(dir),
        }
    }

    fn memory() -> Subject {
        let store = MemoryStore::new();
        Subject {
            state: Box::new(store.clone()),
            apply: Box::new(move |batch| store.apply(batch)),
            _dir: None,
        }
    }

    /// Applies one batch filled by `fill`.
    fn write(&self, fill: impl FnOnce(&mut Batch) -> Result<(), StorageError>) {
        let mut batch = Batch::new();
        fill(&mut batch).expect("a valid write");
        (self.apply)(batch);
    }
}

impl Deref for Subject {
    type Target = dyn ChatState;

    fn deref(&self) -> &Self::Target {
        self.state.as_ref()
    }
}

/// Runs each case against both implementations, one test each.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod rocksdb {
            $( #[test] fn $case() { super::$case(&super::Subject::rocksdb()); } )*
        }
        mod memory {
            $( #[test] fn $case() { super::$case(&super::Subject::memory()); } )*
        }
    };
}

conformance!(
    an_empty_state_has_nothing,
    users_exist_once_written,
    messages_read_back_and_move_the_channel_head,
    inbox_heads_follow_appends_of_each_user_only,
    dedup_keys_read_back_exactly,
    cursors_are_replaced_and_default_to_nothing,
    friend_links_are_listed_in_order_and_deleted,
    groups_are_created_replaced_and_deleted,
    the_last_write_to_a_key_in_a_batch_wins,
    nothing_is_visible_before_the_batch_is_applied,
    ids_with_the_separator_are_refused,
);

fn user() -> UserRecord {
    UserRecord {
        password_hash: "$argon2id$...".to_owned(),
        kind: AccountKind::User,
        created_ms: 1,
    }
}

fn group(id: &str, members: &[&str]) -> Group {
    Group {
        id: id.to_owned(),
        name: format!("Group {id}"),
        owner: members[0].to_owned(),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
    }
}

fn message_ref(channel: &str, seq: u64) -> InboxEntry {
    InboxEntry::Message {
        channel: channel.to_owned(),
        seq,
    }
}

fn an_empty_state_has_nothing(state: &Subject) {
    assert!(!state.has_user("alice").unwrap());
    assert_eq!(state.group("team").unwrap(), None);
    assert_eq!(state.message("g:team", 1).unwrap(), None);
    assert_eq!(state.dedup("alice", "g:team", "c1").unwrap(), None);
    assert_eq!(state.last_channel_seq("g:team").unwrap(), 0);
    assert_eq!(state.last_inbox_seq("alice").unwrap(), 0);
    assert_eq!(
        state.cursor("alice", "g:team").unwrap(),
        ReadCursor::default()
    );
    assert_eq!(state.friend("alice", "bob").unwrap(), None);
    assert!(state.friends_of("alice").unwrap().is_empty());
}

fn users_exist_once_written(state: &Subject) {
    state.write(|batch| batch.put_user("alice", &user()));
    assert!(state.has_user("alice").unwrap());
    for other in ["al", "alicex", "bob", ""] {
        assert!(!state.has_user(other).unwrap(), "{other}");
    }
}

fn messages_read_back_and_move_the_channel_head(state: &Subject) {
    state.write(|batch| {
        // out of order, and neighbours whose ids share a prefix
        for (channel, seq) in [("g:team", 3), ("g:team", 1), ("g:team2", 9), ("g:te", 2)] {
            batch.put_message(&chat(channel, seq, "alice"))?;
        }
        batch.put_message(&chat("g:team", 2, "bob"))
    });
    assert_eq!(
        state.message("g:team", 2).unwrap(),
        Some(chat("g:team", 2, "bob"))
    );
    assert_eq!(state.message("g:team", 4).unwrap(), None);
    assert_eq!(state.message("g:team2", 3).unwrap(), None);
    assert_eq!(state.last_channel_seq("g:team").unwrap(), 3);
    assert_eq!(state.last_channel_seq("g:team2").unwrap(), 9);
    assert_eq!(state.last_channel_seq("g:te").unwrap(), 2);
    assert_eq!(state.last_channel_seq("g:t").unwrap(), 0);

    state.write(|batch| batch.put_message(&chat("g:team", 4, "carol")));
    assert_eq!(state.last_channel_seq("g:team").unwrap(), 4);
    assert_eq!(
        state.message("g:team", 4).unwrap(),
        Some(chat("g:team", 4, "carol"))
    );
}

fn inbox_heads_follow_appends_of_each_user_only(state: &Subject) {
    let receipt = envelope::Body::Receipt(ReceiptEvent {
        channel: "g:team".to_owned(),
        user: "bob".to_owned(),
        seq: 1,
        kind: 2,
    });
    state.write(|batch| {
        batch.put_inbox("al", 1, &message_ref("g:team", 1))?;
        batch.put_inbox("al", 2, &InboxEntry::Event(receipt.clone()))?;
        for inbox_seq in 1..=5 {
            batch.put_inbox("alice", inbox_seq, &message_ref("g:team", inbox_seq))?;
        }
        Ok(())
    });
    assert_eq!(state.last_inbox_seq("al").unwrap(), 2);
    assert_eq!(state.last_inbox_seq("alice").unwrap(), 5);
    assert_eq!(state.last_inbox_seq("a").unwrap(), 0);
    assert_eq!(state.last_inbox_seq("alicia").unwrap(), 0);

    state.write(|batch| batch.put_inbox("al", 3, &message_ref("g:team", 2)));
    assert_eq!(state.last_inbox_seq("al").unwrap(), 3);
    assert_eq!(state.last_inbox_seq("alice").unwrap(), 5);
}

fn dedup_keys_read_back_exactly(state: &Subject) {
    state.write(|batch| {
        batch.put_dedup("alice", "dm:alice:bob", "c1", 4)?;
        batch.put_dedup("alice", "dm:alice:bob", "any\0bytes", 5)?;
        batch.put_dedup("bob", "dm:alice:bob", "c1", 6)
    });
    let dedup = |sender, channel, id| state.dedup(sender, channel, id).unwrap();
    assert_eq!(dedup("alice", "dm:alice:bob", "c1"), Some(4));
    assert_eq!(dedup("alice", "dm:alice:bob", "any\0bytes"), Some(5));
    assert_eq!(dedup("bob", "dm:alice:bob", "c1"), Some(6));
    assert_eq!(dedup("alice", "dm:alice:bob", "c"), None);
    assert_eq!(dedup("alice", "dm:alice:bob", "c10"), None);
    assert_eq!(dedup("alice", "g:team", "c1"), None);
    assert_eq!(dedup("carol", "dm:alice:bob", "c1"), None);
}

fn cursors_are_replaced_and_default_to_nothing(state: &Subject) {
    let cursor = |delivered, read| ReadCursor { delivered, read };
    state.write(|batch| {
        batch.put_cursor("alice", "g:team", cursor(3, 1))?;
        batch.put_cursor("alice", "dm:alice:bob", cursor(7, 7))
    });
    assert_eq!(state.cursor("alice", "g:team").unwrap(), cursor(3, 1));
    assert_eq!(state.cursor("alice", "dm:alice:bob").unwrap(), cursor(7, 7));
    assert_eq!(
        state.cursor("bob", "g:team").unwrap(),
        ReadCursor::default()
    );

    state.write(|batch| batch.put_cursor("alice", "g:team", cursor(5, 5)));
    assert_eq!(state.cursor("alice", "g:team").unwrap(), cursor(5, 5));
    assert_eq!(state.cursor("alice", "dm:alice:bob").unwrap(), cursor(7, 7));
}

fn friend_links_are_listed_in_order_and_deleted(state: &Subject) {
    state.write(|batch| {
        batch.put_friend("alice", "carol", FriendState::Friends)?;
        batch.put_friend("alice", "bob", FriendState::RequestSent)?;
        batch.put_friend("bob", "alice", FriendState::RequestReceived)?;
        batch.put_friend("al", "zed", FriendState::Friends)?;
        batch.put_friend("alicex", "y", FriendState::Friends)
    });
    assert_eq!(
        state.friend("alice", "bob").unwrap(),
        Some(FriendState::RequestSent)
    );
    assert_eq!(
        state.friend("bob", "alice").unwrap(),
        Some(FriendState::RequestReceived)
    );
    assert_eq!(state.friend("alice", "zed").unwrap(), None);
    assert_eq!(
        state.friends_of("alice").unwrap(),
        vec![
            ("bob".to_owned(), FriendState::RequestSent),
            ("carol".to_owned(), FriendState::Friends),
        ]
    );
    assert_eq!(
        state.friends_of("al").unwrap(),
        vec![("zed".to_owned(), FriendState::Friends)]
    );
    assert!(state.friends_of("ali").unwrap().is_empty());

    state.write(|batch| {
        batch.delete_friend("alice", "bob")?;
        batch.delete_friend("alice", "nobody")?;
        batch.put_friend("bob", "alice", FriendState::Friends)
    });
    assert_eq!(state.friend("alice", "bob").unwrap(), None);
    assert_eq!(
        state.friend("bob", "alice").unwrap(),
        Some(FriendState::Friends)
    );
    assert_eq!(
        state.friends_of("alice").unwrap(),
        vec![("carol".to_owned(), FriendState::Friends)]
    );
}

fn groups_are_created_replaced_and_deleted(state: &Subject) {
    let team = group("team", &["alice", "bob"]);
    state.write(|batch| {
        batch.put_group(&team)?;
        batch.put_group(&group("team2", &["carol"]))
    });
    assert_eq!(state.group("team").unwrap(), Some(team));
    assert_eq!(state.group("tea").unwrap(), None);

    let bigger = group("team", &["alice", "bob", "carol"]);
    state.write(|batch| batch.put_group(&bigger));
    assert_eq!(state.group("team").unwrap(), Some(bigger));

    state.write(|batch| {
        batch.delete_group("team")?;
        batch.delete_group("never")
    });
    assert_eq!(state.group("team").unwrap(), None);
    assert_eq!(
        state.group("team2").unwrap(),
        Some(group("team2", &["carol"]))
    );
}

fn the_last_write_to_a_key_in_a_batch_wins(state: &Subject) {
    state.write(|batch| {
        batch.put_group(&group("team", &["alice"]))?;
        batch.put_group(&group("team", &["alice", "bob"]))?;
        batch.put_friend("alice", "bob", FriendState::RequestSent)?;
        batch.delete_friend("alice", "bob")?;
        batch.delete_friend("alice", "carol")?;
        batch.put_friend("alice", "carol", FriendState::Friends)?;
        batch.put_cursor(
            "alice",
            "g:team",
            ReadCursor {
                delivered: 2,
                read: 2,
            },
        )?;
        batch.put_cursor(
            "alice",
            "g:team",
            ReadCursor {
                delivered: 1,
                read: 0,
            },
        )
    });
    assert_eq!(
        state.group("team").unwrap(),
        Some(group("team", &["alice", "bob"]))
    );
    assert_eq!(state.friend("alice", "bob").unwrap(), None);
    assert_eq!(
        state.friend("alice", "carol").unwrap(),
        Some(FriendState::Friends)
    );
    assert_eq!(
        state.cursor("alice", "g:team").unwrap(),
        ReadCursor {
            delivered: 1,
            read: 0
        }
    );
}

fn nothing_is_visible_before_the_batch_is_applied(state: &Subject) {
    let mut batch = Batch::new();
    batch.put_user("alice", &user()).unwrap();
    batch.put_message(&chat("g:team", 1, "alice")).unwrap();
    batch
        .put_inbox("alice", 1, &message_ref("g:team", 1))
        .unwrap();
    batch.put_dedup("alice", "g:team", "c1", 1).unwrap();
    batch.put_group(&group("team", &["alice"])).unwrap();
    assert_eq!(batch.len(), 5);
    assert!(!state.has_user("alice").unwrap());
    assert_eq!(state.last_channel_seq("g:team").unwrap(), 0);

    (state.apply)(batch);
    assert!(state.has_user("alice").unwrap());
    assert_eq!(state.last_channel_seq("g:team").unwrap(), 1);
    assert_eq!(state.last_inbox_seq("alice").unwrap(), 1);
    assert_eq!(state.dedup("alice", "g:team", "c1").unwrap(), Some(1));
    assert!(state.group("team").unwrap().is_some());

    // an empty batch applies and changes nothing
    (state.apply)(Batch::new());
    assert_eq!(state.last_channel_seq("g:team").unwrap(), 1);
}

fn ids_with_the_separator_are_refused(state: &Subject) {
    let bad = "a\0b";
    let refused = |result: Result<(), StorageError>, what: &str| {
        assert!(
            matches!(result, Err(StorageError::InvalidKey(_))),
            "{what}: {result:?}"
        );
    };
    refused(state.has_user(bad).map(drop), "has_user");
    refused(state.group(bad).map(drop), "group");
    refused(state.message(bad, 1).map(drop), "message");
    refused(state.dedup(bad, "g:team", "c1").map(drop), "dedup");
    refused(state.last_channel_seq(bad).map(drop), "last_channel_seq");
    refused(state.last_inbox_seq(bad).map(drop), "last_inbox_seq");
    refused(state.cursor("alice", bad).map(drop), "cursor");
    refused(state.friend(bad, "bob").map(drop), "friend");
    refused(state.friends_of(bad).map(drop), "friends_of");
}

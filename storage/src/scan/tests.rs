//! Tests of `scan.rs` against a real RocksDB in a temp dir.

use super::*;
use crate::batch::Batch;
use crate::test_support::{chat, put_messages, temp_store};
use parley_proto::v1::{GroupEvent, ReceiptEvent};

const TEAM: &str = "g:team";

fn seqs(messages: &[ChatMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

fn receipt(seq: u64) -> Body {
    Body::Receipt(ReceiptEvent {
        channel: TEAM.to_owned(),
        user: "bob".to_owned(),
        seq,
        kind: 1,
    })
}

/// Messages 1..=n in TEAM, each referenced from `user`'s inbox at the same seq.
fn fill(store: &Store, user: &str, n: u64) {
    let mut batch = Batch::new();
    for seq in 1..=n {
        batch.put_message(&chat(TEAM, seq, "bob")).unwrap();
        let entry = InboxEntry::Message {
            channel: TEAM.to_owned(),
            seq,
        };
        batch.put_inbox(user, seq, &entry).unwrap();
    }
    store.commit(batch, true).unwrap();
}

#[test]
fn empty_ranges_have_seq_zero() {
    let (_dir, store) = temp_store();
    assert_eq!(store.last_channel_seq(TEAM).unwrap(), 0);
    assert_eq!(store.last_inbox_seq("alice").unwrap(), 0);
    assert_eq!(store.history(TEAM, 0, 10).unwrap(), (vec![], false));
    assert_eq!(store.inbox_after("alice", 0, 10).unwrap(), (vec![], false));
}

#[test]
fn last_seq_crosses_byte_boundaries() {
    let (_dir, store) = temp_store();
    put_messages(
        &store,
        &[
            chat(TEAM, 255, "a"),
            chat(TEAM, 65_536, "a"),
            chat(TEAM, 256, "a"),
        ],
    );
    assert_eq!(store.last_channel_seq(TEAM).unwrap(), 65_536);
    let (page, more) = store.history(TEAM, 0, 10).unwrap();
    assert_eq!((seqs(&page), more), (vec![65_536, 256, 255], false));
}

#[test]
fn history_pages_newest_first() {
    let (_dir, store) = temp_store();
    fill(&store, "alice", 7);
    put_messages(&store, &[chat("g:teamb", 1, "x"), chat("g:tea", 9, "x")]);

    let (page, more) = store.history(TEAM, 0, 3).unwrap();
    assert_eq!((seqs(&page), more), (vec![7, 6, 5], true));
    let (page, more) = store.history(TEAM, 5, 3).unwrap();
    assert_eq!((seqs(&page), more), (vec![4, 3, 2], true));
    let (page, more) = store.history(TEAM, 2, 3).unwrap();
    assert_eq!((seqs(&page), more), (vec![1], false));
    let (page, more) = store.history(TEAM, 4, 3).unwrap();
    assert_eq!((seqs(&page), more), (vec![3, 2, 1], false));
    assert_eq!(store.history(TEAM, 1, 3).unwrap(), (vec![], false));
    assert_eq!(store.history(TEAM, 0, 0).unwrap(), (vec![], true));
    assert_eq!(store.history(TEAM, 0, 100).unwrap().0.len(), 7);
}

#[test]
fn inbox_after_resolves_references_and_keeps_events_inline() {
    let (_dir, store) = temp_store();
    put_messages(
        &store,
        &[chat(TEAM, 1, "bob"), chat("dm:alice:bob", 1, "bob")],
    );
    let group = Body::Group(GroupEvent {
        group_id: "team".to_owned(),
        name: "Team".to_owned(),
        members: vec!["alice".to_owned(), "bob".to_owned()],
        actor: "bob".to_owned(),
    });
    let entries = [
        InboxEntry::Event(group.clone()),
        InboxEntry::Message {
            channel: TEAM.to_owned(),
            seq: 1,
        },
        InboxEntry::Event(receipt(1)),
        InboxEntry::Message {
            channel: "dm:alice:bob".to_owned(),
            seq: 1,
        },
    ];
    let mut batch = Batch::new();
    for (index, entry) in entries.iter().enumerate() {
        batch.put_inbox("alice", index as u64 + 1, entry).unwrap();
    }
    store.commit(batch, true).unwrap();

    let (page, more) = store.inbox_after("alice", 0, 10).unwrap();
    assert!(!more);
    let inbox_seqs: Vec<u64> = page.iter().map(|e| e.inbox_seq).collect();
    assert_eq!(inbox_seqs, [1, 2, 3, 4]);
    assert_eq!(page[0].body, Some(group));
    assert_eq!(page[1].body, Some(Body::Message(chat(TEAM, 1, "bob"))));
    assert_eq!(page[2].body, Some(receipt(1)));
    assert_eq!(
        page[3].body,
        Some(Body::Message(chat("dm:alice:bob", 1, "bob")))
    );
}

#[test]
fn inbox_after_pages_in_order() {
    let (_dir, store) = temp_store();
    fill(&store, "alice", 5);
    let (page, more) = store.inbox_after("alice", 1, 2).unwrap();
    let inbox_seqs: Vec<u64> = page.iter().map(|e| e.inbox_seq).collect();
    assert_eq!((inbox_seqs, more), (vec![2, 3], true));
    let (page, more) = store.inbox_after("alice", 3, 2).unwrap();
    assert_eq!((page.len(), more), (2, false));
    assert_eq!(store.inbox_after("alice", 5, 2).unwrap(), (vec![], false));
    assert_eq!(
        store.inbox_after("alice", u64::MAX, 2).unwrap(),
        (vec![], false)
    );
}

#[test]
fn inbox_scans_of_al_and_alice_never_mix() {
    let (_dir, store) = temp_store();
    fill(&store, "alice", 3);
    let mut batch = Batch::new();
    batch
        .put_inbox("al", 1, &InboxEntry::Event(receipt(1)))
        .unwrap();
    batch
        .put_inbox("alicf", 9, &InboxEntry::Event(receipt(9)))
        .unwrap();
    store.commit(batch, true).unwrap();

    assert_eq!(store.last_inbox_seq("al").unwrap(), 1);
    assert_eq!(store.last_inbox_seq("alice").unwrap(), 3);
    assert_eq!(store.last_inbox_seq("a").unwrap(), 0);
    let (page, more) = store.inbox_after("al", 0, 10).unwrap();
    assert_eq!((page.len(), more), (1, false));
    assert_eq!(page[0].body, Some(receipt(1)));
    assert_eq!(store.inbox_after("alice", 0, 10).unwrap().0.len(), 3);
}

#[test]
fn reopen_recovers_the_last_sequence_numbers() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        fill(&store, "alice", 300);
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.last_channel_seq(TEAM).unwrap(), 300);
    assert_eq!(store.last_inbox_seq("alice").unwrap(), 300);
    let (page, _) = store.inbox_after("alice", 299, 10).unwrap();
    assert_eq!(page[0].body, Some(Body::Message(chat(TEAM, 300, "bob"))));
}

#[test]
fn corrupt_inbox_entries_are_errors() {
    let (_dir, store) = temp_store();
    let inbox = store.cf(Cf::Inbox).unwrap();
    store
        .db
        .put_cf(inbox, keys::seq_key("alice", 1).unwrap(), b"\x07junk")
        .unwrap();
    let err = store.inbox_after("alice", 0, 10).unwrap_err();
    assert!(
        matches!(err, StorageError::Corrupt { cf: "inbox", .. }),
        "{err}"
    );
}

#[test]
fn a_reference_to_a_missing_message_is_an_error() {
    let (_dir, store) = temp_store();
    let mut batch = Batch::new();
    let entry = InboxEntry::Message {
        channel: TEAM.to_owned(),
        seq: 4,
    };
    batch.put_inbox("alice", 1, &entry).unwrap();
    store.commit(batch, true).unwrap();
    let err = store.inbox_after("alice", 0, 10).unwrap_err();
    assert!(err.to_string().contains("g:team#4"), "{err}");
}

#[test]
fn a_malformed_key_in_a_range_is_an_error() {
    let (_dir, store) = temp_store();
    let messages = store.cf(Cf::Messages).unwrap();
    store.db.put_cf(messages, b"g:team\0short", b"").unwrap();
    assert!(matches!(
        store.last_channel_seq(TEAM),
        Err(StorageError::Corrupt { .. })
    ));
}

//! Helpers shared by the unit tests: a store in a temp dir and sample data.

use parley_proto::v1::ChatMessage;
use tempfile::TempDir;

use crate::batch::Batch;
use crate::store::Store;

/// A fresh store; keep the `TempDir` alive as long as the store.
pub(crate) fn temp_store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("open store");
    (dir, store)
}

/// A message of `sender` in `channel`, with a text naming its seq.
pub(crate) fn chat(channel: &str, seq: u64, sender: &str) -> ChatMessage {
    ChatMessage {
        channel: channel.to_owned(),
        seq,
        sender: sender.to_owned(),
        text: format!("message {seq}"),
        ts_ms: 1_700_000_000_000 + seq as i64,
        client_msg_id: format!("c{seq}"),
        system: false,
    }
}

/// Commits `messages` in one synced batch.
pub(crate) fn put_messages(store: &Store, messages: &[ChatMessage]) {
    let mut batch = Batch::new();
    for message in messages {
        batch.put_message(message).expect("put message");
    }
    store.commit(batch, true).expect("commit");
}

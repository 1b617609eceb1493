//! Read-only requests (Sync, History): answered straight from RocksDB on a
//! blocking thread, without going through the engine.

use parley_chat_logic::channel::Channel;
use parley_chat_logic::{send, ChatError};
use parley_proto::v1::{HistoryPage, SyncPage};
use parley_storage::Store;

use super::engine::internal;
use super::plan::{group_from_record, StoreDirectory};

/// The user's inbox after `after_inbox_seq`, oldest first.
pub fn sync(
    store: &Store,
    user: &str,
    after_inbox_seq: u64,
    limit: u32,
) -> Result<SyncPage, ChatError> {
    let (events, more) = store
        .inbox_after(user, after_inbox_seq, limit as usize)
        .map_err(internal)?;
    Ok(SyncPage { events, more })
}

/// A page of a channel's messages, newest first; members only.
pub fn history(
    store: &Store,
    user: &str,
    channel: &Channel,
    before_seq: u64,
    limit: u32,
) -> Result<HistoryPage, ChatError> {
    let group = match channel {
        Channel::Group(id) => store.group(id).map_err(internal)?.map(group_from_record),
        _ => None,
    };
    send::recipients(user, channel, group.as_ref(), &StoreDirectory::new(store))?;
    let (messages, more) = store
        .history(&channel.id(), before_seq, limit as usize)
        .map_err(internal)?;
    Ok(HistoryPage { messages, more })
}

//! Read-only requests (Sync, History, QueryPresence): answered straight
//! from RocksDB (and the presence tracker) on a blocking thread, without
//! going through the engine.

use std::collections::HashSet;

use parley_chat_logic::channel::Channel;
use parley_chat_logic::group::Group;
use parley_chat_logic::{send, ChatError};
use parley_proto::v1::{FriendState, HistoryPage, PresenceList, SyncPage};
use parley_storage::Store;

use crate::presence::Presence;

use super::outcome::internal;
use super::plan::StoreDirectory;

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
    let group = group_of(store, channel)?;
    if let Channel::System(_) = channel {
        // Its owner reads a system channel (only services post to it).
        send::check_reader(user, channel, None)?;
    } else {
        send::recipients(user, channel, group.as_ref(), &StoreDirectory::new(store))?;
    }
    let (messages, more) = store
        .history(&channel.id(), before_seq, limit as usize)
        .map_err(internal)?;
    Ok(HistoryPage { messages, more })
}

/// `QueryPresence`: the current state of each listed user, if every one of
/// them is the asker, a friend, or a member of a group the asker is in;
/// otherwise `FORBIDDEN` as a whole (unknown users included, so ids cannot
/// be probed).
pub fn presence(
    store: &Store,
    presence: &Presence,
    asker: &str,
    users: &[String],
) -> Result<PresenceList, ChatError> {
    let visible = visible_to(store, asker)?;
    if let Some(hidden) = users
        .iter()
        .find(|user| *user != asker && !visible.contains(*user))
    {
        return Err(ChatError::forbidden(format!(
            "{hidden} is neither your friend nor a member of one of your groups"
        )));
    }
    let users = presence.states(users).map_err(internal)?;
    Ok(PresenceList { users })
}

/// Everyone whose presence `user` may ask for: friends and co-members.
fn visible_to(store: &Store, user: &str) -> Result<HashSet<String>, ChatError> {
    let mut visible: HashSet<String> = store
        .friends_of(user)
        .map_err(internal)?
        .into_iter()
        .filter(|(_, state)| *state == FriendState::Friends)
        .map(|(friend, _)| friend)
        .collect();
    for channel in store.user_channels(user).map_err(internal)? {
        let Ok(Channel::Group(group_id)) = Channel::parse(&channel) else {
            continue;
        };
        if let Some(group) = store.group(&group_id).map_err(internal)? {
            visible.extend(group.members);
        }
    }
    Ok(visible)
}

/// The group of a `g:` channel as stored (`None` for other channels or a
/// group that does not exist).
pub(super) fn group_of(store: &Store, channel: &Channel) -> Result<Option<Group>, ChatError> {
    match channel {
        Channel::Group(id) => store.group(id).map_err(internal),
        _ => Ok(None),
    }
}

//! The last assigned `seq` of each channel and `inbox_seq` of each user,
//! kept by the engine across batches and loaded lazily from the state.

use std::collections::HashMap;

use parley_chat_logic::ChatError;
use parley_storage::ChatState;

use crate::chat::outcome::internal;

/// Last assigned sequence numbers, loaded lazily from the state.
///
/// A job first [`Sequences::load`]s every counter it will touch (the only
/// fallible step), then takes numbers with the infallible `next_*` calls, so
/// a job that fails never leaves a gap behind.
#[derive(Default)]
pub(in crate::chat) struct Sequences {
    channels: HashMap<String, u64>,
    inboxes: HashMap<String, u64>,
}

impl Sequences {
    /// Loads the counters of `channel` and of `users` not loaded yet.
    pub(super) fn load(
        &mut self,
        state: &dyn ChatState,
        channel: Option<&str>,
        users: &[String],
    ) -> Result<(), ChatError> {
        if let Some(channel) = channel {
            if !self.channels.contains_key(channel) {
                let last = state.last_channel_seq(channel).map_err(internal)?;
                self.channels.insert(channel.to_owned(), last);
            }
        }
        for user in users {
            if !self.inboxes.contains_key(user) {
                let last = state.last_inbox_seq(user).map_err(internal)?;
                self.inboxes.insert(user.clone(), last);
            }
        }
        Ok(())
    }

    /// The last `seq` of a channel [`load`](Self::load)ed before.
    pub(super) fn channel_seq(&self, channel: &str) -> u64 {
        self.channels.get(channel).copied().unwrap_or(0)
    }

    /// The next `seq` of a channel [`load`](Self::load)ed before.
    pub(super) fn next_channel_seq(&mut self, channel: &str) -> u64 {
        let last = self.channels.entry(channel.to_owned()).or_default();
        *last += 1;
        *last
    }

    /// The next `inbox_seq` of a user [`load`](Self::load)ed before.
    pub(super) fn next_inbox_seq(&mut self, user: &str) -> u64 {
        let last = self.inboxes.entry(user.to_owned()).or_default();
        *last += 1;
        *last
    }

    /// Forgets everything, so counters are reloaded from what is durable.
    pub(in crate::chat) fn reset(&mut self) {
        self.channels.clear();
        self.inboxes.clear();
    }
}

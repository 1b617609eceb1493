//! Friendships: `ChangeFriends` through the pure state machine of
//! `parley_chat_logic::friends`, both sides' links in the batch, a
//! `FriendEvent` in each side's inbox, and the presence pair topics after
//! the commit.

use std::collections::HashSet;

use parley_chat_logic::command::ChangeFriends;
use parley_chat_logic::friends::{self, FriendChange};
use parley_chat_logic::group::Directory;
use parley_chat_logic::ChatError;
use parley_proto::v1::{envelope, Ack, FriendState};

use super::{BatchPlan, Effect};
use crate::chat::outcome::internal;

impl BatchPlan<'_> {
    /// Every add and remove of one request, all or none: an unknown user or
    /// the friend limit refuses the whole request.
    pub(super) fn change_friends(
        &mut self,
        user: &str,
        change: &ChangeFriends,
    ) -> Result<Ack, ChatError> {
        let directory = self.directory();
        for other in &change.add {
            if !directory.is_user(other)? {
                return Err(ChatError::not_found(format!("unknown user {other}")));
            }
        }
        let mut links = self.links_of(user)?;
        let mut changes = Vec::new();
        // removals first: they make room under the friend limit
        for other in &change.remove {
            let now = self.link(user, other)?;
            if let Some(planned) = friends::remove(user, other, now) {
                links.remove(other);
                changes.push((other.clone(), planned));
            }
        }
        for other in &change.add {
            let now = self.link(user, other)?;
            if let Some(planned) = friends::add(user, other, now, links.len(), self.limits)? {
                links.insert(other.clone());
                changes.push((other.clone(), planned));
            }
        }
        let mut notified = vec![user.to_owned()];
        notified.extend(changes.iter().map(|(other, _)| other.clone()));
        self.sequences.load(self.state, None, &notified)?;
        for (other, planned) in changes {
            self.apply_friend_change(user, &other, planned);
        }
        Ok(self.ack(String::new(), 0))
    }

    fn apply_friend_change(&mut self, user: &str, other: &str, change: FriendChange) {
        self.set_link(user, other, change.mine);
        self.set_link(other, user, change.theirs);
        self.append_event(&[user.to_owned()], envelope::Body::Friend(change.to_me));
        self.append_event(&[other.to_owned()], envelope::Body::Friend(change.to_them));
        if change.became_friends || change.unfriended {
            self.effects.push(Effect::Friendship {
                a: user.to_owned(),
                b: other.to_owned(),
                friends: change.became_friends,
            });
        }
    }

    fn set_link(&mut self, user: &str, other: &str, state: Option<FriendState>) {
        let written = match state {
            Some(state) => self.batch.put_friend(user, other, state),
            None => self.batch.delete_friend(user, other),
        };
        self.check(written);
        self.friends
            .insert((user.to_owned(), other.to_owned()), state);
    }

    /// `user`'s link about `other`, as planned in this batch or stored.
    fn link(&self, user: &str, other: &str) -> Result<Option<FriendState>, ChatError> {
        let key = (user.to_owned(), other.to_owned());
        if let Some(planned) = self.friends.get(&key) {
            return Ok(*planned);
        }
        self.state.friend(user, other).map_err(internal)
    }

    /// Everyone `user` has a link with (friends and requests both ways).
    fn links_of(&self, user: &str) -> Result<HashSet<String>, ChatError> {
        let mut links: HashSet<String> = self
            .state
            .friends_of(user)
            .map_err(internal)?
            .into_iter()
            .map(|(other, _)| other)
            .collect();
        for ((owner, other), state) in &self.friends {
            if owner == user {
                match state {
                    Some(_) => links.insert(other.clone()),
                    None => links.remove(other),
                };
            }
        }
        Ok(links)
    }
}

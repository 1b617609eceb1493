//! The publisher: one task that handles state changes, friendship changes
//! and snapshot reads one at a time, in the order they were queued
//! ([`Change`]), writes last activity and tells friends; and, at shutdown,
//! saves the last activity of everyone online.
//!
//! Owns: what was published (`published_online`), the pair topics' values
//! and the reads behind them. Must not: read the tracker for a state it
//! publishes (it may be ahead of what friends have seen; see the module
//! docs of [`super`]), or block the runtime (the store work runs in
//! `spawn_blocking`).

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};

use bytes::Bytes;
use parley_proto::v1;
use parley_proto::v1::FriendState;
use parley_storage::StorageError;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Presence, Transition};
use crate::router::PresenceUpdate;

/// What the publisher handles, in the order it happened.
pub(super) enum Change {
    User(Transition),
    Friendship {
        a: String,
        b: String,
        friends: bool,
    },
    /// Read the retained presence topics of `observer`.
    Snapshot {
        observer: String,
        done: oneshot::Sender<Result<Vec<PresenceUpdate>, StorageError>>,
    },
}

impl Presence {
    /// The snapshot itself (blocking; in the publisher).
    fn read_retained(&self, observer: &str) -> Result<Vec<PresenceUpdate>, StorageError> {
        let friends = self.friends_of(observer)?;
        Ok(self
            .published_states(&friends)?
            .into_iter()
            .map(|state| PresenceUpdate {
                subject: state.user.clone(),
                payload: Bytes::from(state.encode_to_vec()),
            })
            .collect())
    }

    /// The states of `users` as published (blocking; in the publisher).
    fn published_states(&self, users: &[String]) -> Result<Vec<v1::Presence>, StorageError> {
        let known: Vec<Option<(bool, i64)>> = {
            let published = self.published();
            let online = |user: &String| published.get(user).map(|at| (true, *at));
            users.iter().map(online).collect()
        };
        self.complete_from_store(users, known)
    }

    /// `Presence` of each of `users` from what is `known` of them, the rest
    /// offline with their stored last activity (one multi-get).
    pub(super) fn complete_from_store(
        &self,
        users: &[String],
        known: Vec<Option<(bool, i64)>>,
    ) -> Result<Vec<v1::Presence>, StorageError> {
        let unknown: Vec<&str> = users
            .iter()
            .zip(&known)
            .filter(|(_, state)| state.is_none())
            .map(|(user, _)| user.as_str())
            .collect();
        let mut stored = self.store.last_active_many(&unknown)?.into_iter();
        Ok(users
            .iter()
            .zip(known)
            .map(|(user, state)| {
                let (online, last_active_ms) =
                    state.unwrap_or_else(|| (false, stored.next().flatten().unwrap_or(0)));
                v1::Presence {
                    user: user.clone(),
                    online,
                    last_active_ms,
                }
            })
            .collect())
    }

    fn published(&self) -> MutexGuard<'_, HashMap<String, i64>> {
        self.published_online
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the last activity of the changes never published and of
    /// everyone online (at shutdown, blocking).
    fn persist_at_shutdown(&self, unpublished: &[Transition]) {
        let online = self.tracker().online_users();
        let unpublished = unpublished
            .iter()
            .map(|t| (t.user.clone(), t.last_active_ms));
        for (user, last_active_ms) in unpublished.chain(online) {
            if let Err(error) = self.store.set_last_active(&user, last_active_ms) {
                tracing::warn!(%error, %user, "cannot save the last activity");
            }
        }
    }

    fn friends_of(&self, user: &str) -> Result<Vec<String>, StorageError> {
        Ok(self
            .store
            .friends_of(user)?
            .into_iter()
            .filter(|(_, state)| *state == FriendState::Friends)
            .map(|(friend, _)| friend)
            .collect())
    }

    /// Tells `user`'s friends their new state (blocking).
    fn publish_transition(&self, transition: &Transition) -> Result<(), StorageError> {
        self.store
            .set_last_active(&transition.user, transition.last_active_ms)?;
        match transition.online {
            true => self
                .published()
                .insert(transition.user.clone(), transition.last_active_ms),
            false => self.published().remove(&transition.user),
        };
        let state = v1::Presence {
            user: transition.user.clone(),
            online: transition.online,
            last_active_ms: transition.last_active_ms,
        };
        let payload = Bytes::from(state.encode_to_vec());
        for friend in self.friends_of(&transition.user)? {
            let update = PresenceUpdate {
                subject: transition.user.clone(),
                payload: payload.clone(),
            };
            self.router.deliver_presence(&friend, update);
        }
        Ok(())
    }

    /// Publishes (or clears) both pair topics of `a` and `b` (blocking).
    fn publish_friendship(&self, a: &str, b: &str, friends: bool) -> Result<(), StorageError> {
        let pair = [a.to_owned(), b.to_owned()];
        let payloads: Vec<Bytes> = match friends {
            true => self
                .published_states(&pair)?
                .iter()
                .map(|state| Bytes::from(state.encode_to_vec()))
                .collect(),
            false => vec![Bytes::new(), Bytes::new()],
        };
        for (subject, (observer, payload)) in pair.iter().zip(pair.iter().rev().zip(payloads)) {
            let update = PresenceUpdate {
                subject: subject.clone(),
                payload,
            };
            self.router.deliver_presence(observer, update);
        }
        Ok(())
    }
}

pub(super) async fn publish(
    presence: Arc<Presence>,
    mut queue: mpsc::UnboundedReceiver<Change>,
    shutdown: CancellationToken,
) {
    loop {
        let change = tokio::select! {
            _ = shutdown.cancelled() => break,
            change = queue.recv() => match change {
                Some(change) => change,
                None => break,
            },
        };
        let presence = presence.clone();
        let published = tokio::task::spawn_blocking(move || match change {
            Change::User(transition) => presence.publish_transition(&transition),
            Change::Friendship { a, b, friends } => presence.publish_friendship(&a, &b, friends),
            Change::Snapshot { observer, done } => {
                let _ = done.send(presence.read_retained(&observer));
                Ok(())
            }
        })
        .await;
        match published {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "cannot publish a presence change"),
            Err(error) => tracing::error!(%error, "presence publisher task failed"),
        }
    }
    // Offline changes still queued: their last activity is kept, unpublished.
    let mut pending = Vec::new();
    while let Ok(change) = queue.try_recv() {
        if let Change::User(transition) = change {
            pending.push(transition);
        }
    }
    let _ = tokio::task::spawn_blocking(move || presence.persist_at_shutdown(&pending)).await;
}

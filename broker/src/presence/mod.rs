//! Presence: who is online, and telling their friends.
//!
//! Owns: the online state of every device and user ([`tracker`], in
//! memory), each user's `last_active_ms` in the store (written when their
//! state changes, and for everyone online at shutdown), and the retained
//! `presence/{subject}/{observer}` topics. Those are not stored as messages:
//! a pair topic's retained value is, by definition, the subject's current
//! state while the two are friends, so it is computed from the friendships
//! and last-activity records on subscribe ([`Presence::retained_for`]) and
//! pushed live to every subscribed device of each friend on every change.
//!
//! One order for everything a friend sees: the publisher task handles state
//! changes, friendship changes and snapshot reads one at a time, and reads
//! states from what it has published itself (the users it last published
//! online, and the store, written before each offline change is published),
//! never from the tracker, which may be ahead of it. So a snapshot holds
//! exactly the changes published before it, and every later change reaches
//! the device after it: a device never sees a state older than one it saw.
//! After a restart nobody is online, so every retained value reads offline
//! with the stored `last_active_ms`, as the contract says.
//!
//! In a cluster each node tracks its own devices and tells the others of
//! its users' changes ([`PresenceBus`]); what they report is kept in
//! `remote` ([`remote::RemoteUsers`]). A user is online while any node has
//! them online, and only changes of that are published to friends.
//!
//! Must not: decide friendships (the chat engine commits those and calls
//! [`Presence::friendship_changed`]) or know about sockets: connections
//! report packets through their [`DevicePresence`].

mod remote;
mod tracker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use parley_proto::v1;
use parley_proto::v1::FriendState;
use parley_storage::{StorageError, Store};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use remote::PresenceBus;
use remote::RemoteUsers;
use tracker::Tracker;
pub use tracker::{Departure, DeviceClock, Transition};

use crate::clock::now_ms;
use crate::metrics as m;
use crate::router::{PresenceUpdate, Router};

/// What the publisher handles, in the order it happened.
enum Change {
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

/// The presence service; see the module docs.
pub struct Presence {
    tracker: Mutex<Tracker>,
    /// The users the publisher last published online, with the
    /// `last_active_ms` it published (only the publisher writes it).
    published_online: Mutex<HashMap<String, i64>>,
    store: Store,
    router: Arc<Router>,
    changes: mpsc::UnboundedSender<Change>,
    /// In a cluster: the users other nodes have online (locked after
    /// `tracker`, never before), and where this node's changes go.
    remote: Mutex<RemoteUsers>,
    bus: OnceLock<Arc<dyn PresenceBus>>,
}

impl Presence {
    /// Starts the service and its two tasks on `tasks`: the sweeper, which
    /// takes silent devices offline within a fraction of the timeout after
    /// their deadline, and the publisher, which writes last activity and
    /// tells friends, one change at a time, in order. Both end at
    /// `shutdown`, the publisher after saving who was online.
    pub fn start(
        store: Store,
        router: Arc<Router>,
        timeout: Duration,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Arc<Presence> {
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let (changes, queue) = mpsc::unbounded_channel();
        let presence = Arc::new(Presence {
            tracker: Mutex::new(Tracker::new(timeout_ms)),
            published_online: Mutex::new(HashMap::new()),
            store,
            router,
            changes,
            remote: Mutex::default(),
            bus: OnceLock::new(),
        });
        tasks.spawn(publish(presence.clone(), queue, shutdown.clone()));
        let every = sweep_interval(timeout);
        tasks.spawn(sweep(presence.clone(), every, shutdown.clone()));
        presence
    }

    /// A device connected: it is online now.
    pub fn connect(self: &Arc<Self>, user: &str, device: &str) -> DevicePresence {
        let mut tracker = self.tracker();
        let (clock, generation, transition) = tracker.connect(user, device, now_ms());
        self.tell(&tracker, transition);
        drop(tracker);
        DevicePresence {
            presence: self.clone(),
            user: user.to_owned(),
            device: device.to_owned(),
            generation,
            clock,
            left: false,
        }
    }

    /// `user`'s `device` signed out while not connected: offline at once,
    /// even within its grace period.
    pub fn sign_out(&self, user: &str, device: &str) {
        let mut tracker = self.tracker();
        let transition = tracker.sign_out(user, device);
        self.tell(&tracker, transition);
    }

    /// Those of `users` with no online device (on any node), under one lock.
    pub fn offline_among<'u>(&self, users: Vec<&'u String>) -> Vec<&'u String> {
        let tracker = self.tracker();
        let remote = self.remote();
        users
            .into_iter()
            .filter(|user| !tracker.is_online(user) && !remote.is_online(user))
            .collect()
    }

    /// Cluster mode: this node's changes are reported through `bus`.
    pub fn join_cluster(&self, bus: Arc<dyn PresenceBus>) {
        let _ = self.bus.set(bus);
    }

    /// The users with a device online on this node.
    pub fn local_online_users(&self) -> Vec<String> {
        let online = self.tracker().online_users();
        online.into_iter().map(|(user, _)| user).collect()
    }

    /// Another node reports `user` online or offline there.
    pub fn remote_changed(&self, node: &str, user: &str, online: bool) {
        self.change_remote(&[user.to_owned()], |remote| remote.set(node, user, online));
    }

    /// Another node's whole set of online users (its periodic report).
    pub fn remote_full(&self, node: &str, online: &[String]) {
        let changed = self.remote().replace_node(node, online);
        // the changed users' aggregate is recomputed from the new state
        self.change_remote(&changed, |_| {});
    }

    /// Another node is gone: its users are offline there.
    pub fn remote_node_gone(&self, node: &str) {
        let users = self.remote().users_reported_by(node);
        self.change_remote(&users, |remote| {
            remote.forget_node(node);
        });
    }

    /// Applies `change` to the remote users and tells friends about each
    /// of `users` whose state, over all nodes, changed.
    fn change_remote(&self, users: &[String], change: impl FnOnce(&mut RemoteUsers)) {
        let tracker = self.tracker();
        let mut remote = self.remote();
        let before: Vec<bool> = users
            .iter()
            .map(|user| tracker.is_online(user) || remote.is_online(user))
            .collect();
        change(&mut remote);
        let now = now_ms();
        for (user, was) in users.iter().zip(before) {
            let is = tracker.is_online(user) || remote.is_online(user);
            if is != was {
                m::presence_changed(is);
                let transition = Transition {
                    user: user.clone(),
                    online: is,
                    last_active_ms: now,
                };
                let _ = self.changes.send(Change::User(transition));
            }
        }
    }

    fn remote(&self) -> MutexGuard<'_, RemoteUsers> {
        self.remote.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Two users became friends (`friends`) or stopped being friends: both
    /// pair topics get each one's current state, or are cleared.
    pub fn friendship_changed(&self, a: &str, b: &str, friends: bool) {
        let change = Change::Friendship {
            a: a.to_owned(),
            b: b.to_owned(),
            friends,
        };
        let _ = self.changes.send(change);
    }

    /// The retained presence topics of `observer`: each friend's state as
    /// published so far, read in the publisher's order (see the module docs).
    pub async fn retained_for(&self, observer: &str) -> Result<Vec<PresenceUpdate>, StorageError> {
        let (done, answer) = oneshot::channel();
        let request = Change::Snapshot {
            observer: observer.to_owned(),
            done,
        };
        if self.changes.send(request).is_err() {
            return Ok(Vec::new()); // shutting down
        }
        answer.await.unwrap_or_else(|_| Ok(Vec::new()))
    }

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
    fn complete_from_store(
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

    fn published(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.published_online
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The current state of each of `users` (blocking: reads the store for
    /// those not seen since start).
    pub fn states(&self, users: &[String]) -> Result<Vec<v1::Presence>, StorageError> {
        let known: Vec<Option<(bool, i64)>> = {
            let tracker = self.tracker();
            let remote = self.remote();
            let now = now_ms();
            users
                .iter()
                .map(|user| match tracker.state(user) {
                    Some((false, _)) | None if remote.is_online(user) => Some((true, now)),
                    state => state,
                })
                .collect()
        };
        self.complete_from_store(users, known)
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

    /// Queues `transition` for the publisher. Called with the tracker still
    /// locked (`_order`), so changes reach the publisher in the order the
    /// tracker made them.
    /// In a cluster the change is reported to the other nodes, and only
    /// published here if no other node has the user online.
    fn tell(&self, _order: &MutexGuard<'_, Tracker>, transition: Option<Transition>) {
        let Some(transition) = transition else {
            return;
        };
        if let Some(bus) = self.bus.get() {
            bus.report(&transition.user, transition.online);
            if self.remote().is_online(&transition.user) {
                return; // online elsewhere before and after
            }
        }
        m::presence_changed(transition.online);
        let _ = self.changes.send(Change::User(transition));
    }

    fn tracker(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
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

/// One connection's presence: report every packet with [`seen`](Self::seen)
/// and how it ended with [`leave`](Self::leave) (a drop counts as
/// [`Departure::Dropped`]).
pub struct DevicePresence {
    presence: Arc<Presence>,
    user: String,
    device: String,
    generation: u64,
    clock: Arc<DeviceClock>,
    left: bool,
}

impl DevicePresence {
    /// A packet arrived from the device.
    pub fn seen(&self) {
        let now = now_ms();
        if self.clock.seen(now) {
            let mut tracker = self.presence.tracker();
            let transition = tracker.revive(&self.user, &self.device, self.generation, now);
            self.presence.tell(&tracker, transition);
        }
    }

    /// The connection ended.
    pub fn leave(&mut self, how: Departure) {
        if std::mem::replace(&mut self.left, true) {
            return;
        }
        let mut tracker = self.presence.tracker();
        let transition = tracker.leave(&self.user, &self.device, self.generation, how);
        self.presence.tell(&tracker, transition);
    }
}

impl Drop for DevicePresence {
    fn drop(&mut self) {
        self.leave(Departure::Dropped);
    }
}

/// How often the sweeper looks for devices past their deadline: often
/// enough that one goes offline well within a second of it.
fn sweep_interval(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(20), Duration::from_millis(250))
}

async fn sweep(presence: Arc<Presence>, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let mut tracker = presence.tracker();
        for transition in tracker.sweep(now_ms()) {
            presence.tell(&tracker, Some(transition));
        }
    }
}

async fn publish(
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

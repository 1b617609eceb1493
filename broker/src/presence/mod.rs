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
//!
//! Layout:
//! - this file: [`Presence`]: connecting, signing out, the states asked
//!   for, what other nodes report, and queueing each change for the
//!   publisher in the tracker's order.
//! - `publisher.rs`: the publisher task, the pair topics, the retained
//!   snapshots, last activity in the store.
//! - `device.rs`: [`DevicePresence`] and the sweeper.
//! - `tracker.rs`: devices and users online, grace periods, deadlines.
//! - `remote.rs`: in a cluster, the users other nodes have online.

mod device;
mod publisher;
mod remote;
mod tracker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use parley_proto::v1;
use parley_storage::{StorageError, Store};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use device::DevicePresence;
use device::{sweep, sweep_interval};
use publisher::{publish, Change};
pub use remote::PresenceBus;
use remote::RemoteUsers;
use tracker::Tracker;
pub use tracker::{Departure, DeviceClock, Transition};

use crate::clock::now_ms;
use crate::metrics as m;
use crate::router::{PresenceUpdate, Router};

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
}

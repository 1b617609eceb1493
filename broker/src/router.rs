//! The router: which devices of which user are connected right now.
//!
//! Chat topics are routed by user id, not by matching filters: the engine
//! hands every committed inbox envelope to [`Router::deliver`], which offers
//! it to each connected device of that user through a small bounded queue.
//! A queue that is full drops the envelope and says so: the device then
//! compares its cursor with [`Router::inbox_head`] and reads what it missed
//! back from RocksDB.
//! So a slow device never costs more memory than its queue and window.
//!
//! The same per-device record carries the connection's life cycle: the
//! router marks it evicted (take-over, logout, revoked credentials) and the
//! connection marks it finished when it has left, which is what a successor
//! or a logout waits for ([`Finished`]). No cancellation tokens: with tens of
//! thousands of idle devices, two tokens each were ~220 bytes per device.
//!
//! Two kinds of live traffic are not inbox entries and never set that flag:
//! live-only events (typing, `inbox_seq` 0: a full queue just drops them)
//! and presence updates ([`Router::deliver_presence`]), which are kept per
//! subject, newest only, so they are never dropped and never pile up.

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use tokio::sync::Notify;

/// Capacity of each device's live queue.
pub const DEVICE_QUEUE: usize = 256;

/// An inbox envelope, already encoded, as it goes out live.
#[derive(Debug, Clone)]
pub struct LiveEnvelope {
    /// The envelope's `inbox_seq`; 0 for live-only events (typing).
    pub inbox_seq: u64,
    /// The protobuf-encoded `Envelope`.
    pub payload: Bytes,
}

/// A subject's presence as one observer sees it, on
/// `presence/{subject}/{observer}`: an encoded `Presence`, or empty when the
/// retained topic is cleared (the two stopped being friends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceUpdate {
    pub subject: String,
    pub payload: Bytes,
}

/// One device's live queue: at most [`DEVICE_QUEUE`] envelopes, taken all
/// at once by the connection. Lighter than a channel (no memory until an
/// envelope arrives, and emptied queues give theirs back), which matters
/// with tens of thousands of mostly idle devices. It also records whether
/// the connection was told to go and whether it has finished.
#[derive(Default)]
pub struct LiveQueue {
    queue: Mutex<LiveState>,
    /// Something was offered (one waiter: the connection).
    ready: Notify,
    /// The connection was evicted or has finished (every waiter).
    changed: Notify,
}

#[derive(Default)]
struct LiveState {
    envelopes: VecDeque<LiveEnvelope>,
    /// An inbox envelope was dropped because the queue was full.
    missed: bool,
    /// The newest presence update per subject, not yet taken.
    presence: HashMap<String, Bytes>,
    /// Why the router told this connection to go, once it has.
    evicted: Option<Eviction>,
    /// The connection has left the router (its session saved or dropped).
    finished: bool,
}

/// Why the router tells a connection to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// A new connection with the same client id replaced it.
    TakenOver,
    /// Its device signed out (`POST /v1/logout`): drop its session.
    LoggedOut,
    /// Its account's password changed: it must log in again.
    CredentialsRevoked,
}

/// What a connection takes from its live queue.
#[derive(Debug, Default)]
pub struct LiveBatch {
    pub envelopes: VecDeque<LiveEnvelope>,
    /// Envelopes were dropped: catch up from the store to the inbox head.
    pub missed: bool,
    /// Presence updates, newest per subject.
    pub presence: Vec<PresenceUpdate>,
}

impl LiveQueue {
    /// Queues `envelope` unless the queue is full; false if it was dropped
    /// (remembered for inbox envelopes, forgotten for live-only events).
    pub fn offer(&self, envelope: LiveEnvelope) -> bool {
        let queued = {
            let mut state = self.state();
            if state.envelopes.len() < DEVICE_QUEUE {
                state.envelopes.push_back(envelope);
                true
            } else {
                state.missed |= envelope.inbox_seq > 0;
                false
            }
        };
        self.ready.notify_one();
        queued
    }

    /// Queues a presence update, replacing an older one of the same subject.
    pub fn offer_presence(&self, update: PresenceUpdate) {
        {
            let mut state = self.state();
            state.presence.insert(update.subject, update.payload);
        }
        self.ready.notify_one();
    }

    /// Takes everything queued (possibly nothing) without waiting.
    pub fn take(&self) -> LiveBatch {
        let mut state = self.state();
        let presence = std::mem::take(&mut state.presence)
            .into_iter()
            .map(|(subject, payload)| PresenceUpdate { subject, payload })
            .collect();
        LiveBatch {
            envelopes: std::mem::take(&mut state.envelopes),
            missed: std::mem::take(&mut state.missed),
            presence,
        }
    }

    /// Waits until something was offered since the last wait, then takes
    /// everything queued. Cancel-safe.
    pub async fn next(&self) -> LiveBatch {
        self.ready.notified().await;
        self.take()
    }

    /// Why the connection was told to go, if it was.
    pub fn eviction(&self) -> Option<Eviction> {
        self.state().evicted
    }

    /// Waits until the router tells the connection to go; returns why.
    /// Cancel-safe.
    pub async fn evicted(&self) -> Eviction {
        self.wait_for(|state| state.evicted).await
    }

    fn evict(&self, why: Eviction) {
        self.state().evicted.get_or_insert(why);
        self.changed.notify_waiters();
    }

    fn finish(&self) {
        self.state().finished = true;
        self.changed.notify_waiters();
    }

    /// Waits until `check` finds what it looks for, re-checking after each
    /// change. The wait is registered before the check, so a change made
    /// between the two is not missed.
    async fn wait_for<T>(&self, check: impl Fn(&LiveState) -> Option<T>) -> T {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let found = check(&self.state());
            if let Some(found) = found {
                return found;
            }
            changed.await;
        }
    }

    fn state(&self) -> MutexGuard<'_, LiveState> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What an evicted or replaced connection leaves behind: a handle that
/// tells when it has finished (its session saved or dropped).
#[derive(Clone)]
pub struct Finished(Arc<LiveQueue>);

impl Finished {
    /// Waits until the connection has finished. Cancel-safe.
    pub async fn wait(&self) {
        self.0.wait_for(|state| state.finished.then_some(())).await
    }

    /// Whether the connection has finished.
    pub fn is_done(&self) -> bool {
        self.0.state().finished
    }
}

/// A connection's registration with the router, as a guard: the only way to
/// leave the router is to drop it, so no path out of a connection (a refused
/// or unwritable CONNACK included) stays registered. Dropping it leaves the
/// router (unless a newer connection replaced this one already) and then
/// tells a successor waiting in [`DeviceLink::predecessor`] that this
/// connection has finished: keep it until the session is saved.
pub struct DeviceLink {
    router: Arc<Router>,
    user: String,
    device: String,
    /// Unique per connection, so a stale connection cannot unregister its successor.
    pub conn_id: u64,
    /// The device's live queue (see [`LiveQueue`]); [`LiveQueue::evicted`]
    /// tells when and why the router told this connection to go.
    pub live: Arc<LiveQueue>,
    /// The connection this one replaced, if it was still registered. Wait
    /// for it to finish (its session saved) before opening the session, so
    /// the two never write the session record concurrently.
    pub predecessor: Option<Finished>,
}

impl Drop for DeviceLink {
    fn drop(&mut self) {
        self.router
            .unregister(&self.user, &self.device, self.conn_id);
        self.live.finish();
    }
}

/// Refused registration: the account has `max` devices connected already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyDevices {
    pub max: usize,
}

struct Device {
    conn_id: u64,
    live: Arc<LiveQueue>,
}

impl Device {
    /// Tells the connection to go; returns what tells when it has.
    fn evict(&self, why: Eviction) -> Finished {
        self.live.evict(why);
        Finished(self.live.clone())
    }
}

/// One user's connected devices, by device id: a short list, not a hash
/// table. Nearly every user has one or two devices (at most
/// `max_devices_per_user`), and a table for one entry took ~170 bytes per
/// idle device; the list takes one entry's worth.
#[derive(Default)]
struct UserDevices {
    devices: Vec<(String, Device)>,
}

impl UserDevices {
    fn get(&self, device: &str) -> Option<&Device> {
        self.iter().find(|(id, _)| *id == device).map(|(_, d)| d)
    }

    /// Adds `device`, or replaces its connection; returns the one replaced.
    fn insert(&mut self, device: &str, connection: Device) -> Option<Device> {
        if let Some((_, slot)) = self.devices.iter_mut().find(|(id, _)| id == device) {
            return Some(std::mem::replace(slot, connection));
        }
        // exactly one more: a pushed Vec would reserve room for four
        self.devices.reserve_exact(1);
        self.devices.push((device.to_owned(), connection));
        None
    }

    /// Removes `device` if `conn_id` is still its connection.
    fn remove(&mut self, device: &str, conn_id: u64) {
        self.devices
            .retain(|(id, d)| !(id == device && d.conn_id == conn_id));
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &Device)> {
        self.devices.iter().map(|(id, d)| (id.as_str(), d))
    }

    fn len(&self) -> usize {
        self.devices.len()
    }

    fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

/// Where live-only events for devices on other nodes go (the cluster's
/// NATS subject); the other nodes hand them to [`Router::deliver_live`].
pub trait LiveBus: Send + Sync + 'static {
    /// Offers the encoded envelope `payload` to `users`' devices elsewhere.
    fn live(&self, users: &[String], payload: Bytes);

    /// Tells the other nodes to end `user`'s connections `which`, for `why`
    /// (a device connecting here ends the same device elsewhere: `TakenOver`).
    fn evict(&self, user: &str, which: Devices<'_>, why: Eviction);
}

/// Connected devices by user id, plus each user's highest committed inbox_seq.
#[derive(Default)]
pub struct Router {
    users: RwLock<HashMap<String, UserDevices>>,
    heads: RwLock<HashMap<String, Arc<AtomicU64>>>,
    next_conn_id: AtomicU64,
    /// In a cluster: the other nodes' devices.
    bus: std::sync::OnceLock<Arc<dyn LiveBus>>,
}

impl Router {
    pub fn new() -> Arc<Router> {
        Arc::new(Router::default())
    }

    /// Registers a device connection; an older connection with the same
    /// client id is told to go (session take-over). Refused when `user` has
    /// `max_devices` other devices connected.
    pub fn register(
        self: &Arc<Self>,
        user: &str,
        device: &str,
        max_devices: usize,
    ) -> Result<DeviceLink, TooManyDevices> {
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed) + 1;
        let live = Arc::new(LiveQueue::default());
        let entry = Device {
            conn_id,
            live: live.clone(),
        };
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        let devices = users.entry(user.to_owned()).or_default();
        if devices.get(device).is_none() && devices.len() >= max_devices {
            if devices.is_empty() {
                users.remove(user);
            }
            return Err(TooManyDevices { max: max_devices });
        }
        let previous = devices.insert(device, entry);
        drop(users);
        if let Some(bus) = self.bus.get() {
            bus.evict(user, Devices::Only(device), Eviction::TakenOver);
        }
        let predecessor = previous.map(|previous| previous.evict(Eviction::TakenOver));
        Ok(DeviceLink {
            router: self.clone(),
            user: user.to_owned(),
            device: device.to_owned(),
            conn_id,
            live,
            predecessor,
        })
    }

    /// Tells connected devices of `user` to go: `device` only, or every
    /// device but `except`. Returns, per evicted connection, what tells
    /// when it has finished (its session saved or dropped).
    pub fn evict(&self, user: &str, which: Devices<'_>, why: Eviction) -> Vec<Finished> {
        if let Some(bus) = self.bus.get() {
            bus.evict(user, which, why);
        }
        self.evict_here(user, which, why)
    }

    /// [`Router::evict`] on this node only (what the other nodes ask for).
    pub fn evict_here(&self, user: &str, which: Devices<'_>, why: Eviction) -> Vec<Finished> {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = users.get(user) else {
            return Vec::new();
        };
        entry
            .iter()
            .filter(|(device, _)| which.includes(device))
            .map(|(_, connection)| connection.evict(why))
            .collect()
    }

    /// Removes a device connection, unless a newer one replaced it already.
    fn unregister(&self, user: &str, device: &str, conn_id: u64) {
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = users.get_mut(user) else {
            return;
        };
        entry.remove(device, conn_id);
        if entry.is_empty() {
            users.remove(user);
        }
    }

    /// Offers an envelope to every connected device of `user`; returns how
    /// many queues took it. Never blocks: a full queue drops the envelope
    /// and remembers that it did (after the head moved, so the device that
    /// learns of the drop sees a head covering the dropped envelope).
    pub fn deliver(&self, user: &str, envelope: LiveEnvelope) -> usize {
        if envelope.inbox_seq > 0 {
            self.head(user)
                .fetch_max(envelope.inbox_seq, Ordering::AcqRel);
        }
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = users.get(user) else {
            return 0;
        };
        entry
            .iter()
            .filter(|(_, device)| device.live.offer(envelope.clone()))
            .count()
    }

    /// Connected devices, all users together (a scan: for the registry's
    /// heartbeat, not for every packet).
    pub fn connected_devices(&self) -> usize {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        users.values().map(|entry| entry.len()).sum()
    }

    /// Cluster mode: live-only events also go to the other nodes through `bus`.
    pub fn join_cluster(&self, bus: Arc<dyn LiveBus>) {
        let _ = self.bus.set(bus);
    }

    /// Offers a live-only event (`inbox_seq` 0: typing) to every device of
    /// `users` here and, in a cluster, on every other node. Returns how many
    /// queues here took it.
    pub fn deliver_everywhere(&self, users: &[String], payload: Bytes) -> usize {
        if let Some(bus) = self.bus.get() {
            bus.live(users, payload.clone());
        }
        self.deliver_live(users, payload)
    }

    /// Offers a live-only event to every device of `users` on this node.
    pub fn deliver_live(&self, users: &[String], payload: Bytes) -> usize {
        users
            .iter()
            .map(|user| {
                let envelope = LiveEnvelope {
                    inbox_seq: 0,
                    payload: payload.clone(),
                };
                self.deliver(user, envelope)
            })
            .sum()
    }

    /// Offers a presence update to every connected device of `observer`.
    pub fn deliver_presence(&self, observer: &str, update: PresenceUpdate) {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = users.get(observer) else {
            return;
        };
        for (_, device) in entry.iter() {
            device.live.offer_presence(update.clone());
        }
    }

    /// The highest inbox_seq delivered through the router for `user` since
    /// start (a hint; RocksDB holds the truth).
    pub fn inbox_head(&self, user: &str) -> u64 {
        let heads = self.heads.read().unwrap_or_else(|e| e.into_inner());
        heads
            .get(user)
            .map_or(0, |head| head.load(Ordering::Acquire))
    }

    /// How many devices of `user` are connected.
    #[cfg(test)]
    fn device_count(&self, user: &str) -> usize {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        users.get(user).map_or(0, |entry| entry.len())
    }

    fn head(&self, user: &str) -> Arc<AtomicU64> {
        if let Some(head) = self
            .heads
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
        {
            return head.clone();
        }
        let mut heads = self.heads.write().unwrap_or_else(|e| e.into_inner());
        heads.entry(user.to_owned()).or_default().clone()
    }
}

/// Which devices of a user [`Router::evict`] tells to go.
#[derive(Debug, Clone, Copy)]
pub enum Devices<'a> {
    /// This one.
    Only(&'a str),
    /// Every one but this one.
    AllBut(&'a str),
}

impl Devices<'_> {
    fn includes(&self, device: &str) -> bool {
        match self {
            Devices::Only(only) => device == *only,
            Devices::AllBut(kept) => device != *kept,
        }
    }
}

#[cfg(test)]
mod tests;

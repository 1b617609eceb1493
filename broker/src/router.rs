//! The router: which devices of which user are connected right now.
//!
//! Chat topics are routed by user id, not by matching filters: the engine
//! hands every committed inbox envelope to [`Router::deliver`], which offers
//! it to each connected device of that user through a small bounded queue.
//! A queue that is full drops the envelope and raises the device's `missed`
//! flag: the device then compares its cursor with [`Router::inbox_head`] and
//! reads what it missed back from RocksDB.
//! So a slow device never costs more memory than its queue and window.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

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

/// What a connection receives from the router.
pub struct DeviceLink {
    /// Unique per connection, so a stale connection cannot unregister its successor.
    pub conn_id: u64,
    pub live: mpsc::Receiver<LiveEnvelope>,
    /// Raised when an envelope could not be queued (queue full): the device
    /// must catch up from the store up to [`Router::inbox_head`].
    pub missed: Arc<AtomicBool>,
    /// Cancelled when another connection takes over the same client id.
    pub taken_over: CancellationToken,
    /// The connection this one replaced, if it was still registered: cancelled
    /// once it has finished (its session saved). Wait for it before opening
    /// the session, so the two never write the session record concurrently.
    pub predecessor: Option<CancellationToken>,
    /// Tells a successor this connection has finished, when dropped.
    _finished: DropGuard,
}

struct Device {
    conn_id: u64,
    live: mpsc::Sender<LiveEnvelope>,
    missed: Arc<AtomicBool>,
    taken_over: CancellationToken,
    finished: CancellationToken,
}

#[derive(Default)]
struct UserDevices {
    devices: HashMap<String, Device>,
}

/// Connected devices by user id, plus each user's highest committed inbox_seq.
#[derive(Default)]
pub struct Router {
    users: RwLock<HashMap<String, UserDevices>>,
    heads: RwLock<HashMap<String, Arc<AtomicU64>>>,
    next_conn_id: AtomicU64,
}

impl Router {
    pub fn new() -> Arc<Router> {
        Arc::new(Router::default())
    }

    /// Registers a device connection; an older connection with the same
    /// client id is told to go (session take-over).
    pub fn register(&self, user: &str, device: &str) -> DeviceLink {
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (live_tx, live_rx) = mpsc::channel(DEVICE_QUEUE);
        let taken_over = CancellationToken::new();
        let finished = CancellationToken::new();
        let missed = Arc::new(AtomicBool::new(false));
        let entry = Device {
            conn_id,
            live: live_tx,
            missed: missed.clone(),
            taken_over: taken_over.clone(),
            finished: finished.clone(),
        };
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        let previous = users
            .entry(user.to_owned())
            .or_default()
            .devices
            .insert(device.to_owned(), entry);
        let predecessor = previous.map(|previous| {
            previous.taken_over.cancel();
            previous.finished
        });
        DeviceLink {
            conn_id,
            live: live_rx,
            missed,
            taken_over,
            predecessor,
            _finished: finished.drop_guard(),
        }
    }

    /// Removes a device connection, unless a newer one replaced it already.
    pub fn unregister(&self, user: &str, device: &str, conn_id: u64) {
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = users.get_mut(user) else {
            return;
        };
        if entry
            .devices
            .get(device)
            .is_some_and(|d| d.conn_id == conn_id)
        {
            entry.devices.remove(device);
        }
        if entry.devices.is_empty() {
            users.remove(user);
        }
    }

    /// Offers an envelope to every connected device of `user`; returns how
    /// many queues took it. Never blocks: a full queue drops the envelope
    /// and raises the device's `missed` flag (after the head moved, so the
    /// device that sees the flag sees a head covering the dropped envelope).
    pub fn deliver(&self, user: &str, envelope: LiveEnvelope) -> usize {
        if envelope.inbox_seq > 0 {
            self.head(user)
                .fetch_max(envelope.inbox_seq, Ordering::AcqRel);
        }
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = users.get(user) else {
            return 0;
        };
        let mut queued = 0;
        for device in entry.devices.values() {
            match device.live.try_send(envelope.clone()) {
                Ok(()) => queued += 1,
                Err(_) => device.missed.store(true, Ordering::Release),
            }
        }
        queued
    }

    /// The highest inbox_seq delivered through the router for `user` since
    /// start (a hint; RocksDB holds the truth).
    pub fn inbox_head(&self, user: &str) -> u64 {
        let heads = self.heads.read().unwrap_or_else(|e| e.into_inner());
        heads
            .get(user)
            .map_or(0, |head| head.load(Ordering::Acquire))
    }

    /// Whether any device of `user` is connected.
    pub fn is_connected(&self, user: &str) -> bool {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        users.contains_key(user)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(seq: u64) -> LiveEnvelope {
        LiveEnvelope {
            inbox_seq: seq,
            payload: Bytes::from_static(b"x"),
        }
    }

    #[tokio::test]
    async fn delivers_to_every_device_of_the_user_only() {
        let router = Router::new();
        let mut phone = router.register("alice", "phone");
        let mut laptop = router.register("alice", "laptop");
        let mut bob = router.register("bob", "phone");
        assert_eq!(router.deliver("alice", envelope(1)), 2);
        assert_eq!(phone.live.recv().await.unwrap().inbox_seq, 1);
        assert_eq!(laptop.live.recv().await.unwrap().inbox_seq, 1);
        assert!(bob.live.try_recv().is_err());
        assert_eq!(router.inbox_head("alice"), 1);
        assert_eq!(router.inbox_head("bob"), 0);
    }

    #[test]
    fn a_second_connection_takes_over_the_first() {
        let router = Router::new();
        let first = router.register("alice", "phone");
        let second = router.register("alice", "phone");
        assert!(first.taken_over.is_cancelled());
        assert!(!second.taken_over.is_cancelled());
        let predecessor = second.predecessor.clone().expect("first was registered");
        assert!(!predecessor.is_cancelled());
        let first_id = first.conn_id;
        drop(first);
        assert!(
            predecessor.is_cancelled(),
            "dropping a link tells its successor"
        );
        router.unregister("alice", "phone", first_id);
        assert!(
            router.is_connected("alice"),
            "stale unregister must not remove the successor"
        );
        router.unregister("alice", "phone", second.conn_id);
        assert!(!router.is_connected("alice"));
    }

    #[test]
    fn a_full_queue_drops_instead_of_blocking() {
        let router = Router::new();
        let link = router.register("alice", "phone");
        for seq in 1..=DEVICE_QUEUE as u64 {
            assert_eq!(router.deliver("alice", envelope(seq)), 1);
        }
        assert!(!link.missed.load(Ordering::Acquire));
        assert_eq!(
            router.deliver("alice", envelope(DEVICE_QUEUE as u64 + 1)),
            0
        );
        assert!(link.missed.load(Ordering::Acquire), "the device is told");
        assert_eq!(router.inbox_head("alice"), DEVICE_QUEUE as u64 + 1);
    }
}

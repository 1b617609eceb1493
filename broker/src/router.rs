//! The router: which devices of which user are connected right now.
//!
//! Chat topics are routed by user id, not by matching filters: the engine
//! hands every committed inbox envelope to [`Router::deliver`], which offers
//! it to each connected device of that user through a small bounded queue.
//! A queue that is full drops the envelope and says so: the device then
//! compares its cursor with [`Router::inbox_head`] and reads what it missed
//! back from RocksDB.
//! So a slow device never costs more memory than its queue and window.

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::Notify;
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

/// One device's live queue: at most [`DEVICE_QUEUE`] envelopes, taken all
/// at once by the connection. Lighter than a channel (no memory until an
/// envelope arrives, and emptied queues give theirs back), which matters
/// with tens of thousands of mostly idle devices.
#[derive(Default)]
pub struct LiveQueue {
    queue: Mutex<LiveState>,
    ready: Notify,
}

#[derive(Default)]
struct LiveState {
    envelopes: VecDeque<LiveEnvelope>,
    /// An envelope was dropped because the queue was full.
    missed: bool,
}

/// What a connection takes from its live queue.
#[derive(Debug, Default)]
pub struct LiveBatch {
    pub envelopes: VecDeque<LiveEnvelope>,
    /// Envelopes were dropped: catch up from the store to the inbox head.
    pub missed: bool,
}

impl LiveQueue {
    /// Queues `envelope` unless the queue is full; false if it was dropped.
    pub fn offer(&self, envelope: LiveEnvelope) -> bool {
        let queued = {
            let mut state = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if state.envelopes.len() < DEVICE_QUEUE {
                state.envelopes.push_back(envelope);
                true
            } else {
                state.missed = true;
                false
            }
        };
        self.ready.notify_one();
        queued
    }

    /// Takes everything queued (possibly nothing) without waiting.
    pub fn take(&self) -> LiveBatch {
        let mut state = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        LiveBatch {
            envelopes: std::mem::take(&mut state.envelopes),
            missed: std::mem::take(&mut state.missed),
        }
    }

    /// Waits until something was offered since the last wait, then takes
    /// everything queued. Cancel-safe.
    pub async fn next(&self) -> LiveBatch {
        self.ready.notified().await;
        self.take()
    }
}

/// What a connection receives from the router.
pub struct DeviceLink {
    /// Unique per connection, so a stale connection cannot unregister its successor.
    pub conn_id: u64,
    /// The device's live queue (see [`LiveQueue`]).
    pub live: Arc<LiveQueue>,
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
    live: Arc<LiveQueue>,
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
        let live = Arc::new(LiveQueue::default());
        let taken_over = CancellationToken::new();
        let finished = CancellationToken::new();
        let entry = Device {
            conn_id,
            live: live.clone(),
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
            live,
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
            .devices
            .values()
            .filter(|device| device.live.offer(envelope.clone()))
            .count()
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
        let phone = router.register("alice", "phone");
        let laptop = router.register("alice", "laptop");
        let bob = router.register("bob", "phone");
        assert_eq!(router.deliver("alice", envelope(1)), 2);
        assert_eq!(router.deliver("alice", envelope(2)), 2);
        for link in [&phone, &laptop] {
            let batch = link.live.next().await;
            let seqs: Vec<u64> = batch.envelopes.iter().map(|e| e.inbox_seq).collect();
            assert_eq!(seqs, [1, 2]);
            assert!(!batch.missed);
        }
        assert!(bob.live.take().envelopes.is_empty());
        assert_eq!(router.inbox_head("alice"), 2);
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
        assert_eq!(
            router.deliver("alice", envelope(DEVICE_QUEUE as u64 + 1)),
            0
        );
        assert_eq!(router.inbox_head("alice"), DEVICE_QUEUE as u64 + 1);
        let batch = link.live.take();
        assert_eq!(batch.envelopes.len(), DEVICE_QUEUE);
        assert!(batch.missed, "the device is told");
        assert_eq!(
            router.deliver("alice", envelope(DEVICE_QUEUE as u64 + 2)),
            1
        );
        let batch = link.live.take();
        assert_eq!(batch.envelopes.len(), 1);
        assert!(!batch.missed, "told once");
    }
}

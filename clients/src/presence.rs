//! Friends' presence: what the broker publishes on
//! `presence/{subject}/{user}` ([`PresenceUpdate`]), and the bounded queue
//! between the driver and [`Client::next_presence`](crate::Client::next_presence).
//!
//! Presence is state, not a log: only the newest state of each subject
//! matters. The queue keeps updates in arrival order; when it is full, a new
//! update replaces the oldest queued one of the same subject (so the newest
//! state of every friend is never lost and the socket is never stalled by an
//! application that does not read presence), and only when no queued update
//! shares its subject is the oldest update dropped (with a warning).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use parley_proto::v1::Presence;
use prost::Message;
use tokio::sync::Notify;

use crate::error::ClientError;

/// One publish on a presence topic of this client's user.
///
/// ```
/// use parley_client::PresenceUpdate;
/// use parley_client::v1::Presence;
/// let update = PresenceUpdate {
///     subject: "bob".into(),
///     presence: Some(Presence { user: "bob".into(), online: true, last_active_ms: 7 }),
///     retained: true,
/// };
/// assert_eq!(update.online(), Some(true));
/// assert!(!update.is_cleared());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceUpdate {
    /// The user the state is about: `{subject}` in `presence/{subject}/{user}`.
    pub subject: String,
    /// The decoded state; `None` when the topic was cleared (an empty
    /// payload: the two are no longer friends).
    pub presence: Option<Presence>,
    /// The MQTT RETAIN flag: `true` for the current state sent on a new
    /// subscription (or a resumed durable session), `false` for a live change.
    pub retained: bool,
}

impl PresenceUpdate {
    /// Whether the topic was cleared (the friendship ended).
    pub fn is_cleared(&self) -> bool {
        self.presence.is_none()
    }

    /// Whether the subject is online; `None` for a cleared topic.
    pub fn online(&self) -> Option<bool> {
        self.presence.as_ref().map(|presence| presence.online)
    }

    /// The subject's `last_active_ms`; `None` for a cleared topic.
    pub fn last_active_ms(&self) -> Option<i64> {
        self.presence
            .as_ref()
            .map(|presence| presence.last_active_ms)
    }

    /// The update a publish on `topic` stands for, when `topic` is
    /// `presence/{subject}/{observer}`; `Some(Err)` for an undecodable payload.
    pub(crate) fn from_publish(
        observer: &str,
        topic: &str,
        payload: &[u8],
        retained: bool,
    ) -> Option<Result<PresenceUpdate, prost::DecodeError>> {
        let subject = presence_subject(observer, topic)?;
        let presence = match payload.is_empty() {
            true => None,
            false => match Presence::decode(payload) {
                Ok(presence) => Some(presence),
                Err(error) => return Some(Err(error)),
            },
        };
        Some(Ok(PresenceUpdate {
            subject: subject.to_owned(),
            presence,
            retained,
        }))
    }
}

/// `{subject}` of `presence/{subject}/{observer}`; `None` for other topics.
fn presence_subject<'t>(observer: &str, topic: &'t str) -> Option<&'t str> {
    let rest = topic.strip_prefix("presence/")?;
    let subject = rest.strip_suffix(observer)?.strip_suffix('/')?;
    (!subject.is_empty() && !subject.contains('/')).then_some(subject)
}

/// Updates waiting for [`Client::next_presence`](crate::Client::next_presence); see the module docs.
pub(crate) struct PresenceQueue {
    capacity: usize,
    state: Mutex<QueueState>,
    /// Woken on every push and at the end (one stored permit suffices: the
    /// reader checks the queue before each wait).
    ready: Notify,
    /// One reader at a time.
    reader: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct QueueState {
    updates: VecDeque<PresenceUpdate>,
    closed: bool,
}

impl PresenceQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        PresenceQueue {
            capacity: capacity.max(1),
            state: Mutex::new(QueueState::default()),
            ready: Notify::new(),
            reader: tokio::sync::Mutex::new(()),
        }
    }

    /// Queues an update (never blocks; see the module docs for a full queue).
    pub(crate) fn push(&self, update: PresenceUpdate) {
        {
            let mut state = self.lock();
            if state.updates.len() >= self.capacity {
                let same = state
                    .updates
                    .iter()
                    .position(|queued| queued.subject == update.subject);
                match same {
                    Some(index) => {
                        state.updates.remove(index);
                    }
                    None => {
                        if let Some(dropped) = state.updates.pop_front() {
                            tracing::warn!(subject = %dropped.subject, "presence queue full, oldest update dropped");
                        }
                    }
                }
            }
            state.updates.push_back(update);
        }
        self.ready.notify_one();
    }

    /// The connection ended: the reader sees the end after the queued updates.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// The next update, waiting at most `timeout`; `Ok(None)` when nothing
    /// came, [`ClientError::Disconnected`] once closed and empty.
    pub(crate) async fn next(
        &self,
        timeout: Duration,
    ) -> Result<Option<PresenceUpdate>, ClientError> {
        let next = async {
            let _reader = self.reader.lock().await;
            loop {
                {
                    let mut state = self.lock();
                    if let Some(update) = state.updates.pop_front() {
                        return Ok(update);
                    }
                    if state.closed {
                        return Err(ClientError::Disconnected);
                    }
                }
                self.ready.notified().await;
            }
        };
        match tokio::time::timeout(timeout, next).await {
            Err(_) => Ok(None),
            Ok(next) => next.map(Some),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn state(subject: &str, online: bool) -> PresenceUpdate {
        PresenceUpdate {
            subject: subject.into(),
            presence: Some(Presence {
                user: subject.into(),
                online,
                last_active_ms: 1,
            }),
            retained: false,
        }
    }

    #[test]
    fn only_the_observers_presence_topics_are_presence() {
        assert_eq!(presence_subject("alice", "presence/bob/alice"), Some("bob"));
        assert_eq!(
            presence_subject("alice", "presence/svc:x/alice"),
            Some("svc:x")
        );
        for topic in [
            "presence/bob/carol",
            "presence//alice",
            "presence/alice",
            "presence/a/b/alice",
            "presence/bob/xalice",
            "inbox/alice",
            "presencex/bob/alice",
        ] {
            assert_eq!(presence_subject("alice", topic), None, "{topic}");
        }
    }

    #[test]
    fn payloads_decode_and_an_empty_one_clears() {
        let bob = Presence {
            user: "bob".into(),
            online: false,
            last_active_ms: 42,
        };
        let update =
            PresenceUpdate::from_publish("alice", "presence/bob/alice", &bob.encode_to_vec(), true)
                .unwrap()
                .unwrap();
        assert_eq!(update.presence.as_ref(), Some(&bob));
        assert_eq!(
            (update.online(), update.last_active_ms()),
            (Some(false), Some(42))
        );
        assert!(update.retained);
        let cleared = PresenceUpdate::from_publish("alice", "presence/bob/alice", &[], false)
            .unwrap()
            .unwrap();
        assert!(cleared.is_cleared() && cleared.online().is_none() && !cleared.retained);
        assert!(
            PresenceUpdate::from_publish("alice", "presence/bob/alice", b"\xff\xff", false)
                .unwrap()
                .is_err()
        );
        assert!(PresenceUpdate::from_publish("alice", "inbox/alice", &[], false).is_none());
    }

    #[tokio::test]
    async fn queued_in_order_then_the_end() {
        let queue = PresenceQueue::new(8);
        queue.push(state("bob", true));
        queue.push(state("carol", true));
        queue.close();
        let short = Duration::from_millis(50);
        assert_eq!(queue.next(short).await.unwrap(), Some(state("bob", true)));
        assert_eq!(queue.next(short).await.unwrap(), Some(state("carol", true)));
        assert!(matches!(
            queue.next(short).await,
            Err(ClientError::Disconnected)
        ));
    }

    #[tokio::test]
    async fn an_empty_queue_times_out_and_a_push_wakes_the_reader() {
        let queue = Arc::new(PresenceQueue::new(8));
        assert_eq!(queue.next(Duration::from_millis(20)).await.unwrap(), None);
        let reader = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.next(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        queue.push(state("bob", false));
        assert_eq!(reader.await.unwrap().unwrap(), Some(state("bob", false)));
    }

    #[tokio::test]
    async fn a_full_queue_keeps_the_newest_state_of_each_subject() {
        let queue = PresenceQueue::new(2);
        queue.push(state("bob", true));
        queue.push(state("carol", true));
        queue.push(state("bob", false)); // replaces bob's older state
        queue.push(state("dave", true)); // no older dave: carol (oldest) goes
        let short = Duration::from_millis(20);
        assert_eq!(queue.next(short).await.unwrap(), Some(state("bob", false)));
        assert_eq!(queue.next(short).await.unwrap(), Some(state("dave", true)));
        assert_eq!(queue.next(short).await.unwrap(), None);
    }
}

//! What one device is sent, in order, within a bounded in-flight window.
//!
//! Three streams share the window: replies to the device's requests, its
//! friends' presence (`presence/{subject}/{user}`, newest state per subject,
//! retained on subscribe) and its user's inbox. Live-only inbox events
//! (typing, `inbox_seq` 0) go out at QoS 0 beside the inbox stream, outside
//! its cursor: they are never stored, so never read back either.
//! The inbox stream keeps a cursor (`sent_upto`) and takes the
//! next envelope from the live queue when it is the next one, or asks the
//! connection to read ahead from RocksDB when there is a gap (a dropped live
//! envelope, a reconnect, a full window). Memory per device is bounded by
//! [`LIVE_QUEUE`] plus the window, whatever the device's speed.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use bytes::Bytes;
use parley_chat_logic::acl;
use parley_proto::topics;
use rumqttd::protocol::QoS;

use crate::router::{LiveEnvelope, PresenceUpdate};

/// Live envelopes kept while the window is full; more are dropped and read
/// back from the store later.
pub const LIVE_QUEUE: usize = 256;
/// Live-only events kept while the socket is busy; older ones are dropped
/// (a typing notice is stale within seconds anyway).
pub const EPHEMERAL_QUEUE: usize = 64;

/// A publish the connection should write now.
#[derive(Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub stream: Stream,
    pub qos: QoS,
    pub pkid: u16,
    pub payload: Bytes,
    /// The RETAIN flag: set on retained presence sent for a new subscription.
    pub retain: bool,
}

/// Which topic an outgoing publish goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stream {
    Reply,
    Inbox,
    /// `presence/{subject}/{the device's user}`.
    Presence(String),
}

#[derive(Debug, Clone, Copy)]
enum Inflight {
    /// A reply or a presence update: nothing to resume from.
    Other,
    Inbox(u64),
}

/// The device's delivery state.
#[derive(Debug)]
pub struct Outbox {
    window: usize,
    last_pkid: u16,
    inflight: HashMap<u16, Inflight>,
    inbox_inflight: BTreeSet<u64>,
    replies: VecDeque<Bytes>,
    reply_qos: Option<QoS>,
    inbox_qos: Option<QoS>,
    sent_upto: u64,
    acked_upto: u64,
    known_head: u64,
    live: VecDeque<LiveEnvelope>,
    fetching: bool,
    ephemeral: VecDeque<Bytes>,
    presence: PresenceStream,
}

/// The presence topics the device subscribed to and what waits to go there.
#[derive(Debug, Default)]
struct PresenceStream {
    observer: String,
    /// The device's filters that match presence topics, with their QoS.
    filters: Vec<(String, QoS)>,
    /// The newest payload per subject, with its RETAIN flag.
    pending: HashMap<String, (Bytes, bool)>,
    /// Subjects updated live since a snapshot was asked for: the snapshot,
    /// read before those updates, must not overwrite them.
    updated_since_snapshot: Option<HashSet<String>>,
}

/// What [`Outbox::pump`] asks of the connection.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pumped {
    pub publishes: Vec<Outgoing>,
    /// Read up to `limit` inbox envelopes after `after` from the store.
    pub fetch: Option<(u64, usize)>,
}

impl Outbox {
    /// `cursor`: the last inbox_seq the device has (acked or, for clean
    /// sessions, the inbox head when it connected).
    pub fn new(window: usize, cursor: u64) -> Self {
        Outbox {
            window: window.max(1),
            last_pkid: 0,
            inflight: HashMap::new(),
            inbox_inflight: BTreeSet::new(),
            replies: VecDeque::new(),
            reply_qos: None,
            inbox_qos: None,
            sent_upto: cursor,
            acked_upto: cursor,
            known_head: cursor,
            live: VecDeque::new(),
            fetching: false,
            ephemeral: VecDeque::new(),
            presence: PresenceStream::default(),
        }
    }

    /// The device's subscriptions to `presence/{subject}/{observer}` topics.
    pub fn set_presence_filters(&mut self, observer: &str, filters: Vec<(String, QoS)>) {
        self.presence.observer = observer.to_owned();
        self.presence.filters = filters
            .into_iter()
            .map(|(filter, qos)| (filter, at_most_once_or_least(qos)))
            .collect();
    }

    /// Takes a live presence update (replacing an unsent older one).
    pub fn push_presence(&mut self, update: PresenceUpdate) {
        if let Some(updated) = &mut self.presence.updated_since_snapshot {
            updated.insert(update.subject.clone());
        }
        self.presence
            .pending
            .insert(update.subject, (update.payload, false));
    }

    /// A snapshot of the retained presence is being read for a new
    /// subscription: live updates from now on win over it.
    pub fn begin_presence_snapshot(&mut self) {
        self.presence.updated_since_snapshot = Some(HashSet::new());
    }

    /// The retained presence read after [`Outbox::begin_presence_snapshot`],
    /// sent with the RETAIN flag unless a newer live update came meanwhile.
    pub fn on_presence_snapshot(&mut self, retained: Vec<PresenceUpdate>) {
        let updated = self
            .presence
            .updated_since_snapshot
            .take()
            .unwrap_or_default();
        for update in retained {
            if !updated.contains(&update.subject) {
                self.presence
                    .pending
                    .insert(update.subject, (update.payload, true));
            }
        }
    }

    /// The QoS the device subscribed its inbox / reply topic with (None: not subscribed).
    pub fn set_subscriptions(&mut self, inbox: Option<QoS>, reply: Option<QoS>) {
        self.inbox_qos = inbox.map(at_most_once_or_least);
        self.reply_qos = reply.map(at_most_once_or_least);
    }

    /// The highest inbox_seq the device has acknowledged, with nothing missing below it.
    pub fn acked_upto(&self) -> u64 {
        self.acked_upto
    }

    /// Notes that the user's inbox holds at least `head` envelopes.
    pub fn observe_head(&mut self, head: u64) {
        self.known_head = self.known_head.max(head);
    }

    /// Queues a reply for the next [`Outbox::pump`] (dropped when the device
    /// has no subscription covering its reply topic).
    pub fn push_reply(&mut self, payload: Bytes) {
        if self.reply_qos.is_some() {
            self.replies.push_back(payload);
        }
    }

    /// Takes a live envelope from the router.
    pub fn push_live(&mut self, envelope: LiveEnvelope) {
        if envelope.inbox_seq == 0 {
            return self.push_ephemeral(envelope.payload);
        }
        self.observe_head(envelope.inbox_seq);
        if envelope.inbox_seq <= self.sent_upto || self.inbox_qos.is_none() {
            return;
        }
        if self.live.len() < LIVE_QUEUE {
            self.live.push_back(envelope);
        }
    }

    fn push_ephemeral(&mut self, payload: Bytes) {
        if self.inbox_qos.is_none() {
            return;
        }
        if self.ephemeral.len() == EPHEMERAL_QUEUE {
            self.ephemeral.pop_front();
        }
        self.ephemeral.push_back(payload);
    }

    /// True while nothing more can be sent on the inbox stream until the
    /// device acknowledges: the window is full and a live backlog is queued.
    /// The connection then stops taking envelopes from the router, whose
    /// own bounded queue drops (and records) the rest: a device that never
    /// reads costs no more work per message.
    pub fn is_saturated(&self) -> bool {
        self.room() == 0 && !self.live.is_empty()
    }

    /// A PUBACK from the device; returns true when `acked_upto` moved.
    pub fn on_puback(&mut self, pkid: u16) -> bool {
        match self.inflight.remove(&pkid) {
            Some(Inflight::Inbox(seq)) => {
                self.inbox_inflight.remove(&seq);
                self.advance_acked()
            }
            Some(Inflight::Other) | None => false,
        }
    }

    /// Envelopes read from the store after a [`Pumped::fetch`].
    pub fn on_fetched(&mut self, envelopes: Vec<(u64, Bytes)>) {
        self.fetching = false;
        let mut fetched: VecDeque<LiveEnvelope> = envelopes
            .into_iter()
            .filter(|(seq, _)| *seq > self.sent_upto)
            .map(|(inbox_seq, payload)| LiveEnvelope { inbox_seq, payload })
            .collect();
        if let Some(last) = fetched.back() {
            self.observe_head(last.inbox_seq);
        }
        // fetched envelopes come before whatever live ones are queued
        fetched.extend(self.live.drain(..));
        self.live = fetched;
        self.live.truncate(LIVE_QUEUE.max(self.window));
    }

    /// Everything that may be sent now, and whether to read ahead.
    pub fn pump(&mut self) -> Pumped {
        let mut pumped = Pumped::default();
        while let Some(qos) = self.reply_qos {
            if self.room() == 0 && qos != QoS::AtMostOnce {
                break;
            }
            let Some(payload) = self.replies.pop_front() else {
                break;
            };
            let pkid = self.track(qos, Inflight::Other);
            pumped.publishes.push(Outgoing {
                stream: Stream::Reply,
                qos,
                pkid,
                payload,
                retain: false,
            });
        }
        self.pump_presence(&mut pumped);
        let Some(qos) = self.inbox_qos else {
            return pumped;
        };
        pumped
            .publishes
            .extend(self.ephemeral.drain(..).map(|payload| Outgoing {
                stream: Stream::Inbox,
                qos: QoS::AtMostOnce,
                pkid: 0,
                payload,
                retain: false,
            }));
        while qos == QoS::AtMostOnce || self.room() > 0 {
            self.drop_stale_live();
            match self.live.front() {
                Some(next) if next.inbox_seq == self.sent_upto + 1 => {
                    let Some(envelope) = self.live.pop_front() else {
                        break;
                    };
                    pumped.publishes.push(self.send_inbox(qos, envelope));
                }
                _ => {
                    pumped.fetch = self.fetch_needed();
                    break;
                }
            }
        }
        pumped
    }

    /// Pending presence updates, as far as the window allows; those no
    /// subscription covers are dropped.
    fn pump_presence(&mut self, pumped: &mut Pumped) {
        if self.presence.pending.is_empty() {
            return;
        }
        let subjects: Vec<String> = self.presence.pending.keys().cloned().collect();
        for subject in subjects {
            let Some(qos) = self.presence_qos(&subject) else {
                self.presence.pending.remove(&subject);
                continue;
            };
            if qos != QoS::AtMostOnce && self.room() == 0 {
                break;
            }
            let Some((payload, retain)) = self.presence.pending.remove(&subject) else {
                continue;
            };
            let pkid = self.track(qos, Inflight::Other);
            pumped.publishes.push(Outgoing {
                stream: Stream::Presence(subject),
                qos,
                pkid,
                payload,
                retain,
            });
        }
    }

    /// The QoS of the device's best subscription covering `subject`'s topic.
    fn presence_qos(&self, subject: &str) -> Option<QoS> {
        let topic = topics::presence(subject, &self.presence.observer);
        self.presence
            .filters
            .iter()
            .filter(|(filter, _)| acl::filter_matches(filter, &topic))
            .map(|(_, qos)| *qos)
            .max_by_key(|qos| *qos as u8)
    }

    fn send_inbox(&mut self, qos: QoS, envelope: LiveEnvelope) -> Outgoing {
        self.sent_upto = envelope.inbox_seq;
        let pkid = self.track(qos, Inflight::Inbox(envelope.inbox_seq));
        if qos == QoS::AtMostOnce {
            self.advance_acked();
        }
        Outgoing {
            stream: Stream::Inbox,
            qos,
            pkid,
            payload: envelope.payload,
            retain: false,
        }
    }

    fn fetch_needed(&mut self) -> Option<(u64, usize)> {
        let behind = self.known_head > self.sent_upto || !self.live.is_empty();
        if !behind || self.fetching {
            return None;
        }
        self.fetching = true;
        Some((self.sent_upto, self.room().max(1)))
    }

    fn drop_stale_live(&mut self) {
        while self
            .live
            .front()
            .is_some_and(|envelope| envelope.inbox_seq <= self.sent_upto)
        {
            self.live.pop_front();
        }
    }

    fn room(&self) -> usize {
        self.window.saturating_sub(self.inflight.len())
    }

    fn track(&mut self, qos: QoS, what: Inflight) -> u16 {
        if qos == QoS::AtMostOnce {
            return 0;
        }
        let pkid = self.next_pkid();
        self.inflight.insert(pkid, what);
        if let Inflight::Inbox(seq) = what {
            self.inbox_inflight.insert(seq);
        }
        pkid
    }

    fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&self.last_pkid) {
                return self.last_pkid;
            }
        }
    }

    fn advance_acked(&mut self) -> bool {
        let acked = match self.inbox_inflight.first() {
            Some(lowest_unacked) => lowest_unacked - 1,
            None => self.sent_upto,
        };
        let moved = acked > self.acked_upto;
        self.acked_upto = self.acked_upto.max(acked);
        moved
    }
}

/// Parley delivers at QoS 0 or 1; a QoS 2 subscription is granted QoS 1.
fn at_most_once_or_least(qos: QoS) -> QoS {
    match qos {
        QoS::AtMostOnce => QoS::AtMostOnce,
        _ => QoS::AtLeastOnce,
    }
}

#[cfg(test)]
mod tests;

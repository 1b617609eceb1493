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
mod tests {
    use super::*;

    fn live(seq: u64) -> LiveEnvelope {
        LiveEnvelope {
            inbox_seq: seq,
            payload: Bytes::from(seq.to_string()),
        }
    }

    fn inbox_outbox(window: usize, cursor: u64) -> Outbox {
        let mut outbox = Outbox::new(window, cursor);
        outbox.set_subscriptions(Some(QoS::AtLeastOnce), Some(QoS::AtLeastOnce));
        outbox
    }

    fn seqs(pumped: &Pumped) -> Vec<u64> {
        pumped
            .publishes
            .iter()
            .filter(|p| p.stream == Stream::Inbox)
            .filter_map(|p| String::from_utf8_lossy(&p.payload).parse().ok())
            .collect()
    }

    #[test]
    fn sends_in_order_within_the_window() {
        let mut outbox = inbox_outbox(2, 0);
        for seq in 1..=3 {
            outbox.push_live(live(seq));
        }
        let first = outbox.pump();
        assert_eq!(seqs(&first), vec![1, 2]);
        assert_eq!(first.fetch, None);
        assert!(outbox.pump().publishes.is_empty(), "window full");
        assert!(outbox.on_puback(first.publishes[0].pkid));
        assert_eq!(outbox.acked_upto(), 1);
        assert_eq!(seqs(&outbox.pump()), vec![3]);
    }

    #[test]
    fn saturated_only_while_the_window_is_full_and_a_backlog_waits() {
        let mut outbox = inbox_outbox(2, 0);
        outbox.push_live(live(1));
        outbox.push_live(live(2));
        assert!(!outbox.is_saturated(), "room in the window");
        let sent = outbox.pump();
        assert!(!outbox.is_saturated(), "window full, nothing waiting");
        outbox.push_live(live(3));
        assert!(outbox.is_saturated());
        outbox.on_puback(sent.publishes[0].pkid);
        assert!(!outbox.is_saturated(), "an ack makes room");
        assert_eq!(seqs(&outbox.pump()), vec![3]);
    }

    #[test]
    fn a_gap_is_filled_from_the_store_before_live_traffic() {
        let mut outbox = inbox_outbox(8, 10);
        outbox.push_live(live(13));
        let pumped = outbox.pump();
        assert!(pumped.publishes.is_empty());
        assert_eq!(pumped.fetch, Some((10, 8)));
        assert_eq!(outbox.pump().fetch, None, "one fetch at a time");
        outbox.on_fetched(vec![(11, Bytes::from("11")), (12, Bytes::from("12"))]);
        assert_eq!(seqs(&outbox.pump()), vec![11, 12, 13]);
    }

    #[test]
    fn reconnect_reads_ahead_up_to_the_known_head() {
        let mut outbox = inbox_outbox(4, 5);
        outbox.observe_head(20);
        assert_eq!(outbox.pump().fetch, Some((5, 4)));
        outbox.on_fetched((6..=9).map(|s| (s, Bytes::from(s.to_string()))).collect());
        let pumped = outbox.pump();
        assert_eq!(seqs(&pumped), vec![6, 7, 8, 9]);
        for publish in &pumped.publishes {
            outbox.on_puback(publish.pkid);
        }
        assert_eq!(outbox.acked_upto(), 9);
        assert_eq!(outbox.pump().fetch, Some((9, 4)));
    }

    #[test]
    fn acked_cursor_never_skips_an_unacked_envelope() {
        let mut outbox = inbox_outbox(4, 0);
        for seq in 1..=3 {
            outbox.push_live(live(seq));
        }
        let pumped = outbox.pump();
        assert!(!outbox.on_puback(pumped.publishes[1].pkid));
        assert_eq!(outbox.acked_upto(), 0);
        assert!(outbox.on_puback(pumped.publishes[0].pkid));
        assert_eq!(outbox.acked_upto(), 2);
    }

    #[test]
    fn live_queue_is_bounded() {
        let mut outbox = inbox_outbox(1, 0);
        for seq in 1..=(LIVE_QUEUE as u64 * 4) {
            outbox.push_live(live(seq));
        }
        assert!(outbox.live.len() <= LIVE_QUEUE);
    }

    #[test]
    fn nothing_flows_without_a_subscription_and_replies_share_the_window() {
        let mut outbox = Outbox::new(1, 0);
        outbox.push_live(live(1));
        outbox.push_reply(Bytes::from_static(b"r"));
        assert_eq!(outbox.pump(), Pumped::default());
        outbox.set_subscriptions(Some(QoS::AtLeastOnce), Some(QoS::ExactlyOnce));
        outbox.push_reply(Bytes::from_static(b"r"));
        outbox.push_live(live(1));
        let pumped = outbox.pump();
        assert_eq!(pumped.publishes.len(), 1);
        assert_eq!(pumped.publishes[0].stream, Stream::Reply);
        assert_eq!(pumped.publishes[0].qos, QoS::AtLeastOnce);
    }

    #[test]
    fn live_only_events_go_out_at_qos0_outside_the_cursor() {
        let mut outbox = inbox_outbox(1, 5);
        outbox.push_live(live(6));
        outbox.push_live(LiveEnvelope {
            inbox_seq: 0,
            payload: Bytes::from_static(b"typing"),
        });
        let pumped = outbox.pump();
        let typing: Vec<&Outgoing> = pumped
            .publishes
            .iter()
            .filter(|p| p.payload == Bytes::from_static(b"typing"))
            .collect();
        assert_eq!(typing.len(), 1, "sent even though the window is full");
        assert_eq!(
            (typing[0].qos, typing[0].stream.clone()),
            (QoS::AtMostOnce, Stream::Inbox)
        );
        assert_eq!(seqs(&pumped), vec![6]);
        assert_eq!(
            outbox.acked_upto(),
            5,
            "the cursor ignores live-only events"
        );
        let mut unsubscribed = Outbox::new(4, 0);
        unsubscribed.push_live(LiveEnvelope {
            inbox_seq: 0,
            payload: Bytes::from_static(b"typing"),
        });
        unsubscribed.set_subscriptions(Some(QoS::AtLeastOnce), None);
        assert!(unsubscribed.pump().publishes.is_empty());
    }

    fn presence(subject: &str, payload: &'static [u8]) -> PresenceUpdate {
        PresenceUpdate {
            subject: subject.to_owned(),
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn presence_goes_to_matching_subscriptions_newest_first_and_retained_on_subscribe() {
        let mut outbox = Outbox::new(8, 0);
        outbox.set_presence_filters(
            "alice",
            vec![("presence/+/alice".to_owned(), QoS::AtLeastOnce)],
        );
        outbox.begin_presence_snapshot();
        outbox.push_presence(presence("bob", b"bob-live"));
        outbox.on_presence_snapshot(vec![
            presence("bob", b"bob-old"),
            presence("carol", b"carol"),
        ]);
        let mut sent: Vec<(Stream, Bytes, bool)> = outbox
            .pump()
            .publishes
            .into_iter()
            .map(|p| (p.stream, p.payload, p.retain))
            .collect();
        sent.sort_by_key(|(stream, _, _)| format!("{stream:?}"));
        assert_eq!(
            sent,
            [
                (
                    Stream::Presence("bob".into()),
                    Bytes::from_static(b"bob-live"),
                    false
                ),
                (
                    Stream::Presence("carol".into()),
                    Bytes::from_static(b"carol"),
                    true
                ),
            ]
        );
        outbox.push_presence(presence("dave", b"a"));
        outbox.push_presence(presence("dave", b"b"));
        let pumped = outbox.pump();
        assert_eq!(pumped.publishes.len(), 1, "coalesced");
        assert_eq!(pumped.publishes[0].payload, Bytes::from_static(b"b"));
    }

    #[test]
    fn presence_without_a_matching_subscription_is_dropped() {
        let mut outbox = Outbox::new(8, 0);
        outbox.set_presence_filters(
            "alice",
            vec![("presence/bob/alice".to_owned(), QoS::AtMostOnce)],
        );
        outbox.push_presence(presence("carol", b"x"));
        outbox.push_presence(presence("bob", b"y"));
        let pumped = outbox.pump();
        assert_eq!(pumped.publishes.len(), 1);
        assert_eq!(pumped.publishes[0].stream, Stream::Presence("bob".into()));
        assert_eq!(pumped.publishes[0].qos, QoS::AtMostOnce);
        assert!(outbox.pump().publishes.is_empty());
    }

    #[test]
    fn qos0_inbox_advances_without_acks() {
        let mut outbox = Outbox::new(1, 0);
        outbox.set_subscriptions(Some(QoS::AtMostOnce), None);
        for seq in 1..=3 {
            outbox.push_live(live(seq));
        }
        assert_eq!(seqs(&outbox.pump()), vec![1, 2, 3]);
        assert_eq!(outbox.acked_upto(), 3);
    }
}

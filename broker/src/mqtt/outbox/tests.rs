//! Tests of `outbox.rs`: the window and its order, the store read-ahead,
//! live-only events and presence.

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

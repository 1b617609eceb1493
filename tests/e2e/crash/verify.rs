//! The checks after the last restart, through `History` and `Sync` only
//! (what a client can see), with small pages so that paging is exercised.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use parley_proto::v1::{envelope, ChatMessage};
use parley_tests::Client;

use super::ledger::{Acked, Attempt};

/// History page size: small and odd, so pages end anywhere.
const HISTORY_PAGE: u32 = 37;
/// Sync page size.
const SYNC_PAGE: u32 = 50;

/// Every channel's messages as `History` returns them, in `seq` order.
pub type Channels = BTreeMap<String, Vec<ChatMessage>>;

/// Reads `channel` through `reader` with `History`, page by page (newest
/// first, `before_seq` = the oldest seq of the previous page), and checks
/// that the seqs are exactly `1..=max`: no gap, no duplicate, no reuse.
pub async fn read_channel(reader: &Client, channel: &str) -> Vec<ChatMessage> {
    let mut newest_first: Vec<ChatMessage> = Vec::new();
    let mut before = 0;
    loop {
        let page = reader
            .history(channel, before, HISTORY_PAGE)
            .await
            .unwrap_or_else(|e| panic!("history of {channel} before {before}: {e}"));
        assert!(
            page.messages.len() <= HISTORY_PAGE as usize,
            "{channel}: page larger than asked"
        );
        for pair in page.messages.windows(2) {
            assert!(
                pair[0].seq > pair[1].seq,
                "{channel}: a history page is not newest first: {} then {}",
                pair[0].seq,
                pair[1].seq
            );
        }
        let Some(oldest) = page.messages.last() else {
            assert!(!page.more, "{channel}: an empty history page says more");
            break;
        };
        before = oldest.seq;
        newest_first.extend(page.messages);
        if !page.more {
            break;
        }
    }
    newest_first.reverse();
    let seqs: Vec<u64> = newest_first.iter().map(|m| m.seq).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "{channel}: seqs are not 1..=max without gaps or duplicates"
    );
    for message in &newest_first {
        assert_eq!(
            message.channel, channel,
            "a message of another channel in {channel}'s history"
        );
    }
    newest_first
}

/// Reads every channel (each through one of its members).
pub async fn read_channels(
    readers: &HashMap<String, Client>,
    channels: &[(String, Vec<String>)],
) -> Channels {
    let mut read = Channels::new();
    for (channel, members) in channels {
        let reader = &readers[&members[0]];
        read.insert(channel.clone(), read_channel(reader, channel).await);
    }
    read
}

/// Where the message sent as `(sender, client_msg_id)` is, if stored.
pub fn find<'a>(channels: &'a Channels, attempt: &Attempt) -> Option<&'a ChatMessage> {
    channels
        .get(&attempt.channel)?
        .iter()
        .find(|m| m.sender == attempt.sender && m.client_msg_id == attempt.client_msg_id)
}

/// Every acked attempt is stored exactly once with its acked seq, ts and
/// text; every stored message is one of the attempts (no phantom), stored
/// once. Returns how many in-flight attempts were committed anyway.
pub fn check_against_attempts(channels: &Channels, attempts: &[(usize, Attempt)]) -> usize {
    let mut by_key: HashMap<(&str, &str, &str), &Attempt> = HashMap::new();
    for (_, attempt) in attempts {
        let key = (
            attempt.channel.as_str(),
            attempt.sender.as_str(),
            attempt.client_msg_id.as_str(),
        );
        assert!(
            by_key.insert(key, attempt).is_none(),
            "the test reused a client_msg_id: {attempt:?}"
        );
    }
    let mut stored = HashMap::new();
    for (channel, messages) in channels {
        for message in messages {
            let key = (
                channel.as_str(),
                message.sender.as_str(),
                message.client_msg_id.as_str(),
            );
            let Some(attempt) = by_key.get(&key) else {
                panic!("{channel} holds a message nobody sent: {message:?}");
            };
            assert_eq!(
                message.text, attempt.text,
                "stored text differs from the text sent: {attempt:?}"
            );
            if let Some(first) = stored.insert(key, message.seq) {
                panic!(
                    "{attempt:?} is stored twice, as seq {first} and seq {}",
                    message.seq
                );
            }
        }
    }
    let mut committed_in_flight = 0;
    for (_, attempt) in attempts {
        let key = (
            attempt.channel.as_str(),
            attempt.sender.as_str(),
            attempt.client_msg_id.as_str(),
        );
        match (attempt.acked, stored.get(&key)) {
            (Some(Acked { seq, ts_ms }), Some(&stored_seq)) => {
                assert_eq!(
                    stored_seq, seq,
                    "acked as seq {seq} but stored as seq {stored_seq}: {attempt:?}"
                );
                let message = &channels[&attempt.channel][seq as usize - 1];
                assert_eq!(
                    message.ts_ms, ts_ms,
                    "acked ts_ms differs from the stored one: {attempt:?}"
                );
            }
            (Some(acked), None) => panic!("an acked message is lost ({acked:?}): {attempt:?}"),
            (None, Some(_)) => committed_in_flight += 1,
            (None, None) => {}
        }
    }
    committed_in_flight
}

/// Reads `reader`'s whole inbox with `Sync` pages and checks it: inbox_seq
/// is exactly `1..=max`; it holds each message of `expected` exactly once
/// (and no other message), equal to the stored one; and `events` other
/// (group) events.
pub async fn check_inbox(
    reader: &Client,
    expected: &BTreeMap<(String, u64), ChatMessage>,
    events: usize,
) -> u64 {
    let user = reader.user().to_owned();
    let mut after = 0;
    let mut messages = BTreeSet::new();
    let mut other_events = 0;
    loop {
        let page = reader
            .sync(after, SYNC_PAGE)
            .await
            .unwrap_or_else(|e| panic!("{user}: sync after {after}: {e}"));
        for envelope in &page.events {
            assert_eq!(
                envelope.inbox_seq,
                after + 1,
                "{user}: inbox_seq {} follows {after}",
                envelope.inbox_seq
            );
            after = envelope.inbox_seq;
            match &envelope.body {
                Some(envelope::Body::Message(message)) => {
                    let key = (message.channel.clone(), message.seq);
                    let Some(stored) = expected.get(&key) else {
                        panic!("{user}'s inbox holds a message that is not in its channels' history: {message:?}");
                    };
                    assert_eq!(
                        message, stored,
                        "{user}'s inbox copy differs from the history"
                    );
                    assert!(
                        messages.insert(key),
                        "{user}'s inbox holds {message:?} twice"
                    );
                }
                Some(_) => other_events += 1,
                None => panic!("{user}: inbox_seq {} has no body", envelope.inbox_seq),
            }
        }
        if !page.more || page.events.is_empty() {
            assert!(!page.more, "{user}: an empty sync page says more");
            break;
        }
    }
    let missing: Vec<_> = expected.keys().filter(|k| !messages.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "{user}'s inbox misses {} messages of its channels: {missing:?}",
        missing.len()
    );
    assert_eq!(other_events, events, "{user}: group events in the inbox");
    after
}

/// The messages of the channels `user` is a member of, by `(channel, seq)`.
pub fn expected_inbox(
    user: &str,
    channels: &[(String, Vec<String>)],
    read: &Channels,
) -> BTreeMap<(String, u64), ChatMessage> {
    channels
        .iter()
        .filter(|(_, members)| members.iter().any(|m| m == user))
        .flat_map(|(channel, _)| read[channel].iter())
        .map(|m| ((m.channel.clone(), m.seq), m.clone()))
        .collect()
}

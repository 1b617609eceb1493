//! Typing: forwarded live to the other members' devices as an envelope with
//! `inbox_seq` 0, never stored, at most [`TYPING_PER_SEC`] per device.

use std::time::Instant;

use parley_chat_logic::channel::Channel;
use parley_chat_logic::{send, ChatError};
use parley_proto::v1::{envelope, Ack, TypingEvent};
use parley_storage::Store;

use super::outcome::{encode_body, encode_envelope};
use super::plan::StoreDirectory;
use crate::metrics as m;
use crate::rate::{Bucket, Quota};
use crate::router::Router;

/// Typing notices one device may send per second, on average.
pub const TYPING_PER_SEC: u32 = 2;
/// Typing notices one device may send at once.
pub const TYPING_BURST: u32 = 5;

/// One device's typing allowance, kept by its connection.
pub struct TypingLimit {
    bucket: Bucket,
}

impl Default for TypingLimit {
    fn default() -> Self {
        TypingLimit {
            bucket: Bucket::full(quota(), Instant::now()),
        }
    }
}

impl TypingLimit {
    /// Takes one notice; `RATE_LIMITED` beyond the allowance.
    pub fn take(&mut self) -> Result<(), ChatError> {
        if self.bucket.try_take(quota(), Instant::now()) {
            return Ok(());
        }
        Err(ChatError::rate_limited(format!(
            "too many typing notices: at most {TYPING_PER_SEC} per second"
        )))
    }
}

fn quota() -> Quota {
    Quota::per_second(TYPING_PER_SEC, TYPING_BURST)
}

/// Tells the other members of `channel` that `user` is typing (blocking:
/// reads the group and the users from the store). `NOT_MEMBER`,
/// `NOT_FOUND` and `FORBIDDEN` (system channels) like a send.
pub fn forward(
    store: &Store,
    router: &Router,
    user: &str,
    channel: &Channel,
) -> Result<Ack, ChatError> {
    let group = super::reads::group_of(store, channel)?;
    let directory = StoreDirectory::new(store);
    let others = send::typing_recipients(user, channel, group.as_ref(), &directory)?;
    let event = envelope::Body::Typing(TypingEvent {
        channel: channel.id(),
        user: user.to_owned(),
    });
    let payload = encode_envelope(0, &encode_body(event));
    let devices = router.deliver_everywhere(&others, payload);
    m::live_events(devices as u64);
    Ok(Ack {
        channel: channel.id(),
        seq: 0,
        ts_ms: crate::clock::now_ms(),
        duplicate: false,
    })
}

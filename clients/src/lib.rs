//! Parley's clients: the SDK on rumqttc and the `parley chat` command line.
//! (The `parley-bench` load generator is its own crate, `bench/`, on this
//! SDK.)
//!
//! Owns: how a device speaks the chat-over-MQTT contract
//! (`shared/PROTOCOL.md`, restated in `docs/PROTOCOL.md`) from the client's
//! side: CONNECT as `{user}:{device}`, subscribe `inbox/{user}` and
//! `reply/{user}/{device}` (and, when asked, `presence/+/{user}`), publish
//! `Request`s on `req/{user}/{device}` and match each `Reply` by
//! `request_id`.
//!
//! Must not: depend on the broker (it talks to any broker over the network
//! only), parse MQTT by hand (rumqttc does), or keep unbounded queues (the
//! inbox buffer is bounded and pushes back on the socket).
//!
//! # Layout
//! - [`options`]: [`ClientOptions`], [`Transport`], broker address parsing.
//! - [`client`]: [`Client`]: connect, `request`, the typed helpers
//!   (`send`, `sync`, `history`, groups, friends, receipts, typing,
//!   presence queries, push, `logout`), the inbox, presence, `disconnect`.
//! - `driver`: the spawned task that polls rumqttc's event loop and routes
//!   replies (to waiting requests), SUBACKs (to waiting subscriptions),
//!   envelopes (to the inbox channel) and presence (to its queue).
//! - [`presence`]: [`PresenceUpdate`], a friend's state as published on
//!   `presence/{friend}/{user}`, and the queue behind `next_presence`.
//! - [`ids`]: unique `request_id`s and `client_msg_id`s.
//! - [`error`]: [`ClientError`], the library's one error type.
//! - [`json`]: envelopes, messages and replies as JSON, for scripts.
//! - [`cli`]: `parley chat send|sync|history|listen|group|read|typing|friends|presence|push|logout` (the broker's
//!   binary mounts it; `anyhow` is used there, at the edge).
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//! use parley_client::{direct_channel, Client, ClientOptions};
//!
//! # async fn demo() -> Result<(), parley_client::ClientError> {
//! let opts = ClientOptions::parse("127.0.0.1:1883", "alice", "phone", "alice-password")?;
//! let alice = Client::connect(opts).await?;
//! let ack = alice.send(&direct_channel("alice", "bob"), "hello bob").await?;
//! println!("stored as seq {} in {}", ack.seq, ack.channel);
//! while let Some(envelope) = alice.next_envelope(Duration::from_secs(1)).await? {
//!     println!("inbox_seq {}", envelope.inbox_seq);
//! }
//! let page = alice.sync(0, 100).await?; // catch up from the start of the inbox
//! println!("{} events, more: {}", page.events.len(), page.more);
//!
//! alice.change_friends(["bob"], Vec::<String>::new()).await?; // a friend request
//! alice.subscribe_presence().await?; // friends' states, then their changes
//! while let Some(update) = alice.next_presence(Duration::from_secs(1)).await? {
//!     println!("{} online: {:?} (retained: {})", update.subject, update.online(), update.retained);
//! }
//! alice.disconnect().await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod cli;
pub mod client;
mod driver;
pub mod error;
pub mod ids;
pub mod json;
pub mod options;
pub mod presence;

#[cfg(test)]
mod fake_broker;

pub use client::Client;
pub use error::{ClientError, ConnectReturnCode};
pub use ids::IdGen;
pub use options::{parse_broker_addr, ClientOptions, Transport};
pub use parley_proto::v1;
pub use presence::PresenceUpdate;

/// The channel id of the direct chat between `a` and `b`:
/// `dm:{min(a,b)}:{max(a,b)}` in byte-wise order.
///
/// ```
/// assert_eq!(parley_client::direct_channel("bob", "alice"), "dm:alice:bob");
/// ```
pub fn direct_channel(a: &str, b: &str) -> String {
    let (low, high) = if a.as_bytes() <= b.as_bytes() {
        (a, b)
    } else {
        (b, a)
    };
    format!("dm:{low}:{high}")
}

/// The channel id of group `group_id`: `g:{group_id}`.
///
/// ```
/// assert_eq!(parley_client::group_channel("team"), "g:team");
/// ```
pub fn group_channel(group_id: &str) -> String {
    format!("g:{group_id}")
}

//! Parley's chat domain, pure: every rule of the chat.v1 contract that can be
//! decided without touching a socket or a disk.
//!
//! Owns: identities, channel ids, the topic ACL, request decoding and
//! validation, group membership rules, the friendship state machine, the
//! fan-out plans of messages, typing notices and system messages, read
//! cursors, and the one error type with its client-facing code.
//!
//! Must not: do any I/O, depend on tokio or RocksDB, or keep state. Whatever
//! it needs to know about the world (is this a registered user? what does
//! this group look like now?) is passed in by the caller: the group as read,
//! and a [`Directory`] of users.
//!
//! # Layout
//! - [`error`]: [`ChatError`], a stable `ErrorCode` plus a message.
//! - [`ids`]: user / device / group ids and the MQTT client identifier.
//! - [`channel`]: `dm:{a}:{b}`, `g:{group}`, `sys:{user}` and their canonical form.
//! - [`acl`]: which topics a user may subscribe to and a device may publish on.
//! - [`limits`]: size, paging and per-request limits, with the contract's defaults.
//! - [`command`]: `Request` payload -> validated [`Command`], for every
//!   request kind of the contract.
//! - [`group`]: create / change members / leave, as pure decisions.
//! - [`friends`]: add / remove a friend: request, accept, unfriend.
//! - [`send`]: who receives a message, a typing notice or a system message;
//!   who may read a channel.
//! - [`receipts`]: per-channel read cursors that only move forward.
//!
//! # Example
//! ```
//! use parley_chat_logic::{acl, decode_request, Command, Limits, PublishTopic};
//! use parley_proto::v1;
//! use prost::Message;
//!
//! assert_eq!(acl::classify_publish("alice", "phone", "req/alice/phone"), PublishTopic::Request);
//! let sync = v1::Sync { after_inbox_seq: 7, limit: 0 };
//! let payload = v1::Request {
//!     request_id: "r1".into(),
//!     body: Some(v1::request::Body::Sync(sync)),
//! }
//! .encode_to_vec();
//! let decoded = decode_request(&payload, &Limits::default());
//! assert_eq!(decoded.request_id, "r1");
//! match decoded.command {
//!     Ok(Command::Sync(sync)) => assert_eq!((sync.after_inbox_seq, sync.limit), (7, 100)),
//!     other => panic!("unexpected {other:?}"),
//! }
//! ```

#![warn(missing_docs)]

pub mod acl;
pub mod channel;
pub mod command;
pub mod error;
pub mod friends;
pub mod group;
pub mod ids;
pub mod limits;
pub mod receipts;
pub mod send;

pub use acl::PublishTopic;
pub use channel::Channel;
pub use command::{decode_request, Command, Decoded};
pub use error::ChatError;
pub use friends::FriendChange;
pub use group::{Directory, Group, GroupChange};
pub use ids::{ClientId, IdKind};
pub use limits::Limits;
pub use receipts::ReadCursor;

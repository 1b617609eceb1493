//! The Parley broker: the network front and the chat plugin.
//!
//! Owns: the listeners (TCP, TLS, WebSocket, secure WebSocket), MQTT
//! sessions on rumqttd's packet codecs, authentication and topic ACLs, the
//! router that maps user ids to connected devices, the chat engine that
//! turns requests into durable batches, configuration and the HTTP API.
//! Must not: parse MQTT by hand (rumqttd's `protocol` does), hold chat rules
//! (those are in `parley-chat-logic`) or encode keys (that is `parley-storage`).
//!
//! Layout:
//! - [`config`]: the one typed configuration struct, file + `PARLEY_*` overrides.
//! - [`server`]: [`Broker::start`], the accept loops and shutdown.
//! - [`tls`]: rustls server configs from the PEM files, handshakes, the HTTPS listener.
//! - [`mqtt`]: one connection's life: codec, CONNECT, session, packets.
//! - [`router`]: user id -> connected devices; live delivery hand-off.
//! - [`presence`]: who is online (heartbeats, grace period), last activity,
//!   and the retained per-friend-pair presence topics.
//! - [`chat`]: the engine thread (group commit) and the read-side requests.
//! - [`push`]: push registrations and notifications through a Matrix push
//!   gateway (the jobs in the store, the worker that sends them).
//! - [`accounts`]: users (argon2 passwords), service accounts and session
//!   tokens in the store.
//! - [`auth`]: who may connect: tokens, passwords (argon2 pool and cache),
//!   failed-login limits.
//! - [`http`]: the HTTP API (register, login and discovery, logout,
//!   password, health, metrics).
//! - [`cluster`]: cluster mode on NATS JetStream: the replicated log, the
//!   leader's lease, forwarding to the leader, the node registry.
//! - [`rate`]: token buckets, the one rate rule of every limit.
//! - [`clock`]: the wall clock in contract units.

pub mod accounts;
pub mod auth;
pub mod chat;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod mqtt;
pub mod presence;
pub mod push;
pub mod rate;
pub mod router;
pub mod server;
pub mod tls;

pub use config::Config;
pub use error::BrokerError;
pub use server::Broker;

//! The Parley broker: the network front and the chat plugin.
//!
//! Owns: the listeners (TCP, WebSocket), MQTT sessions on rumqttd's packet
//! codecs, authentication and topic ACLs, the router that maps user ids to
//! connected devices, the chat engine that turns requests into durable
//! batches, configuration and the HTTP API.
//! Must not: parse MQTT by hand (rumqttd's `protocol` does), hold chat rules
//! (those are in `parley-chat-logic`) or encode keys (that is `parley-storage`).
//!
//! Layout:
//! - [`config`]: the one typed configuration struct, file + `PARLEY_*` overrides.
//! - [`server`]: [`Broker::start`], the accept loops and shutdown.
//! - [`mqtt`]: one connection's life: codec, CONNECT, session, packets.
//! - [`router`]: user id -> connected devices; live delivery hand-off.
//! - [`chat`]: the engine thread (group commit) and the read-side requests.
//! - [`accounts`]: users and passwords (argon2) in the store.
//! - [`auth`]: CONNECT authentication with a cache of recent verifications.
//! - [`http`]: the HTTP API (`/v1/health`, `/metrics`).

pub mod accounts;
pub mod auth;
pub mod chat;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod mqtt;
pub mod router;
pub mod server;

pub use config::Config;
pub use error::BrokerError;
pub use server::Broker;

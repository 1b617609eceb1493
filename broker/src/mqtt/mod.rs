//! One device connection's life, on rumqttd's MQTT codecs.
//!
//! Layout:
//! - [`admission`]: `max_connections` and `max_connecting_per_addr`, checked at accept.
//! - [`transport`]: TCP, TLS, or WebSocket (over either) bytes.
//! - [`codec`]: framing with `rumqttd::protocol::{V4, V5}`.
//! - [`connect`]: CONNECT, authentication, CONNACK.
//! - [`session`]: durable sessions in RocksDB.
//! - [`limits`]: one device's request rate and subscription count.
//! - [`outbox`]: ordered delivery within the in-flight window.
//! - [`connection`]: the per-connection task that ties them together.

pub mod admission;
pub mod codec;
pub mod connect;
pub mod connection;
pub mod limits;
pub mod outbox;
pub mod session;
pub mod transport;

use std::sync::Arc;

use parley_storage::Store;

use crate::chat::ChatService;
use crate::config::Config;
use crate::router::Router;

/// What every connection shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub store: Store,
    pub router: Arc<Router>,
    /// The owner of every durable session record.
    pub sessions: Arc<session::Sessions>,
    /// Who is online; the retained presence topics.
    pub presence: Arc<crate::presence::Presence>,
    pub chat: ChatService,
    pub auth: crate::auth::Authenticator,
    /// Cluster mode: this node's place in the cluster.
    pub cluster: Option<Arc<crate::cluster::ClusterNode>>,
}

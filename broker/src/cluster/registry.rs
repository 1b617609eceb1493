//! The node registry (KV `parley_nodes`): every node writes its endpoints
//! and connection count every [`HEARTBEAT`]; an entry not refreshed for
//! `NODE_TTL` expires. Login discovery on any node picks the live node
//! with the fewest connections ([`Directory`]), so devices spread over the
//! nodes and reconnect to a live one when theirs dies. A node that drops
//! out of the registry has its users' presence dropped on every node.
//!
//! Owns the types login discovery reads the registry through: a node's
//! [`Endpoints`] and the [`Directory`] of live nodes. The HTTP API uses them
//! (`http::discovery`); nothing here knows HTTP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use parley_proto::cluster::NodeInfo;
use prost::Message as _;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::NodeContext;
use crate::metrics as m;
use crate::presence::Presence;
use crate::router::Router;

/// A node's MQTT URLs (unset: that listener is off): what it registers,
/// and the `mqtt` object of a login answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoints {
    pub tcp: Option<String>,
    pub tls: Option<String>,
    pub ws: Option<String>,
    pub wss: Option<String>,
}

/// The cluster's live nodes, for login discovery.
pub trait Directory: Send + Sync + 'static {
    /// The registered endpoints of the live, not draining node with the
    /// fewest connections; `None` before the registry has been read.
    fn least_loaded(&self) -> Option<Endpoints>;
}

/// How often a node refreshes its entry and reads the others'.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// This node's entry and the live nodes as last read.
pub(crate) struct Registry {
    context: Arc<NodeContext>,
    own: Mutex<Option<Endpoints>>,
    live: Mutex<HashMap<String, NodeInfo>>,
    draining: std::sync::atomic::AtomicBool,
}

impl Registry {
    pub(crate) fn new(context: Arc<NodeContext>) -> Registry {
        Registry {
            context,
            own: Mutex::new(None),
            live: Mutex::new(HashMap::new()),
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn advertise(&self, endpoints: Endpoints) {
        *self.own.lock().unwrap_or_else(|e| e.into_inner()) = Some(endpoints);
    }

    fn own_info(&self, router: &Router) -> Option<NodeInfo> {
        let own = self.own.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        Some(NodeInfo {
            node: self.context.id.clone(),
            tcp: own.tcp.unwrap_or_default(),
            tls: own.tls.unwrap_or_default(),
            ws: own.ws.unwrap_or_default(),
            wss: own.wss.unwrap_or_default(),
            connections: router.connected_devices() as u64,
            draining: self.draining.load(std::sync::atomic::Ordering::Acquire),
            ..Default::default()
        })
    }

    /// Reads every live entry; returns the nodes that are gone since the last read.
    async fn refresh(&self) -> Result<Vec<String>, String> {
        let nodes = &self.context.nats.nodes;
        let mut keys = nodes.keys().await.map_err(|e| e.to_string())?;
        let mut live = HashMap::new();
        while let Some(key) = keys.next().await {
            let Ok(key) = key else { continue };
            if let Ok(Some(value)) = nodes.get(key.clone()).await {
                if let Ok(info) = NodeInfo::decode(value) {
                    live.insert(key, info);
                }
            }
        }
        m::cluster_nodes_live(live.len());
        let mut known = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let gone = known
            .keys()
            .filter(|node| !live.contains_key(*node))
            .cloned()
            .collect();
        *known = live;
        Ok(gone)
    }
}

impl Directory for Registry {
    fn least_loaded(&self) -> Option<Endpoints> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let chosen = live
            .values()
            .filter(|info| !info.draining)
            .min_by_key(|info| (info.connections, info.node.clone()))?;
        let url = |value: &str| (!value.is_empty()).then(|| value.to_owned());
        Some(Endpoints {
            tcp: url(&chosen.tcp),
            tls: url(&chosen.tls),
            ws: url(&chosen.ws),
            wss: url(&chosen.wss),
        })
    }
}

/// Refreshes this node's entry and reads the others' every [`HEARTBEAT`];
/// at shutdown marks the node draining, then removes its entry.
pub(crate) async fn heartbeat(
    registry: Arc<Registry>,
    router: Arc<Router>,
    presence: Arc<Presence>,
    shutdown: CancellationToken,
) {
    let context = registry.context.clone();
    let mut ticks = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        if let Some(info) = registry.own_info(&router) {
            let value = Bytes::from(info.encode_to_vec());
            if let Err(error) = context.nats.nodes.put(&context.id, value).await {
                tracing::warn!(%error, "cannot refresh this node's registry entry");
            }
        }
        match registry.refresh().await {
            Ok(gone) => {
                for node in gone {
                    tracing::info!(%node, "node left the cluster");
                    presence.remote_node_gone(&node);
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the node registry"),
        }
    }
    registry
        .draining
        .store(true, std::sync::atomic::Ordering::Release);
    let _ = context.nats.nodes.delete(&context.id).await;
}

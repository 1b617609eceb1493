//! Cluster mode: many Parley nodes on one NATS JetStream cluster.
//!
//! Owns: the node's NATS connection, the replicated log (the JetStream
//! stream `PARLEY_LOG`, R3) that every committed batch goes to, the
//! leader's lease (KV `parley_leases`), applying the log to this node's
//! RocksDB, forwarding writes to the leader, the node registry (KV
//! `parley_nodes`) that login discovery reads, and the NATS side of
//! presence and typing.
//!
//! The shape (docs/SCALE-OUT.md, "phase 1"): one leader at a time runs the
//! chat engine; its commit ([`commit::LogCommit`]) appends the batch, fenced by
//! `Nats-Expected-Last-Sequence`, and only then applies it here unsynced
//! and answers; every node ([`follow`]) applies every entry in log order to
//! its own RocksDB and hands the entry's deliveries to its own devices. So
//! reads (sync, history, tokens at CONNECT) are served locally on any node,
//! and losing any node loses nothing acked: the log is on a quorum of NATS
//! servers and a node that comes back catches up from its applied seq.
//!
//! Must not: plan chat writes (the engine does, on the leader), parse MQTT,
//! or be needed in single-node mode (nothing here runs without
//! `cluster_nats_urls`).

mod apply;
mod bus;
mod commit;
mod follow;
mod forward;
mod leader;
mod log;
mod nats;
mod registry;

use std::sync::Arc;
use std::time::Duration;

use parley_chat_logic::limits::Limits;
use parley_storage::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat::commit::Commit;
use crate::chat::EngineHandle;
use crate::config::Config;
use crate::error::BrokerError;
use crate::presence::Presence;
use crate::push::Push;
use crate::router::Router;

use apply::Applier;
use leader::Leadership;
use nats::Nats;
pub use registry::{Directory, Endpoints};

/// What this node knows about its place in the cluster.
pub(crate) struct NodeContext {
    pub(crate) id: String,
    pub(crate) nats: Nats,
    pub(crate) applier: Arc<Applier>,
    pub(crate) leadership: Arc<Leadership>,
    /// Sends push notifications only while this node leads.
    pub(crate) push: Arc<Push>,
    pub(crate) lease_ttl: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) runtime: tokio::runtime::Handle,
    /// Cancelled when the broker stops: nothing waits for a leader then.
    pub(crate) shutdown: CancellationToken,
}

/// A running cluster node; see the module docs.
pub struct ClusterNode {
    context: Arc<NodeContext>,
    registry: Arc<registry::Registry>,
    router: Arc<Router>,
    presence: Arc<Presence>,
}

impl ClusterNode {
    /// Connects to NATS and makes sure the log and the buckets exist.
    pub async fn connect(
        config: &Config,
        store: Store,
        router: Arc<Router>,
        presence: Arc<Presence>,
        push: Arc<Push>,
        shutdown: &CancellationToken,
    ) -> Result<ClusterNode, BrokerError> {
        let urls = config.cluster_urls().unwrap_or_default();
        let id = config.cluster_node_id.clone().unwrap_or_default();
        let lease_ttl = Duration::from_secs(config.cluster_lease_ttl_secs);
        let nats = Nats::connect(&urls, &id, config.cluster_replicas, lease_ttl).await?;
        let applier = Arc::new(Applier::open(store, router.clone(), presence.clone())?);
        let context = Arc::new(NodeContext {
            id,
            nats,
            applier,
            leadership: Arc::new(Leadership::default()),
            push,
            lease_ttl,
            request_timeout: Duration::from_secs(config.cluster_request_timeout_secs),
            runtime: tokio::runtime::Handle::current(),
            shutdown: shutdown.clone(),
        });
        context.push.stand_by();
        let registry = Arc::new(registry::Registry::new(context.clone()));
        tracing::info!(node = %context.id, ?urls, "joined the cluster");
        Ok(ClusterNode {
            context,
            registry,
            router,
            presence,
        })
    }

    /// The engine's commit: append to the log, then apply here.
    pub fn committer(&self) -> Box<dyn Commit> {
        Box::new(commit::LogCommit::new(self.context.clone()))
    }

    /// Starts the node's tasks and routes `engine`'s jobs (and the store's
    /// outside writes) through the leader; returns the handle to use.
    pub fn start(
        &self,
        engine: EngineHandle,
        store: &Store,
        limits: Arc<Limits>,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<EngineHandle, BrokerError> {
        let context = &self.context;
        let forwarder = Arc::new(forward::Forwarder::new(context.clone(), engine.clone()));
        store
            .replicate_through(forwarder.clone())
            .map_err(BrokerError::Storage)?;
        let (releasing, stopped) = (forwarder.clone(), shutdown.clone());
        tasks.spawn(async move {
            stopped.cancelled().await;
            releasing.release_engine();
        });
        tasks.spawn(follow::follow(context.clone(), shutdown.clone()));
        tasks.spawn(leader::campaign(context.clone(), shutdown.clone()));
        tasks.spawn(forward::serve(
            context.clone(),
            engine.clone(),
            limits,
            shutdown.clone(),
        ));
        let bus = Arc::new(bus::Bus::new(context.clone()));
        self.router.join_cluster(bus.clone());
        self.presence.join_cluster(bus);
        let (router, presence) = (self.router.clone(), self.presence.clone());
        tasks.spawn(bus::serve(
            context.clone(),
            router.clone(),
            presence.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(registry::heartbeat(
            self.registry.clone(),
            router,
            presence,
            shutdown.clone(),
        ));
        Ok(engine.with_forward(forwarder))
    }

    /// This node's endpoints, as logins anywhere in the cluster hand them out.
    pub fn advertise(&self, endpoints: Endpoints) {
        self.registry.advertise(endpoints);
    }

    /// Where login discovery looks for the least loaded live node.
    pub fn directory(&self) -> Arc<dyn Directory> {
        self.registry.clone()
    }

    /// Whether this node leads now (for `GET /v1/health` and tests).
    pub fn is_leader(&self) -> bool {
        self.context.leadership.is_leader()
    }
}

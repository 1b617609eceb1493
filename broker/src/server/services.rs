//! Starting everything behind the listeners, in order: the store, router,
//! presence, push, in cluster mode the cluster node, the chat engine thread,
//! and what every connection shares ([`Shared`]).
//!
//! Must not: bind or accept (`listen.rs`, `accept.rs`) or stop anything:
//! each service ends with the shutdown token, and `Broker::wait` waits for
//! them.

use std::sync::Arc;

use parley_storage::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat::commit::{Commit, SyncedWrite};
use crate::chat::engine::{self, EngineConfig};
use crate::chat::{ChatService, EngineHandle};
use crate::cluster::ClusterNode;
use crate::config::Config;
use crate::error::BrokerError;
use crate::mqtt::Shared;
use crate::presence::Presence;
use crate::push::{Push, PushConfig};
use crate::router::Router;

/// Everything behind the listeners: router, presence, push, the chat
/// engine and what connections share.
pub(super) struct Services {
    pub(super) shared: Arc<Shared>,
    pub(super) engine_thread: std::thread::JoinHandle<()>,
    pub(super) push: Arc<Push>,
}

impl Services {
    /// Starts presence, push and the engine thread on `store` (and, in
    /// cluster mode, joins the cluster first).
    pub(super) async fn start(
        config: &Arc<Config>,
        store: Store,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Services, BrokerError> {
        let router = Router::new();
        let presence = Presence::start(
            store.clone(),
            router.clone(),
            config.presence_timeout(),
            shutdown,
            tasks,
        );
        let engine_config = engine_config(config);
        let limits = Arc::new(engine_config.limits.clone());
        let push = Push::start(store.clone(), PushConfig::from_config(config))?;
        let outlets = engine::Outlets {
            router: router.clone(),
            presence: presence.clone(),
            push: push.clone(),
        };
        let cluster = join_cluster(config, &store, &outlets, shutdown).await?;
        let (engine, engine_thread) =
            spawn_engine(&store, cluster.as_deref(), outlets, engine_config)?;
        let engine = match &cluster {
            Some(node) => node.start(engine, &store, limits.clone(), shutdown, tasks)?,
            None => engine,
        };
        let chat = ChatService {
            store: store.clone(),
            engine,
            limits,
            router: router.clone(),
            presence: presence.clone(),
            push: push.clone(),
        };
        let shared = shared(config, store, chat, cluster);
        Ok(Services {
            shared,
            engine_thread,
            push,
        })
    }
}

/// The engine's limits and queue sizes from `config`.
fn engine_config(config: &Config) -> EngineConfig {
    EngineConfig {
        limits: config.chat_limits(),
        batch_max: config.commit_batch_max,
        queue: config.commit_batch_max * 4,
        priority_boost: config.engine_priority_boost,
    }
}

/// Cluster mode (`cluster_nats_urls` set): connects this node to the
/// cluster; `None` for a single node.
async fn join_cluster(
    config: &Config,
    store: &Store,
    outlets: &engine::Outlets,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<ClusterNode>>, BrokerError> {
    if config.cluster_nats_urls.is_none() {
        return Ok(None);
    }
    let node = ClusterNode::connect(
        config,
        store.clone(),
        outlets.router.clone(),
        outlets.presence.clone(),
        outlets.push.clone(),
        shutdown,
    )
    .await?;
    Ok(Some(Arc::new(node)))
}

/// Spawns the engine thread, committing through the cluster's log when
/// there is a cluster, else with one synced write to `store`.
fn spawn_engine(
    store: &Store,
    cluster: Option<&ClusterNode>,
    outlets: engine::Outlets,
    engine_config: EngineConfig,
) -> Result<(EngineHandle, std::thread::JoinHandle<()>), BrokerError> {
    let committer: Box<dyn Commit> = match cluster {
        Some(node) => node.committer(),
        None => Box::new(SyncedWrite::new(store.clone())),
    };
    engine::spawn(store.clone(), committer, outlets, engine_config)
        .map_err(|error| BrokerError::io("cannot start the chat engine", error))
}

/// What every connection shares; the chat service's router and presence
/// are the connections' too.
fn shared(
    config: &Arc<Config>,
    store: Store,
    chat: ChatService,
    cluster: Option<Arc<ClusterNode>>,
) -> Arc<Shared> {
    Arc::new(Shared {
        config: config.clone(),
        store: store.clone(),
        router: chat.router.clone(),
        sessions: crate::mqtt::session::Sessions::new(store.clone()),
        presence: chat.presence.clone(),
        auth: crate::auth::Authenticator::new(store, config),
        chat,
        cluster,
    })
}

/// Opens (creating its directory) the store at `data_dir`, off the runtime.
pub(super) async fn open_store(config: &Config) -> Result<Store, BrokerError> {
    let path = config.data_dir.clone();
    std::fs::create_dir_all(&path)
        .map_err(|error| BrokerError::io(format!("cannot create {}", path.display()), error))?;
    let store = tokio::task::spawn_blocking(move || Store::open(&path))
        .await
        .map_err(|error| {
            BrokerError::io("store open task failed", std::io::Error::other(error))
        })??;
    Ok(store)
}

//! The node's NATS connection and the JetStream objects the cluster uses:
//! the log stream `PARLEY_LOG` (subject `parley.log`), the lease bucket
//! `parley_leases` and the node registry bucket `parley_nodes`. Created
//! by the first node that starts, found by the others.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use crate::error::BrokerError;

/// The log stream and its one subject.
pub(crate) const LOG_STREAM: &str = "PARLEY_LOG";
pub(crate) const LOG_SUBJECT: &str = "parley.log";
const LEASE_BUCKET: &str = "parley_leases";
const NODE_BUCKET: &str = "parley_nodes";
/// A registry entry not refreshed for this long is gone (the node died).
pub(crate) const NODE_TTL: Duration = Duration::from_secs(10);
/// How long JetStream remembers a `Nats-Msg-Id` (retries of an append
/// that timed out are recognised within it).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// The largest log entry (a batch); the servers' `max_payload` must allow it.
pub(crate) const MAX_ENTRY_BYTES: usize = 8 << 20;

/// Handles to the cluster's NATS objects.
#[derive(Clone)]
pub(crate) struct Nats {
    pub(crate) client: async_nats::Client,
    pub(crate) jetstream: jetstream::Context,
    pub(crate) leases: kv::Store,
    pub(crate) nodes: kv::Store,
}

impl Nats {
    /// Connects (retrying in the background on loss, as async-nats does)
    /// and creates or opens the stream and buckets.
    pub(crate) async fn connect(
        urls: &[String],
        node: &str,
        replicas: usize,
        lease_ttl: Duration,
    ) -> Result<Nats, BrokerError> {
        let fail = |what: &str, error: &dyn std::fmt::Display| {
            BrokerError::Cluster(format!("{what}: {error}"))
        };
        let addrs: Vec<async_nats::ServerAddr> = urls
            .iter()
            .map(|url| url.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| fail("cluster_nats_urls", &e))?;
        let client = async_nats::ConnectOptions::new()
            .name(format!("parley-{node}"))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(5)))
            .connect(addrs)
            .await
            .map_err(|e| fail("cannot connect to NATS", &e))?;
        let jetstream = jetstream::new(client.clone());
        let log = log_stream(replicas);
        until_ready(LOG_STREAM, || jetstream.get_or_create_stream(log.clone()))
            .await
            .map_err(|e| fail("cannot create the log stream PARLEY_LOG", &e))?;
        let leases = bucket(&jetstream, LEASE_BUCKET, lease_ttl, replicas)
            .await
            .map_err(|e| fail("cannot create the KV bucket parley_leases", &e))?;
        let nodes = bucket(&jetstream, NODE_BUCKET, NODE_TTL, replicas)
            .await
            .map_err(|e| fail("cannot create the KV bucket parley_nodes", &e))?;
        Ok(Nats {
            client,
            jetstream,
            leases,
            nodes,
        })
    }
}

/// The log stream's settings: file storage on `replicas` servers, no
/// deletes, duplicates recognised within [`DUPLICATE_WINDOW`], entries up
/// to [`MAX_ENTRY_BYTES`].
fn log_stream(replicas: usize) -> stream::Config {
    stream::Config {
        name: LOG_STREAM.into(),
        subjects: vec![LOG_SUBJECT.into()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: DUPLICATE_WINDOW,
        max_message_size: MAX_ENTRY_BYTES as i32,
        discard: stream::DiscardPolicy::New,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    }
}

/// A KV bucket whose keys vanish `ttl` after their last write. The
/// bucket's stream is created directly, as the KV API lays it out
/// (`KV_{bucket}`, subjects `$KV.{bucket}.>`, one message per key): the
/// client's own bucket creation asks for settings nats-server 2.9 answers
/// in a form it cannot read.
async fn bucket(
    jetstream: &jetstream::Context,
    name: &str,
    ttl: Duration,
    replicas: usize,
) -> Result<kv::Store, String> {
    let config = stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age: ttl,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    until_ready(name, || async {
        jetstream
            .get_or_create_stream(config.clone())
            .await
            .map_err(|e| e.to_string())?;
        jetstream
            .get_key_value(name)
            .await
            .map_err(|e| e.to_string())
    })
    .await
}

/// Retries `attempt` for up to 30 s: a JetStream cluster that has just
/// started answers "no suitable peers" or times out until it has a meta
/// leader.
async fn until_ready<T, E, F, Fut>(what: &str, mut attempt: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::info!(%error, what, "JetStream not ready yet");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

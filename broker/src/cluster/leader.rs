//! Who leads: the lease in KV `parley_leases` (key `leader`), held by one
//! node at a time, and this node's view of it.
//!
//! A node that finds the key absent (never set, or expired
//! `cluster_lease_ttl_secs` after the last renewal) creates it, catches up
//! with the log, and opens its term by appending a `TermStart` entry fenced
//! on the log's tail: from then on any append by a previous leader fails
//! its own fence. The lease only decides who *should* write; the fence
//! decides who *can*, so two nodes that both believe they lead (a slow
//! renewal) can never both extend the log. The leader renews every third
//! of the TTL and steps down when a renewal or an append is refused.
//! Graceful shutdown deletes the key, so another node takes over at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::log;
use super::NodeContext;
use crate::metrics as m;

/// The lease's key.
const LEASE_KEY: &str = "leader";

/// This node's view of the leadership.
#[derive(Default)]
pub(crate) struct Leadership {
    leading: AtomicBool,
    /// The lease revision of this node's current (or last) term.
    term: AtomicU64,
    /// The log seq of this leader's last append (its next fence).
    tail: Mutex<u64>,
    /// The leader as last read from the lease.
    known_leader: Mutex<Option<String>>,
}

impl Leadership {
    pub(crate) fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    pub(crate) fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }

    /// The fence for the next append.
    pub(crate) fn tail(&self) -> u64 {
        *self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_tail(&self, seq: u64) {
        *self.tail.lock().unwrap_or_else(|e| e.into_inner()) = seq;
    }

    /// The leader's node id, as last read.
    pub(crate) fn known_leader(&self) -> Option<String> {
        self.known_leader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_known_leader(&self, node: Option<String>) {
        *self.known_leader.lock().unwrap_or_else(|e| e.into_inner()) = node;
    }
}

/// Stops leading (a refused renewal or append, or shutdown); the campaign
/// loop competes again once the lease is free.
pub(crate) fn step_down(context: &NodeContext, why: &str) {
    let leadership = &context.leadership;
    if leadership.leading.swap(false, Ordering::AcqRel) {
        context.push.stand_by();
        tracing::warn!(why, term = leadership.term(), "stepped down as leader");
        m::cluster_lease_change("lost");
        m::cluster_leader(false);
    }
}

/// Runs until shutdown: renews the lease while leading, competes for it
/// otherwise. At shutdown a leader hands over by deleting the key.
pub(crate) async fn campaign(context: Arc<NodeContext>, shutdown: CancellationToken) {
    let every = context.lease_ttl / 3;
    let mut revision = 0;
    loop {
        revision = match context.leadership.is_leader() {
            true => renew(&context, revision).await,
            false => compete(&context).await.unwrap_or(0),
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    if context.leadership.is_leader() {
        hand_over(&context, revision).await;
    }
}

/// Renews the lease at `revision`; returns the new revision (0 after
/// stepping down).
async fn renew(context: &NodeContext, revision: u64) -> u64 {
    let value = Bytes::from(context.id.clone());
    match context.nats.leases.update(LEASE_KEY, value, revision).await {
        Ok(next) => next,
        Err(error) => {
            m::cluster_lease_change("renew_failed");
            step_down(context, &format!("lease renewal refused: {error}"));
            0
        }
    }
}

/// Takes the lease if it is free and opens a term; else notes who leads.
async fn compete(context: &NodeContext) -> Option<u64> {
    let value = Bytes::from(context.id.clone());
    let revision = match context.nats.leases.create(LEASE_KEY, value).await {
        Ok(revision) => revision,
        Err(_) => {
            let holder = context.nats.leases.get(LEASE_KEY).await.ok().flatten();
            let holder = holder.map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
            context.leadership.set_known_leader(holder);
            return None;
        }
    };
    match open_term(context, revision).await {
        Ok(()) => Some(revision),
        Err(error) => {
            tracing::warn!(%error, "could not open a term; releasing the lease");
            let _ = context.nats.leases.delete(LEASE_KEY).await;
            None
        }
    }
}

/// Catches up with the log, then appends the term's first entry fenced on
/// the tail: after it, no earlier leader can append.
async fn open_term(context: &NodeContext, revision: u64) -> Result<(), String> {
    let tail = log::last_seq(&context.nats).await?;
    let limit = context.request_timeout;
    if !context.applier.wait_for(tail, limit).await {
        return Err(format!(
            "not caught up with the log (entry {tail}) in {limit:?}"
        ));
    }
    let leadership = &context.leadership;
    leadership.term.store(revision, Ordering::Release);
    let seq = log::append_term_start(context, revision, tail).await?;
    leadership.set_tail(seq);
    leadership.leading.store(true, Ordering::Release);
    leadership.set_known_leader(Some(context.id.clone()));
    if let Err(error) = context.push.take_over() {
        tracing::error!(%error, "cannot take over the push jobs");
    }
    tracing::info!(term = revision, log_seq = seq, "leading the cluster");
    m::cluster_lease_change("acquired");
    m::cluster_leader(true);
    Ok(())
}

/// Graceful shutdown: stop leading and free the lease for the next node.
async fn hand_over(context: &NodeContext, revision: u64) {
    step_down(context, "shutting down");
    let released = context
        .nats
        .leases
        .delete_expect_revision(LEASE_KEY, Some(revision))
        .await;
    match released {
        Ok(()) => m::cluster_lease_change("released"),
        Err(error) => tracing::warn!(%error, "could not release the lease"),
    }
}

//! Presence and typing between nodes, over core NATS (live only, never
//! logged).
//!
//! `parley.presence`: each node reports its users' local changes
//! (`PresenceReport`, one user at a time) and, every few seconds, its whole
//! set of locally online users, which repairs anything a lost message
//! left wrong. The registry forgets a node that stops heartbeating, and
//! presence drops its users then. `parley.live`: typing events, handed to
//! the named users' devices on every node. `parley.evict`: connections to
//! end elsewhere (a sign-out, a password change, the same device connecting
//! on another node).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use parley_proto::cluster::{Evict, LiveEvent, PresenceReport};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use super::NodeContext;
use crate::presence::{Presence, PresenceBus};
use crate::router::{Devices, Eviction, LiveBus, Router};

const PRESENCE_SUBJECT: &str = "parley.presence";
const LIVE_SUBJECT: &str = "parley.live";
const EVICT_SUBJECT: &str = "parley.evict";
/// How often a node reports its whole set of online users.
pub(crate) const FULL_REPORT_EVERY: Duration = Duration::from_secs(3);

/// The sending side, installed into the router and presence.
pub(crate) struct Bus {
    context: Arc<NodeContext>,
}

impl Bus {
    pub(crate) fn new(context: Arc<NodeContext>) -> Bus {
        Bus { context }
    }

    fn send(&self, subject: &'static str, payload: Vec<u8>) {
        let client = self.context.nats.client.clone();
        // publish only queues the message in the client; spawned so that a
        // presence change never waits on NATS while holding a lock
        self.context.runtime.spawn(async move {
            if let Err(error) = client.publish(subject, payload.into()).await {
                tracing::debug!(%error, subject, "cannot publish a live event");
            }
        });
    }
}

impl PresenceBus for Bus {
    fn report(&self, user: &str, online: bool) {
        let mut report = PresenceReport {
            node: self.context.id.clone(),
            ..Default::default()
        };
        match online {
            true => report.online.push(user.to_owned()),
            false => report.offline.push(user.to_owned()),
        }
        self.send(PRESENCE_SUBJECT, report.encode_to_vec());
    }
}

impl LiveBus for Bus {
    fn live(&self, users: &[String], payload: Bytes) {
        let event = LiveEvent {
            node: self.context.id.clone(),
            users: users.to_vec(),
            envelope: payload.to_vec(),
        };
        self.send(LIVE_SUBJECT, event.encode_to_vec());
    }

    fn evict(&self, user: &str, which: Devices<'_>, why: Eviction) {
        let (device, all_but) = match which {
            Devices::Only(device) => (device, false),
            Devices::AllBut(device) => (device, true),
        };
        let evict = Evict {
            node: self.context.id.clone(),
            user: user.to_owned(),
            device: device.to_owned(),
            all_but,
            why: match why {
                Eviction::TakenOver => 0,
                Eviction::LoggedOut => 1,
                Eviction::CredentialsRevoked => 2,
            },
        };
        self.send(EVICT_SUBJECT, evict.encode_to_vec());
    }
}

/// Ends the connections another node asked to end.
fn take_eviction(context: &NodeContext, router: &Router, evict: Evict) {
    if evict.node == context.id {
        return;
    }
    let which = match evict.all_but {
        true => Devices::AllBut(&evict.device),
        false => Devices::Only(&evict.device),
    };
    let why = match evict.why {
        1 => Eviction::LoggedOut,
        2 => Eviction::CredentialsRevoked,
        _ => Eviction::TakenOver,
    };
    router.evict_here(&evict.user, which, why);
}

/// Receives the other nodes' reports and events, and sends this node's
/// full report every [`FULL_REPORT_EVERY`], until shutdown.
pub(crate) async fn serve(
    context: Arc<NodeContext>,
    router: Arc<Router>,
    presence: Arc<Presence>,
    shutdown: CancellationToken,
) {
    let client = &context.nats.client;
    let subscribed = async {
        let reports = client.subscribe(PRESENCE_SUBJECT).await?;
        let live = client.subscribe(LIVE_SUBJECT).await?;
        let evictions = client.subscribe(EVICT_SUBJECT).await?;
        Ok::<_, async_nats::SubscribeError>((reports, live, evictions))
    };
    let (mut reports, mut live, mut evictions) = match subscribed.await {
        Ok(subscriptions) => subscriptions,
        Err(error) => {
            tracing::error!(%error, "cannot receive presence and typing from other nodes");
            return;
        }
    };
    let mut full = tokio::time::interval(FULL_REPORT_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = full.tick() => send_full_report(&context, &presence).await,
            Some(message) = reports.next() => {
                if let Ok(report) = PresenceReport::decode(message.payload) {
                    take_report(&context, &presence, report);
                }
            }
            Some(message) = evictions.next() => {
                if let Ok(evict) = Evict::decode(message.payload) {
                    take_eviction(&context, &router, evict);
                }
            }
            Some(message) = live.next() => {
                if let Ok(event) = LiveEvent::decode(message.payload) {
                    if event.node != context.id {
                        router.deliver_live(&event.users, Bytes::from(event.envelope));
                    }
                }
            }
        }
    }
}

fn take_report(context: &NodeContext, presence: &Presence, report: PresenceReport) {
    if report.node == context.id {
        return;
    }
    if report.full {
        presence.remote_full(&report.node, &report.online);
        return;
    }
    for user in &report.online {
        presence.remote_changed(&report.node, user, true);
    }
    for user in &report.offline {
        presence.remote_changed(&report.node, user, false);
    }
}

async fn send_full_report(context: &NodeContext, presence: &Presence) {
    let report = PresenceReport {
        node: context.id.clone(),
        online: presence.local_online_users(),
        full: true,
        ..Default::default()
    };
    let payload = report.encode_to_vec();
    if let Err(error) = context
        .nats
        .client
        .publish(PRESENCE_SUBJECT, payload.into())
        .await
    {
        tracing::debug!(%error, "cannot publish the presence report");
    }
}

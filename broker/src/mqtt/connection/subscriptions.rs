//! One connection's subscriptions: SUBSCRIBE and UNSUBSCRIBE against the
//! ACL and the per-device limits, which of its own streams (inbox, reply)
//! they cover, and their place in the durable session record.

use parley_chat_logic::acl;
use rumqttd::protocol::{
    Packet, QoS, SubAck, Subscribe, SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};

use super::Connection;
use crate::metrics as m;
use crate::mqtt::limits::SubscriptionCheck;

impl Connection {
    pub(super) async fn on_subscribe(&mut self, subscribe: Subscribe) {
        let rate_limited = self.limits.take_request().is_err();
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut changed = false;
        let mut presence_added = false;
        for filter in subscribe.filters {
            match self.admit_filter(&filter.path, rate_limited) {
                Err(refused) => codes.push(refused),
                Ok(()) => {
                    // MQTT sends retained messages on every SUBSCRIBE, new or repeated
                    presence_added |= is_presence_filter(&filter.path);
                    let qos = granted_qos(filter.qos);
                    changed |= self.add_subscription(filter.path, qos);
                    codes.push(SubscribeReasonCode::Success(qos));
                }
            }
        }
        if changed {
            self.apply_subscriptions();
            self.persist_subscriptions().await;
        }
        if presence_added {
            self.read_retained_presence();
        }
        self.write(Packet::SubAck(
            SubAck {
                pkid: subscribe.pkid,
                return_codes: codes,
            },
            None,
        ));
    }

    /// Checks one filter against the ACL and the device's limits; a refusal
    /// is logged, counted, and answered with its SUBACK code.
    fn admit_filter(&self, path: &str, rate_limited: bool) -> Result<(), SubscribeReasonCode> {
        let check = match rate_limited {
            true => SubscriptionCheck::RateLimited,
            false => self
                .limits
                .check_subscription(&self.user, path, &self.subscriptions),
        };
        if check == SubscriptionCheck::Allowed {
            return Ok(());
        }
        tracing::warn!(filter = %path, reason = check.as_str(), "subscription refused");
        m::subscription_refused();
        if check != SubscriptionCheck::Forbidden {
            m::refused(check.as_str());
        }
        Err(check.reason_code(self.codec.level()))
    }

    /// Records a subscription (replacing one to the same filter at another
    /// QoS); false if it was there already.
    fn add_subscription(&mut self, path: String, qos: QoS) -> bool {
        let entry = (path, qos as u8);
        if self.subscriptions.contains(&entry) {
            return false;
        }
        self.subscriptions.retain(|(path, _)| *path != entry.0);
        self.subscriptions.push(entry);
        true
    }

    pub(super) async fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let before = self.subscriptions.len();
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                let before = self.subscriptions.len();
                self.subscriptions.retain(|(path, _)| path != filter);
                match self.subscriptions.len() < before {
                    true => UnsubAckReason::Success,
                    false => UnsubAckReason::NoSubscriptionExisted,
                }
            })
            .collect();
        if self.subscriptions.len() < before {
            self.apply_subscriptions();
            self.persist_subscriptions().await;
        }
        self.write(Packet::UnsubAck(
            UnsubAck {
                pkid: unsubscribe.pkid,
                reasons,
            },
            None,
        ));
    }

    /// Works out which of the device's own streams its filters cover.
    pub(super) fn apply_subscriptions(&mut self) {
        let qos_for = |topic: &str| {
            self.subscriptions
                .iter()
                .filter(|(filter, _)| acl::filter_matches(filter, topic))
                .map(|(_, qos)| *qos)
                .max()
                .map(qos_of)
        };
        let inbox = qos_for(&self.inbox_topic);
        let reply = qos_for(&self.reply_topic);
        self.outbox.set_subscriptions(inbox, reply);
        let presence = self
            .subscriptions
            .iter()
            .filter(|(filter, _)| is_presence_filter(filter))
            .map(|(filter, qos)| (filter.clone(), qos_of(*qos)))
            .collect();
        self.outbox.set_presence_filters(&self.user, presence);
    }

    async fn persist_subscriptions(&mut self) {
        let Some(expiry) = self.durable else {
            return;
        };
        if let Err(error) = self.session_snapshot(expiry, 0).save().await {
            tracing::error!(%error, "cannot save the session's subscriptions");
        }
    }
}

/// Whether a subscription filter is one of the presence topics (the ACL
/// admits only `presence/{subject or +}/{own user}`).
pub(super) fn is_presence_filter(filter: &str) -> bool {
    filter.starts_with("presence/")
}

/// The QoS a subscription was granted, as stored in the session (0 or 1).
fn qos_of(stored: u8) -> QoS {
    match stored {
        0 => QoS::AtMostOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// The QoS granted for a requested one: Parley delivers at most QoS 1.
fn granted_qos(requested: QoS) -> QoS {
    if requested == QoS::AtMostOnce {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

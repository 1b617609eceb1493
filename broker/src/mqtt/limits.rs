//! One device's limits: its request rate (a token bucket of `request_rate`
//! per second and `request_burst` at once, charged by every request and
//! SUBSCRIBE) and the subscription filters one connection may hold.
//!
//! A request beyond the rate is answered `RATE_LIMITED` and changes
//! nothing; a filter beyond `max_subscriptions` is refused in the SUBACK.
//! Both are refusals of one request, never a disconnect.

use std::time::Instant;

use parley_chat_logic::{acl, ChatError};
use rumqttd::protocol::SubscribeReasonCode;

use super::codec::Level;
use crate::config::Config;
use crate::rate::{Bucket, Quota};

/// The longest subscription filter accepted, in bytes: the longest own
/// topic is `presence/{64}/{64}` or `reply/svc:{64}/{64}`, so 256 is ample,
/// and a durable session record stays small.
pub const MAX_FILTER_BYTES: usize = 256;

/// The limits one connection enforces on its device.
pub struct DeviceLimits {
    quota: Quota,
    bucket: Bucket,
    max_subscriptions: usize,
}

/// The verdict on one subscription filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionCheck {
    Allowed,
    /// The filter could match another account's topics (the ACL).
    Forbidden,
    /// The connection holds `max_subscriptions` filters already.
    TooMany,
    /// The SUBSCRIBE came faster than the device's request rate.
    RateLimited,
}

impl SubscriptionCheck {
    /// A stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionCheck::Allowed => "allowed",
            SubscriptionCheck::Forbidden => "forbidden_filter",
            SubscriptionCheck::TooMany => "max_subscriptions",
            SubscriptionCheck::RateLimited => "request_rate",
        }
    }

    /// The SUBACK code of a refusal: 3.1.1 has only 0x80.
    pub fn reason_code(self, level: Level) -> SubscribeReasonCode {
        match (level, self) {
            (Level::V4, _) => SubscribeReasonCode::Failure,
            (Level::V5, SubscriptionCheck::Forbidden) => SubscribeReasonCode::NotAuthorized,
            (Level::V5, _) => SubscribeReasonCode::QuotaExceeded,
        }
    }
}

impl DeviceLimits {
    pub fn new(config: &Config) -> Self {
        let quota = Quota::per_second(config.request_rate, config.request_burst);
        DeviceLimits {
            quota,
            bucket: Bucket::full(quota, Instant::now()),
            max_subscriptions: config.max_subscriptions,
        }
    }

    /// Charges one request; `RATE_LIMITED` when the bucket is empty.
    pub fn take_request(&mut self) -> Result<(), ChatError> {
        if self.bucket.try_take(self.quota, Instant::now()) {
            return Ok(());
        }
        Err(ChatError::rate_limited(
            "too many requests from this device: slow down and retry",
        ))
    }

    /// Whether `user` may add `filter` to `held`.
    pub fn check_subscription(
        &self,
        user: &str,
        filter: &str,
        held: &[(String, u8)],
    ) -> SubscriptionCheck {
        if filter.len() > MAX_FILTER_BYTES || !acl::may_subscribe(user, filter) {
            return SubscriptionCheck::Forbidden;
        }
        let new_filter = !held.iter().any(|(path, _)| path == filter);
        if new_filter && held.len() >= self.max_subscriptions {
            return SubscriptionCheck::TooMany;
        }
        SubscriptionCheck::Allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32, max_subscriptions: usize) -> DeviceLimits {
        let mut config = Config::defaults();
        config.request_rate = rate;
        config.request_burst = burst;
        config.max_subscriptions = max_subscriptions;
        DeviceLimits::new(&config)
    }

    #[test]
    fn requests_beyond_the_burst_are_rate_limited() {
        let mut limits = limits(1, 3, 10);
        assert!((0..3).all(|_| limits.take_request().is_ok()));
        let error = limits.take_request().unwrap_err();
        assert_eq!(error.code, parley_proto::v1::ErrorCode::RateLimited);
    }

    #[test]
    fn the_default_lets_a_pipelined_thousand_through() {
        let mut limits = DeviceLimits::new(&Config::defaults());
        assert!((0..1000).all(|_| limits.take_request().is_ok()));
    }

    #[test]
    fn subscriptions_are_checked_by_acl_then_count() {
        let limits = limits(10, 10, 2);
        let mut held = vec![("inbox/alice".to_owned(), 1)];
        assert_eq!(
            limits.check_subscription("alice", "#", &held),
            SubscriptionCheck::Forbidden
        );
        let long = format!("reply/alice/{}", "x".repeat(MAX_FILTER_BYTES));
        let check = limits.check_subscription("alice", &long, &held);
        assert_eq!(check, SubscriptionCheck::Forbidden, "over-long filters");
        assert_eq!(
            limits.check_subscription("alice", "reply/alice/a", &held),
            SubscriptionCheck::Allowed
        );
        held.push(("reply/alice/a".to_owned(), 1));
        assert_eq!(
            limits.check_subscription("alice", "reply/alice/b", &held),
            SubscriptionCheck::TooMany
        );
        assert_eq!(
            limits.check_subscription("alice", "inbox/alice", &held),
            SubscriptionCheck::Allowed,
            "re-subscribing a held filter adds nothing"
        );
        assert_eq!(
            SubscriptionCheck::TooMany.reason_code(Level::V4),
            SubscribeReasonCode::Failure
        );
        assert_eq!(
            SubscriptionCheck::TooMany.reason_code(Level::V5),
            SubscribeReasonCode::QuotaExceeded
        );
        assert_eq!(
            SubscriptionCheck::Forbidden.reason_code(Level::V5),
            SubscribeReasonCode::NotAuthorized
        );
    }
}

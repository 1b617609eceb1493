//! Metrics: the Prometheus recorder, the metric names, and one small helper
//! per thing the broker counts, so call sites read as what happened
//! (`metrics::connection_opened()`) and names live in one place.
//!
//! The recorder is process-global (the `metrics` crate's design): [`install`]
//! sets it up once and hands every later caller the same handle, so tests may
//! start several brokers in one process. `GET /metrics` renders the handle.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Connections open now (gauge).
pub const CONNECTIONS: &str = "parley_connections";
/// Connections accepted since start (counter).
pub const CONNECTIONS_TOTAL: &str = "parley_connections_total";
/// MQTT PUBLISH packets received from clients (counter).
pub const MESSAGES_IN_TOTAL: &str = "parley_messages_in_total";
/// MQTT PUBLISH packets sent to clients (counter).
pub const MESSAGES_OUT_TOTAL: &str = "parley_messages_out_total";
/// Inbox envelopes handed to connected devices by the router (counter).
pub const FANOUT_DELIVERIES_TOTAL: &str = "parley_fanout_deliveries_total";
/// Duration of one synced RocksDB commit (histogram, seconds).
pub const STORE_COMMIT_SECONDS: &str = "parley_store_commit_seconds";
/// Requests per group commit (histogram).
pub const STORE_BATCH_SIZE: &str = "parley_store_batch_size";
/// Error replies sent, label `code` (counter).
pub const ERRORS_TOTAL: &str = "parley_errors_total";
/// CONNECTs refused, label `reason` (bad client id, credentials, limits) (counter).
pub const CONNECTS_REFUSED_TOTAL: &str = "parley_connects_refused_total";
/// Subscription filters refused by the topic ACL (counter).
pub const SUBSCRIPTIONS_REFUSED_TOTAL: &str = "parley_subscriptions_refused_total";
/// HTTP logins, label `result` (counter).
pub const LOGINS_TOTAL: &str = "parley_logins_total";
/// Client publishes dropped, label `reason` (counter).
pub const PUBLISHES_DROPPED_TOTAL: &str = "parley_publishes_dropped_total";
/// Connections or requests refused by a limit or a failed handshake, label
/// `reason` (`max_connections`, `max_connecting_per_addr`, `tls_handshake`,
/// `ws_handshake`, ...) (counter).
pub const REFUSALS_TOTAL: &str = "parley_refusals_total";
/// Push notifications by outcome, label `result`: `sent` (a 2xx),
/// `rejected` (a 2xx rejecting every pushkey), `retried` (a failed attempt,
/// tried again later), `dropped` (refused by a 4xx, or out of attempts)
/// (counter).
pub const PUSH_NOTIFICATIONS_TOTAL: &str = "parley_push_notifications_total";
/// Duration of one POST to the push gateway, answered or not (histogram,
/// seconds).
pub const PUSH_SEND_SECONDS: &str = "parley_push_send_seconds";
/// Users online now (gauge).
pub const ONLINE_USERS: &str = "parley_online_users";
/// Live-only events (typing) handed to connected devices (counter).
pub const LIVE_EVENTS_TOTAL: &str = "parley_live_events_total";

/// 1 while this node leads the cluster, 0 otherwise (gauge).
pub const CLUSTER_LEADER: &str = "parley_cluster_leader";
/// Lease changes, label `change`: `acquired`, `released`, `lost`,
/// `renew_failed` (counter).
pub const CLUSTER_LEASE_CHANGES_TOTAL: &str = "parley_cluster_lease_changes_total";
/// The last log seq applied to this node's store (gauge).
pub const CLUSTER_APPLIED_SEQ: &str = "parley_cluster_applied_seq";
/// Log entries after the applied one that the follower has not read yet (gauge).
pub const CLUSTER_LOG_LAG: &str = "parley_cluster_log_lag";
/// Duration of one log append, quorum ack included (histogram, seconds).
pub const CLUSTER_APPEND_SECONDS: &str = "parley_cluster_log_append_seconds";
/// Failed log append attempts, label `reason`: `wrong_last_sequence`,
/// `unavailable` (counter).
pub const CLUSTER_APPEND_ERRORS_TOTAL: &str = "parley_cluster_log_append_errors_total";
/// Requests forwarded to the leader, label `result`: `ok`, `error`,
/// `timeout` (counter).
pub const CLUSTER_REQUESTS_TOTAL: &str = "parley_cluster_requests_total";
/// Nodes in the registry at the last read (gauge).
pub const CLUSTER_NODES_LIVE: &str = "parley_cluster_nodes_live";

const COMMIT_SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
];
const PUSH_SECONDS_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder the first time and returns its handle
/// (the same one on every later call).
///
/// If another recorder was already installed in this process (only possible
/// in tests that install their own), the handle renders a recorder of our own
/// that receives nothing, and a warning is logged.
pub fn install() -> PrometheusHandle {
    HANDLE.get_or_init(install_once).clone()
}

fn install_once() -> PrometheusHandle {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(STORE_COMMIT_SECONDS.to_owned()),
            COMMIT_SECONDS_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(STORE_BATCH_SIZE.to_owned()),
                BATCH_SIZE_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(PUSH_SEND_SECONDS.to_owned()),
                PUSH_SECONDS_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(CLUSTER_APPEND_SECONDS.to_owned()),
                COMMIT_SECONDS_BUCKETS,
            )
        });
    let builder = match builder {
        Ok(builder) => builder,
        Err(e) => {
            tracing::warn!(error = %e, "metrics buckets rejected, using summaries");
            PrometheusBuilder::new()
        }
    };
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if let Err(e) = metrics::set_global_recorder(recorder) {
        tracing::warn!(error = %e, "a metrics recorder is already installed, /metrics will be empty");
        return handle;
    }
    describe();
    // Shown as 0 from the first scrape rather than appearing on first use.
    gauge!(CONNECTIONS).set(0.0);
    counter!(CONNECTIONS_TOTAL).increment(0);
    HOT.get_or_init(Hot::register);
    handle
}

/// The metrics recorded for every packet, message or commit, looked up in
/// the recorder once: a `counter!` call hashes its name and searches the
/// registry each time (about 1% of the broker's samples in the `dm` profile).
struct Hot {
    messages_in: Counter,
    messages_out: Counter,
    fanout_deliveries: Counter,
    commit_seconds: Histogram,
    batch_size: Histogram,
}

/// Set by [`install`] once the recorder is in place. Before that (unit
/// tests that never start a broker), the helpers go through the macros,
/// which reach whatever recorder is installed then.
static HOT: OnceLock<Hot> = OnceLock::new();

impl Hot {
    fn register() -> Hot {
        let hot = Hot {
            messages_in: counter!(MESSAGES_IN_TOTAL),
            messages_out: counter!(MESSAGES_OUT_TOTAL),
            fanout_deliveries: counter!(FANOUT_DELIVERIES_TOTAL),
            commit_seconds: histogram!(STORE_COMMIT_SECONDS),
            batch_size: histogram!(STORE_BATCH_SIZE),
        };
        // Shown as 0 from the first scrape rather than appearing on first use.
        for counter in [&hot.messages_in, &hot.messages_out, &hot.fanout_deliveries] {
            counter.increment(0);
        }
        hot
    }
}

fn describe() {
    describe_gauge!(CONNECTIONS, "connections open now");
    describe_gauge!(ONLINE_USERS, "users with an online device now");
    describe_counter!(
        LIVE_EVENTS_TOTAL,
        "live-only events (typing) handed to devices"
    );
    describe_counter!(CONNECTIONS_TOTAL, "connections accepted since start");
    describe_counter!(
        MESSAGES_IN_TOTAL,
        "MQTT PUBLISH packets received from clients"
    );
    describe_counter!(MESSAGES_OUT_TOTAL, "MQTT PUBLISH packets sent to clients");
    describe_counter!(
        FANOUT_DELIVERIES_TOTAL,
        "inbox envelopes handed to connected devices"
    );
    describe_histogram!(
        STORE_COMMIT_SECONDS,
        Unit::Seconds,
        "duration of one synced RocksDB commit"
    );
    describe_histogram!(STORE_BATCH_SIZE, Unit::Count, "requests per group commit");
    describe_counter!(ERRORS_TOTAL, "error replies sent, by error code");
    describe_counter!(
        PUBLISHES_DROPPED_TOTAL,
        "client publishes dropped, by reason"
    );
    describe_counter!(LOGINS_TOTAL, "HTTP logins, by result");
    describe_counter!(
        REFUSALS_TOTAL,
        "connections or requests refused by a limit or a failed handshake, by reason"
    );
    describe_counter!(
        PUSH_NOTIFICATIONS_TOTAL,
        "push notifications by result: sent, rejected, retried, dropped"
    );
    describe_histogram!(
        PUSH_SEND_SECONDS,
        Unit::Seconds,
        "duration of one POST to the push gateway"
    );
    describe_cluster();
}

fn describe_cluster() {
    describe_gauge!(CLUSTER_LEADER, "1 while this node leads the cluster");
    describe_counter!(
        CLUSTER_LEASE_CHANGES_TOTAL,
        "leader lease changes: acquired, released, lost, renew_failed"
    );
    describe_gauge!(CLUSTER_APPLIED_SEQ, "last log seq applied to this node");
    describe_gauge!(CLUSTER_LOG_LAG, "log entries not yet read by this node");
    describe_histogram!(
        CLUSTER_APPEND_SECONDS,
        Unit::Seconds,
        "one log append, quorum ack included"
    );
    describe_counter!(
        CLUSTER_APPEND_ERRORS_TOTAL,
        "failed log appends: wrong_last_sequence, unavailable"
    );
    describe_counter!(
        CLUSTER_REQUESTS_TOTAL,
        "requests forwarded to the leader: ok, error, timeout"
    );
    describe_gauge!(CLUSTER_NODES_LIVE, "nodes in the registry");
}

/// This node started (`true`) or stopped leading the cluster.
pub fn cluster_leader(leading: bool) {
    gauge!(CLUSTER_LEADER).set(if leading { 1.0 } else { 0.0 });
}

/// The leader lease changed (`acquired`, `released`, `lost`, `renew_failed`).
pub fn cluster_lease_change(change: &'static str) {
    counter!(CLUSTER_LEASE_CHANGES_TOTAL, "change" => change).increment(1);
}

/// The follower applied log entry `seq`; `pending` more are in the log.
pub fn cluster_applied(seq: u64, pending: u64) {
    gauge!(CLUSTER_APPLIED_SEQ).set(seq as f64);
    gauge!(CLUSTER_LOG_LAG).set(pending as f64);
}

/// One log append took `elapsed`.
pub fn cluster_append(elapsed: Duration) {
    histogram!(CLUSTER_APPEND_SECONDS).record(elapsed.as_secs_f64());
}

/// One log append attempt failed for `reason`.
pub fn cluster_append_error(reason: &'static str) {
    counter!(CLUSTER_APPEND_ERRORS_TOTAL, "reason" => reason).increment(1);
}

/// A request forwarded to the leader ended with `result`.
pub fn cluster_request(result: &'static str) {
    counter!(CLUSTER_REQUESTS_TOTAL, "result" => result).increment(1);
}

/// `n` nodes were in the registry.
pub fn cluster_nodes_live(n: usize) {
    gauge!(CLUSTER_NODES_LIVE).set(n as f64);
}

/// Renders every metric in the Prometheus text format, after the upkeep the
/// exporter needs (it is cheap, and scraping is rare).
pub fn render(handle: &PrometheusHandle) -> String {
    handle.run_upkeep();
    handle.render()
}

/// A connection was accepted (any listener).
pub fn connection_opened() {
    gauge!(CONNECTIONS).increment(1.0);
    counter!(CONNECTIONS_TOTAL).increment(1);
}

/// A connection ended, whatever the reason.
pub fn connection_closed() {
    gauge!(CONNECTIONS).decrement(1.0);
}

/// A PUBLISH arrived from a client.
pub fn message_in() {
    match HOT.get() {
        Some(hot) => hot.messages_in.increment(1),
        None => counter!(MESSAGES_IN_TOTAL).increment(1),
    }
}

/// `n` PUBLISH packets were written to clients.
pub fn messages_out(n: u64) {
    match HOT.get() {
        Some(hot) => hot.messages_out.increment(n),
        None => counter!(MESSAGES_OUT_TOTAL).increment(n),
    }
}

/// The router handed `n` envelopes to connected devices.
pub fn fanout_deliveries(n: u64) {
    match HOT.get() {
        Some(hot) => hot.fanout_deliveries.increment(n),
        None => counter!(FANOUT_DELIVERIES_TOTAL).increment(n),
    }
}

/// One group commit of `batch_size` requests took `elapsed`.
pub fn store_commit(elapsed: Duration, batch_size: usize) {
    let (elapsed, batch_size) = (elapsed.as_secs_f64(), batch_size as f64);
    match HOT.get() {
        Some(hot) => {
            hot.commit_seconds.record(elapsed);
            hot.batch_size.record(batch_size);
        }
        None => {
            histogram!(STORE_COMMIT_SECONDS).record(elapsed);
            histogram!(STORE_BATCH_SIZE).record(batch_size);
        }
    }
}

/// An error reply with this code (e.g. `"NOT_MEMBER"`, the `ErrorCode` name).
pub fn error(code: &'static str) {
    counter!(ERRORS_TOTAL, "code" => code).increment(1);
}

/// A client publish was dropped (e.g. `"forbidden_topic"`, `"qos2"`).
pub fn publish_dropped(reason: &'static str) {
    counter!(PUBLISHES_DROPPED_TOTAL, "reason" => reason).increment(1);
}

/// A CONNECT was answered with a refusing CONNACK, for `reason` (e.g.
/// `"bad_password"`, `"expired_token"`, `"client_id_mismatch"`).
pub fn connect_refused(reason: &'static str) {
    counter!(CONNECTS_REFUSED_TOTAL, "reason" => reason).increment(1);
}

/// A subscription filter was refused by the topic ACL.
pub fn subscription_refused() {
    counter!(SUBSCRIPTIONS_REFUSED_TOTAL).increment(1);
}

/// A login attempt over HTTP ended with `result` (`"success"`,
/// `"failure"`, `"rate_limited"`).
pub fn login(result: &'static str) {
    counter!(LOGINS_TOTAL, "result" => result).increment(1);
}

/// Something was refused for `reason` (e.g. `"max_connections"`,
/// `"tls_handshake"`): one counter, one label value per reason.
pub fn refused(reason: &'static str) {
    counter!(REFUSALS_TOTAL, "reason" => reason).increment(1);
}

/// A user came online (`true`) or went offline.
pub fn presence_changed(online: bool) {
    let users = gauge!(ONLINE_USERS);
    match online {
        true => users.increment(1.0),
        false => users.decrement(1.0),
    }
}

/// A live-only event reached `devices` devices.
pub fn live_events(devices: u64) {
    counter!(LIVE_EVENTS_TOTAL).increment(devices);
}

/// A push notification ended an attempt with `result` (`"sent"`,
/// `"rejected"`, `"retried"`, `"dropped"`).
pub fn push_notification(result: &'static str) {
    counter!(PUSH_NOTIFICATIONS_TOTAL, "result" => result).increment(1);
}

/// One POST to the push gateway took `elapsed` (answered or not).
pub fn push_send(elapsed: Duration) {
    histogram!(PUSH_SEND_SECONDS).record(elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_is_idempotent_and_renders_helpers() {
        let first = install();
        let second = install();
        connection_opened();
        message_in();
        messages_out(2);
        fanout_deliveries(3);
        store_commit(Duration::from_millis(3), 7);
        error("NOT_MEMBER");
        publish_dropped("forbidden_topic");
        refused("max_connections");
        connection_closed();
        let text = render(&second);
        for name in [
            CONNECTIONS,
            CONNECTIONS_TOTAL,
            MESSAGES_IN_TOTAL,
            MESSAGES_OUT_TOTAL,
            FANOUT_DELIVERIES_TOTAL,
            STORE_COMMIT_SECONDS,
            STORE_BATCH_SIZE,
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(
            text.contains("parley_errors_total{code=\"NOT_MEMBER\"}"),
            "{text}"
        );
        assert!(
            text.contains("parley_publishes_dropped_total{reason=\"forbidden_topic\"}"),
            "{text}"
        );
        assert!(
            text.contains("parley_refusals_total{reason=\"max_connections\"}"),
            "{text}"
        );
        assert!(
            text.contains("parley_store_commit_seconds_bucket"),
            "histogram buckets:\n{text}"
        );
        assert!(
            render(&first).contains(CONNECTIONS_TOTAL),
            "both handles render one recorder"
        );
    }
}

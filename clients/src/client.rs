//! [`Client`]: one device's MQTT connection to the broker, with requests
//! answered by replies, the user's inbox as a stream of envelopes and, once
//! subscribed, friends' presence as a stream of [`PresenceUpdate`]s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parley_proto::topics;
use parley_proto::v1::{request, Envelope, Reply, Request};
use prost::Message;
use rumqttc::{
    AsyncClient, EventLoop, NetworkOptions, QoS, SubAck, SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::driver::{self, Driver, Pending, SubAcks};
use crate::error::ClientError;
use crate::ids::IdGen;
use crate::options::ClientOptions;
use crate::presence::{PresenceQueue, PresenceUpdate};

mod requests;

/// How long [`Client::disconnect`] waits for the DISCONNECT to be written.
const DISCONNECT_GRACE: Duration = Duration::from_secs(3);

/// A connected device. Cheap to clone: clones share the connection.
///
/// The connection lives until [`Client::disconnect`] or until the last clone
/// is dropped (then it is closed without a DISCONNECT, like a lost network).
/// There is no automatic reconnection: after [`ClientError::Disconnected`],
/// connect again (with `clean_session(false)` the broker replays the inbox).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    mqtt: AsyncClient,
    user: String,
    device: String,
    request_topic: String,
    heartbeat_topic: String,
    /// `presence/+/{user}`: every friend's presence topic for this user.
    presence_filter: String,
    pending: Pending,
    subacks: SubAcks,
    /// Held from queueing a SUBSCRIBE to queueing it in rumqttc, so SUBACKs
    /// meet their waiters in order.
    subscribing: tokio::sync::Mutex<()>,
    ids: IdGen,
    inbox_rx: tokio::sync::Mutex<mpsc::Receiver<Envelope>>,
    presence: Arc<PresenceQueue>,
    request_timeout: Duration,
    session_present: bool,
    connected: Arc<AtomicBool>,
    driver: Mutex<Option<JoinHandle<()>>>,
    /// Dropped with the last handle: tells the driver to close the connection.
    _shutdown: oneshot::Sender<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("user", &self.inner.user)
            .field("device", &self.inner.device)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Client {
    /// Connects, waits for the CONNACK, subscribes `inbox/{user}` (and
    /// `presence/+/{user}` with [`ClientOptions::presence`]) at QoS 1 and
    /// `reply/{user}/{device}` at QoS 0 (see [`Client::request`]), and waits
    /// for the SUBACK.
    ///
    /// Errors: [`ClientError::Refused`] with the CONNACK code,
    /// [`ClientError::SubscribeRefused`], [`ClientError::Timeout`] after
    /// `connect_timeout`, [`ClientError::Connection`] for network failures.
    pub async fn connect(opts: ClientOptions) -> Result<Client, ClientError> {
        opts.validate()?;
        let topics = OwnTopics::new(&opts);
        let (mqtt, eventloop) = new_mqtt(&opts)?;
        let started = spawn_driver(&opts, &topics, eventloop);
        let session_present = wait("CONNACK", opts.connect_timeout, started.connack_rx).await??;
        let subscribed = topics.at_connect(opts.presence);
        subscribe_at_connect(&mqtt, &subscribed, opts.connect_timeout, started.suback_rx).await?;
        Ok(Client {
            inner: Arc::new(Inner {
                mqtt,
                request_topic: topics::request(&opts.user, &opts.device),
                heartbeat_topic: topics::heartbeat(&opts.user, &opts.device),
                presence_filter: topics.presence_filter,
                user: opts.user,
                device: opts.device,
                pending: started.pending,
                subacks: started.subacks,
                subscribing: tokio::sync::Mutex::new(()),
                ids: IdGen::new(),
                inbox_rx: tokio::sync::Mutex::new(started.inbox_rx),
                presence: started.presence,
                request_timeout: opts.request_timeout,
                session_present,
                connected: started.connected,
                driver: Mutex::new(Some(started.handle)),
                _shutdown: started.shutdown_tx,
            }),
        })
    }

    /// The `user_id` this client connected as.
    pub fn user(&self) -> &str {
        &self.inner.user
    }

    /// The `device_id` this client connected as.
    pub fn device(&self) -> &str {
        &self.inner.device
    }

    /// Whether the CONNACK said the broker resumed a durable session.
    pub fn session_present(&self) -> bool {
        self.inner.session_present
    }

    /// Whether the connection is still up (false after a disconnect or a network error).
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::SeqCst)
    }

    /// Sends one request and returns the broker's raw `Reply` (an error reply
    /// is returned as is, not turned into [`ClientError::Server`]).
    ///
    /// A fresh `request_id` is set; the request is published on
    /// `req/{user}/{device}` and the reply with that id is awaited for
    /// `request_timeout` ([`ClientError::Timeout`] after that).
    ///
    /// Requests and replies travel at QoS 0: the reply is the request's
    /// acknowledgement (an `Ack` only once the message is durable), and a
    /// PUBACK in either direction would add a packet without adding a
    /// guarantee. TCP delivers both in order while the connection lives; if
    /// it drops, the caller gets [`ClientError::Disconnected`] or
    /// [`ClientError::Timeout`] and retries on a new connection with the same
    /// `client_msg_id`, which the broker answers with the original `Ack`
    /// (`duplicate = true`) and never stores twice. There is no automatic
    /// reconnection, so QoS 1 would not resend anything either.
    pub async fn request(&self, body: request::Body) -> Result<Reply, ClientError> {
        self.request_with_timeout(body, self.inner.request_timeout)
            .await
    }

    /// [`Client::request`] with its own timeout.
    pub async fn request_with_timeout(
        &self,
        body: request::Body,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        if !self.is_connected() {
            return Err(ClientError::Disconnected);
        }
        let request_id = self.inner.ids.next_id();
        let (tx, rx) = oneshot::channel();
        driver::lock(&self.inner.pending).insert(request_id.clone(), tx);
        let _forget = ForgetOnDrop {
            pending: &self.inner.pending,
            request_id: &request_id,
        };
        let payload = Request {
            request_id: request_id.clone(),
            body: Some(body),
        }
        .encode_to_vec();
        let exchange = async {
            self.inner
                .mqtt
                .publish(&self.inner.request_topic, QoS::AtMostOnce, false, payload)
                .await?;
            rx.await.map_err(|_| ClientError::Disconnected)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                what: "the reply",
                after: timeout,
            }),
        }
    }

    /// Subscribes `presence/+/{user}` (QoS 1) and waits for the SUBACK.
    /// Each friend's current state follows at once, `retained = true`, then
    /// every change, `retained = false`; read them with
    /// [`Client::next_presence`]. Subscribing again asks for the current
    /// states again. [`ClientOptions::presence`] subscribes at connect instead.
    pub async fn subscribe_presence(&self) -> Result<(), ClientError> {
        if !self.is_connected() {
            return Err(ClientError::Disconnected);
        }
        let filter = &self.inner.presence_filter;
        let (tx, rx) = oneshot::channel();
        {
            let _order = self.inner.subscribing.lock().await;
            driver::lock_any(&self.inner.subacks).push_back(tx);
            self.inner.mqtt.subscribe(filter, QoS::AtLeastOnce).await?;
        }
        let suback = match tokio::time::timeout(self.inner.request_timeout, rx).await {
            Ok(Ok(suback)) => suback,
            Ok(Err(_)) => return Err(ClientError::Disconnected),
            Err(_) => {
                return Err(ClientError::Timeout {
                    what: "the SUBACK",
                    after: self.inner.request_timeout,
                })
            }
        };
        check_suback(&suback.return_codes, &[filter])
    }

    /// The next presence update (a friend's state, or a cleared topic),
    /// waiting at most `timeout`; only arrives after
    /// [`Client::subscribe_presence`], [`ClientOptions::presence`] or a
    /// resumed durable session with that subscription.
    ///
    /// `Ok(None)`: nothing arrived in time. [`ClientError::Disconnected`]:
    /// the connection is closed and every buffered update has been read.
    pub async fn next_presence(
        &self,
        timeout: Duration,
    ) -> Result<Option<PresenceUpdate>, ClientError> {
        self.inner.presence.next(timeout).await
    }

    /// Publishes an empty heartbeat on `hb/{user}/{device}` at QoS 0.
    pub async fn heartbeat(&self) -> Result<(), ClientError> {
        self.inner
            .mqtt
            .publish(
                &self.inner.heartbeat_topic,
                QoS::AtMostOnce,
                false,
                Vec::new(),
            )
            .await?;
        Ok(())
    }

    /// The next envelope of the user's inbox, waiting at most `timeout`.
    ///
    /// `Ok(None)`: nothing arrived in time. [`ClientError::Disconnected`]:
    /// the connection is closed and every buffered envelope has been read.
    /// Deliveries are at least once: drop repeats by `inbox_seq`, except
    /// `inbox_seq` 0: live-only events (typing), never stored, never repeats.
    pub async fn next_envelope(&self, timeout: Duration) -> Result<Option<Envelope>, ClientError> {
        let next = async {
            let mut rx = self.inner.inbox_rx.lock().await;
            rx.recv().await
        };
        match tokio::time::timeout(timeout, next).await {
            Err(_) => Ok(None),
            Ok(Some(envelope)) => Ok(Some(envelope)),
            Ok(None) => Err(ClientError::Disconnected),
        }
    }

    /// Closes the connection gracefully: sends DISCONNECT and waits (briefly)
    /// for the event loop to end. Pending requests fail with
    /// [`ClientError::Disconnected`]; buffered envelopes can still be read.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        let handle = self
            .inner
            .driver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let Some(mut handle) = handle else {
            return Ok(());
        };
        if self.is_connected() {
            // An error means the event loop has already ended.
            let _ = self.inner.mqtt.disconnect().await;
        }
        if tokio::time::timeout(DISCONNECT_GRACE, &mut handle)
            .await
            .is_err()
        {
            tracing::warn!("event loop did not stop after disconnect, aborting it");
            handle.abort();
        }
        self.inner.connected.store(false, Ordering::SeqCst);
        Ok(())
    }
}

/// The topics a connection subscribes to, named once at connect.
struct OwnTopics {
    /// `inbox/{user}`.
    inbox: String,
    /// `reply/{user}/{device}`.
    reply: String,
    /// `presence/+/{user}`: every friend's presence topic for this user.
    presence_filter: String,
}

impl OwnTopics {
    fn new(opts: &ClientOptions) -> OwnTopics {
        OwnTopics {
            inbox: topics::inbox(&opts.user),
            reply: topics::reply(&opts.user, &opts.device),
            presence_filter: topics::presence("+", &opts.user),
        }
    }

    /// What `connect` subscribes, at which QoS: the inbox (QoS 1: each
    /// envelope's PUBACK moves the durable session's cursor), the replies
    /// (QoS 0, see [`Client::request`]), and friends' presence (QoS 1) with
    /// `presence`.
    fn at_connect(&self, presence: bool) -> Vec<(&String, QoS)> {
        let mut topics = vec![
            (&self.inbox, QoS::AtLeastOnce),
            (&self.reply, QoS::AtMostOnce),
        ];
        if presence {
            topics.push((&self.presence_filter, QoS::AtLeastOnce));
        }
        topics
    }
}

/// The rumqttc client and event loop for `opts`, with the connect timeout
/// and `TCP_NODELAY` setting of `opts`.
fn new_mqtt(opts: &ClientOptions) -> Result<(AsyncClient, EventLoop), ClientError> {
    let channel_capacity = usize::from(opts.inflight).clamp(16, 1024);
    let (mqtt, mut eventloop) = AsyncClient::new(opts.to_mqtt_options()?, channel_capacity);
    let mut network = NetworkOptions::new();
    network.set_connection_timeout(opts.connect_timeout.as_secs().max(1));
    // small request publishes must not wait for delayed ACKs (~40 ms)
    network.set_tcp_nodelay(opts.tcp_nodelay);
    eventloop.set_network_options(network);
    Ok((mqtt, eventloop))
}

/// A running [`Driver`] task and the ends of its channels: the ones
/// `connect` waits on (CONNACK, first SUBACK) and the ones the [`Client`]
/// keeps.
struct Started {
    handle: JoinHandle<()>,
    connack_rx: oneshot::Receiver<Result<bool, ClientError>>,
    suback_rx: oneshot::Receiver<SubAck>,
    shutdown_tx: oneshot::Sender<()>,
    inbox_rx: mpsc::Receiver<Envelope>,
    pending: Pending,
    subacks: SubAcks,
    presence: Arc<PresenceQueue>,
    connected: Arc<AtomicBool>,
}

/// Spawns the task that polls `eventloop`, with the SUBACK of the
/// subscription made at connect queued first.
fn spawn_driver(opts: &ClientOptions, topics: &OwnTopics, eventloop: EventLoop) -> Started {
    let (connack_tx, connack_rx) = oneshot::channel();
    let (suback_tx, suback_rx) = oneshot::channel();
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let (inbox_tx, inbox_rx) = mpsc::channel(opts.inbox_capacity);
    let pending = Pending::default();
    let subacks = SubAcks::default();
    driver::lock_any(&subacks).push_back(suback_tx);
    let presence = Arc::new(PresenceQueue::new(opts.presence_capacity));
    let connected = Arc::new(AtomicBool::new(false));
    let driver = Driver {
        eventloop,
        user: opts.user.clone(),
        reply_topic: topics.reply.clone(),
        inbox_topic: topics.inbox.clone(),
        pending: pending.clone(),
        inbox_tx,
        presence: presence.clone(),
        connack_tx: Some(connack_tx),
        subacks: subacks.clone(),
        shutdown_rx,
        connected: connected.clone(),
    };
    let span = tracing::debug_span!("client", user = %opts.user, device = %opts.device);
    let handle = tokio::spawn(tracing::Instrument::instrument(driver.run(), span));
    Started {
        handle,
        connack_rx,
        suback_rx,
        shutdown_tx,
        inbox_rx,
        pending,
        subacks,
        presence,
        connected,
    }
}

/// Subscribes `topics` at their QoS in one SUBSCRIBE and checks its
/// SUBACK, waited for on `suback_rx` for at most `timeout`.
async fn subscribe_at_connect(
    mqtt: &AsyncClient,
    topics: &[(&String, QoS)],
    timeout: Duration,
    suback_rx: oneshot::Receiver<SubAck>,
) -> Result<(), ClientError> {
    let filters = topics
        .iter()
        .map(|(topic, qos)| SubscribeFilter::new(topic.to_string(), *qos));
    mqtt.subscribe_many(filters).await?;
    let suback = wait("SUBACK", timeout, suback_rx).await?;
    let topics: Vec<&String> = topics.iter().map(|(topic, _)| *topic).collect();
    check_suback(&suback.return_codes, &topics)
}

/// Removes a request from the pending map when its caller stops waiting.
struct ForgetOnDrop<'a> {
    pending: &'a Pending,
    request_id: &'a str,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        driver::lock(self.pending).remove(self.request_id);
    }
}

async fn wait<T>(
    what: &'static str,
    after: Duration,
    rx: oneshot::Receiver<T>,
) -> Result<T, ClientError> {
    match tokio::time::timeout(after, rx).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err(ClientError::Connection(format!(
            "connection closed before the {what}"
        ))),
        Err(_) => Err(ClientError::Timeout { what, after }),
    }
}

fn check_suback(codes: &[SubscribeReasonCode], topics: &[&String]) -> Result<(), ClientError> {
    for (i, topic) in topics.iter().enumerate() {
        match codes.get(i) {
            Some(SubscribeReasonCode::Success(_)) => {}
            _ => return Err(ClientError::SubscribeRefused(topic.to_string())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suback_failures_name_the_topic() {
        let inbox = "inbox/a".to_string();
        let reply = "reply/a/d".to_string();
        let ok = [SubscribeReasonCode::Success(QoS::AtLeastOnce); 2];
        assert!(check_suback(&ok, &[&inbox, &reply]).is_ok());
        let refused = [
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure,
        ];
        match check_suback(&refused, &[&inbox, &reply]) {
            Err(ClientError::SubscribeRefused(topic)) => assert_eq!(topic, reply),
            other => panic!("unexpected {other:?}"),
        }
        assert!(check_suback(&ok[..1], &[&inbox, &reply]).is_err());
    }

    #[tokio::test]
    async fn connect_to_nothing_fails_without_hanging() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let opts = ClientOptions::new(addr, "a", "d", "pw").connect_timeout(Duration::from_secs(2));
        let err = Client::connect(opts).await.unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Connection(_) | ClientError::Timeout { .. }
            ),
            "{err}"
        );
    }
}

//! [`Client`]: one device's MQTT connection to the broker, with requests
//! answered by replies, the user's inbox as a stream of envelopes and, once
//! subscribed, friends' presence as a stream of [`PresenceUpdate`]s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parley_proto::topics;
use parley_proto::v1::{
    self, reply, request, Ack, Envelope, ErrorCode, HistoryPage, Presence, ReceiptKind, Reply,
    Request, SyncPage,
};
use prost::Message;
use rumqttc::{AsyncClient, NetworkOptions, QoS, SubscribeFilter, SubscribeReasonCode};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::driver::{self, Driver, Pending, SubAcks};
use crate::error::ClientError;
use crate::ids::IdGen;
use crate::options::ClientOptions;
use crate::presence::{PresenceQueue, PresenceUpdate};

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
    /// Connects, waits for the CONNACK, subscribes `inbox/{user}` and
    /// `reply/{user}/{device}` (and `presence/+/{user}` with
    /// [`ClientOptions::presence`]) at QoS 1 and waits for the SUBACK.
    ///
    /// Errors: [`ClientError::Refused`] with the CONNACK code,
    /// [`ClientError::SubscribeRefused`], [`ClientError::Timeout`] after
    /// `connect_timeout`, [`ClientError::Connection`] for network failures.
    pub async fn connect(opts: ClientOptions) -> Result<Client, ClientError> {
        opts.validate()?;
        let inbox_topic = topics::inbox(&opts.user);
        let reply_topic = topics::reply(&opts.user, &opts.device);
        let presence_filter = topics::presence("+", &opts.user);
        let channel_capacity = usize::from(opts.inflight).clamp(16, 1024);
        let (mqtt, mut eventloop) = AsyncClient::new(opts.to_mqtt_options()?, channel_capacity);
        let mut network = NetworkOptions::new();
        network.set_connection_timeout(opts.connect_timeout.as_secs().max(1));
        // small request publishes must not wait for delayed ACKs (~40 ms)
        network.set_tcp_nodelay(opts.tcp_nodelay);
        eventloop.set_network_options(network);

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
            reply_topic: reply_topic.clone(),
            inbox_topic: inbox_topic.clone(),
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

        let session_present = wait("CONNACK", opts.connect_timeout, connack_rx).await??;
        let mut topics = vec![&inbox_topic, &reply_topic];
        if opts.presence {
            topics.push(&presence_filter);
        }
        let filters = topics
            .iter()
            .map(|topic| SubscribeFilter::new(topic.to_string(), QoS::AtLeastOnce));
        mqtt.subscribe_many(filters).await?;
        let suback = wait("SUBACK", opts.connect_timeout, suback_rx).await?;
        check_suback(&suback.return_codes, &topics)?;

        Ok(Client {
            inner: Arc::new(Inner {
                mqtt,
                request_topic: topics::request(&opts.user, &opts.device),
                heartbeat_topic: topics::heartbeat(&opts.user, &opts.device),
                presence_filter,
                user: opts.user,
                device: opts.device,
                pending,
                subacks,
                subscribing: tokio::sync::Mutex::new(()),
                ids: IdGen::new(),
                inbox_rx: tokio::sync::Mutex::new(inbox_rx),
                presence,
                request_timeout: opts.request_timeout,
                session_present,
                connected,
                driver: Mutex::new(Some(handle)),
                _shutdown: shutdown_tx,
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
    /// `req/{user}/{device}` at QoS 1 and the reply with that id is awaited
    /// for `request_timeout` ([`ClientError::Timeout`] after that).
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
                .publish(&self.inner.request_topic, QoS::AtLeastOnce, false, payload)
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

    /// Sends `text` to `channel` with a fresh `client_msg_id`; returns the `Ack`.
    pub async fn send(&self, channel: &str, text: &str) -> Result<Ack, ClientError> {
        let client_msg_id = self.inner.ids.next_id();
        self.send_with_id(channel, &client_msg_id, text).await
    }

    /// Sends `text` to `channel` with the caller's `client_msg_id`: a retry
    /// with the same id is answered with the original `Ack` and `duplicate = true`.
    pub async fn send_with_id(
        &self,
        channel: &str,
        client_msg_id: &str,
        text: &str,
    ) -> Result<Ack, ClientError> {
        let body = request::Body::Send(v1::SendMessage {
            channel: channel.to_string(),
            client_msg_id: client_msg_id.to_string(),
            text: text.to_string(),
        });
        expect_ack(self.request(body).await?)
    }

    /// The user's inbox events after `after` (an `inbox_seq`), at most `limit`
    /// of them (0 means the broker's default, 100; the broker caps it at 1,000).
    pub async fn sync(&self, after: u64, limit: u32) -> Result<SyncPage, ClientError> {
        let body = request::Body::Sync(v1::Sync {
            after_inbox_seq: after,
            limit,
        });
        match into_body(self.request(body).await?)? {
            reply::Body::SyncPage(page) => Ok(page),
            other => Err(unexpected("SyncPage", &other)),
        }
    }

    /// A page of `channel`'s messages older than `before` (0: the newest), newest first.
    pub async fn history(
        &self,
        channel: &str,
        before: u64,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        let body = request::Body::History(v1::History {
            channel: channel.to_string(),
            before_seq: before,
            limit,
        });
        match into_body(self.request(body).await?)? {
            reply::Body::HistoryPage(page) => Ok(page),
            other => Err(unexpected("HistoryPage", &other)),
        }
    }

    /// Creates group `group_id` (channel `g:{group_id}`) with this user as
    /// owner and the given other members.
    pub async fn create_group(
        &self,
        group_id: &str,
        name: &str,
        members: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Ack, ClientError> {
        let body = request::Body::CreateGroup(v1::CreateGroup {
            group_id: group_id.to_string(),
            name: name.to_string(),
            members: members.into_iter().map(Into::into).collect(),
        });
        expect_ack(self.request(body).await?)
    }

    /// Adds and removes members of group `group_id`.
    pub async fn change_members(
        &self,
        group_id: &str,
        add: impl IntoIterator<Item = impl Into<String>>,
        remove: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Ack, ClientError> {
        let body = request::Body::ChangeMembers(v1::ChangeMembers {
            group_id: group_id.to_string(),
            add: add.into_iter().map(Into::into).collect(),
            remove: remove.into_iter().map(Into::into).collect(),
        });
        expect_ack(self.request(body).await?)
    }

    /// Leaves group `group_id`.
    pub async fn leave_group(&self, group_id: &str) -> Result<Ack, ClientError> {
        let body = request::Body::LeaveGroup(v1::LeaveGroup {
            group_id: group_id.to_string(),
        });
        expect_ack(self.request(body).await?)
    }

    /// Sends friend requests to `add` (or accepts theirs) and ends the
    /// friendships or requests with `remove`, all or nothing. The answer is
    /// `Ack{channel: "", seq: 0}`; each change arrives as a `FriendEvent` in
    /// both users' inboxes. `NOT_FOUND` for an unknown user, `BAD_REQUEST`
    /// for oneself, `LIMIT_EXCEEDED` past the broker's `max_friends`.
    pub async fn change_friends(
        &self,
        add: impl IntoIterator<Item = impl Into<String>>,
        remove: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Ack, ClientError> {
        let body = request::Body::ChangeFriends(v1::ChangeFriends {
            add: add.into_iter().map(Into::into).collect(),
            remove: remove.into_iter().map(Into::into).collect(),
        });
        expect_ack(self.request(body).await?)
    }

    /// The current presence of each of `users`, who must each be this
    /// user, a friend or a member of one of this user's groups (otherwise
    /// the whole query is `FORBIDDEN`). One entry per distinct user, each
    /// naming its `user`; the broker answers them sorted by user id.
    pub async fn query_presence(
        &self,
        users: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Vec<Presence>, ClientError> {
        let body = request::Body::QueryPresence(v1::QueryPresence {
            users: users.into_iter().map(Into::into).collect(),
        });
        match into_body(self.request(body).await?)? {
            reply::Body::Presence(list) => Ok(list.users),
            other => Err(unexpected("PresenceList", &other)),
        }
    }

    /// Marks `channel` delivered or read up to `seq` (a stale or repeated
    /// receipt changes nothing); every member's inbox gets a `ReceiptEvent`.
    pub async fn receipt(
        &self,
        channel: &str,
        seq: u64,
        kind: ReceiptKind,
    ) -> Result<Ack, ClientError> {
        let body = request::Body::Receipt(v1::MarkReceipt {
            channel: channel.to_string(),
            seq,
            kind: kind as i32,
        });
        expect_ack(self.request(body).await?)
    }

    /// Tells the other members of `channel` that this user is typing: a
    /// live-only `TypingEvent` (inbox_seq 0, never stored).
    pub async fn typing(&self, channel: &str) -> Result<Ack, ClientError> {
        let body = request::Body::Typing(v1::Typing {
            channel: channel.to_string(),
        });
        expect_ack(self.request(body).await?)
    }

    /// Registers this device for push notifications (`platform` is the
    /// gateway's app id, `token` its pushkey); an empty `token` unregisters it.
    pub async fn register_push(&self, platform: &str, token: &str) -> Result<Ack, ClientError> {
        let body = request::Body::RegisterPush(v1::RegisterPush {
            platform: platform.to_string(),
            token: token.to_string(),
        });
        expect_ack(self.request(body).await?)
    }

    /// Signs this device out: the broker makes it offline at once, drops
    /// its push registration and durable session, revokes the token it
    /// connected with, answers, and closes the connection. Returns the
    /// broker's `Ack` once the connection is closed; buffered envelopes and
    /// presence updates can still be read.
    pub async fn logout(&self) -> Result<Ack, ClientError> {
        let ack = expect_ack(self.request(request::Body::Logout(v1::Logout {})).await?)?;
        self.disconnect().await?;
        Ok(ack)
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

/// The reply's body; `Reply{error}` becomes [`ClientError::Server`].
pub(crate) fn into_body(reply: Reply) -> Result<reply::Body, ClientError> {
    match reply.body {
        Some(reply::Body::Error(err)) => Err(ClientError::Server {
            code: ErrorCode::try_from(err.code).unwrap_or(ErrorCode::Unspecified),
            message: err.message,
        }),
        Some(body) => Ok(body),
        None => Err(ClientError::UnexpectedReply(format!(
            "reply {} has no body",
            reply.request_id
        ))),
    }
}

/// An `Ack` reply; a reply with no body counts as an empty `Ack` (group changes).
pub(crate) fn expect_ack(reply: Reply) -> Result<Ack, ClientError> {
    if reply.body.is_none() {
        return Ok(Ack::default());
    }
    match into_body(reply)? {
        reply::Body::Ack(ack) => Ok(ack),
        other => Err(unexpected("Ack", &other)),
    }
}

fn unexpected(wanted: &str, got: &reply::Body) -> ClientError {
    let got = match got {
        reply::Body::Ack(_) => "Ack",
        reply::Body::Error(_) => "Error",
        reply::Body::SyncPage(_) => "SyncPage",
        reply::Body::HistoryPage(_) => "HistoryPage",
        reply::Body::Presence(_) => "PresenceList",
    };
    ClientError::UnexpectedReply(format!("wanted {wanted}, got {got}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(body: Option<reply::Body>) -> Reply {
        Reply {
            request_id: "r-1".into(),
            body,
        }
    }

    #[test]
    fn error_replies_become_server_errors() {
        let err = into_body(reply(Some(reply::Body::Error(v1::Error {
            code: ErrorCode::TooLarge as i32,
            message: "too long".into(),
        }))))
        .unwrap_err();
        assert_eq!(err.server_code(), Some(ErrorCode::TooLarge));
        assert!(err.to_string().contains("too long"));
    }

    #[test]
    fn unknown_error_codes_are_unspecified() {
        let err = into_body(reply(Some(reply::Body::Error(v1::Error {
            code: 999,
            message: String::new(),
        }))))
        .unwrap_err();
        assert_eq!(err.server_code(), Some(ErrorCode::Unspecified));
    }

    #[test]
    fn ack_expectations() {
        let ack = Ack {
            channel: "dm:a:b".into(),
            seq: 3,
            ts_ms: 1,
            duplicate: false,
        };
        assert_eq!(
            expect_ack(reply(Some(reply::Body::Ack(ack.clone())))).unwrap(),
            ack
        );
        assert_eq!(expect_ack(reply(None)).unwrap(), Ack::default());
        let err = expect_ack(reply(Some(reply::Body::SyncPage(SyncPage::default())))).unwrap_err();
        assert!(matches!(err, ClientError::UnexpectedReply(_)), "{err}");
    }

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

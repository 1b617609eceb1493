//! The per-connection task: accept -> CONNECT -> session -> packet loop.
//!
//! One task per device, `select!`ing between the socket, its live queue
//! from the router, its pending requests (replies in request order), a
//! read-ahead from the store, the keep-alive deadline and shutdown. Every
//! source is bounded: at most `receive_maximum` requests are in progress
//! (then the socket is not read: back-pressure), requests beyond the
//! device's rate are refused ([`limits`](super::limits)), live envelopes
//! and in-flight publishes are bounded by the [`Outbox`].
//!
//! `subscriptions.rs`: SUBSCRIBE / UNSUBSCRIBE and what they cover.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;
use parley_chat_logic::acl::{self, PublishTopic};
use parley_proto::topics;
use parley_proto::v1::Reply;
use parley_storage::StorageError;
use prost::Message;
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, Packet, PingResp, PubAck, PubAckReason, PubComp,
    PubCompReason, PubRec, PubRecReason, Publish, QoS,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::mqtt::admission::Connecting;
mod subscriptions;

use crate::accounts::tokens::TokenDigest;
use crate::chat::{encode_reply, Requester, Then, TypingLimit};
use crate::clock::now_ms;
use crate::metrics as m;
use crate::mqtt::codec::{self, Codec, FrameError, Level};
use crate::mqtt::connect::{self, Accepted, Deny, Refusal};
use crate::mqtt::limits::DeviceLimits;
use crate::mqtt::outbox::{Outbox, Stream};
use crate::mqtt::session::{SessionLease, SessionRequest, SessionStart};
use crate::mqtt::transport::Transport;
use crate::mqtt::Shared;
use crate::presence::{Departure, DevicePresence};
use crate::router::{DeviceLink, Eviction, LiveBatch, PresenceUpdate};

/// How long a write may block before the device is considered gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection stays open after answering its device's Logout,
/// unless the device closes first.
const LOGOUT_LINGER: Duration = Duration::from_millis(500);
/// How long a new connection waits for the one it replaces to finish.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);
/// How often at most a durable session's acked cursor is written.
const CURSOR_FLUSH: Duration = Duration::from_millis(100);

/// Serves one accepted connection until it ends.
///
/// The phases before and after the packet loop run as boxed futures: a
/// task's memory is its largest state, and it should be the loop's, which
/// every idle connection holds, not the connect or teardown state.
///
/// `connecting` counts this connection towards `max_connecting_per_addr`
/// until its CONNECT is authenticated (or refused).
pub async fn serve(
    io: Transport,
    peer: SocketAddr,
    connecting: Connecting,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let accepted = Box::pin(connect::accept(io, peer, connecting, &shared)).await;
    let Some((io, buf, packet, accepted)) = accepted else {
        return;
    };
    let client = &accepted.client;
    let span = tracing::info_span!("conn", user = %client.user, device = %client.device, %peer);
    async move {
        let established = Connection::establish(io, buf, packet, accepted, shared, peer);
        let Some(mut connection) = Box::pin(established).await else {
            return;
        };
        let close = connection.run(&shutdown).await;
        Box::pin(connection.finish(close)).await;
    }
    .instrument(span)
    .await
}

/// Why a connection ended.
#[derive(Debug)]
enum Close {
    Shutdown,
    TakenOver,
    /// The device signed out (`Logout`, or `POST /v1/logout`).
    LoggedOut,
    /// The account's password changed: this connection's credentials are void.
    Revoked,
    PeerClosed,
    Disconnect,
    KeepAliveTimeout,
    Malformed(String),
    Protocol(String),
    Io(String),
    Store(String),
}

impl std::fmt::Display for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Close::Shutdown => f.write_str("broker shutting down"),
            Close::TakenOver => f.write_str("session taken over by a new connection"),
            Close::LoggedOut => f.write_str("logged out"),
            Close::Revoked => f.write_str("credentials revoked by a password change"),
            Close::PeerClosed => f.write_str("peer closed the connection"),
            Close::Disconnect => f.write_str("DISCONNECT"),
            Close::KeepAliveTimeout => f.write_str("keep-alive timeout"),
            Close::Malformed(why) => write!(f, "malformed packet: {why}"),
            Close::Protocol(why) => write!(f, "protocol error: {why}"),
            Close::Io(why) => write!(f, "i/o error: {why}"),
            Close::Store(why) => write!(f, "store error: {why}"),
        }
    }
}

/// How to acknowledge a request publish once its reply is out.
#[derive(Debug, Clone, Copy)]
enum RequestAck {
    None,
    PubAck(u16),
    PubRec(u16),
}

struct Done {
    reply: Reply,
    ack: RequestAck,
    then: Then,
}

type RequestFuture = Pin<Box<dyn Future<Output = Done> + Send>>;
type Fetched = Result<Vec<(u64, Bytes)>, StorageError>;
type Retained = Result<Vec<PresenceUpdate>, StorageError>;

struct Connection {
    io: Transport,
    codec: Codec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    user: String,
    device: String,
    inbox_topic: String,
    reply_topic: String,
    shared: Arc<Shared>,
    link: DeviceLink,
    /// This device's online state: every packet is reported to it.
    presence: DevicePresence,
    outbox: Outbox,
    subscriptions: Vec<(String, u8)>,
    durable: Option<u32>,
    /// This connection's claim on its device's session record: every
    /// session write goes through it (refused once a successor took over).
    session: Arc<SessionLease>,
    /// The token this connection authenticated with (a Logout revokes it).
    token: Option<TokenDigest>,
    limits: DeviceLimits,
    typing: TypingLimit,
    /// Set once a Logout was answered: the loop ends after the next flush.
    logged_out: bool,
    requests: FuturesOrdered<RequestFuture>,
    fetch: Option<JoinHandle<Fetched>>,
    /// The retained presence being read for a new presence subscription.
    retained: Option<JoinHandle<Retained>>,
    keep_alive: Option<Duration>,
    /// When the device last sent a packet (keep-alive).
    last_seen: Instant,
    /// Armed while an acked cursor waits to be written (durable sessions).
    cursor_timer: Pin<Box<tokio::time::Sleep>>,
    cursor_flush_pending: bool,
    /// The cursor write in progress, if any: at most one at a time, and
    /// `finish` waits for it, so no write of this connection reaches the
    /// session record after a successor has opened it.
    cursor_write: Option<JoinHandle<()>>,
    persisted_cursor: u64,
}

impl Connection {
    /// Registers the device, opens its session and sends the CONNACK.
    async fn establish(
        mut io: Transport,
        rbuf: BytesMut,
        packet: connect::ConnectPacket,
        accepted: Accepted,
        shared: Arc<Shared>,
        peer: SocketAddr,
    ) -> Option<Connection> {
        let Accepted { client, token } = accepted;
        // Register first: envelopes committed from now on reach the live
        // queue, and the session below reads everything before them.
        let max_devices = shared.config.max_devices_per_user;
        let mut link = match shared
            .router
            .register(&client.user, &client.device, max_devices)
        {
            Ok(link) => link,
            Err(_) => {
                let refusal = Refusal::Connack(packet.codec, Deny::Quota, "max_devices_per_user");
                connect::refuse(io, peer, Some(&client.to_string()), refusal).await;
                return None;
            }
        };
        if let Some(predecessor) = link.predecessor.take() {
            // the connection we replace saves its session first
            let _ = tokio::time::timeout(TAKEOVER_WAIT, predecessor.cancelled()).await;
        }
        let request = connect::session_request(&packet);
        let opened = open_session(&shared, &client.user, &client.device, link.conn_id, request);
        let (start, session) = match opened.await {
            Ok(opened) => opened,
            Err(error) => {
                tracing::error!(%error, "cannot open the session");
                let refusal =
                    Refusal::Connack(packet.codec, Deny::Unavailable, "session_unavailable");
                connect::refuse(io, peer, Some(&client.to_string()), refusal).await;
                return None;
            }
        };
        let window = connect::window(&packet, usize::from(shared.config.inflight_window));
        let mut outbox = Outbox::new(window, start.cursor);
        outbox.observe_head(start.inbox_head);
        let keep_alive = (packet.connect.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(packet.connect.keep_alive) * 1500));
        let mut wbuf = BytesMut::new();
        let connack = connect::connack(
            packet.codec,
            start.present,
            shared.config.max_packet_size,
            shared.config.receive_maximum,
        );
        if packet.codec.write(connack, &mut wbuf).is_err() {
            return None;
        }
        // Online before the CONNACK leaves: a device that has its CONNACK
        // and sends at once must already count (no push, QueryPresence).
        let mut presence = shared.presence.connect(&client.user, &client.device);
        if io.write_all(&wbuf).await.is_err() {
            presence.leave(Departure::Graceful);
            return None;
        }
        m::connection_opened();
        tracing::info!(
            session_present = start.present,
            durable = start.durable.is_some(),
            cursor = start.cursor,
            "connected"
        );
        let limits = DeviceLimits::new(&shared.config);
        let mut connection = Connection {
            io,
            codec: packet.codec,
            rbuf,
            wbuf: BytesMut::new(),
            inbox_topic: topics::inbox(&client.user),
            reply_topic: topics::reply(&client.user, &client.device),
            user: client.user,
            device: client.device,
            shared,
            link,
            presence,
            outbox,
            subscriptions: start.subscriptions,
            durable: start.durable,
            session: Arc::new(session),
            token,
            limits,
            typing: TypingLimit::default(),
            logged_out: false,
            requests: FuturesOrdered::new(),
            fetch: None,
            retained: None,
            keep_alive,
            last_seen: Instant::now(),
            cursor_timer: Box::pin(tokio::time::sleep(CURSOR_FLUSH)),
            cursor_flush_pending: false,
            cursor_write: None,
            persisted_cursor: start.cursor,
        };
        connection.apply_subscriptions();
        // A resumed session's presence subscriptions get the current state,
        // as if they were made again: changes while away were not queued.
        connection.read_retained_presence_if_subscribed();
        connection.touch();
        Some(connection)
    }

    /// The packet loop. The waits that outlive one event (shutdown, take-over,
    /// keep-alive, cursor flush) are created once and re-armed only when
    /// needed: re-creating them per event registered and dropped timer and
    /// notify entries on every packet.
    async fn run(&mut self, shutdown: &CancellationToken) -> Close {
        let shutdown = shutdown.cancelled();
        let stop_token = self.link.stop.clone();
        let stop = stop_token.cancelled();
        let keep_alive_timer = tokio::time::sleep_until(self.keep_alive_due());
        tokio::pin!(shutdown, stop, keep_alive_timer);
        loop {
            // Boxed: handling packets and writing need the largest states;
            // inline they would size every idle connection's task.
            if self.may_read() && !self.rbuf.is_empty() {
                if let Some(close) = Box::pin(self.handle_buffered()).await {
                    return close;
                }
            }
            self.pump();
            if !self.wbuf.is_empty() {
                if let Err(close) = Box::pin(self.flush()).await {
                    return close;
                }
            }
            if self.logged_out {
                return Close::LoggedOut;
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
                // an idle connection holds no read buffer
                self.rbuf = BytesMut::new();
            }
            let reading = self.may_read();
            tokio::select! {
                _ = &mut shutdown => return Close::Shutdown,
                _ = &mut stop => return self.evicted(),
                read = self.io.read_into(&mut self.rbuf), if reading => match read {
                    Ok(0) => return Close::PeerClosed,
                    Ok(_) => {}
                    Err(error) => return Close::Io(error.to_string()),
                },
                live = self.link.live.next(), if !self.outbox.is_saturated() => {
                    self.on_live(live);
                    self.take_ready_outgoing();
                }
                Some(done) = self.requests.next(), if !self.requests.is_empty() => {
                    self.finish_request(done);
                    self.take_ready_outgoing();
                }
                fetched = wait_for(self.fetch.as_mut()) => {
                    self.fetch = None;
                    if let Err(close) = self.on_fetched(fetched) {
                        return close;
                    }
                }
                retained = wait_for(self.retained.as_mut()) => {
                    self.retained = None;
                    self.on_retained_presence(retained);
                }
                _ = keep_alive_timer.as_mut(), if self.keep_alive.is_some() => {
                    let due = self.keep_alive_due();
                    if Instant::now() >= due {
                        return Close::KeepAliveTimeout;
                    }
                    keep_alive_timer.as_mut().reset(due);
                }
                _ = self.cursor_timer.as_mut(), if self.cursor_flush_pending => self.flush_cursor(),
            }
        }
    }

    /// Whether another request may be read (the receive maximum).
    fn may_read(&self) -> bool {
        self.requests.len() < usize::from(self.shared.config.receive_maximum)
    }

    /// Why the router told this connection to go.
    fn evicted(&self) -> Close {
        match self.link.live.eviction() {
            Some(Eviction::LoggedOut) => Close::LoggedOut,
            Some(Eviction::CredentialsRevoked) => Close::Revoked,
            Some(Eviction::TakenOver) | None => Close::TakenOver,
        }
    }

    /// When the keep-alive runs out if nothing more arrives.
    fn keep_alive_due(&self) -> Instant {
        self.last_seen + self.keep_alive.unwrap_or(Duration::ZERO)
    }

    /// Envelopes from the router; when it had to drop some, catch up to the
    /// inbox head from the store.
    fn on_live(&mut self, live: LiveBatch) {
        if live.missed {
            self.outbox
                .observe_head(self.shared.router.inbox_head(&self.user));
        }
        for envelope in live.envelopes {
            self.outbox.push_live(envelope);
        }
        for update in live.presence {
            self.outbox.push_presence(update);
        }
    }

    /// Takes every live envelope and finished request that is ready right
    /// now, without waiting, so they leave in one write: a sender's reply,
    /// its PUBACK and its own inbox copy are ready at nearly the same time.
    fn take_ready_outgoing(&mut self) {
        if !self.outbox.is_saturated() {
            let live = self.link.live.take();
            self.on_live(live);
        }
        while !self.requests.is_empty() {
            match self.requests.next().now_or_never() {
                Some(Some(done)) => self.finish_request(done),
                _ => break,
            }
        }
    }

    /// Handles every whole packet in the read buffer (until the request limit).
    async fn handle_buffered(&mut self) -> Option<Close> {
        while self.may_read() && !self.logged_out {
            match self.codec.read(&mut self.rbuf) {
                Ok(packet) => {
                    self.touch();
                    if let Some(close) = self.handle_packet(packet).await {
                        return Some(close);
                    }
                }
                Err(FrameError::Incomplete) => return None,
                Err(FrameError::Malformed(error)) => {
                    return Some(Close::Malformed(error.to_string()))
                }
            }
        }
        None
    }

    async fn handle_packet(&mut self, packet: Packet) -> Option<Close> {
        match packet {
            Packet::Publish(publish, _) => self.on_publish(publish).await,
            Packet::PubAck(ack, _) => {
                if self.outbox.on_puback(ack.pkid) {
                    self.schedule_cursor_flush();
                }
            }
            Packet::PubRel(rel, _) => self.write(Packet::PubComp(
                PubComp {
                    pkid: rel.pkid,
                    reason: PubCompReason::Success,
                },
                None,
            )),
            Packet::PubRec(_, _) | Packet::PubComp(_, _) => {} // Parley never publishes at QoS 2
            Packet::Subscribe(subscribe, _) => self.on_subscribe(subscribe).await,
            Packet::Unsubscribe(unsubscribe, _) => self.on_unsubscribe(unsubscribe).await,
            Packet::PingReq(_) => self.write(Packet::PingResp(PingResp)),
            Packet::Disconnect(_, _) => return Some(Close::Disconnect),
            Packet::Connect(..) => return Some(Close::Protocol("second CONNECT".into())),
            other => {
                return Some(Close::Protocol(format!(
                    "unexpected packet from a client: {other:?}"
                )))
            }
        }
        None
    }

    async fn on_publish(&mut self, publish: Publish) {
        let (qos, pkid) = codec::publish_qos_pkid(&publish);
        let topic = std::str::from_utf8(&publish.topic).unwrap_or("");
        match acl::classify_publish(&self.user, &self.device, topic) {
            PublishTopic::Request => {
                m::message_in();
                let ack = match qos {
                    QoS::AtMostOnce => RequestAck::None,
                    QoS::AtLeastOnce => RequestAck::PubAck(pkid),
                    QoS::ExactlyOnce => RequestAck::PubRec(pkid),
                };
                if let Err(error) = self.limits.take_request() {
                    tracing::warn!("request refused: over the device's request rate");
                    m::refused("request_rate");
                    let reply = self.shared.chat.refuse(&publish.payload, error);
                    let done = Done {
                        reply,
                        ack,
                        then: Then::Continue,
                    };
                    self.requests.push_back(Box::pin(std::future::ready(done)));
                    return;
                }
                let requester = Requester {
                    user: &self.user,
                    device: &self.device,
                    typing: &mut self.typing,
                };
                let handled = self.shared.chat.handle(requester, &publish.payload).await;
                let (reply, then) = (handled.reply, handled.then);
                // A Logout revokes the token before it is answered, so no
                // new connection can use it once the device sees the reply.
                let revoke = match then {
                    Then::Logout => self.token.take(),
                    Then::Continue => None,
                };
                let shared = self.shared.clone();
                self.requests.push_back(Box::pin(async move {
                    if let Some(token) = revoke {
                        if let Err(error) = shared.auth.revoke(token).await {
                            tracing::error!(%error, "cannot revoke the token at logout");
                        }
                    }
                    Done {
                        reply: reply.await,
                        ack,
                        then,
                    }
                }));
            }
            PublishTopic::Heartbeat => self.ack_publish(qos, pkid, true),
            PublishTopic::Forbidden => {
                tracing::warn!(topic, "publish to a forbidden topic dropped");
                m::publish_dropped("forbidden_topic");
                self.ack_publish(qos, pkid, false);
            }
        }
    }

    /// Acknowledges a publish that produced no reply.
    fn ack_publish(&mut self, qos: QoS, pkid: u16, allowed: bool) {
        let packet = match qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => Packet::PubAck(
                PubAck {
                    pkid,
                    reason: if allowed {
                        PubAckReason::Success
                    } else {
                        PubAckReason::NotAuthorized
                    },
                },
                None,
            ),
            QoS::ExactlyOnce => Packet::PubRec(
                PubRec {
                    pkid,
                    reason: if allowed {
                        PubRecReason::Success
                    } else {
                        PubRecReason::NotAuthorized
                    },
                },
                None,
            ),
        };
        self.write(packet);
    }

    fn finish_request(&mut self, done: Done) {
        self.outbox.push_reply(encode_reply(&done.reply));
        self.pump();
        match done.ack {
            RequestAck::None => {}
            RequestAck::PubAck(pkid) => self.ack_publish(QoS::AtLeastOnce, pkid, true),
            RequestAck::PubRec(pkid) => self.ack_publish(QoS::ExactlyOnce, pkid, true),
        }
        if done.then == Then::Logout {
            // Answered: offline at once; the loop closes once the reply is
            // written.
            self.logged_out = true;
            self.presence.leave(Departure::Graceful);
        }
    }

    fn session_snapshot(&self, expiry_secs: u32, disconnected_ms: i64) -> SessionSnapshot {
        SessionSnapshot {
            session: self.session.clone(),
            subscriptions: self.subscriptions.clone(),
            acked: self.outbox.acked_upto(),
            expiry_secs,
            disconnected_ms,
        }
    }

    fn pump(&mut self) {
        let pumped = self.outbox.pump();
        for outgoing in pumped.publishes {
            let presence_topic;
            let topic = match &outgoing.stream {
                Stream::Reply => &self.reply_topic,
                Stream::Inbox => &self.inbox_topic,
                Stream::Presence(subject) => {
                    presence_topic = topics::presence(subject, &self.user);
                    &presence_topic
                }
            };
            let publish = codec::outgoing_publish(
                topic,
                outgoing.payload,
                outgoing.qos,
                outgoing.pkid,
                outgoing.retain,
            );
            self.write(Packet::Publish(publish, None));
            m::messages_out(1);
        }
        if let Some((after, limit)) = pumped.fetch {
            self.start_fetch(after, limit);
        }
    }

    async fn pump_and_flush(&mut self) -> Result<(), Close> {
        self.pump();
        self.flush().await
    }

    /// Writes out the write buffer.
    async fn flush(&mut self) -> Result<(), Close> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let written = tokio::time::timeout(WRITE_TIMEOUT, self.io.write_all(&self.wbuf)).await;
        // Released, not cleared: an idle connection holds no write buffer.
        self.wbuf = BytesMut::new();
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Close::Io(error.to_string())),
            Err(_) => Err(Close::Io("write timed out".into())),
        }
    }

    fn write(&mut self, packet: Packet) {
        if let Err(error) = self.codec.write(packet, &mut self.wbuf) {
            tracing::error!(%error, "cannot encode an outgoing packet");
        }
    }

    fn start_fetch(&mut self, after: u64, limit: usize) {
        let store = self.shared.store.clone();
        let user = self.user.clone();
        self.fetch = Some(tokio::task::spawn_blocking(move || {
            let (envelopes, _more) = store.inbox_after(&user, after, limit)?;
            Ok(envelopes
                .into_iter()
                .map(|envelope| (envelope.inbox_seq, Bytes::from(envelope.encode_to_vec())))
                .collect())
        }));
    }

    fn on_fetched(
        &mut self,
        fetched: Result<Fetched, tokio::task::JoinError>,
    ) -> Result<(), Close> {
        match fetched {
            Ok(Ok(envelopes)) => {
                self.outbox.on_fetched(envelopes);
                Ok(())
            }
            Ok(Err(error)) => Err(Close::Store(error.to_string())),
            Err(error) => Err(Close::Store(error.to_string())),
        }
    }

    /// A packet arrived: keep-alive and presence both count it.
    fn touch(&mut self) {
        self.last_seen = Instant::now();
        self.presence.seen();
    }

    /// Reads the retained presence of the device's user (its friends'
    /// states) for a presence subscription just made or resumed.
    fn read_retained_presence(&mut self) {
        self.outbox.begin_presence_snapshot();
        let presence = self.shared.presence.clone();
        let user = self.user.clone();
        self.retained = Some(tokio::task::spawn_blocking(move || {
            presence.retained_for(&user)
        }));
    }

    fn read_retained_presence_if_subscribed(&mut self) {
        if self
            .subscriptions
            .iter()
            .any(|(filter, _)| is_presence_filter(filter))
        {
            self.read_retained_presence();
        }
    }

    fn on_retained_presence(&mut self, retained: Result<Retained, tokio::task::JoinError>) {
        match retained {
            Ok(Ok(updates)) => self.outbox.on_presence_snapshot(updates),
            Ok(Err(error)) => tracing::error!(%error, "cannot read the retained presence"),
            Err(error) => tracing::error!(%error, "retained presence task failed"),
        }
    }

    fn schedule_cursor_flush(&mut self) {
        if self.durable.is_some() && !self.cursor_flush_pending {
            self.cursor_flush_pending = true;
            self.cursor_timer
                .as_mut()
                .reset(Instant::now() + CURSOR_FLUSH);
        }
    }

    /// Writes the acked cursor in the background (unsynced: losing it to a
    /// crash only means redelivery).
    fn flush_cursor(&mut self) {
        self.cursor_flush_pending = false;
        if self
            .cursor_write
            .as_ref()
            .is_some_and(|write| !write.is_finished())
        {
            // One write at a time, so they land in order: try again later.
            self.schedule_cursor_flush();
            return;
        }
        let acked = self.outbox.acked_upto();
        if acked <= self.persisted_cursor {
            return;
        }
        self.persisted_cursor = acked;
        let session = self.session.clone();
        self.cursor_write = Some(tokio::task::spawn_blocking(move || {
            if let Err(error) = session.set_cursor(acked) {
                tracing::warn!(%error, "cannot save the session cursor");
            }
        }));
    }

    /// Ends the connection: tells the device why (v5), saves the session
    /// (or, after a logout, revokes the token and drops the session), then
    /// leaves the router (when `self.link` is dropped, last).
    async fn finish(mut self, close: Close) {
        match &close {
            Close::PeerClosed
            | Close::Disconnect
            | Close::Shutdown
            | Close::TakenOver
            | Close::LoggedOut
            | Close::Revoked => tracing::info!(reason = %close, "disconnected"),
            _ => tracing::warn!(reason = %close, "connection closed"),
        }
        // After the device's own Logout its reply says it all: a DISCONNECT
        // behind it makes rumqttc drop the reply with a decoding error.
        if self.codec.level() == Level::V5 && !self.logged_out {
            if let Some(reason_code) = disconnect_reason(&close) {
                self.write(Packet::Disconnect(Disconnect { reason_code }, None));
            }
        }
        let _ = self.pump_and_flush().await;
        if self.logged_out {
            // The Logout's reply is out; give the device a moment to read it
            // and close first: some clients (rumqttc) drop what they read in
            // the same batch as the end of the stream.
            self.io.drain(LOGOUT_LINGER).await;
        }
        self.io.close().await;
        if let Some(write) = self.cursor_write.take() {
            let _ = write.await;
        }
        self.presence.leave(departure(&close));
        // Save before leaving the router: a successor waits for this link
        // to be dropped (with `self`, after this function) before it reads
        // the session.
        if matches!(close, Close::LoggedOut) {
            self.sign_out().await;
        } else if let Some(expiry) = self.durable {
            if let Err(error) = self.session_snapshot(expiry, now_ms()).save().await {
                tracing::error!(%error, "cannot save the session at disconnect");
            }
        }
        m::connection_closed();
    }

    /// A logout's effect that this connection owns: its durable session
    /// dropped (the token was revoked before the Logout was answered, or by
    /// `POST /v1/logout`).
    async fn sign_out(&mut self) {
        let session = self.session.clone();
        let deleted = tokio::task::spawn_blocking(move || session.delete()).await;
        if !matches!(deleted, Ok(Ok(_))) {
            tracing::error!("cannot drop the session at logout");
        }
    }
}

/// A durable session's state, taken off the connection to be saved.
struct SessionSnapshot {
    session: Arc<SessionLease>,
    subscriptions: Vec<(String, u8)>,
    acked: u64,
    expiry_secs: u32,
    disconnected_ms: i64,
}

impl SessionSnapshot {
    /// Saves it, unless a newer connection owns the record by now.
    async fn save(self) -> Result<(), String> {
        tokio::task::spawn_blocking(move || {
            self.session.save(
                self.subscriptions,
                self.acked,
                self.expiry_secs,
                self.disconnected_ms,
            )
        })
        .await
        .map_err(|error| error.to_string())?
        .map(|_| ())
        .map_err(|error| error.to_string())
    }
}

/// Whether a subscription filter is one of the presence topics (the ACL
/// admits only `presence/{subject or +}/{own user}`).
pub(super) fn is_presence_filter(filter: &str) -> bool {
    filter.starts_with("presence/")
}

/// How the device left, for presence: at once when it said so (DISCONNECT,
/// Logout) or was told to go for its credentials; after the grace period
/// when the connection just ended.
fn departure(close: &Close) -> Departure {
    match close {
        Close::Disconnect | Close::LoggedOut | Close::Revoked => Departure::Graceful,
        _ => Departure::Dropped,
    }
}

fn disconnect_reason(close: &Close) -> Option<DisconnectReasonCode> {
    match close {
        Close::Shutdown => Some(DisconnectReasonCode::ServerShuttingDown),
        Close::TakenOver => Some(DisconnectReasonCode::SessionTakenOver),
        // Not NormalDisconnection: rumqttd writes it with no body, which
        // rumqttc 0.25 cannot read.
        Close::LoggedOut => Some(DisconnectReasonCode::AdministrativeAction),
        Close::Revoked => Some(DisconnectReasonCode::NotAuthorized),
        Close::KeepAliveTimeout => Some(DisconnectReasonCode::KeepAliveTimeout),
        Close::Malformed(_) => Some(DisconnectReasonCode::MalformedPacket),
        Close::Protocol(_) => Some(DisconnectReasonCode::ProtocolError),
        Close::Store(_) => Some(DisconnectReasonCode::UnspecifiedError),
        Close::PeerClosed | Close::Disconnect | Close::Io(_) => None,
    }
}

async fn open_session(
    shared: &Shared,
    user: &str,
    device: &str,
    conn_id: u64,
    request: SessionRequest,
) -> Result<(SessionStart, SessionLease), String> {
    let sessions = shared.sessions.clone();
    let (user, device) = (user.to_owned(), device.to_owned());
    tokio::task::spawn_blocking(move || sessions.open(&user, &device, conn_id, request, now_ms()))
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())
}

async fn wait_for<F: Future + Unpin>(future: Option<&mut F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

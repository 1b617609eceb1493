//! A connection's life around its packet loop: accept -> establish
//! (router, take-over wait, session, presence, CONNACK) and the end: why
//! it closed ([`Close`]), what the device is told, the Logout linger, the
//! session saved or (after a logout) dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use parley_chat_logic::ids::ClientId;
use parley_proto::topics;
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Connection;
use crate::chat::TypingLimit;
use crate::clock::now_ms;
use crate::metrics as m;
use crate::mqtt::admission::Connecting;
use crate::mqtt::codec::Level;
use crate::mqtt::connect::{self, Accepted, ConnectPacket, Deny, Refusal};
use crate::mqtt::limits::DeviceLimits;
use crate::mqtt::outbox::Outbox;
use crate::mqtt::session::{SessionLease, SessionStart};
use crate::mqtt::transport::Transport;
use crate::mqtt::Shared;
use crate::presence::{Departure, DevicePresence};
use crate::router::{DeviceLink, Eviction};

/// How long a connection stays open after answering its device's Logout,
/// unless the device closes first.
const LOGOUT_LINGER: Duration = Duration::from_millis(500);
/// How long a new connection waits for the one it replaces to finish.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// Serves one accepted connection until it ends.
///
/// The phases before and after the packet loop run as boxed futures: a
/// task's memory is its largest state, and it should be the loop's, which
/// every idle connection holds, not the connect or teardown state. So the
/// task keeps only the established connection's loop
/// ([`Connection::live`]) and two pointers: what CONNECT brought (the
/// packet, the read-ahead) is gone by then. Not an `async fn`: its
/// arguments would stay in the future for the connection's whole life
/// (~100 bytes); they move into the boxed connect phase at once instead.
///
/// `connecting` counts this connection towards `max_connecting_per_addr`
/// until its CONNECT is authenticated (or refused).
pub fn serve(
    io: Transport,
    peer: SocketAddr,
    connecting: Connecting,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send {
    let establishing = Box::pin(connect_and_establish(io, peer, connecting, shared));
    async move {
        if let Some((connection, span)) = establishing.await {
            connection.live(shutdown).instrument(span).await;
        }
    }
}

/// CONNECT, authentication and [`Connection::establish`], in the
/// connection's span (which it returns for the rest of its life).
async fn connect_and_establish(
    io: Transport,
    peer: SocketAddr,
    connecting: Connecting,
    shared: Arc<Shared>,
) -> Option<(Box<Connection>, tracing::Span)> {
    let (io, buf, packet, accepted) = connect::accept(io, peer, connecting, &shared).await?;
    let client = &accepted.client;
    let span = tracing::info_span!("conn", user = %client.user, device = %client.device, %peer);
    let established = Connection::establish(io, buf, packet, accepted, shared, peer);
    let connection = established.instrument(span.clone()).await?;
    Some((Box::new(connection), span))
}

/// Why a connection ended.
#[derive(Debug)]
pub(super) enum Close {
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

impl Close {
    /// How a connection the router told to go ends.
    pub(super) fn evicted(why: Eviction) -> Close {
        match why {
            Eviction::LoggedOut => Close::LoggedOut,
            Eviction::CredentialsRevoked => Close::Revoked,
            Eviction::TakenOver => Close::TakenOver,
        }
    }
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

/// What establishing claimed before its CONNACK: the device's place in the
/// router and its session record.
struct Claimed {
    link: DeviceLink,
    start: SessionStart,
    session: SessionLease,
}

impl Connection {
    /// The established connection's life: its packet loop, then the end.
    async fn live(mut self: Box<Self>, shutdown: CancellationToken) {
        let close = self.run(&shutdown).await;
        Box::pin((*self).finish(close)).await;
    }

    /// Registers the device, opens its session and sends the CONNACK.
    pub(super) async fn establish(
        mut io: Transport,
        rbuf: BytesMut,
        packet: ConnectPacket,
        accepted: Accepted,
        shared: Arc<Shared>,
        peer: SocketAddr,
    ) -> Option<Connection> {
        let client = &accepted.client;
        let claimed = match claim(&shared, client, &packet).await {
            Ok(claimed) => claimed,
            Err(refusal) => {
                connect::refuse(io, peer, Some(&client.to_string()), refusal).await;
                return None;
            }
        };
        let start = &claimed.start;
        let presence = send_connack(&mut io, &packet, &shared, client, start.present).await?;
        m::connection_opened();
        tracing::info!(
            session_present = start.present,
            durable = start.durable.is_some(),
            cursor = start.cursor,
            "connected"
        );
        let mut connection =
            Connection::new(io, rbuf, &packet, accepted, shared, claimed, presence);
        connection.apply_subscriptions();
        // A resumed session's presence subscriptions get the current state,
        // as if they were made again: changes while away were not queued.
        connection.read_retained_presence_if_subscribed();
        connection.touch();
        Some(connection)
    }

    /// The connection's state once its CONNACK is out.
    fn new(
        io: Transport,
        rbuf: BytesMut,
        packet: &ConnectPacket,
        accepted: Accepted,
        shared: Arc<Shared>,
        claimed: Claimed,
        presence: DevicePresence,
    ) -> Connection {
        let Accepted { client, token } = accepted;
        let Claimed {
            link,
            start,
            session,
        } = claimed;
        let window = connect::window(packet, usize::from(shared.config.inflight_window));
        let mut outbox = Outbox::new(window, start.cursor);
        outbox.observe_head(start.inbox_head);
        let limits = DeviceLimits::new(&shared.config);
        Connection {
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
            token: token.map(Box::new),
            limits,
            typing: TypingLimit::default(),
            logged_out: false,
            requests: Default::default(),
            fetch: None,
            retained: None,
            keep_alive: keep_alive_of(packet),
            last_seen: Instant::now(),
            cursor_flush_due: None,
            cursor_write: None,
            persisted_cursor: start.cursor,
        }
    }

    /// Ends the connection: tells the device why (v5), saves the session
    /// (or, after a logout, revokes the token and drops the session), then
    /// leaves the router (when `self.link` is dropped, last).
    pub(super) async fn finish(mut self, close: Close) {
        match &close {
            Close::PeerClosed
            | Close::Disconnect
            | Close::Shutdown
            | Close::TakenOver
            | Close::LoggedOut
            | Close::Revoked => tracing::info!(reason = %close, "disconnected"),
            _ => tracing::warn!(reason = %close, "connection closed"),
        }
        // Offline at once when it should be, not after a slow hang-up.
        self.presence.leave(departure(&close));
        self.hang_up(&close).await;
        if let Some(write) = self.cursor_write.take() {
            let _ = write.await;
        }
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

    /// Tells the device why it is closed (v5), writes out what is left and
    /// closes the transport.
    async fn hang_up(&mut self, close: &Close) {
        // After the device's own Logout its reply says it all: a DISCONNECT
        // behind it makes rumqttc drop the reply with a decoding error.
        if self.codec.level() == Level::V5 && !self.logged_out {
            if let Some(reason_code) = disconnect_reason(close) {
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

    pub(super) fn session_snapshot(
        &self,
        expiry_secs: u32,
        disconnected_ms: i64,
    ) -> SessionSnapshot {
        SessionSnapshot {
            session: self.session.clone(),
            subscriptions: self.subscriptions.clone(),
            acked: self.outbox.acked_upto(),
            expiry_secs,
            disconnected_ms,
        }
    }
}

/// A durable session's state, taken off the connection to be saved.
pub(super) struct SessionSnapshot {
    session: Arc<SessionLease>,
    subscriptions: Vec<(String, u8)>,
    acked: u64,
    expiry_secs: u32,
    disconnected_ms: i64,
}

impl SessionSnapshot {
    /// Saves it, unless a newer connection owns the record by now.
    pub(super) async fn save(self) -> Result<(), String> {
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

/// Writes the CONNACK with the device already online; `None` when it could
/// not be written.
async fn send_connack(
    io: &mut Transport,
    packet: &ConnectPacket,
    shared: &Shared,
    client: &ClientId,
    session_present: bool,
) -> Option<DevicePresence> {
    let mut wbuf = BytesMut::new();
    let connack = connect::connack(
        packet.codec,
        session_present,
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
    Some(presence)
}

/// Waits for the connection this one replaces, then opens the device's
/// session for this connection.
/// The device's place in the router, then its session record (after the
/// connection it replaces, if any, has saved its own). Registered first:
/// envelopes committed from then on reach the live queue, and the session
/// reads everything before them. The link leaves the router when dropped,
/// so a refusal here leaves nothing behind.
async fn claim(
    shared: &Shared,
    client: &ClientId,
    packet: &ConnectPacket,
) -> Result<Claimed, Refusal> {
    let max_devices = shared.config.max_devices_per_user;
    let registered = shared
        .router
        .register(&client.user, &client.device, max_devices);
    let Ok(mut link) = registered else {
        return Err(Refusal::Connack(
            packet.codec,
            Deny::Quota,
            "max_devices_per_user",
        ));
    };
    match open_session(shared, client, &mut link, packet).await {
        Ok((start, session)) => Ok(Claimed {
            link,
            start,
            session,
        }),
        Err(error) => {
            tracing::error!(%error, "cannot open the session");
            let refusal = Refusal::Connack(packet.codec, Deny::Unavailable, "session_unavailable");
            Err(refusal)
        }
    }
}

async fn open_session(
    shared: &Shared,
    client: &ClientId,
    link: &mut DeviceLink,
    packet: &ConnectPacket,
) -> Result<(SessionStart, SessionLease), String> {
    if let Some(predecessor) = link.predecessor.take() {
        // the connection we replace saves its session first
        let _ = tokio::time::timeout(TAKEOVER_WAIT, predecessor.wait()).await;
    }
    let request = connect::session_request(packet);
    let sessions = shared.sessions.clone();
    let (user, device, conn_id) = (client.user.clone(), client.device.clone(), link.conn_id);
    tokio::task::spawn_blocking(move || sessions.open(&user, &device, conn_id, request, now_ms()))
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())
}

/// How long the device may stay silent: one and a half times the keep-alive
/// it asked for (MQTT 3.1.2.10), or forever when it asked for none.
fn keep_alive_of(packet: &ConnectPacket) -> Option<Duration> {
    let secs = packet.connect.keep_alive;
    (secs > 0).then(|| Duration::from_millis(u64::from(secs) * 1500))
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

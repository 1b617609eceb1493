//! The first packet: CONNECT, within the connect timeout and at most
//! [`MAX_CONNECT_SIZE`] bytes, authenticated ([`crate::auth`]), answered
//! with a CONNACK; or the connection refused, logged and counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use parley_chat_logic::ids::ClientId;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, Connect, ConnectProperties, ConnectReturnCode, Login, Packet,
};

use super::admission::Connecting;
use super::codec::{read_connect_level, Codec, FrameError, Level};
use super::session::{SessionRequest, NEVER};
use super::transport::Transport;
use super::Shared;
use crate::accounts::tokens::TokenDigest;
use crate::auth::Verdict;
use crate::metrics as m;

/// The largest CONNECT accepted, whatever `max_packet_size` says: a CONNECT
/// needs a few hundred bytes (ids, a token, a will), and a connection that
/// has not authenticated must not make the broker buffer a megabyte.
pub const MAX_CONNECT_SIZE: usize = 16 * 1024;
/// How long a refusing CONNACK may take to write.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who connected, once the CONNECT was accepted.
#[derive(Debug)]
pub struct Accepted {
    pub client: ClientId,
    /// The token it connected with, if any (a Logout revokes it).
    pub token: Option<TokenDigest>,
}

/// A CONNECT as read off the wire.
pub struct ConnectPacket {
    pub codec: Codec,
    pub connect: Connect,
    pub properties: Option<ConnectProperties>,
    pub login: Option<Login>,
}

/// Why no session was established.
#[derive(Debug)]
pub enum Refusal {
    /// Nothing usable arrived (timeout, closed, garbage): just close.
    Silent(String),
    /// Answer with a refusing CONNACK, then close: the codec of the
    /// CONNECT, the kind of refusal, and the reason (for logs and metrics).
    Connack(Codec, Deny, &'static str),
}

/// The kinds of refusing CONNACK, each with its code in 3.1.1 and in 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deny {
    /// Bad client id or credentials (3.1.1 5, v5 0x87).
    NotAuthorized,
    /// The broker cannot take it now (3.1.1 3, v5 0x89 server busy).
    Busy,
    /// A per-account limit (3.1.1 3, v5 0x97 quota exceeded).
    Quota,
    /// The store failed (3.1.1 3, v5 0x88 server unavailable).
    Unavailable,
}

impl Deny {
    /// The CONNACK code for `level`: 3.1.1 has only codes 1 to 5.
    pub fn code(self, level: Level) -> ConnectReturnCode {
        match (level, self) {
            (_, Deny::NotAuthorized) => ConnectReturnCode::NotAuthorized,
            (Level::V4, _) => ConnectReturnCode::ServiceUnavailable,
            (Level::V5, Deny::Busy) => ConnectReturnCode::ServerBusy,
            (Level::V5, Deny::Quota) => ConnectReturnCode::QuotaExceeded,
            (Level::V5, Deny::Unavailable) => ConnectReturnCode::ServerUnavailable,
        }
    }
}

/// Reads and authenticates the CONNECT; on any refusal the connection is
/// answered (when the CONNECT was readable), logged, counted and closed.
///
/// `connecting` (this connection's place in the per-address count of
/// unauthenticated connections) is released once the verdict is in.
pub async fn accept(
    mut io: Transport,
    peer: SocketAddr,
    connecting: Connecting,
    shared: &Arc<Shared>,
) -> Option<(Transport, BytesMut, ConnectPacket, Accepted)> {
    let mut buf = BytesMut::new();
    let timeout = shared.config.connect_timeout();
    let max_packet_size = shared.config.max_packet_size;
    let packet = match read_connect(&mut io, &mut buf, timeout, max_packet_size).await {
        Ok(packet) => packet,
        Err(refusal) => {
            refuse(io, peer, None, refusal).await;
            return None;
        }
    };
    let verdict = authenticate(shared, peer, &packet).await;
    drop(connecting);
    match verdict {
        Ok(accepted) => Some((io, buf, packet, accepted)),
        Err(refusal) => {
            let client = packet.connect.client_id.clone();
            refuse(io, peer, Some(&client), refusal).await;
            None
        }
    }
}

/// Answers a refusal (a CONNACK when there is one to send), logs it with
/// who and why, counts it, and closes.
pub async fn refuse(
    mut io: Transport,
    peer: SocketAddr,
    client_id: Option<&str>,
    refusal: Refusal,
) {
    match refusal {
        Refusal::Silent(why) => {
            tracing::info!(%peer, %why, "connection dropped before CONNECT");
            m::refused("bad_connect");
        }
        Refusal::Connack(codec, deny, why) => {
            let client_id = client_id.unwrap_or("");
            // Debug-quoted: a client id is the client's text, not a log line.
            tracing::warn!(%peer, ?client_id, reason = why, ?deny, "connect refused");
            m::connect_refused(why);
            let mut out = BytesMut::new();
            if codec
                .write(refusal_connack(deny.code(codec.level())), &mut out)
                .is_ok()
            {
                let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, io.write_all(&out)).await;
            }
        }
    }
    io.close().await;
}

/// Reads the CONNECT (at most [`MAX_CONNECT_SIZE`] bytes), waiting at most
/// `timeout`; the codec it returns takes packets of up to `max_packet_size`.
pub async fn read_connect(
    io: &mut Transport,
    buf: &mut BytesMut,
    timeout: Duration,
    max_packet_size: usize,
) -> Result<ConnectPacket, Refusal> {
    match tokio::time::timeout(timeout, read_connect_packet(io, buf, max_packet_size)).await {
        Ok(result) => result,
        Err(_) => Err(Refusal::Silent(
            "no CONNECT within the connect timeout".into(),
        )),
    }
}

async fn read_connect_packet(
    io: &mut Transport,
    buf: &mut BytesMut,
    max_packet_size: usize,
) -> Result<ConnectPacket, Refusal> {
    loop {
        match read_connect_level(buf) {
            Err(error) => return Err(Refusal::Silent(format!("bad CONNECT: {error}"))),
            Ok(Some(level)) => match Codec::new(level, MAX_CONNECT_SIZE).read(buf) {
                Ok(Packet::Connect(connect, properties, _will, _will_props, login)) => {
                    return Ok(ConnectPacket {
                        codec: Codec::new(level, max_packet_size),
                        connect,
                        properties,
                        login,
                    })
                }
                Ok(_) => return Err(Refusal::Silent("first packet is not CONNECT".into())),
                Err(FrameError::Malformed(error)) => {
                    return Err(Refusal::Silent(format!("bad CONNECT: {error}")))
                }
                Err(FrameError::Incomplete) => {}
            },
            Ok(None) => {}
        }
        match io.read_into(buf).await {
            Ok(0) => return Err(Refusal::Silent("closed before CONNECT".into())),
            Ok(_) => {}
            Err(error) => return Err(Refusal::Silent(format!("read failed: {error}"))),
        }
    }
}

/// Checks the client id and credentials; returns who connected.
async fn authenticate(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    packet: &ConnectPacket,
) -> Result<Accepted, Refusal> {
    let refuse = |deny, why| Refusal::Connack(packet.codec, deny, why);
    let Some(login) = &packet.login else {
        return Err(refuse(Deny::NotAuthorized, "no_username"));
    };
    let Some(client) = ClientId::parse(&packet.connect.client_id, &login.username) else {
        return Err(refuse(Deny::NotAuthorized, "client_id_not_username_device"));
    };
    match shared
        .auth
        .connect(&client, peer.ip(), &login.password)
        .await
    {
        Ok(Verdict::Accepted { token }) => Ok(Accepted { client, token }),
        Ok(Verdict::Refused(why)) => Err(refuse(Deny::NotAuthorized, why.as_str())),
        Err(crate::BrokerError::Busy(_)) => Err(refuse(Deny::Busy, "auth_queue_full")),
        Err(error) => {
            tracing::error!(%error, "authentication failed on the store");
            Err(refuse(Deny::Unavailable, "store_unavailable"))
        }
    }
}

/// Durability asked for by the CONNECT.
pub fn session_request(packet: &ConnectPacket) -> SessionRequest {
    match packet.codec.level() {
        super::codec::Level::V4 => SessionRequest {
            durable: (!packet.connect.clean_session).then_some(NEVER),
            clean_start: packet.connect.clean_session,
        },
        super::codec::Level::V5 => {
            let expiry = packet
                .properties
                .as_ref()
                .and_then(|p| p.session_expiry_interval)
                .unwrap_or(0);
            SessionRequest {
                durable: (expiry > 0).then_some(expiry),
                clean_start: packet.connect.clean_session,
            }
        }
    }
}

/// The in-flight window: the client's receive maximum, capped by config.
pub fn window(packet: &ConnectPacket, configured: usize) -> usize {
    packet
        .properties
        .as_ref()
        .and_then(|p| p.receive_maximum)
        .map_or(configured, |max| usize::from(max).min(configured))
        .max(1)
}

/// The CONNACK for an accepted connection.
pub fn connack(
    codec: Codec,
    session_present: bool,
    max_packet_size: usize,
    receive_max: u16,
) -> Packet {
    let properties = match codec.level() {
        super::codec::Level::V4 => None,
        super::codec::Level::V5 => Some(ConnAckProperties {
            receive_max: Some(receive_max),
            max_qos: Some(1),
            retain_available: Some(0),
            max_packet_size: Some(max_packet_size as u32),
            wildcard_subscription_available: Some(1),
            subscription_identifiers_available: Some(0),
            shared_subscription_available: Some(0),
            topic_alias_max: Some(0),
            ..ConnAckProperties::default()
        }),
    };
    Packet::ConnAck(
        ConnAck {
            session_present,
            code: ConnectReturnCode::Success,
        },
        properties,
    )
}

/// A refusing CONNACK.
fn refusal_connack(code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_a_code_its_level_can_encode() {
        for deny in [
            Deny::NotAuthorized,
            Deny::Busy,
            Deny::Quota,
            Deny::Unavailable,
        ] {
            for level in [Level::V4, Level::V5] {
                let codec = Codec::new(level, 1024);
                let mut out = BytesMut::new();
                codec
                    .write(refusal_connack(deny.code(level)), &mut out)
                    .unwrap_or_else(|e| panic!("{deny:?} on {level:?}: {e:?}"));
            }
        }
        assert_eq!(
            Deny::Quota.code(Level::V5),
            ConnectReturnCode::QuotaExceeded
        );
        assert_eq!(
            Deny::Quota.code(Level::V4),
            ConnectReturnCode::ServiceUnavailable
        );
    }
}

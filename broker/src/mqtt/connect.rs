//! The first packet: CONNECT, within the connect timeout, authenticated
//! against the store, answered with a CONNACK.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use parley_chat_logic::ids::ClientId;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, Connect, ConnectProperties, ConnectReturnCode, Login, Packet,
};

use super::codec::{read_connect_level, Codec, FrameError};
use super::session::{SessionRequest, NEVER};
use super::transport::Transport;
use super::Shared;

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
    /// Answer with this CONNACK code, then close.
    Connack(Codec, ConnectReturnCode, String),
}

/// Reads the CONNECT, waiting at most `timeout`.
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
            Ok(Some(level)) => {
                let codec = Codec::new(level, max_packet_size);
                match codec.read(buf) {
                    Ok(Packet::Connect(connect, properties, _will, _will_props, login)) => {
                        return Ok(ConnectPacket {
                            codec,
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
                }
            }
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
pub async fn authenticate(
    shared: &Arc<Shared>,
    packet: &ConnectPacket,
) -> Result<ClientId, Refusal> {
    let refuse = |why: &str| {
        Refusal::Connack(
            packet.codec,
            ConnectReturnCode::NotAuthorized,
            why.to_owned(),
        )
    };
    let Some(login) = &packet.login else {
        return Err(refuse("no username"));
    };
    let Some(client) = ClientId::parse(&packet.connect.client_id, &login.username) else {
        return Err(refuse("client id is not {username}:{device}"));
    };
    if !shared.config.allow_password_login {
        return Err(refuse("password login is disabled"));
    }
    match shared.auth.verify(&login.username, &login.password).await {
        Ok(true) => Ok(client),
        Ok(false) => Err(refuse("bad username or password")),
        Err(error) => {
            tracing::error!(%error, "authentication failed on the store");
            Err(Refusal::Connack(
                packet.codec,
                ConnectReturnCode::ServiceUnavailable,
                "store unavailable".into(),
            ))
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
pub fn refusal(code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        None,
    )
}

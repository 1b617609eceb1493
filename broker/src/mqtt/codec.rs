//! MQTT framing on rumqttd's codecs (`rumqttd::protocol::{V4, V5}`).
//!
//! The protocol level is only known from the CONNECT packet, so a connection
//! starts with [`read_connect_level`] and then keeps one [`Codec`] for its
//! life. rumqttd 0.20 keeps `Publish::{qos, pkid, dup}` crate-private; the
//! two helpers at the bottom reach them through its public
//! `serialize`/`deserialize` pair instead of re-parsing packets by hand.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{self, Packet, Protocol, Publish, QoS};

/// MQTT protocol level 4 (3.1.1) or 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    V4,
    V5,
}

/// A connection's packet codec, fixed once the CONNECT has been read.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    level: Level,
    max_packet_size: usize,
}

/// Why a packet could not be framed.
#[derive(Debug)]
pub enum FrameError {
    /// Not enough bytes yet: read more from the socket.
    Incomplete,
    /// The peer sent something that is not valid MQTT (or too large).
    Malformed(protocol::Error),
}

impl Codec {
    pub fn new(level: Level, max_packet_size: usize) -> Self {
        Codec {
            level,
            max_packet_size,
        }
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// Takes one packet off the front of `buf`, if a whole one is there.
    /// `Incomplete` leaves `buf` as it was; anything else consumed a frame.
    pub fn read(&self, buf: &mut BytesMut) -> Result<Packet, FrameError> {
        if let Some(kind) = self.unreadable_kind(buf) {
            return Err(FrameError::Malformed(protocol::Error::InvalidPacketType(
                kind,
            )));
        }
        let available = buf.len();
        let result = match self.level {
            Level::V4 => V4.read_mut(buf, self.max_packet_size),
            Level::V5 => V5.read_mut(buf, self.max_packet_size),
        };
        result.map_err(|error| match error {
            protocol::Error::InsufficientBytes(_) if buf.len() == available => {
                FrameError::Incomplete
            }
            // rumqttd also says InsufficientBytes for a field cut short inside
            // a whole frame (a V5 property length), after consuming the frame.
            protocol::Error::InsufficientBytes(_) => {
                FrameError::Malformed(protocol::Error::MalformedPacket)
            }
            other => FrameError::Malformed(other),
        })
    }

    /// Packet types rumqttd 0.20's `V5::read_mut` has no arm for: a CONNACK
    /// or UNSUBACK with a body reaches its `unreachable!()`. Only a server
    /// sends them, so from a client they are malformed, whatever follows.
    fn unreadable_kind(&self, buf: &[u8]) -> Option<u8> {
        const CONNACK: u8 = 2;
        const UNSUBACK: u8 = 11;
        let kind = buf.first()? >> 4;
        (self.level == Level::V5 && (kind == CONNACK || kind == UNSUBACK)).then_some(kind)
    }

    /// Appends `packet` to `buf`.
    pub fn write(&self, packet: Packet, buf: &mut BytesMut) -> Result<usize, protocol::Error> {
        match self.level {
            Level::V4 => V4.write(packet, buf),
            Level::V5 => V5.write(packet, buf),
        }
    }
}

/// Peeks at the protocol level of the CONNECT at the front of `buf` without
/// consuming it. `Ok(None)` means more bytes are needed.
pub fn read_connect_level(buf: &[u8]) -> Result<Option<Level>, protocol::Error> {
    let Some((&first, rest)) = buf.split_first() else {
        return Ok(None);
    };
    if first >> 4 != 1 {
        return Err(protocol::Error::InvalidPacketType(first >> 4));
    }
    let Some(header_len) = remaining_length_bytes(rest)? else {
        return Ok(None);
    };
    // variable header: protocol name (2-byte length + "MQTT"), then the level
    let level_at = 1 + header_len + 2 + 4;
    let Some(&level) = buf.get(level_at) else {
        return Ok(None);
    };
    match level {
        4 => Ok(Some(Level::V4)),
        5 => Ok(Some(Level::V5)),
        other => Err(protocol::Error::InvalidProtocolLevel(other)),
    }
}

/// Number of bytes the remaining-length varint takes, once it is complete.
fn remaining_length_bytes(bytes: &[u8]) -> Result<Option<usize>, protocol::Error> {
    for (index, byte) in bytes.iter().take(4).enumerate() {
        if byte & 0x80 == 0 {
            return Ok(Some(index + 1));
        }
    }
    if bytes.len() >= 4 {
        return Err(protocol::Error::MalformedRemainingLength);
    }
    Ok(None)
}

/// QoS and packet id of a received PUBLISH.
pub fn publish_qos_pkid(publish: &Publish) -> (QoS, u16) {
    let mut header_only = publish.clone();
    header_only.payload = Bytes::new();
    header_only.topic = Bytes::new();
    let mut bytes = header_only.serialize();
    let flags = bytes.get_u8();
    let pkid = bytes.get_u16();
    let qos = protocol::qos((flags >> 1) & 0b11).unwrap_or(QoS::AtMostOnce);
    (qos, pkid)
}

/// Builds an outgoing PUBLISH with the given QoS and packet id.
pub fn outgoing_publish(topic: &str, payload: Bytes, qos: QoS, pkid: u16, retain: bool) -> Publish {
    let mut header = BytesMut::with_capacity(5 + topic.len());
    header.put_u8(0b0011_0000 | ((qos as u8) << 1) | u8::from(retain));
    header.put_u16(pkid);
    header.put_u16(topic.len() as u16);
    header.put_slice(topic.as_bytes());
    let mut publish = Publish::deserialize(header.freeze());
    publish.payload = payload;
    publish
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_bytes(level: u8) -> Vec<u8> {
        // CONNECT, remaining length 12, "MQTT", level, flags, keep-alive, empty client id
        vec![
            0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', level, 2, 0, 60, 0, 0,
        ]
    }

    #[test]
    fn connect_level_is_peeked_without_consuming() {
        assert_eq!(
            read_connect_level(&connect_bytes(4)).unwrap(),
            Some(Level::V4)
        );
        assert_eq!(
            read_connect_level(&connect_bytes(5)).unwrap(),
            Some(Level::V5)
        );
        assert!(read_connect_level(&connect_bytes(3)).is_err());
    }

    #[test]
    fn partial_connect_asks_for_more() {
        let bytes = connect_bytes(4);
        for cut in 0..9 {
            assert_eq!(
                read_connect_level(&bytes[..cut]).unwrap(),
                None,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn non_connect_first_packet_is_refused() {
        assert!(read_connect_level(&[0x30, 0]).is_err());
        assert!(read_connect_level(&[0x10, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn outgoing_publish_round_trips_through_both_codecs() {
        for level in [Level::V4, Level::V5] {
            let codec = Codec::new(level, 1 << 20);
            let publish = outgoing_publish(
                "inbox/alice",
                Bytes::from_static(b"hi"),
                QoS::AtLeastOnce,
                7,
                false,
            );
            let mut buf = BytesMut::new();
            codec
                .write(Packet::Publish(publish, None), &mut buf)
                .unwrap();
            let Packet::Publish(read, _) = codec.read(&mut buf).unwrap() else {
                panic!("not a publish");
            };
            assert_eq!(publish_qos_pkid(&read), (QoS::AtLeastOnce, 7));
            assert_eq!(&read.topic[..], b"inbox/alice");
            assert_eq!(&read.payload[..], b"hi");
            assert!(buf.is_empty());
        }
    }

    /// Regression (found by proptest, broker/tests/props): rumqttd 0.20's
    /// `V5::read_mut` panicked with `unreachable!()` on a CONNACK or UNSUBACK
    /// with a body; a client could crash its connection task with 3 bytes.
    #[test]
    fn v5_connack_and_unsuback_from_a_client_are_malformed_not_a_panic() {
        let codec = Codec::new(Level::V5, 1 << 20);
        for bytes in [[0x20u8, 0x01, 0x00], [0xb0, 0x01, 0x00], [0x20, 0x00, 0x00]] {
            let mut buf = BytesMut::from(&bytes[..]);
            let error = codec.read(&mut buf).map(|p| format!("{p:?}"));
            assert!(
                matches!(error, Err(FrameError::Malformed(_))),
                "{bytes:02x?}: {error:?}"
            );
        }
        // 3.1.1 reads them; the connection then refuses them as unexpected.
        let mut buf = BytesMut::from(&[0x20u8, 0x02, 0x00, 0x00][..]);
        assert!(matches!(
            Codec::new(Level::V4, 1 << 20).read(&mut buf),
            Ok(Packet::ConnAck(..))
        ));
    }

    /// Regression (found by proptest): a whole V5 frame whose property
    /// length is cut short was consumed but reported as `Incomplete`, so the
    /// packet was silently skipped instead of closing the connection.
    #[test]
    fn a_field_cut_short_inside_a_whole_frame_is_malformed_not_incomplete() {
        let codec = Codec::new(Level::V5, 1 << 20);
        let frames: [&[u8]; 2] = [
            &[0x30, 0x04, 0x00, 0x01, b't', 0x80], // PUBLISH "t", property length 0x80 then nothing
            &[0x82, 0x02, 0x00, 0x01],             // SUBSCRIBE pkid 1, no property length at all
        ];
        for frame in frames {
            let mut buf = BytesMut::from(frame);
            let result = codec.read(&mut buf).map(|p| format!("{p:?}"));
            assert!(
                matches!(result, Err(FrameError::Malformed(_))),
                "{frame:02x?}: {result:?}"
            );
        }
    }

    #[test]
    fn incomplete_packets_wait_and_garbage_is_malformed() {
        let codec = Codec::new(Level::V4, 1 << 20);
        let mut partial = BytesMut::from(&[0x30u8, 10, 0][..]);
        assert!(matches!(
            codec.read(&mut partial),
            Err(FrameError::Incomplete)
        ));
        let mut garbage = BytesMut::from(&[0xf0u8, 0][..]);
        assert!(matches!(
            codec.read(&mut garbage),
            Err(FrameError::Malformed(_))
        ));
    }
}

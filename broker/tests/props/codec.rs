//! The MQTT framing (`Codec::read`, `read_connect_level`) on hostile bytes:
//! random bytes, and valid packets (3.1.1 and 5) with random mutations.
//!
//! Properties, for both protocol levels:
//! - no panic, whatever the bytes;
//! - the read loop always ends: every `Ok` consumes at least one byte, and
//!   `Incomplete` consumes nothing (the connection appends more bytes and
//!   reads again from the same place);
//! - the result does not depend on how the bytes were split into socket
//!   reads (the same packets, then the same error or `Incomplete`);
//! - valid packets come back whole, consuming exactly their bytes;
//! - `read_connect_level` never panics and never changes its mind as more
//!   bytes arrive (every prefix says "need more" or the final answer).

use bytes::{Bytes, BytesMut};
use parley_broker::mqtt::codec::{outgoing_publish, read_connect_level, Codec, FrameError, Level};
use proptest::prelude::*;
use rumqttd::protocol::{
    self, Connect, ConnectProperties, Disconnect, DisconnectReasonCode, Filter, LastWill, Login,
    Packet, PingReq, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, PubRel,
    PubRelReason, PublishProperties, QoS, RetainForwardRule, Subscribe, SubscribeProperties,
    Unsubscribe,
};

const BIG: usize = 1 << 20;

/// How a read loop over one buffer ended.
#[derive(Debug, PartialEq)]
enum End {
    /// Everything was framed, or the rest is an incomplete packet.
    Incomplete,
    Malformed(protocol::Error),
}

/// Reads packets off `buf` until it is incomplete or malformed, checking
/// that each `Ok` consumed bytes and that `Incomplete` consumed none.
fn read_loop(codec: &Codec, buf: &mut BytesMut, packets: &mut Vec<Packet>) -> End {
    loop {
        let before = buf.clone();
        match codec.read(buf) {
            Ok(packet) => {
                assert!(
                    buf.len() < before.len(),
                    "a packet was read without consuming bytes: {packet:?}"
                );
                packets.push(packet);
            }
            Err(FrameError::Incomplete) => {
                assert_eq!(*buf, before, "Incomplete consumed bytes");
                return End::Incomplete;
            }
            Err(FrameError::Malformed(error)) => return End::Malformed(error),
        }
    }
}

/// All bytes at once.
fn read_whole(codec: &Codec, bytes: &[u8]) -> (Vec<Packet>, End) {
    let mut buf = BytesMut::from(bytes);
    let mut packets = Vec::new();
    let end = read_loop(codec, &mut buf, &mut packets);
    (packets, end)
}

/// The same bytes in chunks ending at `cuts`, as a socket would deliver them.
fn read_chunked(codec: &Codec, bytes: &[u8], cuts: &[usize]) -> (Vec<Packet>, End) {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.push(bytes.len());
    cuts.sort_unstable();
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let mut from = 0;
    for cut in cuts {
        buf.extend_from_slice(&bytes[from..cut]);
        from = cut;
        if let End::Malformed(error) = read_loop(codec, &mut buf, &mut packets) {
            return (packets, End::Malformed(error));
        }
    }
    (packets, End::Incomplete)
}

fn check_codec(level: Level, max: usize, bytes: &[u8], cuts: &[usize]) {
    let codec = Codec::new(level, max);
    let whole = read_whole(&codec, bytes);
    let chunked = read_chunked(&codec, bytes, cuts);
    assert_eq!(
        whole, chunked,
        "{level:?}: the result depends on how the bytes were split"
    );
}

fn check_connect_level(bytes: &[u8]) {
    let full = read_connect_level(bytes);
    for cut in 0..bytes.len() {
        let partial = read_connect_level(&bytes[..cut]);
        let consistent = match (&partial, &full) {
            (Ok(None), _) => true,
            (Ok(Some(a)), Ok(Some(b))) => a == b,
            (Err(a), Err(b)) => a == b,
            _ => false,
        };
        assert!(
            consistent,
            "prefix of {cut} bytes says {partial:?}, all {} bytes say {full:?}",
            bytes.len()
        );
    }
}

/// Random bytes, often starting like a real packet so the parsers go deep.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let first = prop_oneof![
        any::<u8>(),
        Just(0x10u8),  // CONNECT
        Just(0x20),    // CONNACK
        0x30u8..=0x3f, // PUBLISH with every flag
        Just(0x40),    // PUBACK
        Just(0x50),
        Just(0x62), // PUBREL
        Just(0x70),
        Just(0x82), // SUBSCRIBE
        Just(0x90),
        Just(0xa2), // UNSUBSCRIBE
        Just(0xb0), // UNSUBACK
        Just(0xc0), // PINGREQ
        Just(0xe0), // DISCONNECT
    ];
    let length = prop_oneof![
        Just(vec![]),
        (0u8..0x80).prop_map(|b| vec![b]),
        prop::collection::vec(any::<u8>(), 1..5)
    ];
    (first, length, prop::collection::vec(any::<u8>(), 0..300)).prop_map(|(first, length, rest)| {
        let mut bytes = vec![first];
        bytes.extend(length);
        bytes.extend(rest);
        bytes
    })
}

fn short_string() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z/+#:]{1,12}", "\\PC{0,8}"]
}

fn user_properties() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((short_string(), short_string()), 0..3)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn connect(level: Level) -> BoxedStrategy<Packet> {
    let will =
        prop::option::of((short_string(), short_string(), qos(), any::<bool>())).prop_map(|w| {
            w.map(|(topic, message, qos, retain)| LastWill {
                topic: Bytes::from(topic),
                message: Bytes::from(message),
                qos,
                retain,
            })
        });
    // An empty username makes rumqttd write a password flag alone (invalid).
    let login = prop::option::of(("[a-z]{1,8}", short_string()))
        .prop_map(|l| l.map(|(username, password)| Login { username, password }));
    let properties = prop::option::of((
        any::<Option<u32>>(),
        any::<Option<u16>>(),
        user_properties(),
    ))
    .prop_map(|p| {
        p.map(
            |(session_expiry_interval, receive_maximum, user_properties)| ConnectProperties {
                session_expiry_interval,
                receive_maximum,
                max_packet_size: None,
                topic_alias_max: None,
                request_response_info: None,
                request_problem_info: None,
                user_properties,
                authentication_method: None,
                authentication_data: None,
            },
        )
    });
    // 3.1.1 forbids an empty client id without clean session: keep it valid.
    (
        any::<u16>(),
        "[a-z0-9]{1,8}:[a-z0-9]{1,8}",
        any::<bool>(),
        will,
        login,
        properties,
    )
        .prop_map(
            move |(keep_alive, client_id, clean_session, will, login, properties)| {
                let connect = Connect {
                    keep_alive,
                    client_id,
                    clean_session,
                };
                let properties = if level == Level::V5 { properties } else { None };
                Packet::Connect(connect, properties, will, None, login)
            },
        )
        .boxed()
}

fn publish(level: Level) -> BoxedStrategy<Packet> {
    let properties =
        prop::option::of((any::<Option<u8>>(), any::<Option<u16>>(), user_properties())).prop_map(
            |p| {
                p.map(|(payload_format_indicator, topic_alias, user_properties)| {
                    PublishProperties {
                        payload_format_indicator,
                        message_expiry_interval: None,
                        topic_alias,
                        response_topic: None,
                        correlation_data: None,
                        user_properties,
                        subscription_identifiers: Vec::new(),
                        content_type: None,
                    }
                })
            },
        );
    let payload = prop::collection::vec(any::<u8>(), 0..64);
    (
        short_string(),
        payload,
        qos(),
        1u16..,
        any::<bool>(),
        properties,
    )
        .prop_map(move |(topic, payload, qos, pkid, retain, properties)| {
            let publish = outgoing_publish(&topic, Bytes::from(payload), qos, pkid, retain);
            Packet::Publish(publish, if level == Level::V5 { properties } else { None })
        })
        .boxed()
}

fn subscribe(level: Level) -> BoxedStrategy<Packet> {
    let filter = (short_string(), qos(), any::<bool>(), any::<bool>()).prop_map(
        |(path, qos, nolocal, preserve_retain)| Filter {
            path,
            qos,
            nolocal,
            preserve_retain,
            retain_forward_rule: RetainForwardRule::OnEverySubscribe,
        },
    );
    let properties = prop::option::of((prop::option::of(1usize..1000), user_properties()))
        .prop_map(|p| {
            p.map(|(id, user_properties)| SubscribeProperties {
                id,
                user_properties,
            })
        });
    (1u16.., prop::collection::vec(filter, 1..3), properties)
        .prop_map(move |(pkid, filters, properties)| {
            Packet::Subscribe(
                Subscribe { pkid, filters },
                if level == Level::V5 { properties } else { None },
            )
        })
        .boxed()
}

/// A packet a client may send, of the given level.
fn client_packet(level: Level) -> BoxedStrategy<Packet> {
    prop_oneof![
        connect(level),
        publish(level),
        subscribe(level),
        (1u16.., prop::collection::vec(short_string(), 1..3))
            .prop_map(|(pkid, filters)| Packet::Unsubscribe(Unsubscribe { pkid, filters }, None)),
        any::<u16>().prop_map(|pkid| Packet::PubAck(
            PubAck {
                pkid,
                reason: PubAckReason::Success
            },
            None
        )),
        any::<u16>().prop_map(|pkid| Packet::PubRec(
            PubRec {
                pkid,
                reason: PubRecReason::Success
            },
            None
        )),
        any::<u16>().prop_map(|pkid| Packet::PubRel(
            PubRel {
                pkid,
                reason: PubRelReason::Success
            },
            None
        )),
        any::<u16>().prop_map(|pkid| Packet::PubComp(
            PubComp {
                pkid,
                reason: PubCompReason::Success
            },
            None
        )),
        Just(Packet::PingReq(PingReq)),
        Just(Packet::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection
            },
            None
        )),
    ]
    .boxed()
}

/// One change to a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for mutation in mutations {
        if bytes.is_empty() {
            return;
        }
        let at = |i: usize| i % bytes.len();
        match *mutation {
            Mutation::Flip(i, x) => {
                let i = at(i);
                bytes[i] ^= x;
            }
            Mutation::Set(i, b) => {
                let i = at(i);
                bytes[i] = b;
            }
            Mutation::Insert(i, b) => {
                let i = i % (bytes.len() + 1);
                bytes.insert(i, b);
            }
            Mutation::Remove(i) => {
                let i = at(i);
                bytes.remove(i);
            }
            Mutation::Truncate(i) => {
                let i = at(i);
                bytes.truncate(i);
            }
        }
    }
}

/// Valid packets of one level, written by the codec itself.
fn encoded(level: Level) -> impl Strategy<Value = (Vec<Packet>, Vec<u8>)> {
    prop::collection::vec(client_packet(level), 1..4).prop_map(move |packets| {
        let codec = Codec::new(level, BIG);
        let mut bytes = Vec::new();
        for packet in &packets {
            // One buffer each: rumqttd's CONNECT writer patches its flags at
            // an absolute index, so it only works at the start of a buffer.
            let mut buf = BytesMut::new();
            codec
                .write(packet.clone(), &mut buf)
                .expect("the codec writes a valid packet");
            bytes.extend_from_slice(&buf);
        }
        (packets, bytes)
    })
}

fn level() -> impl Strategy<Value = Level> {
    prop_oneof![Just(Level::V4), Just(Level::V5)]
}

fn max_packet_size() -> impl Strategy<Value = usize> {
    prop_oneof![Just(BIG), 0usize..64]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::cases(2048)))]

    #[test]
    fn random_bytes_never_panic_nor_stall_the_read_loop(
        bytes in hostile_bytes(),
        cuts in prop::collection::vec(any::<usize>(), 0..4),
        max in max_packet_size(),
    ) {
        check_codec(Level::V4, max, &bytes, &cuts);
        check_codec(Level::V5, max, &bytes, &cuts);
        check_connect_level(&bytes);
    }

    #[test]
    fn mutated_valid_packets_never_panic_nor_stall_the_read_loop(
        level in level(),
        (_, mut bytes) in level().prop_flat_map(encoded),
        mutations in prop::collection::vec(mutation(), 1..4),
        cuts in prop::collection::vec(any::<usize>(), 0..4),
        max in max_packet_size(),
    ) {
        mutate(&mut bytes, &mutations);
        // A packet of one level read as the other is hostile input too.
        check_codec(level, max, &bytes, &cuts);
        check_codec(Level::V4, max, &bytes, &cuts);
        check_codec(Level::V5, max, &bytes, &cuts);
        check_connect_level(&bytes);
    }

    #[test]
    fn valid_packets_are_read_back_whole(
        (level, packets, bytes) in level().prop_flat_map(|level| encoded(level).prop_map(move |(p, b)| (level, p, b))),
        cuts in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        let codec = Codec::new(level, BIG);
        let (read, end) = read_chunked(&codec, &bytes, &cuts);
        prop_assert_eq!(end, End::Incomplete);
        prop_assert_eq!(read.len(), packets.len());
        for (read, written) in read.iter().zip(&packets) {
            // rumqttd reads a V5 packet without properties as `None` and one
            // with empty properties as `Some(default)`: compare the kind.
            prop_assert_eq!(std::mem::discriminant(read), std::mem::discriminant(written));
        }
        if let Some(Packet::Connect(..)) = packets.first() {
            prop_assert_eq!(read_connect_level(&bytes).ok().flatten(), Some(level));
        }
    }
}

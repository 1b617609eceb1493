//! bytes -> the broker's MQTT framing: `read_connect_level` (the peek at a
//! new connection's CONNECT) and the `Codec::read` loop of a connection,
//! for MQTT 3.1.1 and 5, with the broker's packet size limit and a tiny one.
//!
//! The codec is `broker/src/mqtt/codec.rs` itself, compiled in by path: it
//! depends only on `bytes` and `rumqttd`, so the fuzz build does not have to
//! build RocksDB (which the `parley-broker` crate pulls in) with sanitizers.
//!
//! Checks, besides "no panic": the loop ends (each packet consumes bytes,
//! `Incomplete` consumes none), and the PUBLISH helper the connection calls
//! on every publish works on whatever was read.

#![no_main]

#[allow(dead_code)]
#[path = "../../broker/src/mqtt/codec.rs"]
mod codec;

use bytes::BytesMut;
use codec::{Codec, FrameError, Level};
use libfuzzer_sys::fuzz_target;
use rumqttd::protocol::Packet;

/// The broker's default `max_packet_size`.
const BROKER_MAX: usize = 1_048_576;

fn read_loop(level: Level, max: usize, data: &[u8]) {
    let codec = Codec::new(level, max);
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match codec.read(&mut buf) {
            Ok(packet) => {
                assert!(buf.len() < before, "{level:?}: a packet consumed no bytes");
                if let Packet::Publish(publish, _) = &packet {
                    let _ = codec::publish_qos_pkid(publish);
                }
            }
            Err(FrameError::Incomplete) => {
                assert_eq!(buf.len(), before, "{level:?}: Incomplete consumed bytes");
                return;
            }
            Err(FrameError::Malformed(_)) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = codec::read_connect_level(data);
    for level in [Level::V4, Level::V5] {
        read_loop(level, BROKER_MAX, data);
        read_loop(level, 32, data);
    }
});

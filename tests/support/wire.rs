//! Request builders, reply checks and hand-made MQTT bytes.

use parley_proto::v1::{self, reply, request, Ack, ErrorCode, Reply};

/// `Request.body` for a `SendMessage`.
pub fn send(channel: &str, client_msg_id: &str, text: &str) -> request::Body {
    request::Body::Send(v1::SendMessage {
        channel: channel.to_string(),
        client_msg_id: client_msg_id.to_string(),
        text: text.to_string(),
    })
}

/// `Request.body` for a `CreateGroup`.
pub fn create_group(group_id: &str, name: &str, members: &[&str]) -> request::Body {
    request::Body::CreateGroup(v1::CreateGroup {
        group_id: group_id.to_string(),
        name: name.to_string(),
        members: members.iter().map(|m| m.to_string()).collect(),
    })
}

/// `Request.body` for a `History`.
pub fn history(channel: &str, before_seq: u64, limit: u32) -> request::Body {
    request::Body::History(v1::History {
        channel: channel.to_string(),
        before_seq,
        limit,
    })
}

/// The `Ack` of a reply, failing the test (with the reply) otherwise.
pub fn expect_ack(reply: &Reply) -> Ack {
    match &reply.body {
        Some(reply::Body::Ack(ack)) => ack.clone(),
        other => panic!(
            "expected an Ack, got {other:?} (request_id {:?})",
            reply.request_id
        ),
    }
}

/// Checks that a reply is an error with `code` and a non-empty message;
/// returns the message.
pub fn expect_error(reply: &Reply, code: ErrorCode) -> String {
    match &reply.body {
        Some(reply::Body::Error(error)) => {
            assert_eq!(
                ErrorCode::try_from(error.code),
                Ok(code),
                "wrong error code (message {:?}, request_id {:?})",
                error.message,
                reply.request_id
            );
            assert!(
                !error.message.trim().is_empty(),
                "error {code:?} without a human-readable message"
            );
            error.message.clone()
        }
        other => panic!(
            "expected Error {code:?}, got {other:?} (request_id {:?})",
            reply.request_id
        ),
    }
}

/// A hand-encoded MQTT 3.1.1 CONNECT with username and password.
pub fn connect_v4(
    client_id: &str,
    user: &str,
    password: &str,
    clean_session: bool,
    keep_alive: u16,
) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, "MQTT");
    body.push(4); // protocol level 3.1.1
    body.push(0x80 | 0x40 | if clean_session { 0x02 } else { 0 });
    body.extend_from_slice(&keep_alive.to_be_bytes());
    put_str(&mut body, client_id);
    put_str(&mut body, user);
    put_str(&mut body, password);
    let mut packet = vec![0x10];
    put_remaining_length(&mut packet, body.len());
    packet.extend(body);
    packet
}

/// A hand-encoded MQTT 3.1.1 PUBLISH at QoS 0.
pub fn publish_qos0(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, topic);
    body.extend_from_slice(payload);
    let mut packet = vec![0x30];
    put_remaining_length(&mut packet, body.len());
    packet.extend(body);
    packet
}

/// A hand-encoded PINGREQ.
pub const PINGREQ: [u8; 2] = [0xC0, 0x00];

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_remaining_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_bytes_follow_3_1_1() {
        let packet = connect_v4("a:b", "a", "p", true, 60);
        assert_eq!(packet[0], 0x10);
        assert_eq!(packet[1] as usize, packet.len() - 2);
        assert_eq!(&packet[2..8], b"\x00\x04MQTT");
        assert_eq!(packet[8], 4);
        assert_eq!(packet[9], 0xC2);
    }

    #[test]
    fn remaining_length_is_a_varint() {
        let mut out = Vec::new();
        put_remaining_length(&mut out, 321);
        assert_eq!(out, [0xC1, 0x02]);
    }
}

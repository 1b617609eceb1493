//! What a write job yields for its submitter ([`Committed`] or an error),
//! the encodings of an inbox envelope shared by planning, the engine and
//! typing, and the one mapping of a store failure to `INTERNAL`.
//!
//! A leaf: it uses nothing else of `chat`, so planning, the engine and the
//! read paths all import from here and never from each other.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use parley_chat_logic::ChatError;
use parley_proto::v1::{envelope, Ack, Envelope};
use prost::Message;

/// What a job's submitter gets back: what was committed, or the error to
/// reply with.
pub type JobResult = Result<Committed, ChatError>;

/// A committed job: its Ack, and every message it stored as
/// `(channel, seq)` (one per copy of a system message to several users).
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub ack: Ack,
    pub stored: Vec<(String, u64)>,
}

impl Committed {
    /// A job that stored no message (a receipt, a group or friend change).
    pub fn ack(ack: Ack) -> Committed {
        Committed {
            ack,
            stored: Vec::new(),
        }
    }

    /// A job that stored (or found, for a duplicate) the message its Ack names.
    pub fn stored(ack: Ack) -> Committed {
        Committed {
            stored: vec![(ack.channel.clone(), ack.seq)],
            ack,
        }
    }
}

/// A store failure, logged, as the `INTERNAL` error the request gets.
pub(super) fn internal(error: impl std::fmt::Display) -> ChatError {
    tracing::error!(%error, "store failure in the chat engine");
    ChatError::internal("storage failure")
}

/// Encodes an `Envelope` whose body was encoded once for all recipients:
/// protobuf lets the `inbox_seq` field and the body field be concatenated.
pub fn encode_envelope(inbox_seq: u64, body: &[u8]) -> Bytes {
    let head = Envelope {
        inbox_seq,
        body: None,
    };
    let mut buf = BytesMut::with_capacity(head.encoded_len() + body.len());
    head.encode(&mut buf).expect("a BytesMut grows as needed");
    buf.put_slice(body);
    buf.freeze()
}

/// Encodes just the body field of an `Envelope`.
pub(super) fn encode_body(body: envelope::Body) -> Arc<Bytes> {
    let envelope = Envelope {
        inbox_seq: 0,
        body: Some(body),
    };
    Arc::new(Bytes::from(envelope.encode_to_vec()))
}

//! Read receipts as pure decisions: a user's per-channel cursor only moves
//! forward, and READ implies DELIVERED.

use parley_proto::v1::ReceiptKind;

/// How far one user has got in one channel: the highest `seq` delivered to
/// one of their devices, and the highest they have read (`read <= delivered`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCursor {
    /// Highest `seq` marked DELIVERED (or READ).
    pub delivered: u64,
    /// Highest `seq` marked READ.
    pub read: u64,
}

impl ReadCursor {
    /// The cursor after marking `seq` as `kind`, or `None` when that changes
    /// nothing (a stale or repeated receipt: nothing is stored or sent).
    pub fn mark(self, kind: ReceiptKind, seq: u64) -> Option<ReadCursor> {
        let next = match kind {
            ReceiptKind::Delivered => ReadCursor {
                delivered: self.delivered.max(seq),
                ..self
            },
            ReceiptKind::Read => ReadCursor {
                delivered: self.delivered.max(seq),
                read: self.read.max(seq),
            },
            ReceiptKind::Unspecified => return None,
        };
        (next != self).then_some(next)
    }

    /// Messages after the READ cursor, with `last_seq` the channel's newest.
    pub fn unread(self, last_seq: u64) -> u64 {
        last_seq.saturating_sub(self.read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_only_move_forward_and_read_implies_delivered() {
        let start = ReadCursor::default();
        let delivered = start.mark(ReceiptKind::Delivered, 5).unwrap();
        assert_eq!(
            delivered,
            ReadCursor {
                delivered: 5,
                read: 0
            }
        );
        assert_eq!(delivered.mark(ReceiptKind::Delivered, 5), None, "repeated");
        assert_eq!(delivered.mark(ReceiptKind::Delivered, 3), None, "stale");
        let read = delivered.mark(ReceiptKind::Read, 7).unwrap();
        assert_eq!(
            read,
            ReadCursor {
                delivered: 7,
                read: 7
            }
        );
        assert_eq!(read.mark(ReceiptKind::Read, 6), None);
        assert_eq!(read.mark(ReceiptKind::Delivered, 7), None);
        let partly = ReadCursor {
            delivered: 9,
            read: 2,
        };
        assert_eq!(
            partly.mark(ReceiptKind::Read, 4),
            Some(ReadCursor {
                delivered: 9,
                read: 4
            }),
            "reading behind the delivered cursor moves read only"
        );
        assert_eq!(start.mark(ReceiptKind::Unspecified, 1), None);
    }

    #[test]
    fn unread_counts_messages_after_the_read_cursor() {
        let cursor = ReadCursor {
            delivered: 8,
            read: 5,
        };
        assert_eq!(cursor.unread(9), 4);
        assert_eq!(cursor.unread(5), 0);
        assert_eq!(cursor.unread(0), 0);
    }
}

//! The bench's message text: the due time first, so the receiver can time
//! the delivery, then a tag and padding up to the payload size.
//!
//! Format: `{due_us:020} {tag} xxxx...` (ASCII, so bytes = characters).

/// Digits of the timestamp at the start of every payload.
const STAMP_DIGITS: usize = 20;

/// A payload of `size` bytes (or just the stamp and tag if that is longer).
pub fn encode(due_us: u64, tag: &str, size: usize) -> String {
    let mut text = format!("{due_us:0STAMP_DIGITS$} {tag} ");
    if text.len() < size {
        text.extend(std::iter::repeat_n('x', size - text.len()));
    }
    text
}

/// The due time stamped at the start of a payload, if it is one of ours.
pub fn decode_due_us(payload: &[u8]) -> Option<u64> {
    let stamp = payload.get(..STAMP_DIGITS)?;
    if payload.get(STAMP_DIGITS) != Some(&b' ') || !stamp.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(stamp).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_size() {
        let text = encode(1_234_567, "p3:9", 100);
        assert_eq!(text.len(), 100);
        assert!(text.starts_with("00000000000001234567 p3:9 x"));
        assert_eq!(decode_due_us(text.as_bytes()), Some(1_234_567));
    }

    #[test]
    fn small_sizes_keep_the_stamp() {
        let text = encode(u64::MAX, "t", 1);
        assert_eq!(decode_due_us(text.as_bytes()), Some(u64::MAX));
        assert_eq!(text.len(), 20 + 1 + 1 + 1);
    }

    #[test]
    fn foreign_payloads_are_not_ours() {
        assert_eq!(decode_due_us(b"hello"), None);
        assert_eq!(decode_due_us(b"0000000000000000000a rest"), None);
        assert_eq!(decode_due_us(b"00000000000000000001xrest"), None);
    }
}

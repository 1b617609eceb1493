//! Topic names of the contract. Building them in one place keeps the broker
//! and the clients from drifting apart.

/// `req/{user}/{device}`: a device's requests to the broker.
pub fn request(user: &str, device: &str) -> String {
    format!("req/{user}/{device}")
}

/// `reply/{user}/{device}`: the broker's replies to one device.
pub fn reply(user: &str, device: &str) -> String {
    format!("reply/{user}/{device}")
}

/// `inbox/{user}`: every event delivered to a user, on all of its devices.
pub fn inbox(user: &str) -> String {
    format!("inbox/{user}")
}

/// `presence/{subject}/{observer}`: `subject`'s online state, for `observer`.
pub fn presence(subject: &str, observer: &str) -> String {
    format!("presence/{subject}/{observer}")
}

/// `hb/{user}/{device}`: a device's heartbeats (QoS 0, any payload).
pub fn heartbeat(user: &str, device: &str) -> String {
    format!("hb/{user}/{device}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_contract() {
        assert_eq!(request("alice", "phone"), "req/alice/phone");
        assert_eq!(reply("alice", "phone"), "reply/alice/phone");
        assert_eq!(inbox("alice"), "inbox/alice");
        assert_eq!(presence("bob", "alice"), "presence/bob/alice");
        assert_eq!(heartbeat("alice", "phone"), "hb/alice/phone");
    }
}

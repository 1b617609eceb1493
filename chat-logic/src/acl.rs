//! Who may use which MQTT topic.
//!
//! `user` is an account id: a user id, or `svc:{name}` for a service, whose
//! topics are `req/svc:{name}/{device}` and so on.
//!
//! A user may subscribe only to filters whose every possible match is one of
//! its own topics: `inbox/{user}`, `reply/{user}/{any level}` and
//! `presence/{any level}/{user}`. A device may publish only to its own
//! `req/{user}/{device}` and `hb/{user}/{device}`. Everything else is refused.

use crate::ids;

/// Longest topic name or filter MQTT allows, in bytes.
pub const MAX_TOPIC_BYTES: usize = 65_535;

/// What a device's PUBLISH is, by its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishTopic {
    /// `req/{user}/{device}`: a `Request` to decode and answer.
    Request,
    /// `hb/{user}/{device}`: a heartbeat (any payload), only refreshes presence.
    Heartbeat,
    /// Any other topic: drop the message and count it.
    Forbidden,
}

/// Classifies a PUBLISH from `device` of `user`. Only the device's own request
/// and heartbeat topics are open; other users, other devices, wildcards and
/// extra levels are [`PublishTopic::Forbidden`].
pub fn classify_publish(user: &str, device: &str, topic: &str) -> PublishTopic {
    if !ids::is_valid_account_id(user) || !ids::is_valid_id(device) {
        return PublishTopic::Forbidden;
    }
    let mut levels = topic.split('/');
    let (Some(kind), Some(owner), Some(dev), None) =
        (levels.next(), levels.next(), levels.next(), levels.next())
    else {
        return PublishTopic::Forbidden;
    };
    if owner != user || dev != device {
        return PublishTopic::Forbidden;
    }
    match kind {
        "req" => PublishTopic::Request,
        "hb" => PublishTopic::Heartbeat,
        _ => PublishTopic::Forbidden,
    }
}

/// True only when every topic `filter` can match belongs to `user`:
/// `inbox/{user}`, `reply/{user}/+` (or `/#`, or one device),
/// `presence/+/{user}` or one subject. Invalid filters, `#` anywhere else
/// (it could reach other users' topics), `$share/...`, `$SYS/...` and other
/// users' topics are refused.
pub fn may_subscribe(user: &str, filter: &str) -> bool {
    if !ids::is_valid_account_id(user) || !is_valid_filter(filter) {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    match levels.as_slice() {
        ["inbox", owner] => *owner == user,
        ["reply", owner, _device] => *owner == user,
        ["presence", subject, observer] => *observer == user && *subject != "#",
        _ => false,
    }
}

/// True when `filter` is a valid MQTT topic filter: not empty, at most
/// [`MAX_TOPIC_BYTES`], no NUL, `+` and `#` only as a whole level, `#` only last.
pub fn is_valid_filter(filter: &str) -> bool {
    if !is_valid_length(filter) {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !is_last) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// True when `topic` is a valid MQTT topic name: not empty, at most
/// [`MAX_TOPIC_BYTES`], no NUL and no wildcard.
pub fn is_valid_topic_name(topic: &str) -> bool {
    is_valid_length(topic) && !topic.contains(['+', '#'])
}

fn is_valid_length(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_TOPIC_BYTES && !s.contains('\0')
}

/// MQTT matching of a topic name against a filter. Wildcards at the first
/// level do not match topics starting with `$`; `a/#` also matches `a`.
/// Invalid filters or topics match nothing.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if !is_valid_filter(filter) || !is_valid_topic_name(topic) {
        return false;
    }
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for filter_level in filter.split('/') {
        if filter_level == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(level) if filter_level == "+" || filter_level == level => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests;

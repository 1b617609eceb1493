//! Durable MQTT sessions, kept in RocksDB.
//!
//! A session is durable when the device connects with clean session off
//! (3.1.1) or a session expiry interval above 0 (5). Its record holds the
//! subscriptions and the highest inbox_seq the device has PUBACKed; the
//! user's inbox itself is the session's queue, so nothing else is stored.

use parley_storage::{SessionRecord, StorageError, Store};

/// Expiry value meaning "never expires" (3.1.1 persistent sessions, v5 0xFFFFFFFF).
pub const NEVER: u32 = u32::MAX;

/// What the device asked for in its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRequest {
    /// Some(expiry seconds) for a durable session.
    pub durable: Option<u32>,
    /// Discard whatever session existed (3.1.1 clean session, v5 clean start).
    pub clean_start: bool,
}

/// The session a connection starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStart {
    /// CONNACK session present.
    pub present: bool,
    pub durable: Option<u32>,
    pub subscriptions: Vec<(String, u8)>,
    /// Where inbox delivery resumes (the last inbox_seq the device has).
    pub cursor: u64,
    /// The user's inbox head in the store right now.
    pub inbox_head: u64,
}

/// Loads, creates or discards the device's session (blocking: call it from
/// `spawn_blocking`).
pub fn open(
    store: &Store,
    user: &str,
    device: &str,
    request: SessionRequest,
    now_ms: i64,
) -> Result<SessionStart, StorageError> {
    let inbox_head = store.last_inbox_seq(user)?;
    let existing = match request.clean_start {
        true => None,
        false => store
            .session(user, device)?
            .filter(|record| !expired(record, now_ms)),
    };
    let Some(expiry) = request.durable else {
        if store.session(user, device)?.is_some() {
            store.delete_session(user, device)?;
        }
        return Ok(SessionStart {
            present: false,
            durable: None,
            subscriptions: Vec::new(),
            cursor: inbox_head,
            inbox_head,
        });
    };
    let (present, record) = match existing {
        Some(record) => (true, record),
        None => (false, fresh_record(inbox_head)),
    };
    let record = SessionRecord {
        expiry_secs: expiry,
        ..record
    };
    store.put_session(user, device, &record)?;
    Ok(SessionStart {
        present,
        durable: Some(expiry),
        subscriptions: record.subscriptions,
        cursor: record.acked_inbox_seq,
        inbox_head,
    })
}

/// A new session starts at the end of the inbox as it stands.
fn fresh_record(inbox_head: u64) -> SessionRecord {
    SessionRecord {
        subscriptions: Vec::new(),
        acked_inbox_seq: inbox_head,
        expiry_secs: NEVER,
        disconnected_ms: 0,
    }
}

fn expired(record: &SessionRecord, now_ms: i64) -> bool {
    if record.expiry_secs == NEVER || record.disconnected_ms == 0 {
        return false;
    }
    let deadline = record.disconnected_ms + i64::from(record.expiry_secs) * 1000;
    now_ms > deadline
}

/// Saves the session's subscriptions and cursor (blocking);
/// `disconnected_ms` is 0 while the device is connected.
pub fn save(
    store: &Store,
    user: &str,
    device: &str,
    subscriptions: Vec<(String, u8)>,
    acked: u64,
    expiry_secs: u32,
    disconnected_ms: i64,
) -> Result<(), StorageError> {
    let record = SessionRecord {
        subscriptions,
        acked_inbox_seq: acked,
        expiry_secs,
        disconnected_ms,
    };
    store.put_session(user, device, &record)
}

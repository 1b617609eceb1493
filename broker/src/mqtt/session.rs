//! Durable MQTT sessions, kept in RocksDB, each with one owner.
//!
//! A session is durable when the device connects with clean session off
//! (3.1.1) or a session expiry interval above 0 (5). Its record holds the
//! subscriptions and the highest inbox_seq the device has PUBACKed; the
//! user's inbox itself is the session's queue, so nothing else is stored.
//!
//! One owner per record: every read and write of a device's record goes
//! through [`Sessions`], which hands the record to one [`SessionLease`] at a
//! time. Opening a session takes the lease over (the connection that is
//! replaced keeps its handle, but every write it still makes is refused),
//! and each write holds the lease's lock while it reaches RocksDB, so a late
//! save or cursor flush of an old connection can never land on top of the
//! record its successor opened.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

/// The registry of session owners; see the module docs. Every method blocks
/// on RocksDB: call it from `spawn_blocking`.
pub struct Sessions {
    store: Store,
    leases: Mutex<HashMap<(String, String), Arc<Lease>>>,
}

/// Who owns one device's record now. Writes happen with `owner` locked.
struct Lease {
    owner: Mutex<u64>,
}

/// One connection's claim on its device's session record, from
/// [`Sessions::open`]. Its writes land only while it is the newest claim.
pub struct SessionLease {
    sessions: Arc<Sessions>,
    key: (String, String),
    lease: Arc<Lease>,
    holder: u64,
}

impl Sessions {
    pub fn new(store: Store) -> Arc<Sessions> {
        Arc::new(Sessions {
            store,
            leases: Mutex::new(HashMap::new()),
        })
    }

    /// Takes the record of `user`'s `device` over for connection `holder`
    /// (unique per connection) and loads, creates or discards it.
    pub fn open(
        self: &Arc<Self>,
        user: &str,
        device: &str,
        holder: u64,
        request: SessionRequest,
        now_ms: i64,
    ) -> Result<(SessionStart, SessionLease), StorageError> {
        let lease = self.lease(user, device, holder);
        let start = lease.take_over(|store| open(store, user, device, request, now_ms))?;
        Ok((start, lease))
    }

    /// Deletes the record of a device that has no connection (a logout over
    /// HTTP), taking the record over like a connection would.
    pub fn delete(self: &Arc<Self>, user: &str, device: &str) -> Result<(), StorageError> {
        // 0 is never a connection id: a connection still holding a lease on
        // this record loses it.
        let lease = self.lease(user, device, 0);
        lease.take_over(|store| store.delete_session(user, device))
    }

    /// A claim on the record for `holder`, not yet the owner.
    fn lease(self: &Arc<Self>, user: &str, device: &str, holder: u64) -> SessionLease {
        let key = (user.to_owned(), device.to_owned());
        let lease = {
            let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
            let lease = leases.entry(key.clone()).or_insert_with(|| {
                Arc::new(Lease {
                    owner: Mutex::new(0),
                })
            });
            lease.clone()
        };
        SessionLease {
            sessions: self.clone(),
            key,
            lease,
            holder,
        }
    }
}

impl SessionLease {
    /// Saves the session's subscriptions and cursor; `disconnected_ms` is 0
    /// while the device is connected. False when a newer connection owns the
    /// record (nothing is written).
    pub fn save(
        &self,
        subscriptions: Vec<(String, u8)>,
        acked: u64,
        expiry_secs: u32,
        disconnected_ms: i64,
    ) -> Result<bool, StorageError> {
        let (user, device) = (&self.key.0, &self.key.1);
        let record = SessionRecord {
            subscriptions,
            acked_inbox_seq: acked,
            expiry_secs,
            disconnected_ms,
        };
        let saved = self.with_owner(|store| store.put_session(user, device, &record))?;
        Ok(saved.is_some())
    }

    /// Moves the record's acked cursor forward (unsynced: losing it to a
    /// crash only means redelivery). False when no longer the owner.
    pub fn set_cursor(&self, acked: u64) -> Result<bool, StorageError> {
        let (user, device) = (&self.key.0, &self.key.1);
        let written = self.with_owner(|store| store.set_session_cursor(user, device, acked))?;
        Ok(written.is_some())
    }

    /// Drops the record (a logout). False when no longer the owner.
    pub fn delete(&self) -> Result<bool, StorageError> {
        let (user, device) = (&self.key.0, &self.key.1);
        let deleted = self.with_owner(|store| store.delete_session(user, device))?;
        Ok(deleted.is_some())
    }

    /// Makes this claim the owner and runs `work` before any other claim can
    /// write. Connection ids only grow, so an older connection that comes
    /// late (a take-over wait that timed out) never takes the record from a
    /// newer one; holder 0 (a delete without a connection) always wins.
    fn take_over<T>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut owner = self.lease.owner.lock().unwrap_or_else(|e| e.into_inner());
        if self.holder != 0 && *owner > self.holder {
            return Err(StorageError::InvalidValue {
                what: "session",
                reason: "a newer connection owns this device's session".to_owned(),
            });
        }
        *owner = self.holder;
        work(&self.sessions.store)
    }

    /// Runs `write` with the lease locked if this claim is still the owner;
    /// `None` (and nothing run) otherwise.
    fn with_owner<T>(
        &self,
        write: impl FnOnce(&Store) -> Result<T, StorageError>,
    ) -> Result<Option<T>, StorageError> {
        let owner = self.lease.owner.lock().unwrap_or_else(|e| e.into_inner());
        if *owner != self.holder {
            tracing::debug!("session write of a replaced connection refused");
            return Ok(None);
        }
        let result = write(&self.sessions.store)?;
        drop(owner);
        Ok(Some(result))
    }
}

impl Drop for SessionLease {
    /// Forgets the lease once no claim holds it (new claims clone it under
    /// the registry's lock, so the count cannot grow behind this check).
    fn drop(&mut self) {
        let mut leases = self
            .sessions
            .leases
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if Arc::strong_count(&self.lease) == 2 {
            leases.remove(&self.key);
        }
    }
}

/// Loads, creates or discards the device's session.
fn open(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn durable() -> SessionRequest {
        SessionRequest {
            durable: Some(NEVER),
            clean_start: false,
        }
    }

    fn sessions() -> (tempfile::TempDir, Arc<Sessions>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("store");
        (dir, Sessions::new(store))
    }

    #[test]
    fn a_replaced_connection_can_no_longer_write_the_record() {
        let (_dir, sessions) = sessions();
        let (first, old) = sessions.open("alice", "phone", 1, durable(), 0).unwrap();
        assert!(!first.present);
        assert!(old.set_cursor(0).unwrap());
        let (second, new) = sessions.open("alice", "phone", 2, durable(), 0).unwrap();
        assert!(second.present);
        let subscriptions = vec![("inbox/alice".to_owned(), 1)];
        assert!(new.save(subscriptions.clone(), 0, NEVER, 0).unwrap());
        // the old connection's late writes are refused
        assert!(!old.save(Vec::new(), 0, NEVER, 5).unwrap());
        assert!(!old.set_cursor(9).unwrap());
        assert!(!old.delete().unwrap());
        let record = sessions.store.session("alice", "phone").unwrap().unwrap();
        assert_eq!(record.subscriptions, subscriptions);
        assert_eq!(record.disconnected_ms, 0);
        drop(old);
        assert!(
            new.save(Vec::new(), 0, NEVER, 7).unwrap(),
            "still the owner"
        );
    }

    #[test]
    fn an_older_connection_that_comes_late_cannot_take_the_record_back() {
        let (_dir, sessions) = sessions();
        let (_, newer) = sessions.open("alice", "phone", 5, durable(), 0).unwrap();
        assert!(sessions.open("alice", "phone", 4, durable(), 0).is_err());
        assert!(newer.set_cursor(0).unwrap(), "the newer one still owns it");
    }

    #[test]
    fn leases_are_forgotten_when_no_connection_holds_them() {
        let (_dir, sessions) = sessions();
        let (_, lease) = sessions.open("alice", "phone", 1, durable(), 0).unwrap();
        let (_, other) = sessions.open("alice", "laptop", 2, durable(), 0).unwrap();
        assert_eq!(sessions.leases.lock().unwrap().len(), 2);
        drop(lease);
        drop(other);
        assert!(sessions.leases.lock().unwrap().is_empty());
    }

    #[test]
    fn a_delete_without_a_connection_takes_the_record_over() {
        let (_dir, sessions) = sessions();
        let (_, connection) = sessions.open("alice", "phone", 1, durable(), 0).unwrap();
        sessions.delete("alice", "phone").unwrap();
        assert_eq!(sessions.store.session("alice", "phone").unwrap(), None);
        assert!(!connection.save(Vec::new(), 0, NEVER, 1).unwrap());
        assert_eq!(sessions.store.session("alice", "phone").unwrap(), None);
    }
}

//! Tests of replication (the trait in `replicate.rs`, the store's write
//! path in `store.rs`): replicators that record or apply the batches of the
//! direct mutators, and the applying of log entries.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use super::*;
use crate::keys::{Cf, APPLIED_SEQ_KEY};
use crate::push::{PushJob, PushRegistration};
use crate::records::{AccountKind, SessionRecord, TokenRecord, UserRecord};
use crate::store::Store;
use crate::test_support::{chat, temp_store};
use crate::tokens::TokenFilter;

/// Keeps every batch it is handed, applies none of them.
#[derive(Default)]
struct Recorder {
    batches: Mutex<Vec<Batch>>,
}

impl Recorder {
    fn take(&self) -> Vec<Batch> {
        std::mem::take(&mut *self.batches.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Replicate for Recorder {
    fn replicate(&self, batch: Batch) -> Result<(), StorageError> {
        self.batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(batch);
        Ok(())
    }
}

/// A one-node "cluster": appends each batch, encoded, to a log in memory,
/// then applies it from its bytes to the local store, as a cluster's
/// applier would, before it returns.
struct Applier {
    /// A handle to the same data dir without the replicator (as the applier
    /// only ever commits, it would do with the replicated one too; this one
    /// keeps the replicator from holding its own store).
    local: Store,
    log: Mutex<Vec<Vec<u8>>>,
}

impl Applier {
    fn for_store(store: &Store) -> Arc<Applier> {
        Arc::new(Applier {
            local: Store {
                db: store.db.clone(),
                replicator: Arc::new(OnceLock::new()),
            },
            log: Mutex::new(Vec::new()),
        })
    }

    fn entries(&self) -> usize {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Replicate for Applier {
    fn replicate(&self, batch: Batch) -> Result<(), StorageError> {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.push(batch.encode());
        let seq = log.len() as u64;
        let entry = Batch::decode(log.last().expect("just appended"))?;
        self.local.commit_applied(entry, seq)
    }
}

/// Refuses every batch.
struct Down;

impl Replicate for Down {
    fn replicate(&self, _batch: Batch) -> Result<(), StorageError> {
        Err(StorageError::Replication(
            "the cluster has no quorum".into(),
        ))
    }
}

fn alice() -> UserRecord {
    UserRecord {
        password_hash: "$argon2id$v=19$hash".to_owned(),
        kind: AccountKind::User,
        created_ms: 1_700_000_000_000,
    }
}

fn token(user: &str, device: &str, expires_ms: i64) -> TokenRecord {
    TokenRecord {
        user: user.to_owned(),
        device: Some(device.to_owned()),
        issued_ms: 1,
        expires_ms,
    }
}

fn session(acked: u64) -> SessionRecord {
    SessionRecord {
        subscriptions: vec![("inbox/alice".to_owned(), 1)],
        acked_inbox_seq: acked,
        expiry_secs: 3600,
        disconnected_ms: 0,
    }
}

fn registration(pushkey: &str) -> PushRegistration {
    PushRegistration {
        app_id: "com.example.ios".to_owned(),
        pushkey: pushkey.to_owned(),
        registered_ms: 1_700_000_000_000,
    }
}

fn job(seq: u64) -> PushJob {
    PushJob::for_message("bob", &chat("dm:alice:bob", seq, "alice"))
}

/// Every key and value of every column family, in order.
fn snapshot(store: &Store) -> Vec<(Cf, Vec<u8>, Vec<u8>)> {
    let mut all = Vec::new();
    for cf in Cf::ALL {
        let mut iter = store.db.raw_iterator_cf(store.cf(cf).unwrap());
        iter.seek_to_first();
        while let Some((key, value)) = iter.item() {
            all.push((cf, key.to_vec(), value.to_vec()));
            iter.next();
        }
        iter.status().unwrap();
    }
    all
}

/// Every direct mutator, some of them twice (found / not found), and what
/// each call returned.
fn every_mutator(store: &Store) -> Vec<String> {
    let mut results = Vec::new();
    macro_rules! call {
        ($call:expr) => {
            results.push(format!("{}: {:?}", stringify!($call), $call))
        };
    }
    call!(store.put_user("alice", &alice()));
    call!(store.put_token(&[1; 32], &token("alice", "phone", 100)));
    call!(store.put_token(&[2; 32], &token("alice", "phone", 900)));
    call!(store.put_token(&[3; 32], &token("alice", "laptop", 100)));
    call!(store.delete_token(&[3; 32]));
    call!(store.delete_token(&[3; 32]));
    let expired = TokenFilter {
        only_expired: true,
        ..TokenFilter::default()
    };
    call!(store.delete_tokens("alice", expired, 500));
    call!(store.delete_tokens("alice", expired, 500));
    call!(store.put_session("alice", "phone", &session(2)));
    call!(store.put_session("alice", "tablet", &session(0)));
    call!(store.set_session_cursor("alice", "phone", 5));
    call!(store.set_session_cursor("alice", "phone", 3));
    call!(store.set_session_cursor("alice", "watch", 9));
    call!(store.delete_session("alice", "tablet"));
    call!(store.put_push_registration("alice", "phone", &registration("k1")));
    call!(store.put_push_registration("alice", "tablet", &registration("k2")));
    call!(store.put_push_registration("alice", "watch", &registration("k3")));
    call!(store.delete_push_registration("alice", "watch"));
    call!(store.delete_push_registration("alice", "watch"));
    let rejected = ["k2".to_owned()];
    call!(store.delete_push_registrations_with_pushkeys("alice", &rejected));
    call!(store.delete_push_registrations_with_pushkeys("alice", &rejected));
    let mut queued = Batch::new();
    queued.put_push_job(1, &job(1)).unwrap();
    queued.put_push_job(2, &job(2)).unwrap();
    store.commit(queued, true).unwrap();
    let mut retried = job(1);
    retried.attempts = 2;
    call!(store.update_push_job(1, &retried));
    call!(store.delete_push_job(2));
    call!(store.set_last_active("alice", 42));
    call!(store.put_user("bad\0id", &alice()));
    results
}

#[test]
fn a_replicated_store_ends_as_a_single_node_does() {
    let (_single_dir, single) = temp_store();
    let single_results = every_mutator(&single);

    let (_dir, store) = temp_store();
    let applier = Applier::for_store(&store);
    store.replicate_through(applier.clone()).unwrap();
    let results = every_mutator(&store);

    assert_eq!(results, single_results, "same answers");
    let mut state = snapshot(&store);
    let applied = (Cf::Meta, APPLIED_SEQ_KEY.to_vec());
    state.retain(|(cf, key, _)| (*cf, key.clone()) != applied);
    assert_eq!(state, snapshot(&single), "same keys and values");

    // One entry per call that wrote something: not the second delete_token,
    // delete_tokens or delete_push_registration(s), not the cursor moved
    // back or of a device without a session, not the refused user id, and
    // not the push jobs committed directly.
    assert_eq!(applier.entries(), 18);
    assert_eq!(store.applied_seq().unwrap(), 18);
    assert_eq!(single.applied_seq().unwrap(), 0);
}

#[test]
fn replicated_writes_go_to_the_replicator_and_nothing_is_written_here() {
    let (_dir, store) = temp_store();
    store
        .put_token(&[9; 32], &token("alice", "old", 1))
        .unwrap();
    store.put_session("alice", "phone", &session(1)).unwrap();
    let before = snapshot(&store);

    let recorder = Arc::new(Recorder::default());
    store.replicate_through(recorder.clone()).unwrap();
    store
        .put_token(&[7; 32], &token("alice", "phone", 100))
        .unwrap();
    store.put_user("alice", &alice()).unwrap();
    store.set_last_active("alice", 1_700_000_000_500).unwrap();
    assert!(store.set_session_cursor("alice", "phone", 4).unwrap());
    assert!(store.delete_token(&[9; 32]).unwrap(), "read here, before");
    assert!(!store.set_session_cursor("alice", "watch", 4).unwrap());

    assert_eq!(snapshot(&store), before, "nothing written locally");
    assert_eq!(store.token(&[7; 32]).unwrap(), None);
    assert_eq!(store.user("alice").unwrap(), None);
    assert_eq!(store.last_active("alice").unwrap(), None);
    assert!(store.token(&[9; 32]).unwrap().is_some());

    let batches = recorder.take();
    let lens: Vec<usize> = batches.iter().map(Batch::len).collect();
    assert_eq!(lens, [2, 1, 1, 1, 2], "token and its index entry, ...");
    for batch in batches {
        // what the log would carry, applied as a node applies it
        store
            .commit(Batch::decode(&batch.encode()).unwrap(), false)
            .unwrap();
    }
    assert_eq!(
        store.token(&[7; 32]).unwrap(),
        Some(token("alice", "phone", 100))
    );
    assert_eq!(store.user("alice").unwrap(), Some(alice()));
    assert_eq!(store.last_active("alice").unwrap(), Some(1_700_000_000_500));
    assert_eq!(
        store
            .session("alice", "phone")
            .unwrap()
            .unwrap()
            .acked_inbox_seq,
        4
    );
    assert_eq!(store.token(&[9; 32]).unwrap(), None);
    let all = TokenFilter::default();
    assert_eq!(
        store.delete_tokens("alice", all, 0).unwrap(),
        1,
        "the index entry of the old token went with it"
    );
}

#[test]
fn every_clone_shares_the_replicator_and_it_is_set_once() {
    let (_dir, store) = temp_store();
    let earlier = store.clone();
    assert!(!store.is_replicated());
    assert!(format!("{store:?}").contains("replicated: false"));

    let recorder = Arc::new(Recorder::default());
    store.replicate_through(recorder.clone()).unwrap();
    let later = store.clone();
    assert!(earlier.is_replicated() && later.is_replicated());
    assert!(format!("{later:?}").contains("replicated: true"));
    assert!(matches!(
        earlier.replicate_through(Arc::new(Recorder::default())),
        Err(StorageError::AlreadyReplicated)
    ));

    earlier.set_last_active("alice", 1).unwrap();
    later.set_last_active("bob", 2).unwrap();
    assert_eq!(
        recorder.take().len(),
        2,
        "both went to the first replicator"
    );
    assert_eq!(store.last_active("alice").unwrap(), None);
}

#[test]
fn a_failing_replicator_fails_the_write() {
    let (_dir, store) = temp_store();
    store.replicate_through(Arc::new(Down)).unwrap();
    let err = store.put_user("alice", &alice()).unwrap_err();
    assert!(err.to_string().contains("no quorum"), "{err}");
    assert!(store.set_last_active("alice", 1).is_err());
    assert_eq!(store.user("alice").unwrap(), None);

    // the raw local write is not replicated
    let mut batch = Batch::new();
    batch.put_user("alice", &alice()).unwrap();
    store.commit(batch, true).unwrap();
    assert_eq!(store.user("alice").unwrap(), Some(alice()));
}

#[test]
fn an_applied_batch_and_its_seq_land_in_one_write() {
    let (dir, store) = temp_store();
    assert_eq!(store.applied_seq().unwrap(), 0);

    let mut batch = Batch::new();
    batch.put_user("alice", &alice()).unwrap();
    batch.put_message(&chat("g:team", 1, "alice")).unwrap();
    let before = store.db.latest_sequence_number();
    store.commit_applied(batch, 7).unwrap();
    let writes: Vec<usize> = store
        .db
        .get_updates_since(before)
        .unwrap()
        .map(|item| item.unwrap().1.len())
        .collect();
    assert_eq!(writes, [3], "one RocksDB write: the batch and the seq");
    assert_eq!(store.applied_seq().unwrap(), 7);
    assert_eq!(store.user("alice").unwrap(), Some(alice()));
    assert_eq!(store.last_channel_seq("g:team").unwrap(), 1);

    store.commit_applied(Batch::new(), 8).unwrap();
    assert_eq!(store.applied_seq().unwrap(), 8);

    // applied the same even when the store replicates (it is the applier's)
    let recorder = Arc::new(Recorder::default());
    store.replicate_through(recorder.clone()).unwrap();
    let mut batch = Batch::new();
    batch.delete_group("team").unwrap();
    store.commit_applied(batch, 9).unwrap();
    assert!(recorder.take().is_empty());
    assert_eq!(store.applied_seq().unwrap(), 9);

    store.sync_wal().unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.applied_seq().unwrap(), 9);
    assert_eq!(store.user("alice").unwrap(), Some(alice()));
}

#[test]
fn a_corrupt_applied_seq_names_the_family_and_key() {
    let (_dir, store) = temp_store();
    let meta = store.cf(Cf::Meta).unwrap();
    store.db.put_cf(meta, APPLIED_SEQ_KEY, b"\x01").unwrap();
    let err = store.applied_seq().unwrap_err();
    assert!(
        matches!(&err, StorageError::Corrupt { cf: "meta", key, .. } if key == "cluster_applied_seq"),
        "{err}"
    );
}

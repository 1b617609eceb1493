//! Push notifications' durable state: each device's push registration, and
//! the queue of notifications waiting to be sent to the push gateway.
//!
//! A registration is keyed by `user 0x00 device` in `push_devices`; a job
//! by its id (`id_be64`) in `push_jobs`, so jobs read back in id order. The
//! chat engine writes jobs inside its commit batch ([`Batch::put_push_job`])
//! and the broker's push worker reads, updates and deletes them; job writes
//! after the commit are not synced (a crash at worst sends a notification
//! again, or retries it once more).
//!
//! Must not: speak HTTP or decide when a job is sent, retried or given up
//! (the broker's `push` module does).

use parley_proto::v1::ChatMessage;
use rocksdb::ReadOptions;
use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::error::StorageError;
use crate::keys::{self, Cf};
use crate::records;
use crate::store::Store;

/// Characters (Unicode scalar values) of a message's text a notification carries.
pub const PUSH_BODY_CHARS: usize = 100;

/// One device's push registration, keyed by `user 0x00 device` in
/// `push_devices`. The names are the Matrix push gateway's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRegistration {
    /// The app (and platform) the pushkey belongs to (`RegisterPush.platform`).
    pub app_id: String,
    /// The device's token at the push provider (`RegisterPush.token`).
    pub pushkey: String,
    /// When it was registered, ms since the Unix epoch.
    pub registered_ms: i64,
}

/// One notification waiting to be sent, keyed by its id (big-endian) in
/// `push_jobs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushJob {
    /// Who is notified.
    pub user: String,
    /// The channel of the message.
    pub channel: String,
    /// The message's `seq` in `channel`.
    pub seq: u64,
    /// Who sent the message.
    pub sender: String,
    /// The first [`PUSH_BODY_CHARS`] characters of its text.
    pub body: String,
    /// Failed attempts to send it so far.
    pub attempts: u32,
    /// When the job was made, ms since the Unix epoch.
    pub created_ms: i64,
}

impl PushJob {
    /// The job that notifies `user` of `message` (its text cut to
    /// [`PUSH_BODY_CHARS`] characters), made at the message's `ts_ms`.
    pub fn for_message(user: &str, message: &ChatMessage) -> PushJob {
        PushJob {
            user: user.to_owned(),
            channel: message.channel.clone(),
            seq: message.seq,
            sender: message.sender.clone(),
            body: first_chars(&message.text, PUSH_BODY_CHARS).to_owned(),
            attempts: 0,
            created_ms: message.ts_ms,
        }
    }
}

/// The first `n` Unicode scalar values of `text` (all of it if shorter).
fn first_chars(text: &str, n: usize) -> &str {
    match text.char_indices().nth(n) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

impl Batch {
    /// Queues the push job `id` (ids come from the broker's counter).
    pub fn put_push_job(&mut self, id: u64, job: &PushJob) -> Result<(), StorageError> {
        let value = records::to_json("push job", job)?;
        self.put(Cf::PushJobs, keys::encode_seq(id).to_vec(), value);
        Ok(())
    }

    /// Removes the push job `id` (nothing happens if there is none).
    pub(crate) fn delete_push_job(&mut self, id: u64) {
        self.delete(Cf::PushJobs, keys::encode_seq(id).to_vec());
    }

    /// Creates or replaces the push registration of `user`'s `device`.
    pub(crate) fn put_push_registration(
        &mut self,
        user: &str,
        device: &str,
        registration: &PushRegistration,
    ) -> Result<(), StorageError> {
        let value = records::to_json("push registration", registration)?;
        self.put(Cf::PushDevices, keys::pair_key(user, device)?, value);
        Ok(())
    }

    /// Removes the push registration of `user`'s `device` (nothing happens
    /// if there is none).
    pub(crate) fn delete_push_registration(
        &mut self,
        user: &str,
        device: &str,
    ) -> Result<(), StorageError> {
        self.delete(Cf::PushDevices, keys::pair_key(user, device)?);
        Ok(())
    }
}

impl Store {
    /// Creates or replaces the push registration of `user`'s `device`; synced.
    pub fn put_push_registration(
        &self,
        user: &str,
        device: &str,
        registration: &PushRegistration,
    ) -> Result<(), StorageError> {
        let mut batch = Batch::new();
        batch.put_push_registration(user, device, registration)?;
        self.write(batch, true)
    }

    /// Removes the push registration of `user`'s `device`; false if it had
    /// none. Synced.
    pub fn delete_push_registration(&self, user: &str, device: &str) -> Result<bool, StorageError> {
        let key = keys::pair_key(user, device)?;
        if self.get(Cf::PushDevices, &key)?.is_none() {
            return Ok(false);
        }
        let mut batch = Batch::new();
        batch.delete_push_registration(user, device)?;
        self.write(batch, true)?;
        Ok(true)
    }

    /// Every push registration of `user` as `(device, registration)`,
    /// ordered by device.
    pub fn push_registrations(
        &self,
        user: &str,
    ) -> Result<Vec<(String, PushRegistration)>, StorageError> {
        let mut options = ReadOptions::default();
        options.set_iterate_lower_bound(keys::pair_prefix(user)?);
        // `user 0x01`: the end of every pair key of `user`
        options.set_iterate_upper_bound(keys::seq_range_end(user)?);
        let mut iter = self
            .db
            .raw_iterator_cf_opt(self.cf(Cf::PushDevices)?, options);
        iter.seek_to_first();
        let mut found = Vec::new();
        while let Some((key, value)) = iter.item() {
            let (_, device) = decode_device_key(key)?;
            let registration = records::from_json(Cf::PushDevices.name(), key, value)?;
            found.push((device.to_owned(), registration));
            iter.next();
        }
        iter.status()?;
        Ok(found)
    }

    /// Removes every registration of `user` whose pushkey is in `pushkeys`
    /// (those the gateway rejected); returns how many. Synced.
    pub fn delete_push_registrations_with_pushkeys(
        &self,
        user: &str,
        pushkeys: &[String],
    ) -> Result<usize, StorageError> {
        let mut batch = Batch::new();
        let mut deleted = 0;
        for (device, registration) in self.push_registrations(user)? {
            if pushkeys.contains(&registration.pushkey) {
                batch.delete_push_registration(user, &device)?;
                deleted += 1;
            }
        }
        if deleted > 0 {
            self.write(batch, true)?;
        }
        Ok(deleted)
    }

    /// Every user with at least one push registration, ordered by user id.
    pub fn push_users(&self) -> Result<Vec<String>, StorageError> {
        let mut iter = self.db.raw_iterator_cf(self.cf(Cf::PushDevices)?);
        iter.seek_to_first();
        let mut users = Vec::new();
        while let Some(key) = iter.key() {
            let (user, _) = decode_device_key(key)?;
            let user = user.to_owned();
            // skip the user's other devices: on to `user 0x01`
            iter.seek(keys::seq_range_end(&user)?);
            users.push(user);
        }
        iter.status()?;
        Ok(users)
    }

    /// Up to `limit` push jobs with ids above `after_id`, in id order.
    pub fn push_jobs(
        &self,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<(u64, PushJob)>, StorageError> {
        let Some(first) = after_id.checked_add(1) else {
            return Ok(Vec::new());
        };
        let mut iter = self.db.raw_iterator_cf(self.cf(Cf::PushJobs)?);
        iter.seek(keys::encode_seq(first));
        let mut jobs = Vec::new();
        while jobs.len() < limit {
            let Some((key, value)) = iter.item() else {
                break;
            };
            let id = decode_job_key(key)?;
            jobs.push((id, records::from_json(Cf::PushJobs.name(), key, value)?));
            iter.next();
        }
        iter.status()?;
        Ok(jobs)
    }

    /// The highest push job id stored, 0 if there is no job.
    pub fn last_push_job_id(&self) -> Result<u64, StorageError> {
        let mut iter = self.db.raw_iterator_cf(self.cf(Cf::PushJobs)?);
        iter.seek_to_last();
        let Some(key) = iter.key() else {
            iter.status()?;
            return Ok(0);
        };
        decode_job_key(key)
    }

    /// Replaces the push job `id` (after a failed attempt). Not synced.
    pub fn update_push_job(&self, id: u64, job: &PushJob) -> Result<(), StorageError> {
        let mut batch = Batch::new();
        batch.put_push_job(id, job)?;
        self.write(batch, false)
    }

    /// Removes the push job `id` (sent or given up). Not synced.
    pub fn delete_push_job(&self, id: u64) -> Result<(), StorageError> {
        let mut batch = Batch::new();
        batch.delete_push_job(id);
        self.write(batch, false)
    }
}

/// `(user, device)` of a `push_devices` key.
fn decode_device_key(key: &[u8]) -> Result<(&str, &str), StorageError> {
    keys::decode_session_key(key)
        .ok_or_else(|| StorageError::corrupt(Cf::PushDevices.name(), key, "malformed key"))
}

/// The id of a `push_jobs` key.
fn decode_job_key(key: &[u8]) -> Result<u64, StorageError> {
    keys::decode_seq(key)
        .ok_or_else(|| StorageError::corrupt(Cf::PushJobs.name(), key, "expected an 8-byte id"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{chat, temp_store};

    fn registration(pushkey: &str) -> PushRegistration {
        PushRegistration {
            app_id: "com.example.ios".to_owned(),
            pushkey: pushkey.to_owned(),
            registered_ms: 1_700_000_000_000,
        }
    }

    fn job(user: &str, seq: u64) -> PushJob {
        PushJob::for_message(user, &chat("dm:alice:bob", seq, "alice"))
    }

    fn queue(store: &Store, jobs: &[(u64, PushJob)]) {
        let mut batch = Batch::new();
        for (id, job) in jobs {
            batch.put_push_job(*id, job).unwrap();
        }
        store.commit(batch, true).unwrap();
    }

    #[test]
    fn registrations_put_list_delete() {
        let (_dir, store) = temp_store();
        store
            .put_push_registration("bob", "tablet", &registration("k2"))
            .unwrap();
        store
            .put_push_registration("bob", "phone", &registration("k1"))
            .unwrap();
        store
            .put_push_registration("bobby", "phone", &registration("k3"))
            .unwrap();
        let bob = store.push_registrations("bob").unwrap();
        assert_eq!(
            bob,
            vec![
                ("phone".to_owned(), registration("k1")),
                ("tablet".to_owned(), registration("k2")),
            ],
            "by device, never another user's (bobby)"
        );

        store
            .put_push_registration("bob", "phone", &registration("k9"))
            .unwrap();
        assert_eq!(store.push_registrations("bob").unwrap()[0].1.pushkey, "k9");

        assert!(store.delete_push_registration("bob", "phone").unwrap());
        assert!(!store.delete_push_registration("bob", "phone").unwrap());
        assert_eq!(store.push_registrations("bob").unwrap().len(), 1);
        assert!(store.push_registrations("nobody").unwrap().is_empty());
    }

    #[test]
    fn rejected_pushkeys_are_deleted_for_that_user_only() {
        let (_dir, store) = temp_store();
        store
            .put_push_registration("bob", "phone", &registration("k1"))
            .unwrap();
        store
            .put_push_registration("bob", "tablet", &registration("k2"))
            .unwrap();
        store
            .put_push_registration("carol", "phone", &registration("k1"))
            .unwrap();
        let rejected = vec!["k1".to_owned(), "unknown".to_owned()];
        assert_eq!(
            store
                .delete_push_registrations_with_pushkeys("bob", &rejected)
                .unwrap(),
            1
        );
        let bob = store.push_registrations("bob").unwrap();
        assert_eq!(bob, vec![("tablet".to_owned(), registration("k2"))]);
        assert_eq!(store.push_registrations("carol").unwrap().len(), 1);
        assert_eq!(
            store
                .delete_push_registrations_with_pushkeys("bob", &rejected)
                .unwrap(),
            0
        );
    }

    #[test]
    fn push_users_are_distinct_and_ordered() {
        let (_dir, store) = temp_store();
        assert!(store.push_users().unwrap().is_empty());
        for (user, device) in [("bob", "b"), ("alice", "a"), ("bob", "a"), ("al", "x")] {
            store
                .put_push_registration(user, device, &registration("k"))
                .unwrap();
        }
        assert_eq!(store.push_users().unwrap(), vec!["al", "alice", "bob"]);
        store.delete_push_registration("alice", "a").unwrap();
        assert_eq!(store.push_users().unwrap(), vec!["al", "bob"]);
    }

    #[test]
    fn jobs_are_read_in_id_order_after_a_cursor() {
        let (_dir, store) = temp_store();
        assert_eq!(store.last_push_job_id().unwrap(), 0);
        assert!(store.push_jobs(0, 10).unwrap().is_empty());
        queue(
            &store,
            &[
                (3, job("bob", 3)),
                (1, job("bob", 1)),
                (300, job("carol", 2)),
            ],
        );
        assert_eq!(store.last_push_job_id().unwrap(), 300);
        let ids = |after, limit| -> Vec<u64> {
            let jobs = store.push_jobs(after, limit).unwrap();
            jobs.into_iter().map(|(id, _)| id).collect()
        };
        assert_eq!(ids(0, 10), vec![1, 3, 300]);
        assert_eq!(ids(1, 10), vec![3, 300]);
        assert_eq!(ids(0, 2), vec![1, 3]);
        assert_eq!(ids(300, 10), Vec::<u64>::new());
        assert_eq!(ids(u64::MAX, 10), Vec::<u64>::new());
        assert_eq!(store.push_jobs(2, 1).unwrap(), vec![(3, job("bob", 3))]);
    }

    #[test]
    fn jobs_are_updated_and_deleted() {
        let (_dir, store) = temp_store();
        queue(&store, &[(1, job("bob", 1)), (2, job("bob", 2))]);
        let mut retried = job("bob", 1);
        retried.attempts = 3;
        store.update_push_job(1, &retried).unwrap();
        assert_eq!(store.push_jobs(0, 1).unwrap(), vec![(1, retried)]);
        store.delete_push_job(1).unwrap();
        store.delete_push_job(1).unwrap();
        assert_eq!(store.push_jobs(0, 10).unwrap(), vec![(2, job("bob", 2))]);
        store.delete_push_job(2).unwrap();
        assert_eq!(store.last_push_job_id().unwrap(), 0);
    }

    #[test]
    fn a_job_carries_the_first_100_characters() {
        let mut message = chat("g:team", 7, "alice");
        message.text = "é".repeat(150);
        let job = PushJob::for_message("bob", &message);
        assert_eq!(job.body.chars().count(), 100);
        assert_eq!(job.body, "é".repeat(100));
        assert_eq!(
            (
                job.user.as_str(),
                job.channel.as_str(),
                job.seq,
                job.sender.as_str()
            ),
            ("bob", "g:team", 7, "alice")
        );
        assert_eq!((job.attempts, job.created_ms), (0, message.ts_ms));

        message.text = "short 👋".to_owned();
        assert_eq!(PushJob::for_message("bob", &message).body, "short 👋");
        assert_eq!(first_chars("abc", 3), "abc");
        assert_eq!(first_chars("", 100), "");
    }

    #[test]
    fn a_corrupt_job_is_an_error_naming_the_family() {
        let (_dir, store) = temp_store();
        let jobs = store.cf(Cf::PushJobs).unwrap();
        store
            .db
            .put_cf(jobs, keys::encode_seq(5), b"{not json")
            .unwrap();
        let err = store.push_jobs(0, 10).unwrap_err();
        assert!(err.to_string().contains("push_jobs"), "{err}");
        assert_eq!(store.last_push_job_id().unwrap(), 5);
    }
}

//! Devices' push registrations: kept in the store, with an in-memory index
//! of the users that have any, so the chat engine can ask
//! [`Registrations::has_any`] without touching the disk.
//!
//! Every change (register, unregister, pushkeys the gateway rejected) runs
//! under one lock, writes the store, then sets the user's index entry from
//! what the store holds, so the index never drifts from the store.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};

use parley_storage::{PushRegistration, Store};

use crate::clock;
use crate::error::{blocking, BrokerError};

/// The registrations of every device, and who has any. Cheap to clone.
#[derive(Clone)]
pub struct Registrations(Arc<Index>);

struct Index {
    store: Store,
    users: RwLock<HashSet<String>>,
    /// Held by each change from its store write to its index update, on the
    /// blocking thread that does both (so a caller that goes away halfway
    /// leaves neither half undone).
    changes: Mutex<()>,
}

impl Registrations {
    /// The index of `store`'s registrations (a scan of `push_devices`, which
    /// blocks).
    pub fn load(store: Store) -> Result<Registrations, BrokerError> {
        let users = store.push_users()?.into_iter().collect();
        Ok(Registrations(Arc::new(Index {
            store,
            users: RwLock::new(users),
            changes: Mutex::new(()),
        })))
    }

    /// Whether `user` has at least one registration.
    pub fn has_any(&self, user: &str) -> bool {
        let users = self
            .0
            .users
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        users.contains(user)
    }

    /// Registers (or re-registers) `user`'s `device`.
    pub async fn register(
        &self,
        user: &str,
        device: &str,
        app_id: &str,
        pushkey: &str,
    ) -> Result<(), BrokerError> {
        let registration = PushRegistration {
            app_id: app_id.to_owned(),
            pushkey: pushkey.to_owned(),
            registered_ms: clock::now_ms(),
        };
        let device = device.to_owned();
        self.change(user, move |store, user| {
            Ok(store.put_push_registration(user, &device, &registration)?)
        })
        .await
    }

    /// Removes `user`'s `device`'s registration; false if it had none.
    pub async fn unregister(&self, user: &str, device: &str) -> Result<bool, BrokerError> {
        let device = device.to_owned();
        self.change(user, move |store, user| {
            Ok(store.delete_push_registration(user, &device)?)
        })
        .await
    }

    /// Removes `user`'s registrations whose pushkey is in `pushkeys`;
    /// returns how many.
    pub async fn remove_pushkeys(
        &self,
        user: &str,
        pushkeys: Vec<String>,
    ) -> Result<usize, BrokerError> {
        self.change(user, move |store, user| {
            Ok(store.delete_push_registrations_with_pushkeys(user, &pushkeys)?)
        })
        .await
    }

    /// Runs `write` on `user`'s registrations, then sets `user`'s index
    /// entry from what the store holds; both on a blocking thread, under
    /// the change lock.
    async fn change<T: Send + 'static>(
        &self,
        user: &str,
        write: impl FnOnce(&Store, &str) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T, BrokerError> {
        let (index, user) = (self.0.clone(), user.to_owned());
        blocking(move || {
            let _change = index
                .changes
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let written = write(&index.store, &user);
            // whether or not the write failed, the index follows the store
            let registered = !index.store.push_registrations(&user)?.is_empty();
            index.set(&user, registered);
            written
        })
        .await
    }
}

impl Index {
    fn set(&self, user: &str, registered: bool) {
        let mut users = self
            .users
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if registered {
            users.insert(user.to_owned());
        } else {
            users.remove(user);
        }
    }
}

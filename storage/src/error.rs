//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong between Parley and its RocksDB data dir.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB itself failed (I/O, corruption it detected, ...).
    #[error("rocksdb: {0}")]
    RocksDb(#[from] rocksdb::Error),

    /// Another process (or another `Store` in this one) holds the data dir.
    #[error("data dir {} is in use by another process (is the broker running?)", .0.display())]
    Locked(PathBuf),

    /// A stored value (or key) could not be decoded.
    #[error("corrupt record in column family {cf} at key \"{key}\": {reason}")]
    Corrupt {
        /// Column family of the record.
        cf: &'static str,
        /// The key, printable (non-ASCII bytes escaped).
        key: String,
        /// What was wrong with it.
        reason: String,
    },

    /// A record could not be serialised.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The serialiser's error.
        source: serde_json::Error,
    },

    /// A value this crate refuses to store (a friend link in state
    /// `Removed` or `Unspecified`: an ended link is deleted instead).
    #[error("cannot store {what}: {reason}")]
    InvalidValue {
        /// What was being stored.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// A key part (id or channel) contains the 0x00 separator.
    #[error("invalid key part \"{0}\": ids and channels must not contain 0x00")]
    InvalidKey(String),

    /// A column family that `Store::open` creates is missing.
    #[error("column family {0} is missing")]
    MissingColumnFamily(&'static str),

    /// The data dir was written by an incompatible version of Parley.
    #[error("data dir format version {found} is not supported (this build reads {expected})")]
    IncompatibleFormat {
        /// Version found in the `meta` column family.
        found: u32,
        /// Version this build reads and writes.
        expected: u32,
    },

    /// An encoded [`Batch`](crate::Batch) (an entry of a replicated log)
    /// could not be decoded: truncated, of an unknown version, or naming an
    /// unknown column family.
    #[error("malformed encoded batch: {0}")]
    BadBatch(String),

    /// [`Store::replicate_through`](crate::Store::replicate_through) was
    /// called on a store that already replicates its writes.
    #[error("the store already replicates its writes")]
    AlreadyReplicated,

    /// A replicated write did not happen: no leader took it, the log
    /// refused it, or it was not applied here in time (cluster mode).
    #[error("replication: {0}")]
    Replication(String),
}

impl StorageError {
    /// A `Corrupt` error for the record at `key` in column family `cf`.
    pub(crate) fn corrupt(cf: &'static str, key: &[u8], reason: impl std::fmt::Display) -> Self {
        StorageError::Corrupt {
            cf,
            key: key.escape_ascii().to_string(),
            reason: reason.to_string(),
        }
    }
}

//! The broker's one error enum. Errors that reach a client are not these:
//! they are `parley_chat_logic::ChatError`s with a stable `ErrorCode`.

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("storage: {0}")]
    Storage(#[from] parley_storage::StorageError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A TLS file named by config key `key` (`tls_cert` or `tls_key`) at
    /// `path` cannot be used.
    #[error("cannot use {key} = {}: {message}", path.display())]
    Tls {
        key: &'static str,
        path: std::path::PathBuf,
        message: String,
    },
    #[error("invalid user id {0:?}: 1 to 64 characters of A-Z a-z 0-9 _ -")]
    InvalidUserId(String),
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("user {0:?} does not exist")]
    UnknownUser(String),
    #[error("invalid password: {0}")]
    BadPassword(String),
    #[error("{0:?} is a service account, which has a secret instead of a password")]
    NotAUser(String),
    #[error("invalid service name {0:?}: 1 to 64 characters of A-Z a-z 0-9 _ -")]
    InvalidServiceName(String),
    #[error("too busy: {0} are queued up to their limit, try again shortly")]
    Busy(&'static str),
    #[error("password hashing failed: {0}")]
    PasswordHash(String),
    #[error("the password verification pool has stopped")]
    VerifierStopped,
    /// Cluster mode cannot start: NATS unreachable, a stream or bucket
    /// that cannot be created.
    #[error("cluster: {0}")]
    Cluster(String),
}

impl BrokerError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        BrokerError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Runs blocking store work (RocksDB, argon2) off the async runtime; a task
/// that panicked is an I/O error here.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BrokerError> + Send + 'static,
) -> Result<T, BrokerError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| BrokerError::io("a blocking task failed", std::io::Error::other(error)))?
}

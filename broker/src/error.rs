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
    #[error("invalid user id {0:?}: 1 to 64 characters of A-Z a-z 0-9 _ -")]
    InvalidUserId(String),
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("user {0:?} does not exist")]
    UnknownUser(String),
    #[error("the password must not be empty")]
    EmptyPassword,
    #[error("password hashing failed: {0}")]
    PasswordHash(String),
    #[error("the chat engine has stopped")]
    EngineStopped,
    #[error("the password verification pool has stopped")]
    VerifierStopped,
}

impl BrokerError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        BrokerError::Io {
            what: what.into(),
            source,
        }
    }
}

//! The one error type of the library: [`ClientError`].

use std::time::Duration;

use parley_proto::v1::ErrorCode;
pub use rumqttc::ConnectReturnCode;

/// Everything that can go wrong between a [`Client`](crate::Client) and the
/// broker.
///
/// Errors the broker answered on purpose (`Reply{error}`) arrive as
/// [`ClientError::Server`], with the contract's stable [`ErrorCode`]; all the
/// other variants are about the connection or the options.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The options cannot describe a connection (bad address, empty id, ...).
    #[error("invalid client options: {0}")]
    InvalidOptions(String),

    /// The broker answered CONNECT with a refusal (bad credentials, client id
    /// not `{user}:{device}`, unknown user, ...).
    #[error("connection refused by the broker: {0:?}")]
    Refused(ConnectReturnCode),

    /// The network or the MQTT session failed (socket error, protocol error,
    /// connection closed while connecting).
    #[error("connection failed: {0}")]
    Connection(String),

    /// The broker refused a subscription (SUBACK failure) to this topic.
    #[error("subscription to {0} refused by the broker")]
    SubscribeRefused(String),

    /// Nothing arrived in time: the CONNACK, a SUBACK, or the reply to a
    /// request.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What we were waiting for.
        what: &'static str,
        /// How long we waited.
        after: Duration,
    },

    /// The connection is closed (by [`Client::disconnect`](crate::Client::disconnect),
    /// by the broker, or by a network error); requests can no longer be answered.
    #[error("the connection to the broker is closed")]
    Disconnected,

    /// The broker answered the request with `Reply{error}`.
    #[error("server error {code:?}: {message}")]
    Server {
        /// The contract's error code.
        code: ErrorCode,
        /// The broker's human-readable explanation.
        message: String,
    },

    /// The broker answered with a reply body that does not fit the request
    /// (for example a `HistoryPage` to a `SendMessage`).
    #[error("unexpected reply: {0}")]
    UnexpectedReply(String),
}

impl ClientError {
    /// The contract's error code when the broker refused the request, else `None`.
    ///
    /// ```
    /// use parley_client::ClientError;
    /// use parley_client::v1::ErrorCode;
    /// let err = ClientError::Server { code: ErrorCode::NotMember, message: "no".into() };
    /// assert_eq!(err.server_code(), Some(ErrorCode::NotMember));
    /// assert_eq!(ClientError::Disconnected.server_code(), None);
    /// ```
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<rumqttc::ClientError> for ClientError {
    /// The request channel to the event loop is closed: the loop has ended.
    fn from(_: rumqttc::ClientError) -> Self {
        ClientError::Disconnected
    }
}

impl From<rumqttc::ConnectionError> for ClientError {
    fn from(err: rumqttc::ConnectionError) -> Self {
        match err {
            rumqttc::ConnectionError::ConnectionRefused(code) => ClientError::Refused(code),
            other => ClientError::Connection(other.to_string()),
        }
    }
}

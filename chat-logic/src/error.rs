//! The crate's one error type: a stable [`ErrorCode`] for the client plus a
//! human-readable message.
//!
//! Every rule in this crate fails with a [`ChatError`]; the broker turns it
//! into `Reply{error}` with [`ChatError::to_reply_error`] and changes nothing.

use parley_proto::v1::{self, ErrorCode};

/// A broken chat rule, ready to be sent back to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}", .code.as_str_name(), .message)]
pub struct ChatError {
    /// The stable code the client switches on.
    pub code: ErrorCode,
    /// What went wrong, in words a developer can act on.
    pub message: String,
}

impl ChatError {
    /// An error with any code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `BAD_REQUEST`: the request is malformed or breaks a validation rule.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// `NOT_MEMBER`: the user is not a member of the channel or group.
    pub fn not_member(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotMember, message)
    }

    /// `TOO_LARGE`: a field is longer than its limit.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooLarge, message)
    }

    /// `NOT_FOUND`: a referenced user or group does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// `FORBIDDEN`: the user may not do this at all.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// `RATE_LIMITED`: the client sends too fast.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::RateLimited, message)
    }

    /// `LIMIT_EXCEEDED`: a configured limit (such as group size) would be passed.
    pub fn limit_exceeded(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::LimitExceeded, message)
    }

    /// `INTERNAL`: the server failed (storage error, broken invariant).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The wire form, for `Reply{error}`.
    pub fn to_reply_error(&self) -> v1::Error {
        v1::Error {
            code: self.code as i32,
            message: self.message.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_set_their_code() {
        let cases = [
            (ChatError::bad_request("m"), ErrorCode::BadRequest),
            (ChatError::not_member("m"), ErrorCode::NotMember),
            (ChatError::too_large("m"), ErrorCode::TooLarge),
            (ChatError::not_found("m"), ErrorCode::NotFound),
            (ChatError::forbidden("m"), ErrorCode::Forbidden),
            (ChatError::rate_limited("m"), ErrorCode::RateLimited),
            (ChatError::limit_exceeded("m"), ErrorCode::LimitExceeded),
            (ChatError::internal("m"), ErrorCode::Internal),
        ];
        for (error, code) in cases {
            assert_eq!(error.code, code);
            assert_eq!(error.message, "m");
        }
    }

    #[test]
    fn display_names_the_code_and_the_message() {
        let error = ChatError::not_found("no group g1");
        assert_eq!(error.to_string(), "NOT_FOUND: no group g1");
    }

    #[test]
    fn reply_error_carries_code_and_message() {
        let wire = ChatError::too_large("text too long").to_reply_error();
        assert_eq!(wire.code, ErrorCode::TooLarge as i32);
        assert_eq!(wire.code, 3);
        assert_eq!(wire.message, "text too long");
    }
}

//! [`ApiError`]: every HTTP error as JSON `{"error": {"code", "message"}}`
//! with a stable code, and the extractors whose failures must be JSON too
//! (a malformed body, a missing bearer).

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;

use parley_chat_logic::ChatError;
use parley_proto::v1::ErrorCode;

use crate::error::BrokerError;

/// An error answered as JSON `{"error": {"code": CODE, "message": MESSAGE}}`.
///
/// Codes: `BAD_REQUEST` (400), `UNAUTHORIZED` (401), `FORBIDDEN` (403),
/// `NOT_FOUND` (404), `CONFLICT` (409), `TOO_LARGE` (413), `RATE_LIMITED`
/// (429), `INTERNAL` (500), `UNAVAILABLE` (503); and a chat rule's refusal
/// keeps the chat `ErrorCode` name (`NOT_MEMBER` 403, `LIMIT_EXCEEDED` 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
    }

    /// A chat rule's refusal, with the chat error's own code.
    pub fn from_chat(error: ChatError) -> Self {
        let status = match error.code {
            ErrorCode::BadRequest | ErrorCode::LimitExceeded => StatusCode::BAD_REQUEST,
            ErrorCode::NotMember | ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal | ErrorCode::Unspecified => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, error.code.as_str_name(), error.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

impl From<BrokerError> for ApiError {
    /// Client mistakes keep their message; failures inside the broker are
    /// logged here and answered without details.
    fn from(error: BrokerError) -> Self {
        match error {
            BrokerError::InvalidUserId(_)
            | BrokerError::BadPassword(_)
            | BrokerError::InvalidServiceName(_) => ApiError::bad_request(error.to_string()),
            BrokerError::UserExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "CONFLICT", error.to_string())
            }
            BrokerError::UnknownUser(_) | BrokerError::NotAUser(_) => {
                ApiError::unauthorized(error.to_string())
            }
            BrokerError::Busy(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                error.to_string(),
            ),
            other => {
                tracing::error!(error = %other, "request failed inside the broker");
                ApiError::internal("the broker could not complete the request; try again")
            }
        }
    }
}

/// A JSON request body whose every rejection (not JSON, wrong shape,
/// missing field, too large) is an [`ApiError`].
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let message = rejection.body_text();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(status, "TOO_LARGE", message);
    }
    ApiError::bad_request(message)
}

/// The `Authorization: Bearer TOKEN` of a request (checked later: this only
/// takes it off the header).
pub struct BearerText(pub String);

impl<S: Send + Sync> FromRequestParts<S> for BearerText {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let missing = || ApiError::unauthorized("send the token as Authorization: Bearer TOKEN");
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(missing)?;
        let text = value.to_str().map_err(|_| missing())?;
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(missing)?;
        Ok(BearerText(token.to_owned()))
    }
}

//! `POST /v1/system-messages`: a backend service's system message over
//! HTTP, with its secret as the bearer. The body is `SystemMessage` as JSON
//! (`channel` or `users`, `client_msg_id`, `text`); it is checked by the
//! same rules and committed by the same engine as the MQTT request, and is
//! idempotent by `client_msg_id` the same way.

use axum::extract::State;
use axum::Json;
use parley_chat_logic::command::{decode_request, Command};
use parley_chat_logic::ids::AccountKind;
use parley_proto::v1::{self, request};
use prost::Message;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, BearerText, JsonBody};
use super::HttpState;

#[derive(Deserialize)]
pub struct SystemMessageBody {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    client_msg_id: String,
    text: String,
}

/// 200 `{"messages": [{"channel", "seq"}, ...], "ts_ms", "duplicate"}`:
/// one entry per stored copy (the originals, for a retry).
pub async fn send(
    State(state): State<HttpState>,
    BearerText(text): BearerText,
    JsonBody(body): JsonBody<SystemMessageBody>,
) -> Result<Json<Value>, ApiError> {
    let service = service_of(&state, &text).await?;
    let (command, request) = decode(body, &state)?;
    let chat = &state.shared.chat;
    let committed = chat
        .engine
        .submit(service.clone(), command, &request)
        .await
        .map_err(ApiError::from_chat)?
        .await
        .map_err(|_| ApiError::internal("the chat engine has stopped"))?
        .map_err(ApiError::from_chat)?;
    let messages: Vec<Value> = committed
        .stored
        .iter()
        .map(|(channel, seq)| json!({ "channel": channel, "seq": seq }))
        .collect();
    tracing::info!(%service, copies = messages.len(), "system message over http");
    Ok(Json(json!({
        "messages": messages,
        "ts_ms": committed.ack.ts_ms,
        "duplicate": committed.ack.duplicate,
    })))
}

/// The service whose secret `text` is; 401 for anything else, 403 for a
/// user's login token.
async fn service_of(state: &HttpState, text: &str) -> Result<String, ApiError> {
    let Some(bearer) = state.shared.auth.bearer(text).await? else {
        return Err(ApiError::unauthorized(
            "the bearer is not a valid service secret",
        ));
    };
    let user = bearer.token.user;
    if AccountKind::of(&user) != Some(AccountKind::Service) {
        return Err(ApiError::forbidden(
            "only service accounts may send system messages",
        ));
    }
    Ok(user)
}

/// The body as a validated command, through the one decoder every
/// `Request` goes through.
/// The command, and the encoded request it was decoded from (what a
/// cluster node forwards to the leader).
fn decode(body: SystemMessageBody, state: &HttpState) -> Result<(Command, Vec<u8>), ApiError> {
    let request = v1::Request {
        request_id: String::new(),
        body: Some(request::Body::System(v1::SystemMessage {
            channel: body.channel,
            client_msg_id: body.client_msg_id,
            text: body.text,
            users: body.users,
        })),
    };
    let encoded = request.encode_to_vec();
    let decoded = decode_request(&encoded, &state.shared.chat.limits);
    let command = decoded.command.map_err(ApiError::from_chat)?;
    Ok((command, encoded))
}

//! The account endpoints: register, login (a token and the MQTT endpoints),
//! logout, password change.
//!
//! Argon2 runs on the auth pool, store work on blocking threads; failed
//! logins and password changes are limited per user and per address
//! ([`crate::auth::limiter`]).

use std::net::IpAddr;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use parley_chat_logic::ids;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, BearerText, JsonBody};
use super::{ClientAddr, HttpState};
use crate::accounts;
use crate::auth::{Bearer, Refusal};
use crate::error::{blocking, BrokerError};
use crate::metrics as m;
use crate::router::{Devices, Eviction};

/// How long a logout waits for the device's connection to finish.
const LOGOUT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Deserialize)]
pub struct Register {
    user_id: String,
    password: String,
}

/// `POST /v1/register` {user_id, password}: 201, 409 taken, 400 invalid.
pub async fn register(
    State(state): State<HttpState>,
    JsonBody(body): JsonBody<Register>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let store = state.shared.store.clone();
    let (user, password) = (body.user_id.clone(), body.password.clone());
    blocking(move || accounts::check_new_user(&store, &user, &password)).await?;
    let hash = state.shared.auth.passwords().hash(&body.password).await?;
    // Check and write under one lock: two registrations of one id race.
    let _one_at_a_time = state.registering.lock().await;
    let (store, user) = (state.shared.store.clone(), body.user_id.clone());
    blocking(move || {
        if store.has_user(&user)? {
            return Err(BrokerError::UserExists(user));
        }
        accounts::put_new_user(&store, &user, hash)
    })
    .await?;
    tracing::info!(user = %body.user_id, "account registered");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "user_id": body.user_id })),
    ))
}

#[derive(Deserialize)]
pub struct Login {
    user_id: String,
    password: String,
    device_id: String,
}

/// `POST /v1/login` {user_id, password, device_id} -> {token, expires_at,
/// mqtt}: 401 on a wrong password or unknown user, 429 while limited.
pub async fn login(
    State(state): State<HttpState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Login>,
) -> Result<Json<Value>, ApiError> {
    ids::validate_id(ids::IdKind::Device, &body.device_id)
        .map_err(|e| ApiError::bad_request(e.message))?;
    check_password_attempt(&state, &body.user_id, &body.password, addr).await?;
    let ttl_ms = i64::try_from(state.shared.config.token_ttl().as_millis()).unwrap_or(i64::MAX);
    let issued = state
        .shared
        .auth
        .issue_token(&body.user_id, &body.device_id, ttl_ms)
        .await?;
    m::login("success");
    tracing::info!(user = %body.user_id, device = %body.device_id, %addr, "logged in");
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok());
    Ok(Json(json!({
        "token": issued.text,
        "expires_at": issued.expires_ms / 1000,
        "user_id": body.user_id,
        "device_id": body.device_id,
        "mqtt": state.discovery.endpoints(host),
    })))
}

/// `POST /v1/logout` (bearer: a login token): the same as an MQTT `Logout`
/// from that token's device. The token is revoked, the device's connection
/// told to go (it drops its own durable session as it ends), or, when it is
/// not connected, its session dropped here.
pub async fn logout(
    State(state): State<HttpState>,
    BearerText(text): BearerText,
) -> Result<Json<Value>, ApiError> {
    let (bearer, device) = device_bearer(&state, &text).await?;
    let user = bearer.token.user.clone();
    state.shared.auth.revoke(bearer.digest).await?;
    let finished = state
        .shared
        .router
        .evict(&user, Devices::Only(&device), Eviction::LoggedOut);
    if finished.is_empty() {
        let sessions = state.shared.sessions.clone();
        let (owner, owned_device) = (user.clone(), device.clone());
        blocking(move || Ok(sessions.delete(&owner, &owned_device)?)).await?;
        // not connected, maybe within its grace period: offline now
        state.shared.presence.sign_out(&user, &device);
    }
    state.shared.chat.push.unregister(&user, &device).await?;
    for connection in finished {
        let _ = tokio::time::timeout(LOGOUT_WAIT, connection.wait()).await;
    }
    tracing::info!(%user, %device, "logged out over http");
    Ok(Json(json!({ "status": "logged_out" })))
}

#[derive(Deserialize)]
pub struct ChangePassword {
    old_password: String,
    new_password: String,
}

/// `POST /v1/password` (bearer, {old_password, new_password}): every other
/// token of the user revoked, every other connection of the user closed.
pub async fn change_password(
    State(state): State<HttpState>,
    ClientAddr(addr): ClientAddr,
    BearerText(text): BearerText,
    JsonBody(body): JsonBody<ChangePassword>,
) -> Result<Json<Value>, ApiError> {
    let (bearer, device) = device_bearer(&state, &text).await?;
    let user = bearer.token.user.clone();
    check_password_attempt(&state, &user, &body.old_password, addr).await?;
    accounts::check_new_password(&body.new_password)?;
    let hash = state
        .shared
        .auth
        .passwords()
        .hash(&body.new_password)
        .await?;
    let (store, id) = (state.shared.store.clone(), user.clone());
    blocking(move || accounts::set_password_hash(&store, &id, hash)).await?;
    let revoked = state
        .shared
        .auth
        .revoke_all_but(&user, bearer.digest)
        .await?;
    let closed = state
        .shared
        .router
        .evict(
            &user,
            Devices::AllBut(&device),
            Eviction::CredentialsRevoked,
        )
        .len();
    tracing::info!(%user, revoked, closed, "password changed");
    Ok(Json(
        json!({ "status": "password_changed", "tokens_revoked": revoked, "connections_closed": closed }),
    ))
}

/// A valid login token of a user's device (not a service secret).
async fn device_bearer(state: &HttpState, text: &str) -> Result<(Bearer, String), ApiError> {
    let Some(bearer) = state.shared.auth.bearer(text).await? else {
        return Err(ApiError::unauthorized(
            "the token is unknown, revoked or expired",
        ));
    };
    let Some(device) = bearer.token.device.clone() else {
        return Err(ApiError::forbidden(
            "a service secret is not a device login",
        ));
    };
    Ok((bearer, device))
}

/// Checks `password` for `user` under the failed-attempt limits (the same
/// ones as CONNECT's, kept by [`crate::auth`]).
async fn check_password_attempt(
    state: &HttpState,
    user: &str,
    password: &str,
    addr: IpAddr,
) -> Result<(), ApiError> {
    let wrong = || ApiError::unauthorized("wrong user id or password");
    if !ids::is_valid_id(user) {
        m::login("failure");
        return Err(wrong());
    }
    match state
        .shared
        .auth
        .check_password(user, addr, password)
        .await?
    {
        None => Ok(()),
        Some(Refusal::RateLimited) => {
            m::login("rate_limited");
            m::refused("login_rate_limited");
            tracing::warn!(%user, %addr, "login refused: too many failed attempts");
            Err(ApiError::rate_limited(
                "too many failed login attempts for this user or address; wait a few minutes",
            ))
        }
        Some(_) => {
            m::login("failure");
            tracing::warn!(%user, %addr, "login refused: wrong user id or password");
            Err(wrong())
        }
    }
}

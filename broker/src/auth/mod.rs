//! Who is connecting: CONNECT credentials and HTTP bearers, checked against
//! the accounts in the store.
//!
//! Owns: the decision whether a CONNECT or an HTTP request is let in, the
//! argon2 pool ([`passwords`]) and the failed-login limits ([`limiter`]).
//! Must not: store anything itself (accounts and tokens are
//! [`crate::accounts`]'s) or know about MQTT packets (the connection maps a
//! [`Verdict`] to a CONNACK).
//!
//! A CONNECT password is, in this order:
//! 1. a **token** (`pt_…`, from `POST /v1/login`, or a service secret):
//!    valid only for the client id it was issued to (any device of its
//!    service for a secret), until it expires or is revoked. One SHA-256
//!    and one point read; nothing is cached, so a revoked token is refused
//!    by the very next CONNECT;
//! 2. otherwise, for a user and only while `allow_password_login` is set,
//!    the **account password**, verified with argon2 on the pool (cached:
//!    see [`passwords`]).
//!
//! A service account has no password: only its secret lets it in, whatever
//! `allow_password_login` says.

pub mod limiter;
pub mod passwords;

use std::net::IpAddr;

use parley_chat_logic::ids::{AccountKind, ClientId};
use parley_storage::{Store, TokenFilter, TokenRecord};

use crate::accounts::tokens::{self, NewToken, TokenCheck, TokenDigest};
use crate::clock::now_ms;
use crate::config::Config;
use crate::error::{blocking, BrokerError};
use limiter::LoginLimiter;
pub use passwords::Passwords;

/// The answer to a CONNECT's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let in; with the digest of the token it used, if it used one (a
    /// `Logout` revokes that token).
    Accepted { token: Option<TokenDigest> },
    /// Refused, and why (for the log; the client only learns "not authorized").
    Refused(Refusal),
}

/// Why credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Wrong password, unknown user, or a password for a service.
    BadPassword,
    /// A token this broker never issued, or one that was revoked.
    UnknownToken,
    /// A token past its expiry.
    ExpiredToken,
    /// A valid token, issued to another client id.
    TokenOfAnotherClient,
    /// A password while `allow_password_login` is off.
    PasswordLoginDisabled,
    /// Too many failed password attempts for the user or the address.
    RateLimited,
}

impl Refusal {
    /// A stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BadPassword => "bad_password",
            Refusal::UnknownToken => "unknown_or_revoked_token",
            Refusal::ExpiredToken => "expired_token",
            Refusal::TokenOfAnotherClient => "token_of_another_client_id",
            Refusal::PasswordLoginDisabled => "password_login_disabled",
            Refusal::RateLimited => "login_rate_limited",
        }
    }
}

/// A token just issued by [`Authenticator::issue_token`].
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The token, to hand to the client once.
    pub text: String,
    /// When it expires, ms since the Unix epoch.
    pub expires_ms: i64,
}

/// A valid bearer token or service secret.
#[derive(Debug, Clone)]
pub struct Bearer {
    pub digest: TokenDigest,
    pub token: TokenRecord,
}

/// Checks credentials; see the module docs for the rules.
pub struct Authenticator {
    store: Store,
    passwords: Passwords,
    logins: LoginLimiter,
    allow_password_login: bool,
}

impl Authenticator {
    /// An authenticator over `store`, with its argon2 pool started.
    pub fn new(store: Store, config: &Config) -> Self {
        Authenticator {
            passwords: Passwords::new(store.clone()),
            logins: LoginLimiter::new(config),
            store,
            allow_password_login: config.allow_password_login,
        }
    }

    /// The argon2 pool (the HTTP API hashes passwords there).
    pub fn passwords(&self) -> &Passwords {
        &self.passwords
    }

    /// Checks the CONNECT of `client` from `addr` with `password`.
    pub async fn connect(
        &self,
        client: &ClientId,
        addr: IpAddr,
        password: &str,
    ) -> Result<Verdict, BrokerError> {
        if tokens::is_token_shaped(password) {
            return self.connect_with_token(client, password).await;
        }
        if client.kind() == AccountKind::Service {
            return Ok(Verdict::Refused(Refusal::BadPassword));
        }
        if !self.allow_password_login {
            return Ok(Verdict::Refused(Refusal::PasswordLoginDisabled));
        }
        match self.check_password(&client.user, addr, password).await? {
            None => Ok(Verdict::Accepted { token: None }),
            Some(refusal) => Ok(Verdict::Refused(refusal)),
        }
    }

    /// Checks `user`'s password from `addr` under the failed-attempt limits
    /// (one set of limits for CONNECT and the HTTP API): `None` when it is
    /// right. While a limit is reached the password is not even checked.
    pub async fn check_password(
        &self,
        user: &str,
        addr: IpAddr,
        password: &str,
    ) -> Result<Option<Refusal>, BrokerError> {
        if !self.logins.allows(user, addr) {
            return Ok(Some(Refusal::RateLimited));
        }
        if self.passwords.verify(user, password).await? {
            return Ok(None);
        }
        self.logins.failed(user, addr);
        Ok(Some(Refusal::BadPassword))
    }

    async fn connect_with_token(
        &self,
        client: &ClientId,
        text: &str,
    ) -> Result<Verdict, BrokerError> {
        let verdict = match self.check_token(text).await? {
            TokenCheck::Unknown => Verdict::Refused(Refusal::UnknownToken),
            TokenCheck::Expired => Verdict::Refused(Refusal::ExpiredToken),
            TokenCheck::Valid(digest, token) => {
                if tokens::admits(&token, &client.user, &client.device) {
                    // A device's login token is revoked by its Logout; a
                    // service secret serves every device and is not.
                    let token = token.device.is_some().then_some(digest);
                    Verdict::Accepted { token }
                } else {
                    Verdict::Refused(Refusal::TokenOfAnotherClient)
                }
            }
        };
        Ok(verdict)
    }

    /// The bearer `text` of an HTTP request, if it is a valid token or
    /// service secret.
    pub async fn bearer(&self, text: &str) -> Result<Option<Bearer>, BrokerError> {
        match self.check_token(text).await? {
            TokenCheck::Valid(digest, token) => Ok(Some(Bearer { digest, token })),
            TokenCheck::Unknown | TokenCheck::Expired => Ok(None),
        }
    }

    async fn check_token(&self, text: &str) -> Result<TokenCheck, BrokerError> {
        let (store, text) = (self.store.clone(), text.to_owned());
        blocking(move || tokens::check(&store, &text, now_ms())).await
    }

    /// Issues a token for `user`'s `device`, valid for `ttl_ms`, and drops
    /// the user's expired tokens on the way (so they do not pile up).
    pub async fn issue_token(
        &self,
        user: &str,
        device: &str,
        ttl_ms: i64,
    ) -> Result<IssuedToken, BrokerError> {
        let store = self.store.clone();
        let (user, device) = (user.to_owned(), device.to_owned());
        blocking(move || {
            let now = now_ms();
            let expired = TokenFilter {
                only_expired: true,
                ..TokenFilter::default()
            };
            store.delete_tokens(&user, expired, now)?;
            let NewToken { text, digest } = tokens::generate();
            let record = TokenRecord {
                user,
                device: Some(device),
                issued_ms: now,
                expires_ms: now.saturating_add(ttl_ms),
            };
            store.put_token(&digest.0, &record)?;
            Ok(IssuedToken {
                text,
                expires_ms: record.expires_ms,
            })
        })
        .await
    }

    /// Revokes one token (a logout). No error if it was gone already.
    pub async fn revoke(&self, digest: TokenDigest) -> Result<(), BrokerError> {
        let store = self.store.clone();
        blocking(move || {
            store
                .delete_token(&digest.0)
                .map(drop)
                .map_err(BrokerError::from)
        })
        .await
    }

    /// Revokes every token of `user` but `keep` (a password change).
    pub async fn revoke_all_but(
        &self,
        user: &str,
        keep: TokenDigest,
    ) -> Result<usize, BrokerError> {
        let (store, user) = (self.store.clone(), user.to_owned());
        blocking(move || {
            let filter = TokenFilter {
                keep: Some(&keep.0),
                ..TokenFilter::default()
            };
            Ok(store.delete_tokens(&user, filter, now_ms())?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts;

    const PASSWORD: &str = "alice-password";
    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn authenticator(allow_password_login: bool) -> (tempfile::TempDir, Store, Authenticator) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        accounts::add_user(&store, "alice", PASSWORD).unwrap();
        let mut config = Config::defaults();
        config.allow_password_login = allow_password_login;
        config.login_failures_per_user = 3;
        let auth = Authenticator::new(store.clone(), &config);
        (dir, store, auth)
    }

    fn client(user: &str, device: &str) -> ClientId {
        ClientId {
            user: user.into(),
            device: device.into(),
        }
    }

    fn refused(why: Refusal) -> Verdict {
        Verdict::Refused(why)
    }

    #[tokio::test]
    async fn a_token_works_for_its_client_id_until_revoked() {
        let (_dir, _store, auth) = authenticator(false);
        let issued = auth.issue_token("alice", "phone", 60_000).await.unwrap();
        let phone = client("alice", "phone");
        let verdict = auth.connect(&phone, HERE, &issued.text).await.unwrap();
        let Verdict::Accepted {
            token: Some(digest),
        } = verdict
        else {
            panic!("{verdict:?}")
        };
        let laptop = client("alice", "laptop");
        assert_eq!(
            auth.connect(&laptop, HERE, &issued.text).await.unwrap(),
            refused(Refusal::TokenOfAnotherClient)
        );
        let bob = client("bob", "phone");
        assert_eq!(
            auth.connect(&bob, HERE, &issued.text).await.unwrap(),
            refused(Refusal::TokenOfAnotherClient)
        );
        auth.revoke(digest).await.unwrap();
        assert_eq!(
            auth.connect(&phone, HERE, &issued.text).await.unwrap(),
            refused(Refusal::UnknownToken)
        );
        let forged = tokens::generate().text;
        assert_eq!(
            auth.connect(&phone, HERE, &forged).await.unwrap(),
            refused(Refusal::UnknownToken)
        );
    }

    #[tokio::test]
    async fn an_expired_token_is_refused() {
        let (_dir, _store, auth) = authenticator(true);
        let issued = auth.issue_token("alice", "phone", -1).await.unwrap();
        let phone = client("alice", "phone");
        assert_eq!(
            auth.connect(&phone, HERE, &issued.text).await.unwrap(),
            refused(Refusal::ExpiredToken)
        );
        assert!(auth.bearer(&issued.text).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn passwords_only_while_allowed_and_never_for_services() {
        let (_dir, store, auth) = authenticator(true);
        let phone = client("alice", "phone");
        assert_eq!(
            auth.connect(&phone, HERE, PASSWORD).await.unwrap(),
            Verdict::Accepted { token: None }
        );
        assert_eq!(
            auth.connect(&phone, HERE, "wrong-password").await.unwrap(),
            refused(Refusal::BadPassword)
        );
        let secret = accounts::add_service(&store, "bot").unwrap();
        let bot = client("svc:bot", "worker");
        let verdict = auth.connect(&bot, HERE, &secret).await.unwrap();
        let kept = Verdict::Accepted { token: None };
        assert_eq!(verdict, kept, "a Logout must not revoke a service secret");
        assert_eq!(
            auth.connect(&bot, HERE, PASSWORD).await.unwrap(),
            refused(Refusal::BadPassword)
        );
        let (_dir, _store, strict) = authenticator(false);
        assert_eq!(
            strict.connect(&phone, HERE, PASSWORD).await.unwrap(),
            refused(Refusal::PasswordLoginDisabled)
        );
    }

    #[tokio::test]
    async fn failed_connect_passwords_are_limited_like_logins() {
        let (_dir, _store, auth) = authenticator(true);
        let phone = client("alice", "phone");
        for _ in 0..3 {
            let verdict = auth.connect(&phone, HERE, "guess-guess").await.unwrap();
            assert_eq!(verdict, refused(Refusal::BadPassword));
        }
        let verdict = auth.connect(&phone, HERE, PASSWORD).await.unwrap();
        assert_eq!(
            verdict,
            refused(Refusal::RateLimited),
            "locked, right or not"
        );
        let token = auth.issue_token("alice", "phone", 60_000).await.unwrap();
        let verdict = auth.connect(&phone, HERE, &token.text).await.unwrap();
        assert!(
            matches!(verdict, Verdict::Accepted { .. }),
            "tokens are not limited"
        );
    }

    #[tokio::test]
    async fn revoke_all_but_keeps_one() {
        let (_dir, _store, auth) = authenticator(false);
        let keep = auth.issue_token("alice", "phone", 60_000).await.unwrap();
        let other = auth.issue_token("alice", "laptop", 60_000).await.unwrap();
        let kept = auth.bearer(&keep.text).await.unwrap().unwrap();
        assert_eq!(auth.revoke_all_but("alice", kept.digest).await.unwrap(), 1);
        assert!(auth.bearer(&other.text).await.unwrap().is_none());
        assert!(auth.bearer(&keep.text).await.unwrap().is_some());
    }
}

//! The chat plugin: what the broker does with a request published on
//! `req/{user}/{device}`.
//!
//! [`ChatService::handle`] decodes and validates the request (pure rules in
//! `parley-chat-logic`), sends writes to the [`engine`] thread and answers
//! reads from the store, and always yields exactly one `Reply`.

pub mod engine;
mod plan;
pub mod reads;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use parley_chat_logic::command::{decode_request, salvage_request_id, Command};
use parley_chat_logic::ids::AccountKind;
use parley_chat_logic::limits::Limits;
use parley_chat_logic::ChatError;
use parley_proto::v1::{reply, Reply};
use parley_storage::Store;

use crate::metrics as m;
pub use engine::{encode_envelope, EngineHandle};

/// Everything a connection needs to serve chat requests.
#[derive(Clone)]
pub struct ChatService {
    pub store: Store,
    pub engine: EngineHandle,
    pub limits: Arc<Limits>,
}

/// A request being handled: its reply to come, and what the connection
/// must do once the reply is out.
pub struct Handled<F> {
    pub reply: F,
    pub then: Then,
}

/// What the connection does after a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Nothing more.
    Continue,
    /// The device signed out (`Logout`): revoke its token, drop its durable
    /// session, close the connection.
    Logout,
}

impl ChatService {
    /// Starts handling one request from account `user`. The queueing happens
    /// before this returns (so requests of one device keep their order); the
    /// reply future resolves once the reply is ready (after the commit, for
    /// writes).
    pub async fn handle(
        &self,
        user: &str,
        payload: &[u8],
    ) -> Handled<impl Future<Output = Reply> + Send + 'static> {
        let decoded = decode_request(payload, &self.limits);
        let request_id = decoded.request_id;
        let then = match decoded.command {
            Ok(Command::Logout) => Then::Logout,
            _ => Then::Continue,
        };
        let pending = match decoded
            .command
            .and_then(|command| allowed_for(user, command))
        {
            Ok(command) => self.start(user, command).await,
            Err(error) => Pending::Ready(Err(error)),
        };
        let reply = async move {
            let body = match pending.finish().await {
                Ok(body) => body,
                Err(error) => {
                    m::error(error.code.as_str_name());
                    reply::Body::Error(error.to_reply_error())
                }
            };
            Reply {
                request_id,
                body: Some(body),
            }
        };
        Handled { reply, then }
    }

    /// The reply refusing `payload` with `error`, without handling it (a
    /// rate limit): only its `request_id` is read.
    pub fn refuse(&self, payload: &[u8], error: ChatError) -> Reply {
        m::error(error.code.as_str_name());
        Reply {
            request_id: salvage_request_id(payload),
            body: Some(reply::Body::Error(error.to_reply_error())),
        }
    }

    async fn start(&self, user: &str, command: Command) -> Pending {
        match command {
            Command::Sync(sync) => {
                let store = self.store.clone();
                let user = user.to_owned();
                Pending::Blocking(tokio::task::spawn_blocking(move || {
                    reads::sync(&store, &user, sync.after_inbox_seq, sync.limit)
                        .map(reply::Body::SyncPage)
                }))
            }
            Command::History(history) => {
                let store = self.store.clone();
                let user = user.to_owned();
                Pending::Blocking(tokio::task::spawn_blocking(move || {
                    reads::history(
                        &store,
                        &user,
                        &history.channel,
                        history.before_seq,
                        history.limit,
                    )
                    .map(reply::Body::HistoryPage)
                }))
            }
            Command::Logout => Pending::Ready(Ok(reply::Body::Ack(parley_proto::v1::Ack {
                ts_ms: crate::clock::now_ms(),
                ..Default::default()
            }))),
            Command::Unsupported(name) => Pending::Ready(Err(ChatError::bad_request(format!(
                "{name} is not supported yet"
            )))),
            write => match self.engine.submit(user.to_owned(), write).await {
                Ok(result) => Pending::Engine(result),
                Err(error) => Pending::Ready(Err(error)),
            },
        }
    }
}

/// Who may ask what: a service account only reads its own inbox and signs
/// out (chat messages and groups are for users; services send system
/// messages); only a service may send a system message.
fn allowed_for(user: &str, command: Command) -> Result<Command, ChatError> {
    let service = AccountKind::of(user) == Some(AccountKind::Service);
    let service_may = matches!(
        command,
        Command::Sync(_) | Command::History(_) | Command::Logout | Command::Unsupported(_)
    );
    if service && !service_may {
        return Err(ChatError::forbidden(format!(
            "a service account cannot {}: services send system messages",
            command.name()
        )));
    }
    if !service && command == Command::Unsupported("system") {
        return Err(ChatError::forbidden(
            "only service accounts may send system messages",
        ));
    }
    Ok(command)
}

/// A request on its way to a reply.
enum Pending {
    Ready(Result<reply::Body, ChatError>),
    Blocking(tokio::task::JoinHandle<Result<reply::Body, ChatError>>),
    Engine(tokio::sync::oneshot::Receiver<engine::JobResult>),
}

impl Pending {
    async fn finish(self) -> Result<reply::Body, ChatError> {
        match self {
            Pending::Ready(result) => result,
            Pending::Blocking(task) => task
                .await
                .unwrap_or_else(|_| Err(ChatError::internal("request task failed"))),
            Pending::Engine(result) => match result.await {
                Ok(result) => result.map(reply::Body::Ack),
                Err(_) => Err(ChatError::internal("the chat engine has stopped")),
            },
        }
    }
}

/// Encodes a reply for the wire.
pub fn encode_reply(reply: &Reply) -> Bytes {
    use prost::Message;
    Bytes::from(reply.encode_to_vec())
}

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
use parley_chat_logic::command::{decode_request, Command};
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

impl ChatService {
    /// Starts handling one request. The queueing happens before this returns
    /// (so requests of one device keep their order); the returned future
    /// resolves to the reply once it is ready (after the commit, for writes).
    pub async fn handle(
        &self,
        user: &str,
        payload: &[u8],
    ) -> impl Future<Output = Reply> + Send + 'static {
        let decoded = decode_request(payload, &self.limits);
        let request_id = decoded.request_id;
        let pending = match decoded.command {
            Ok(command) => self.start(user, command).await,
            Err(error) => Pending::Ready(Err(error)),
        };
        async move {
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

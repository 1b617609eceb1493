//! The chat plugin: what the broker does with a request published on
//! `req/{user}/{device}`.
//!
//! [`ChatService::handle`] decodes and validates the request (pure rules in
//! `parley-chat-logic`), sends writes to the [`engine`] thread (group
//! commit), answers reads from the store ([`reads`]), forwards live-only
//! events ([`typing`]), and always yields exactly one `Reply`.

pub mod commit;
pub mod engine;
mod outcome;
mod plan;
mod priority;
pub mod reads;
pub mod typing;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use parley_chat_logic::command::{
    decode_request, salvage_request_id, Command, RegisterPush, Typing,
};
use parley_chat_logic::ids::AccountKind;
use parley_chat_logic::limits::Limits;
use parley_chat_logic::ChatError;
use parley_proto::v1::{reply, Ack, Reply};
use parley_storage::Store;

use crate::metrics as m;
use crate::presence::Presence;
use crate::push::Push;
use crate::router::Router;
pub use engine::EngineHandle;
pub use outcome::{encode_envelope, Committed, JobResult};
pub use typing::TypingLimit;

/// Everything a connection needs to serve chat requests.
#[derive(Clone)]
pub struct ChatService {
    pub store: Store,
    pub engine: EngineHandle,
    pub limits: Arc<Limits>,
    pub router: Arc<Router>,
    pub presence: Arc<Presence>,
    pub push: Arc<Push>,
}

/// Who sent a request: the account, its device, and the device's typing
/// allowance (kept by the connection).
pub struct Requester<'a> {
    pub user: &'a str,
    pub device: &'a str,
    pub typing: &'a mut TypingLimit,
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
    /// Starts handling one request. The queueing happens before this
    /// returns (so requests of one device keep their order); the reply
    /// future resolves once the reply is ready (after the commit, for
    /// writes).
    pub async fn handle(
        &self,
        requester: Requester<'_>,
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
            .and_then(|command| allowed_for(requester.user, command))
        {
            Ok(command) => self.start(requester, command, payload).await,
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

    /// Starts `command`: reads on a blocking thread, push registrations in
    /// a task, writes through the engine.
    async fn start(&self, requester: Requester<'_>, command: Command, request: &[u8]) -> Pending {
        let user = requester.user.to_owned();
        let device = requester.device.to_owned();
        let store = self.store.clone();
        match command {
            Command::Sync(sync) => Pending::blocking(move || {
                reads::sync(&store, &user, sync.after_inbox_seq, sync.limit)
                    .map(reply::Body::SyncPage)
            }),
            Command::History(history) => Pending::blocking(move || {
                reads::history(
                    &store,
                    &user,
                    &history.channel,
                    history.before_seq,
                    history.limit,
                )
                .map(reply::Body::HistoryPage)
            }),
            Command::QueryPresence(query) => {
                let presence = self.presence.clone();
                Pending::blocking(move || {
                    reads::presence(&store, &presence, &user, &query.users)
                        .map(reply::Body::Presence)
                })
            }
            Command::Typing(notice) => self.forward_typing(requester.typing, store, user, notice),
            Command::RegisterPush(register) => {
                let push = self.push.clone();
                Pending::Task(tokio::spawn(async move {
                    register_push(&push, &user, &device, register).await
                }))
            }
            Command::Logout => self.logout(user, device),
            write => match self.engine.submit(user, write, request).await {
                Ok(result) => Pending::Engine(result),
                Err(error) => Pending::Ready(Err(error)),
            },
        }
    }

    /// `Typing`: within the device's `allowance`, forwarded live to the
    /// channel's other members.
    fn forward_typing(
        &self,
        allowance: &mut TypingLimit,
        store: Store,
        user: String,
        notice: Typing,
    ) -> Pending {
        if let Err(error) = allowance.take() {
            return Pending::Ready(Err(error));
        }
        let router = self.router.clone();
        Pending::blocking(move || {
            typing::forward(&store, &router, &user, &notice.channel).map(reply::Body::Ack)
        })
    }

    /// `Logout`: drops the device's push registration.
    fn logout(&self, user: String, device: String) -> Pending {
        let push = self.push.clone();
        Pending::Task(tokio::spawn(async move {
            // the device signs out: it gets no more notifications
            if let Err(error) = push.unregister(&user, &device).await {
                tracing::error!(%error, "cannot drop the push registration at logout");
            }
            Ok(ack_now())
        }))
    }
}

/// `RegisterPush`: store this device's registration, or drop it (empty token).
async fn register_push(
    push: &Push,
    user: &str,
    device: &str,
    register: RegisterPush,
) -> Result<reply::Body, ChatError> {
    let done = match register.registration {
        Some(target) => {
            push.register(user, device, &target.platform, &target.token)
                .await
        }
        None => push.unregister(user, device).await.map(|_| ()),
    };
    done.map(|()| ack_now()).map_err(|error| {
        tracing::error!(%error, "cannot store the push registration");
        ChatError::internal("storage failure")
    })
}

fn ack_now() -> reply::Body {
    reply::Body::Ack(Ack {
        ts_ms: crate::clock::now_ms(),
        ..Default::default()
    })
}

/// Who may ask what: a service account reads its own inbox, sends system
/// messages and signs out (chat, groups, friends and presence are for
/// users); only a service may send a system message.
fn allowed_for(user: &str, command: Command) -> Result<Command, ChatError> {
    let service = AccountKind::of(user) == Some(AccountKind::Service);
    let service_may = matches!(
        command,
        Command::Sync(_) | Command::History(_) | Command::Logout | Command::System(_)
    );
    if service && !service_may {
        return Err(ChatError::forbidden(format!(
            "a service account cannot {}: services send system messages",
            command.name()
        )));
    }
    if !service && matches!(command, Command::System(_)) {
        return Err(ChatError::forbidden(
            "only service accounts may send system messages",
        ));
    }
    Ok(command)
}

/// A request on its way to a reply.
enum Pending {
    Ready(Result<reply::Body, ChatError>),
    /// Blocking store work, or an async task.
    Task(tokio::task::JoinHandle<Result<reply::Body, ChatError>>),
    Engine(tokio::sync::oneshot::Receiver<JobResult>),
}

impl Pending {
    fn blocking(work: impl FnOnce() -> Result<reply::Body, ChatError> + Send + 'static) -> Pending {
        Pending::Task(tokio::task::spawn_blocking(work))
    }

    async fn finish(self) -> Result<reply::Body, ChatError> {
        match self {
            Pending::Ready(result) => result,
            Pending::Task(task) => task
                .await
                .unwrap_or_else(|_| Err(ChatError::internal("request task failed"))),
            Pending::Engine(result) => match result.await {
                Ok(result) => result.map(|committed| reply::Body::Ack(committed.ack)),
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

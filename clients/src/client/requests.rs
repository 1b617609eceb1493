//! The typed requests of [`Client`]: one method per request kind of the
//! contract (send, sync, history, groups, friends, presence queries,
//! receipts, typing, push registration, logout), each built on
//! [`Client::request`], and the decoding of their replies.

use parley_proto::v1::{
    self, reply, request, Ack, ErrorCode, HistoryPage, Presence, ReceiptKind, Reply, SyncPage,
};

use super::Client;
use crate::error::ClientError;

impl Client {
    /// Sends `text` to `channel` with a fresh `client_msg_id`; returns the `Ack`.
    pub async fn send(&self, channel: &str, text: &str) -> Result<Ack, ClientError> {
        let client_msg_id = self.inner.ids.next_id();
        self.send_with_id(channel, &client_msg_id, text).await
    }

    /// Sends `text` to `channel` with the caller's `client_msg_id`: a retry
    /// with the same id is answered with the original `Ack` and `duplicate = true`.
    pub async fn send_with_id(
        &self,
        channel: &str,
        client_msg_id: &str,
        text: &str,
    ) -> Result<Ack, ClientError> {
        let body = request::Body::Send(v1::SendMessage {
            channel: channel.to_string(),
            client_msg_id: client_msg_id.to_string(),
            text: text.to_string(),
        });
        expect_ack(self.request(body).await?)
    }

    /// The user's inbox events after `after` (an `inbox_seq`), at most `limit`
    /// of them (0 means the broker's default, 100; the broker caps it at 1,000).
    pub async fn sync(&self, after: u64, limit: u32) -> Result<SyncPage, ClientError> {
        let body = request::Body::Sync(v1::Sync {
            after_inbox_seq: after,
            limit,
        });
        match into_body(self.request(body).await?)? {
            reply::Body::SyncPage(page) => Ok(page),
            other => Err(unexpected("SyncPage", &other)),
        }
    }

    /// A page of `channel`'s messages older than `before` (0: the newest), newest first.
    pub async fn history(
        &self,
        channel: &str,
        before: u64,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        let body = request::Body::History(v1::History {
            channel: channel.to_string(),
            before_seq: before,
            limit,
        });
        match into_body(self.request(body).await?)? {
            reply::Body::HistoryPage(page) => Ok(page),
            other => Err(unexpected("HistoryPage", &other)),
        }
    }

    /// Creates group `group_id` (channel `g:{group_id}`) with this user as
    /// owner and the given other members.
    pub async fn create_group(
        &self,
        group_id: &str,
        name: &str,
        members: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Ack, ClientError> {
        let body = request::Body::CreateGroup(v1::CreateGroup {
            group_id: group_id.to_string(),
            name: name.to_string(),
            members: members.into_iter().map(Into::into).collect(),
        });
        expect_ack(self.request(body).await?)
    }

    /// Adds and removes members of group `group_id`.
    pub async fn change_members(
        &self,
        group_id: &str,
        add: impl IntoIterator<Item = impl Into<String>>,
        remove: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Ack, ClientError> {
        let body = request::Body::ChangeMembers(v1::ChangeMembers {
            group_id: group_id.to_string(),
            add: add.into_iter().map(Into::into).collect(),
            remove: remove.into_iter().map(Into::into).collect(),
        });
        expect_ack(self.request(body).await?)
    }

    /// Leaves group `group_id`.
    pub async fn leave_group(&self, group_id: &str) -> Result<Ack, ClientError> {
        let body = request::Body::LeaveGroup(v1::LeaveGroup {
            group_id: group_id.to_string(),
        });
        expect_ack(self.request(body).await?)
    }

    /// Sends friend requests to `add` (or accepts theirs) and ends the
    /// friendships or requests with `remove`, all or nothing. The answer is
    /// `Ack{channel: "", seq: 0}`; each change arrives as a `FriendEvent` in
    /// both users' inboxes. `NOT_FOUND` for an unknown user, `BAD_REQUEST`
    /// for oneself, `LIMIT_EXCEEDED` past the broker's `max_friends`.
    pub async fn change_friends(
        &self,
        add: impl IntoIterator<Item = impl Into<String>>,
        remove: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Ack, ClientError> {
        let body = request::Body::ChangeFriends(v1::ChangeFriends {
            add: add.into_iter().map(Into::into).collect(),
            remove: remove.into_iter().map(Into::into).collect(),
        });
        expect_ack(self.request(body).await?)
    }

    /// The current presence of each of `users`, who must each be this
    /// user, a friend or a member of one of this user's groups (otherwise
    /// the whole query is `FORBIDDEN`). One entry per distinct user, each
    /// naming its `user`; the broker answers them sorted by user id.
    pub async fn query_presence(
        &self,
        users: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Vec<Presence>, ClientError> {
        let body = request::Body::QueryPresence(v1::QueryPresence {
            users: users.into_iter().map(Into::into).collect(),
        });
        match into_body(self.request(body).await?)? {
            reply::Body::Presence(list) => Ok(list.users),
            other => Err(unexpected("PresenceList", &other)),
        }
    }

    /// Marks `channel` delivered or read up to `seq` (a stale or repeated
    /// receipt changes nothing); every member's inbox gets a `ReceiptEvent`.
    pub async fn receipt(
        &self,
        channel: &str,
        seq: u64,
        kind: ReceiptKind,
    ) -> Result<Ack, ClientError> {
        let body = request::Body::Receipt(v1::MarkReceipt {
            channel: channel.to_string(),
            seq,
            kind: kind as i32,
        });
        expect_ack(self.request(body).await?)
    }

    /// Tells the other members of `channel` that this user is typing: a
    /// live-only `TypingEvent` (inbox_seq 0, never stored).
    pub async fn typing(&self, channel: &str) -> Result<Ack, ClientError> {
        let body = request::Body::Typing(v1::Typing {
            channel: channel.to_string(),
        });
        expect_ack(self.request(body).await?)
    }

    /// Registers this device for push notifications (`platform` is the
    /// gateway's app id, `token` its pushkey); an empty `token` unregisters it.
    pub async fn register_push(&self, platform: &str, token: &str) -> Result<Ack, ClientError> {
        let body = request::Body::RegisterPush(v1::RegisterPush {
            platform: platform.to_string(),
            token: token.to_string(),
        });
        expect_ack(self.request(body).await?)
    }

    /// Signs this device out: the broker makes it offline at once, drops
    /// its push registration and durable session, revokes the token it
    /// connected with, answers, and closes the connection. Returns the
    /// broker's `Ack` once the connection is closed; buffered envelopes and
    /// presence updates can still be read.
    pub async fn logout(&self) -> Result<Ack, ClientError> {
        let ack = expect_ack(self.request(request::Body::Logout(v1::Logout {})).await?)?;
        self.disconnect().await?;
        Ok(ack)
    }
}

/// The reply's body; `Reply{error}` becomes [`ClientError::Server`].
pub(crate) fn into_body(reply: Reply) -> Result<reply::Body, ClientError> {
    match reply.body {
        Some(reply::Body::Error(err)) => Err(ClientError::Server {
            code: ErrorCode::try_from(err.code).unwrap_or(ErrorCode::Unspecified),
            message: err.message,
        }),
        Some(body) => Ok(body),
        None => Err(ClientError::UnexpectedReply(format!(
            "reply {} has no body",
            reply.request_id
        ))),
    }
}

/// An `Ack` reply; a reply with no body counts as an empty `Ack` (group changes).
pub(crate) fn expect_ack(reply: Reply) -> Result<Ack, ClientError> {
    if reply.body.is_none() {
        return Ok(Ack::default());
    }
    match into_body(reply)? {
        reply::Body::Ack(ack) => Ok(ack),
        other => Err(unexpected("Ack", &other)),
    }
}

fn unexpected(wanted: &str, got: &reply::Body) -> ClientError {
    let got = match got {
        reply::Body::Ack(_) => "Ack",
        reply::Body::Error(_) => "Error",
        reply::Body::SyncPage(_) => "SyncPage",
        reply::Body::HistoryPage(_) => "HistoryPage",
        reply::Body::Presence(_) => "PresenceList",
    };
    ClientError::UnexpectedReply(format!("wanted {wanted}, got {got}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(body: Option<reply::Body>) -> Reply {
        Reply {
            request_id: "r-1".into(),
            body,
        }
    }

    #[test]
    fn error_replies_become_server_errors() {
        let err = into_body(reply(Some(reply::Body::Error(v1::Error {
            code: ErrorCode::TooLarge as i32,
            message: "too long".into(),
        }))))
        .unwrap_err();
        assert_eq!(err.server_code(), Some(ErrorCode::TooLarge));
        assert!(err.to_string().contains("too long"));
    }

    #[test]
    fn unknown_error_codes_are_unspecified() {
        let err = into_body(reply(Some(reply::Body::Error(v1::Error {
            code: 999,
            message: String::new(),
        }))))
        .unwrap_err();
        assert_eq!(err.server_code(), Some(ErrorCode::Unspecified));
    }

    #[test]
    fn ack_expectations() {
        let ack = Ack {
            channel: "dm:a:b".into(),
            seq: 3,
            ts_ms: 1,
            duplicate: false,
        };
        assert_eq!(
            expect_ack(reply(Some(reply::Body::Ack(ack.clone())))).unwrap(),
            ack
        );
        assert_eq!(expect_ack(reply(None)).unwrap(), Ack::default());
        let err = expect_ack(reply(Some(reply::Body::SyncPage(SyncPage::default())))).unwrap_err();
        assert!(matches!(err, ClientError::UnexpectedReply(_)), "{err}");
    }
}

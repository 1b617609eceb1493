//! The chat.v1 messages as JSON values, for the command line's output.
//!
//! Field names are the protobuf field names; a `oneof` shows as one key named
//! after its field (`{"inbox_seq": 7, "message": {...}}`); enums show as
//! their protobuf names (`"READ"`, `"NOT_MEMBER"`); 64-bit numbers stay numbers.

use parley_proto::v1::{
    envelope, reply, Ack, ChatMessage, Envelope, ErrorCode, FriendEvent, FriendState, GroupEvent,
    HistoryPage, Presence, ReceiptEvent, ReceiptKind, Reply, SyncPage, TypingEvent,
};
use serde_json::{json, Value};

/// An envelope: `{"inbox_seq": N, "<kind>": {...}}`, kind one of
/// `message`, `receipt`, `typing`, `group`, `friend` (or no kind if the body
/// is empty).
pub fn envelope(env: &Envelope) -> Value {
    let mut out = json!({ "inbox_seq": env.inbox_seq });
    let (key, body) = match &env.body {
        Some(envelope::Body::Message(m)) => ("message", message(m)),
        Some(envelope::Body::Receipt(r)) => ("receipt", receipt(r)),
        Some(envelope::Body::Typing(t)) => ("typing", typing(t)),
        Some(envelope::Body::Group(g)) => ("group", group_event(g)),
        Some(envelope::Body::Friend(f)) => ("friend", friend_event(f)),
        None => return out,
    };
    out[key] = body;
    out
}

/// A chat message with every field.
pub fn message(m: &ChatMessage) -> Value {
    json!({
        "channel": m.channel,
        "seq": m.seq,
        "sender": m.sender,
        "text": m.text,
        "ts_ms": m.ts_ms,
        "client_msg_id": m.client_msg_id,
        "system": m.system,
    })
}

/// A receipt event.
pub fn receipt(r: &ReceiptEvent) -> Value {
    let kind = ReceiptKind::try_from(r.kind).unwrap_or(ReceiptKind::Unspecified);
    json!({
        "channel": r.channel,
        "user": r.user,
        "seq": r.seq,
        "kind": kind.as_str_name(),
    })
}

/// A typing event.
pub fn typing(t: &TypingEvent) -> Value {
    json!({ "channel": t.channel, "user": t.user })
}

/// A group event (the membership after the change).
pub fn group_event(g: &GroupEvent) -> Value {
    json!({
        "group_id": g.group_id,
        "name": g.name,
        "members": g.members,
        "actor": g.actor,
    })
}

/// A friend event: `{"user", "state"}`, the state by its protobuf name.
pub fn friend_event(f: &FriendEvent) -> Value {
    let state = FriendState::try_from(f.state).unwrap_or(FriendState::Unspecified);
    json!({ "user": f.user, "state": state.as_str_name() })
}

/// An ack: `{"channel", "seq", "ts_ms", "duplicate"}`.
pub fn ack(a: &Ack) -> Value {
    json!({
        "channel": a.channel,
        "seq": a.seq,
        "ts_ms": a.ts_ms,
        "duplicate": a.duplicate,
    })
}

/// A sync page: `{"events": [...], "more": bool}`.
pub fn sync_page(p: &SyncPage) -> Value {
    json!({
        "events": p.events.iter().map(envelope).collect::<Vec<_>>(),
        "more": p.more,
    })
}

/// A history page: `{"messages": [...], "more": bool}` (newest first).
pub fn history_page(p: &HistoryPage) -> Value {
    json!({
        "messages": p.messages.iter().map(message).collect::<Vec<_>>(),
        "more": p.more,
    })
}

/// A presence record.
pub fn presence(p: &Presence) -> Value {
    json!({ "user": p.user, "online": p.online, "last_active_ms": p.last_active_ms })
}

/// An error as the HTTP API shows it: `{"error": {"code", "message"}}`.
pub fn error(code: ErrorCode, message: &str) -> Value {
    json!({ "error": { "code": code.as_str_name(), "message": message } })
}

/// Any reply: `{"request_id", "<kind>": {...}}`.
pub fn reply(r: &Reply) -> Value {
    let mut out = json!({ "request_id": r.request_id });
    let (key, body) = match &r.body {
        Some(reply::Body::Ack(a)) => ("ack", ack(a)),
        Some(reply::Body::Error(e)) => {
            let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
            return json!({ "request_id": r.request_id, "error": error(code, &e.message)["error"] });
        }
        Some(reply::Body::SyncPage(p)) => ("sync_page", sync_page(p)),
        Some(reply::Body::HistoryPage(p)) => ("history_page", history_page(p)),
        Some(reply::Body::Presence(p)) => (
            "presence",
            json!({ "users": p.users.iter().map(presence).collect::<Vec<_>>() }),
        ),
        None => return out,
    };
    out[key] = body;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_message() -> ChatMessage {
        ChatMessage {
            channel: "dm:alice:bob".into(),
            seq: 4,
            sender: "alice".into(),
            text: "hi \"bob\"\n".into(),
            ts_ms: 1_700_000_000_000,
            client_msg_id: "c-1".into(),
            system: false,
        }
    }

    #[test]
    fn envelope_with_message_is_one_line_of_json() {
        let env = Envelope {
            inbox_seq: 9,
            body: Some(envelope::Body::Message(chat_message())),
        };
        let line = envelope(&env).to_string();
        assert!(!line.contains('\n'));
        let back: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["inbox_seq"], 9);
        assert_eq!(back["message"]["seq"], 4);
        assert_eq!(back["message"]["text"], "hi \"bob\"\n");
        assert_eq!(back["message"]["sender"], "alice");
    }

    #[test]
    fn enums_show_their_protobuf_names() {
        let env = Envelope {
            inbox_seq: 1,
            body: Some(envelope::Body::Receipt(ReceiptEvent {
                channel: "g:x".into(),
                user: "bob".into(),
                seq: 2,
                kind: ReceiptKind::Read as i32,
            })),
        };
        assert_eq!(envelope(&env)["receipt"]["kind"], "READ");
        assert_eq!(
            error(ErrorCode::NotMember, "no")["error"]["code"],
            "NOT_MEMBER"
        );
    }

    #[test]
    fn pages_and_replies() {
        let page = HistoryPage {
            messages: vec![chat_message()],
            more: true,
        };
        let v = history_page(&page);
        assert_eq!(v["more"], true);
        assert_eq!(v["messages"][0]["client_msg_id"], "c-1");
        let r = Reply {
            request_id: "r-1".into(),
            body: Some(reply::Body::Error(parley_proto::v1::Error {
                code: ErrorCode::TooLarge as i32,
                message: "long".into(),
            })),
        };
        let v = reply(&r);
        assert_eq!(v["error"]["code"], "TOO_LARGE");
        assert_eq!(v["request_id"], "r-1");
        let empty = Envelope::default();
        assert_eq!(envelope(&empty), json!({"inbox_seq": 0}));
    }
}

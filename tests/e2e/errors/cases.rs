//! The table of bad requests: who sends what, and the error it must get.

use parley_proto::v1::{self, request, ErrorCode};
use parley_tests::wire;

/// Which of the test's three users sends the request.
#[derive(Debug, Clone, Copy)]
pub enum Who {
    Alice,
    Bob,
    Carol,
}

/// One bad request and the error code it must be answered with.
pub struct Case {
    pub who: Who,
    pub body: request::Body,
    pub code: ErrorCode,
    pub what: &'static str,
}

fn case(who: Who, body: request::Body, code: ErrorCode, what: &'static str) -> Case {
    Case {
        who,
        body,
        code,
        what,
    }
}

fn send(channel: &str, text: &str) -> request::Body {
    wire::send(channel, "", text)
}

fn change(group_id: &str, add: &[&str], remove: &[&str]) -> request::Body {
    let owned = |users: &[&str]| users.iter().map(|u| u.to_string()).collect();
    request::Body::ChangeMembers(v1::ChangeMembers {
        group_id: group_id.into(),
        add: owned(add),
        remove: owned(remove),
    })
}

fn leave(group_id: &str) -> request::Body {
    request::Body::LeaveGroup(v1::LeaveGroup {
        group_id: group_id.into(),
    })
}

/// Every bad request, given that users alice, bob and carol exist, that
/// alice owns group `team` with bob, and that `dm` is `dm:alice:bob`.
#[rustfmt::skip]
pub fn all(dm: &str) -> Vec<Case> {
    use ErrorCode::{BadRequest, Forbidden, NotFound, NotMember, TooLarge};
    use Who::{Alice, Bob, Carol};
    let id65 = "x".repeat(65);
    let dm65 = format!("dm:alice:{id65}");
    let g65 = format!("g:{id65}");
    let cmid129 = "c".repeat(129);
    let name257 = "n".repeat(257);
    vec![
        // channel forms
        case(Alice, send("chan:alice:bob", "hi"), BadRequest, "unknown channel form"),
        case(Alice, send("", "hi"), BadRequest, "empty channel"),
        case(Alice, send("dm:alice", "hi"), BadRequest, "dm with one user"),
        case(Alice, send("dm:alice:bob:carol", "hi"), BadRequest, "dm with three users"),
        case(Alice, send("g:", "hi"), BadRequest, "empty group id"),
        case(Alice, send("DM:alice:bob", "hi"), BadRequest, "upper-case prefix"),
        case(Alice, send("dm:bob:alice", "hi"), BadRequest, "non-canonical dm"),
        case(Alice, send("dm:alice:alice", "hi"), BadRequest, "dm with oneself"),
        // invalid ids
        case(Alice, send("dm:al ice:bob", "hi"), BadRequest, "space in a user id"),
        case(Alice, send("dm:alice:b/ob", "hi"), BadRequest, "slash in a user id"),
        case(Alice, send(&dm65, "hi"), BadRequest, "65-character user id"),
        case(Alice, send("g:te am", "hi"), BadRequest, "space in a group id"),
        case(Alice, send(&g65, "hi"), BadRequest, "65-character group id in a channel"),
        case(Alice, wire::send(dm, &cmid129, "hi"), TooLarge, "client_msg_id over 128 bytes"),
        case(Alice, wire::create_group("bad id", "x", &["bob"]), BadRequest, "invalid group id"),
        case(Alice, wire::create_group(&id65, "x", &["bob"]), BadRequest, "65-character group id"),
        case(Alice, wire::create_group("ok-id", "x", &["b ob"]), BadRequest, "invalid member id"),
        case(Alice, wire::create_group("ok-id", &name257, &["bob"]), TooLarge, "name over 256"),
        case(Alice, wire::create_group("team", "again", &["bob"]), BadRequest, "group exists"),
        case(Alice, change("team", &[], &[]), BadRequest, "change_members with nothing to change"),
        // text
        case(Alice, send(dm, ""), BadRequest, "empty text"),
        case(Alice, send(dm, &"a".repeat(100_001)), TooLarge, "100,001 characters"),
        // membership and permissions
        case(Carol, send(dm, "let me in"), NotMember, "carol in alice and bob's dm"),
        case(Carol, send("g:team", "let me in"), NotMember, "carol in a group she is not in"),
        case(Carol, wire::history("g:team", 0, 10), NotMember, "history of another group"),
        case(Carol, change("team", &["carol"], &[]), NotMember, "a non-member adds herself"),
        case(Carol, leave("team"), NotMember, "leave a group one is not in"),
        case(Bob, change("team", &[], &["alice"]), Forbidden, "a member (not the owner) removes the owner"),
        case(Alice, send("sys:alice", "hi"), Forbidden, "a user sends to a system channel"),
        // unknown users and groups
        case(Alice, send("dm:alice:zed", "hi"), NotFound, "dm with an unknown user"),
        case(Alice, send("dm:aaron:alice", "hi"), NotFound, "dm with an unknown user (low side)"),
        case(Alice, send("g:nosuch", "hi"), NotFound, "unknown group"),
        case(Alice, wire::create_group("ghost", "x", &["bob", "nobody"]), NotFound, "unknown member"),
        case(Alice, change("team", &["nobody"], &[]), NotFound, "add an unknown user"),
        case(Alice, change("nosuch", &["bob"], &[]), NotFound, "change an unknown group"),
        case(Alice, leave("nosuch"), NotFound, "leave an unknown group"),
        // request kinds of later versions
        case(Alice, request::Body::Receipt(v1::MarkReceipt { channel: dm.into(), seq: 1, kind: v1::ReceiptKind::Read as i32 }), BadRequest, "receipt (not supported yet)"),
        case(Alice, request::Body::Typing(v1::Typing { channel: dm.into() }), BadRequest, "typing (not supported yet)"),
        case(Alice, request::Body::ChangeFriends(v1::ChangeFriends { add: vec!["bob".into()], remove: vec![] }), BadRequest, "change_friends (not supported yet)"),
        case(Alice, request::Body::QueryPresence(v1::QueryPresence { users: vec!["bob".into()] }), BadRequest, "query_presence (not supported yet)"),
        case(Alice, request::Body::RegisterPush(v1::RegisterPush { platform: "fcm".into(), token: "t".into() }), BadRequest, "register_push (not supported yet)"),
        case(Alice, request::Body::System(v1::SystemMessage { channel: dm.into(), client_msg_id: "s".into(), text: "sys".into(), users: vec![] }), Forbidden, "system from a user (services only)"),
    ]
}

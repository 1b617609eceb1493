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

fn receipt(channel: &str, seq: u64, kind: v1::ReceiptKind) -> request::Body {
    request::Body::Receipt(v1::MarkReceipt {
        channel: channel.into(),
        seq,
        kind: kind as i32,
    })
}

fn typing(channel: &str) -> request::Body {
    request::Body::Typing(v1::Typing {
        channel: channel.into(),
    })
}

fn owned(users: &[&str]) -> Vec<String> {
    users.iter().map(|u| u.to_string()).collect()
}

fn friends(add: &[&str], remove: &[&str]) -> request::Body {
    request::Body::ChangeFriends(v1::ChangeFriends {
        add: owned(add),
        remove: owned(remove),
    })
}

fn presence(users: &[&str]) -> request::Body {
    request::Body::QueryPresence(v1::QueryPresence {
        users: owned(users),
    })
}

fn push(platform: &str, token: &str) -> request::Body {
    request::Body::RegisterPush(v1::RegisterPush {
        platform: platform.into(),
        token: token.into(),
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
        // receipts, typing, friends, presence, push
        case(Alice, receipt(dm, 99, v1::ReceiptKind::Read), NotFound, "receipt for a message that does not exist"),
        case(Alice, receipt(dm, 0, v1::ReceiptKind::Read), BadRequest, "receipt for seq 0"),
        case(Alice, receipt(dm, 1, v1::ReceiptKind::Unspecified), BadRequest, "receipt of no kind"),
        case(Carol, receipt("g:team", 1, v1::ReceiptKind::Delivered), NotMember, "receipt in a group one is not in"),
        case(Carol, receipt(dm, 1, v1::ReceiptKind::Read), NotMember, "receipt in another pair's dm"),
        case(Carol, typing("g:team"), NotMember, "typing in a group one is not in"),
        case(Alice, typing("sys:alice"), Forbidden, "typing in a system channel"),
        case(Alice, typing("dm:alice:zed"), NotFound, "typing to an unknown user"),
        case(Alice, friends(&["zed"], &[]), NotFound, "befriend an unknown user"),
        case(Alice, friends(&["alice"], &[]), BadRequest, "befriend oneself"),
        case(Alice, friends(&[], &[]), BadRequest, "change no friends"),
        case(Alice, friends(&["bob"], &["bob"]), BadRequest, "add and remove the same friend"),
        case(Alice, presence(&["carol"]), Forbidden, "presence of a stranger"),
        case(Alice, presence(&["bob", "zed"]), Forbidden, "presence naming an unknown user"),
        case(Alice, presence(&[]), BadRequest, "presence of nobody"),
        case(Alice, push("bad platform", "t"), BadRequest, "push platform with a space"),
        case(Alice, push("app", "a\u{7}b"), BadRequest, "push token with a control character"),
        case(Alice, push("app", &"t".repeat(4097)), TooLarge, "push token too long"),
        case(Alice, request::Body::System(v1::SystemMessage { channel: dm.into(), client_msg_id: "s".into(), text: "sys".into(), users: vec![] }), Forbidden, "system from a user (services only)"),
    ]
}

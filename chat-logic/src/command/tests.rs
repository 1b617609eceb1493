use parley_proto::v1::{ErrorCode, ReceiptKind};
use proptest::prelude::*;

use super::*;
use crate::ids;

fn encode(request_id: &str, body: Body) -> Vec<u8> {
    v1::Request {
        request_id: request_id.to_owned(),
        body: Some(body),
    }
    .encode_to_vec()
}

fn decode(body: Body) -> Result<Command, ChatError> {
    let decoded = decode_request(&encode("r1", body), &Limits::default());
    assert_eq!(decoded.request_id, "r1");
    decoded.command
}

fn decode_err(body: Body) -> ChatError {
    match decode(body) {
        Ok(command) => panic!("expected an error, got {command:?}"),
        Err(error) => error,
    }
}

fn send(channel: &str, client_msg_id: &str, text: &str) -> Body {
    Body::Send(v1::SendMessage {
        channel: channel.to_owned(),
        client_msg_id: client_msg_id.to_owned(),
        text: text.to_owned(),
    })
}

fn change(group_id: &str, add: &[&str], remove: &[&str]) -> Body {
    Body::ChangeMembers(v1::ChangeMembers {
        group_id: group_id.to_owned(),
        add: add.iter().map(|s| s.to_string()).collect(),
        remove: remove.iter().map(|s| s.to_string()).collect(),
    })
}

fn create(group_id: &str, name: &str, members: &[&str]) -> Body {
    Body::CreateGroup(v1::CreateGroup {
        group_id: group_id.to_owned(),
        name: name.to_owned(),
        members: members.iter().map(|s| s.to_string()).collect(),
    })
}

#[test]
fn garbage_is_bad_request_without_request_id() {
    for payload in [
        &b"not protobuf"[..],
        &[0xff, 0xff, 0xff],
        &[0x0a, 0x05, b'a'],
    ] {
        let decoded = decode_request(payload, &Limits::default());
        assert_eq!(decoded.request_id, "");
        let error = decoded.command.unwrap_err();
        assert_eq!(error.code, ErrorCode::BadRequest);
        assert!(
            error.message.contains("not a valid chat.v1.Request"),
            "{error}"
        );
    }
}

#[test]
fn invalid_utf8_text_keeps_the_request_id() {
    let mut payload = encode("r9", send("g:x", "", "hi"));
    let last = payload.len() - 1;
    payload[last] = 0xff; // the last byte of the text
    let decoded = decode_request(&payload, &Limits::default());
    assert_eq!(decoded.request_id, "r9");
    assert_eq!(decoded.command.unwrap_err().code, ErrorCode::BadRequest);
}

#[test]
fn empty_payload_has_no_body() {
    let decoded = decode_request(&[], &Limits::default());
    assert_eq!(decoded.request_id, "");
    let error = decoded.command.unwrap_err();
    assert_eq!(error.code, ErrorCode::BadRequest);
    assert!(error.message.contains("no body"), "{error}");
}

#[test]
fn missing_body_keeps_the_request_id() {
    let payload = v1::Request {
        request_id: "r2".into(),
        body: None,
    }
    .encode_to_vec();
    let decoded = decode_request(&payload, &Limits::default());
    assert_eq!(decoded.request_id, "r2");
    assert!(decoded.command.unwrap_err().message.contains("no body"));
}

#[test]
fn valid_send() {
    let command = decode(send("dm:alice:bob", "c-1", "hello")).unwrap();
    assert_eq!(
        command,
        Command::Send(SendMessage {
            channel: Channel::direct("alice", "bob").unwrap(),
            client_msg_id: "c-1".into(),
            text: "hello".into(),
        })
    );
    assert_eq!(command.name(), "send");
}

#[test]
fn send_rejects_bad_channels() {
    for channel in ["", "dm:bob:alice", "dm:a:a", "x:y", "g:", "g:a/b"] {
        assert_eq!(
            decode_err(send(channel, "", "hi")).code,
            ErrorCode::BadRequest
        );
    }
}

#[test]
fn send_rejects_empty_text() {
    let error = decode_err(send("g:x", "", ""));
    assert_eq!(error.code, ErrorCode::BadRequest);
    assert!(error.message.contains("empty"), "{error}");
}

#[test]
fn text_length_is_counted_in_characters() {
    let emoji = "😀"; // 4 bytes, 1 scalar value
    let at_limit = emoji.repeat(100_000);
    assert_eq!(at_limit.len(), 400_000);
    assert!(decode(send("g:x", "", &at_limit)).is_ok());

    let over = emoji.repeat(100_001);
    let error = decode_err(send("g:x", "", &over));
    assert_eq!(error.code, ErrorCode::TooLarge);
    assert!(error.message.contains("100001"), "{error}");

    assert!(decode(send("g:x", "", &"a".repeat(100_000))).is_ok());
    assert_eq!(
        decode_err(send("g:x", "", &"a".repeat(100_001))).code,
        ErrorCode::TooLarge
    );
}

#[test]
fn text_limit_comes_from_limits() {
    let limits = Limits {
        max_text_chars: 3,
        ..Limits::default()
    };
    let ok = decode_request(&encode("r", send("g:x", "", "日本語")), &limits);
    assert!(ok.command.is_ok());
    let over = decode_request(&encode("r", send("g:x", "", "日本語!")), &limits);
    assert_eq!(over.command.unwrap_err().code, ErrorCode::TooLarge);
}

#[test]
fn client_msg_id_length() {
    assert!(decode(send("g:x", "", "hi")).is_ok());
    assert!(decode(send("g:x", &"c".repeat(128), "hi")).is_ok());
    let error = decode_err(send("g:x", &"c".repeat(129), "hi"));
    assert_eq!(error.code, ErrorCode::TooLarge);
    assert!(error.message.contains("client_msg_id"), "{error}");
    // counted in bytes: 33 four-byte characters are 132 bytes
    assert_eq!(
        decode_err(send("g:x", &"😀".repeat(33), "hi")).code,
        ErrorCode::TooLarge
    );
}

#[test]
fn sync_limits_are_defaulted_and_clamped() {
    let sync = |after, limit| {
        decode(Body::Sync(v1::Sync {
            after_inbox_seq: after,
            limit,
        }))
    };
    let expect = |after_inbox_seq, limit| {
        Ok(Command::Sync(SyncInbox {
            after_inbox_seq,
            limit,
        }))
    };
    assert_eq!(sync(0, 0), expect(0, 100));
    assert_eq!(sync(7, 1), expect(7, 1));
    assert_eq!(sync(7, 1000), expect(7, 1000));
    assert_eq!(sync(u64::MAX, 1001), expect(u64::MAX, 1000));
}

#[test]
fn history_is_validated() {
    let history = |channel: &str, before_seq, limit| {
        decode(Body::History(v1::History {
            channel: channel.to_owned(),
            before_seq,
            limit,
        }))
    };
    let expected = |before_seq, limit| {
        Ok(Command::History(ReadHistory {
            channel: Channel::Group("g1".into()),
            before_seq,
            limit,
        }))
    };
    assert_eq!(history("g:g1", 0, 0), expected(0, 50));
    assert_eq!(history("g:g1", 9, 20), expected(9, 20));
    assert_eq!(history("g:g1", 9, 100_000), expected(9, 1000));
    assert_eq!(
        history("dm:b:a", 0, 0).unwrap_err().code,
        ErrorCode::BadRequest
    );
    assert_eq!(history("", 0, 0).unwrap_err().code, ErrorCode::BadRequest);
}

#[test]
fn create_group_normalises_members() {
    let command = decode(create("g1", "Team", &["carol", "bob", "carol", "alice"])).unwrap();
    assert_eq!(
        command,
        Command::CreateGroup(CreateGroup {
            group_id: "g1".into(),
            name: "Team".into(),
            members: vec!["alice".into(), "bob".into(), "carol".into()],
        })
    );
    assert!(decode(create("g1", "", &[])).is_ok());
}

#[test]
fn create_group_rejections() {
    assert_eq!(decode_err(create("", "n", &[])).code, ErrorCode::BadRequest);
    assert_eq!(
        decode_err(create("g/1", "n", &[])).code,
        ErrorCode::BadRequest
    );
    assert_eq!(
        decode_err(create(&"g".repeat(65), "n", &[])).code,
        ErrorCode::BadRequest
    );
    assert!(decode(create(&"g".repeat(64), "n", &[])).is_ok());
    let error = decode_err(create("g1", "n", &["bob", "no one"]));
    assert_eq!(error.code, ErrorCode::BadRequest);
    assert!(error.message.contains("user id"), "{error}");
}

#[test]
fn group_name_length_in_characters() {
    assert!(decode(create("g1", &"é".repeat(256), &[])).is_ok());
    let error = decode_err(create("g1", &"é".repeat(257), &[]));
    assert_eq!(error.code, ErrorCode::TooLarge);
    assert!(error.message.contains("group name"), "{error}");
}

#[test]
fn change_members_is_normalised() {
    let command = decode(change("g1", &["bob", "bob", "amy"], &["zed"])).unwrap();
    assert_eq!(
        command,
        Command::ChangeMembers(ChangeMembers {
            group_id: "g1".into(),
            add: vec!["amy".into(), "bob".into()],
            remove: vec!["zed".into()],
        })
    );
    assert!(decode(change("g1", &[], &["zed"])).is_ok());
}

#[test]
fn change_members_rejections() {
    let nothing = decode_err(change("g1", &[], &[]));
    assert!(nothing.message.contains("at least one"), "{nothing}");
    let both = decode_err(change("g1", &["bob"], &["bob"]));
    assert!(both.message.contains("both added and removed"), "{both}");
    assert_eq!(both.code, ErrorCode::BadRequest);
    assert_eq!(
        decode_err(change("", &["bob"], &[])).code,
        ErrorCode::BadRequest
    );
    assert_eq!(
        decode_err(change("g1", &["b b"], &[])).code,
        ErrorCode::BadRequest
    );
    assert_eq!(
        decode_err(change("g1", &[], &[""])).code,
        ErrorCode::BadRequest
    );
}

#[test]
fn leave_group_is_validated() {
    let leave = |group_id: &str| {
        decode(Body::LeaveGroup(v1::LeaveGroup {
            group_id: group_id.to_owned(),
        }))
    };
    assert_eq!(
        leave("g1"),
        Ok(Command::LeaveGroup(LeaveGroup {
            group_id: "g1".into()
        }))
    );
    assert_eq!(leave("").unwrap_err().code, ErrorCode::BadRequest);
    assert_eq!(
        leave(&"g".repeat(65)).unwrap_err().code,
        ErrorCode::BadRequest
    );
}

fn strings(users: &[&str]) -> Vec<String> {
    users.iter().map(|s| s.to_string()).collect()
}

fn receipt(channel: &str, seq: u64, kind: i32) -> Body {
    Body::Receipt(v1::MarkReceipt {
        channel: channel.to_owned(),
        seq,
        kind,
    })
}

fn friends(add: &[&str], remove: &[&str]) -> Body {
    Body::ChangeFriends(v1::ChangeFriends {
        add: strings(add),
        remove: strings(remove),
    })
}

fn presence(users: &[&str]) -> Body {
    Body::QueryPresence(v1::QueryPresence {
        users: strings(users),
    })
}

fn push(platform: &str, token: &str) -> Body {
    Body::RegisterPush(v1::RegisterPush {
        platform: platform.to_owned(),
        token: token.to_owned(),
    })
}

fn system(channel: &str, users: &[&str], client_msg_id: &str, text: &str) -> Body {
    Body::System(v1::SystemMessage {
        channel: channel.to_owned(),
        client_msg_id: client_msg_id.to_owned(),
        text: text.to_owned(),
        users: strings(users),
    })
}

/// `n` distinct valid user ids.
fn many_users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("u{i}")).collect()
}

fn with_users(max_users_per_request: usize) -> Limits {
    Limits {
        max_users_per_request,
        ..Limits::default()
    }
}

fn decode_with(body: Body, limits: &Limits) -> Result<Command, ChatError> {
    decode_request(&encode("r", body), limits).command
}

#[test]
fn receipt_is_validated() {
    let command = decode(receipt("dm:alice:bob", 4, ReceiptKind::Read as i32)).unwrap();
    assert_eq!(
        command,
        Command::Receipt(MarkReceipt {
            channel: Channel::direct("alice", "bob").unwrap(),
            seq: 4,
            kind: ReceiptKind::Read,
        })
    );
    assert_eq!(command.name(), "receipt");
    let delivered = decode(receipt("g:g1", u64::MAX, ReceiptKind::Delivered as i32)).unwrap();
    assert!(matches!(
        delivered,
        Command::Receipt(MarkReceipt {
            kind: ReceiptKind::Delivered,
            seq: u64::MAX,
            ..
        })
    ));
}

#[test]
fn receipt_rejections() {
    let zero = decode_err(receipt("g:g1", 0, ReceiptKind::Read as i32));
    assert_eq!(zero.code, ErrorCode::BadRequest);
    assert!(zero.message.contains("seq"), "{zero}");
    for kind in [0, 3, -1, 99] {
        let error = decode_err(receipt("g:g1", 1, kind));
        assert_eq!(error.code, ErrorCode::BadRequest);
        assert!(error.message.contains("receipt kind"), "{error}");
    }
    for channel in ["", "dm:bob:alice", "g:"] {
        assert_eq!(
            decode_err(receipt(channel, 1, ReceiptKind::Read as i32)).code,
            ErrorCode::BadRequest
        );
    }
}

#[test]
fn typing_is_validated() {
    let typing = |channel: &str| {
        decode(Body::Typing(v1::Typing {
            channel: channel.to_owned(),
        }))
    };
    let command = typing("g:g1").unwrap();
    assert_eq!(
        command,
        Command::Typing(Typing {
            channel: Channel::Group("g1".into())
        })
    );
    assert_eq!(command.name(), "typing");
    assert_eq!(typing("").unwrap_err().code, ErrorCode::BadRequest);
    assert_eq!(typing("dm:b:a").unwrap_err().code, ErrorCode::BadRequest);
}

#[test]
fn change_friends_is_normalised() {
    let command = decode(friends(&["bob", "amy", "bob"], &["zed", "zed"])).unwrap();
    assert_eq!(
        command,
        Command::ChangeFriends(ChangeFriends {
            add: strings(&["amy", "bob"]),
            remove: strings(&["zed"]),
        })
    );
    assert_eq!(command.name(), "change_friends");
    assert!(decode(friends(&[], &["zed"])).is_ok());
    assert!(decode(friends(&["amy"], &[])).is_ok());
}

#[test]
fn change_friends_rejections() {
    let nothing = decode_err(friends(&[], &[]));
    assert_eq!(nothing.code, ErrorCode::BadRequest);
    assert!(nothing.message.contains("at least one"), "{nothing}");
    let both = decode_err(friends(&["amy", "bob"], &["bob"]));
    assert_eq!(both.code, ErrorCode::BadRequest);
    assert!(both.message.contains("both added and removed"), "{both}");
    for bad in ["", "b b", "a:b", &"u".repeat(65)] {
        assert_eq!(decode_err(friends(&[bad], &[])).code, ErrorCode::BadRequest);
        assert_eq!(decode_err(friends(&[], &[bad])).code, ErrorCode::BadRequest);
    }
    let service = decode_err(friends(&["svc:bot"], &[]));
    assert_eq!(service.code, ErrorCode::BadRequest);
    assert!(service.message.contains("service account"), "{service}");
}

#[test]
fn change_friends_counts_add_and_remove_together() {
    let limits = with_users(3);
    let ok = decode_with(friends(&["a", "b"], &["c", "c"]), &limits);
    assert!(ok.is_ok(), "{ok:?}");
    let over = decode_with(friends(&["a", "b"], &["c", "d"]), &limits).unwrap_err();
    assert_eq!(over.code, ErrorCode::LimitExceeded);
    assert!(over.message.contains("4 users"), "{over}");

    let users = many_users(1001);
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    assert!(decode(friends(&refs[..1000], &[])).is_ok());
    assert!(decode(friends(&refs[..500], &refs[500..1000])).is_ok());
    assert_eq!(
        decode_err(friends(&refs[..600], &refs[600..])).code,
        ErrorCode::LimitExceeded
    );
}

#[test]
fn query_presence_is_validated() {
    let command = decode(presence(&["carol", "bob", "carol"])).unwrap();
    assert_eq!(
        command,
        Command::QueryPresence(QueryPresence {
            users: strings(&["bob", "carol"]),
        })
    );
    assert_eq!(command.name(), "query_presence");
    let empty = decode_err(presence(&[]));
    assert_eq!(empty.code, ErrorCode::BadRequest);
    assert!(empty.message.contains("at least one"), "{empty}");
    assert_eq!(decode_err(presence(&["a/b"])).code, ErrorCode::BadRequest);
    assert_eq!(
        decode_err(presence(&["svc:bot"])).code,
        ErrorCode::BadRequest
    );
}

#[test]
fn query_presence_limit() {
    let limits = with_users(2);
    assert!(decode_with(presence(&["a", "b", "a"]), &limits).is_ok());
    let over = decode_with(presence(&["a", "b", "c"]), &limits).unwrap_err();
    assert_eq!(over.code, ErrorCode::LimitExceeded);
    let users = many_users(1001);
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    assert!(decode(presence(&refs[..1000])).is_ok());
    assert_eq!(decode_err(presence(&refs)).code, ErrorCode::LimitExceeded);
}

#[test]
fn register_push_registers_or_unregisters() {
    let command = decode(push("com.example.app.ios", "tok-123")).unwrap();
    assert_eq!(
        command,
        Command::RegisterPush(RegisterPush {
            registration: Some(PushTarget {
                platform: "com.example.app.ios".into(),
                token: "tok-123".into(),
            })
        })
    );
    assert_eq!(command.name(), "register_push");
    // An empty token unregisters; the platform is not looked at.
    for platform in ["", "com.example.app.ios", "not valid at all\n"] {
        assert_eq!(
            decode(push(platform, "")),
            Ok(Command::RegisterPush(RegisterPush { registration: None }))
        );
    }
}

#[test]
fn push_platform_rules() {
    let max = "p".repeat(64);
    for ok in ["fcm", "com.example.app.ios", "a", "!~:/@#", max.as_str()] {
        assert!(decode(push(ok, "t")).is_ok(), "{ok:?}");
    }
    let long = "p".repeat(65);
    for bad in [
        "",
        "com example",
        "tab\there",
        "é",
        "a\u{7f}",
        "new\nline",
        long.as_str(),
    ] {
        let error = decode_err(push(bad, "t"));
        assert_eq!(error.code, ErrorCode::BadRequest, "{bad:?}");
        assert!(error.message.contains("push platform"), "{error}");
    }
}

#[test]
fn push_token_rules() {
    assert!(decode(push("fcm", &"t".repeat(4096))).is_ok());
    assert!(decode(push("fcm", "with spaces and ünicode")).is_ok());
    let long = decode_err(push("fcm", &"t".repeat(4097)));
    assert_eq!(long.code, ErrorCode::TooLarge);
    assert!(long.message.contains("4097"), "{long}");
    for bad in ["a\nb", "\0", "a\u{7f}", "a\u{85}b", "\t"] {
        let error = decode_err(push("fcm", bad));
        assert_eq!(error.code, ErrorCode::BadRequest, "{bad:?}");
        assert!(error.message.contains("control"), "{error}");
    }
}

#[test]
fn system_to_a_channel() {
    let command = decode(system("g:g1", &[], "s-1", "maintenance at noon")).unwrap();
    assert_eq!(
        command,
        Command::System(SystemMessage {
            target: SystemTarget::Channel(Channel::Group("g1".into())),
            client_msg_id: "s-1".into(),
            text: "maintenance at noon".into(),
        })
    );
    assert_eq!(command.name(), "system");
    for channel in ["dm:alice:bob", "sys:alice"] {
        assert!(decode(system(channel, &[], "", "hi")).is_ok(), "{channel}");
    }
    assert_eq!(
        decode_err(system("dm:bob:alice", &[], "", "hi")).code,
        ErrorCode::BadRequest
    );
}

#[test]
fn system_to_users() {
    let command = decode(system("", &["carol", "alice", "carol"], "", "welcome")).unwrap();
    assert_eq!(
        command,
        Command::System(SystemMessage {
            target: SystemTarget::Users(strings(&["alice", "carol"])),
            client_msg_id: String::new(),
            text: "welcome".into(),
        })
    );
    assert_eq!(
        decode_err(system("", &["al ice"], "", "hi")).code,
        ErrorCode::BadRequest
    );
    assert_eq!(
        decode_err(system("", &["svc:bot"], "", "hi")).code,
        ErrorCode::BadRequest
    );
    let limits = with_users(2);
    assert!(decode_with(system("", &["a", "b", "b"], "", "hi"), &limits).is_ok());
    assert_eq!(
        decode_with(system("", &["a", "b", "c"], "", "hi"), &limits)
            .unwrap_err()
            .code,
        ErrorCode::LimitExceeded
    );
}

#[test]
fn system_needs_exactly_one_target() {
    let neither = decode_err(system("", &[], "", "hi"));
    assert_eq!(neither.code, ErrorCode::BadRequest);
    assert!(neither.message.contains("channel or users"), "{neither}");
    let both = decode_err(system("g:g1", &["alice"], "", "hi"));
    assert_eq!(both.code, ErrorCode::BadRequest);
    assert!(both.message.contains("not both"), "{both}");
}

#[test]
fn system_text_and_client_msg_id_follow_send() {
    let empty = decode_err(system("g:g1", &[], "", ""));
    assert_eq!(empty.code, ErrorCode::BadRequest);
    assert!(empty.message.contains("empty"), "{empty}");
    assert!(decode(system("g:g1", &[], "", &"😀".repeat(100_000))).is_ok());
    assert_eq!(
        decode_err(system("", &["alice"], "", &"😀".repeat(100_001))).code,
        ErrorCode::TooLarge
    );
    assert!(decode(system("g:g1", &[], &"c".repeat(128), "hi")).is_ok());
    let long_id = decode_err(system("g:g1", &[], &"c".repeat(129), "hi"));
    assert_eq!(long_id.code, ErrorCode::TooLarge);
    assert!(long_id.message.contains("client_msg_id"), "{long_id}");
}

#[test]
fn no_body_lists_every_kind() {
    let message = decode_request(&[], &Limits::default())
        .command
        .unwrap_err()
        .message;
    for kind in [
        "send",
        "sync",
        "history",
        "receipt",
        "typing",
        "create_group",
        "change_members",
        "leave_group",
        "change_friends",
        "query_presence",
        "register_push",
        "system",
        "logout",
    ] {
        assert!(message.contains(kind), "{kind} missing from {message:?}");
    }
}

#[test]
fn logout_is_a_command_of_its_own() {
    let command = decode(Body::Logout(v1::Logout::default())).unwrap();
    assert_eq!(command, Command::Logout);
    assert_eq!(command.name(), "logout");
}

#[test]
fn command_names() {
    let group = || "g1".to_owned();
    assert_eq!(
        Command::LeaveGroup(LeaveGroup { group_id: group() }).name(),
        "leave_group"
    );
    let create = CreateGroup {
        group_id: group(),
        name: String::new(),
        members: vec![],
    };
    assert_eq!(Command::CreateGroup(create).name(), "create_group");
    let change = ChangeMembers {
        group_id: group(),
        add: vec![],
        remove: vec![],
    };
    assert_eq!(Command::ChangeMembers(change).name(), "change_members");
}

proptest! {
    #[test]
    fn never_panics_on_random_bytes(payload in prop::collection::vec(any::<u8>(), 0..512)) {
        let decoded = decode_request(&payload, &Limits::default());
        if let Err(error) = decoded.command {
            prop_assert!(!error.message.is_empty());
        }
    }

    #[test]
    fn accepted_sends_respect_every_rule(
        channel in "(dm|g|sys|x)?:?[a-c:_]{0,6}",
        client_msg_id in ".{0,40}",
        text in ".{0,12}",
    ) {
        let limits = Limits { max_text_chars: 8, max_client_msg_id_bytes: 30, ..Limits::default() };
        let payload = encode("p", send(&channel, &client_msg_id, &text));
        let decoded = decode_request(&payload, &limits);
        prop_assert_eq!(decoded.request_id, "p");
        if let Ok(Command::Send(send)) = decoded.command {
            prop_assert_eq!(send.channel.to_string(), channel);
            prop_assert!(!send.text.is_empty() && send.text.chars().count() <= 8);
            prop_assert!(send.client_msg_id.len() <= 30);
        }
    }

    #[test]
    fn accepted_friend_changes_are_sorted_disjoint_and_bounded(
        add in prop::collection::vec("[a-d ]{0,2}", 0..6),
        remove in prop::collection::vec("[a-d ]{0,2}", 0..6),
    ) {
        let add: Vec<&str> = add.iter().map(String::as_str).collect();
        let remove: Vec<&str> = remove.iter().map(String::as_str).collect();
        if let Ok(Command::ChangeFriends(change)) = decode_with(friends(&add, &remove), &with_users(4)) {
            prop_assert!(change.add.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(change.remove.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(change.add.iter().all(|u| change.remove.binary_search(u).is_err()));
            prop_assert!(!change.add.is_empty() || !change.remove.is_empty());
            prop_assert!(change.add.len() + change.remove.len() <= 4);
        }
    }

    #[test]
    fn accepted_member_lists_are_sorted_and_valid(members in prop::collection::vec("[a-c ]{0,2}", 0..8)) {
        let members: Vec<&str> = members.iter().map(String::as_str).collect();
        if let Ok(Command::CreateGroup(create)) = decode(create("g", "n", &members)) {
            prop_assert!(create.members.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(create.members.iter().all(|m| ids::is_valid_id(m)));
        }
    }
}

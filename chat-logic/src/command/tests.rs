use parley_proto::v1::ErrorCode;
use proptest::prelude::*;

use super::*;

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
    assert!(command.is_write());
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
    assert!(!sync(0, 0).unwrap().is_write());
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

#[test]
fn later_kinds_are_unsupported() {
    let cases = [
        (Body::Receipt(v1::MarkReceipt::default()), "receipt"),
        (Body::Typing(v1::Typing::default()), "typing"),
        (
            Body::ChangeFriends(v1::ChangeFriends::default()),
            "change_friends",
        ),
        (
            Body::QueryPresence(v1::QueryPresence::default()),
            "query_presence",
        ),
        (
            Body::RegisterPush(v1::RegisterPush::default()),
            "register_push",
        ),
        (Body::System(v1::SystemMessage::default()), "system"),
    ];
    for (body, name) in cases {
        let command = decode(body).unwrap();
        assert_eq!(command, Command::Unsupported(name));
        assert_eq!(command.name(), name);
        assert!(!command.is_write());
    }
    let error = unsupported("typing");
    assert_eq!(error.code, ErrorCode::BadRequest);
    assert!(error.message.contains("not supported yet"), "{error}");
}

#[test]
fn logout_is_a_command_of_its_own() {
    let command = decode(Body::Logout(v1::Logout::default())).unwrap();
    assert_eq!(command, Command::Logout);
    assert_eq!(command.name(), "logout");
    assert!(!command.is_write());
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
    assert!(Command::ChangeMembers(change).is_write());
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
    fn accepted_member_lists_are_sorted_and_valid(members in prop::collection::vec("[a-c ]{0,2}", 0..8)) {
        let members: Vec<&str> = members.iter().map(String::as_str).collect();
        if let Ok(Command::CreateGroup(create)) = decode(create("g", "n", &members)) {
            prop_assert!(create.members.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(create.members.iter().all(|m| ids::is_valid_id(m)));
        }
    }
}

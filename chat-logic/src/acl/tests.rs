use proptest::prelude::*;

use super::*;

const ALLOWED_FOR_ALICE: &[&str] = &[
    "reply/alice/#",
    "inbox/alice",
    "reply/alice/phone",
    "reply/alice/+",
    "reply/alice/",
    "reply/alice/$odd",
    "presence/bob/alice",
    "presence/+/alice",
    "presence//alice",
];

const REFUSED_FOR_ALICE: &[&str] = &[
    // everything, or every user
    "#",
    "+",
    "+/+",
    "+/+/+",
    "+/alice",
    "+/alice/+",
    "+/+/alice",
    "inbox/+",
    "inbox/#",
    "reply/#",
    "reply/+/+",
    "reply/+/phone",
    "presence/#",
    "presence/+/+",
    "presence/+/#",
    // other users
    "inbox/bob",
    "inbox/Alice",
    "inbox/alice2",
    "reply/bob/#",
    "reply/bob/+",
    "reply/bob/phone",
    "presence/alice/bob",
    "presence/alice/+",
    // own prefix, but deeper or shallower than the open topics
    "inbox/alice/#",
    "inbox/alice/+",
    "inbox/alice/",
    "inbox/alice/x",
    "reply/alice",
    "reply/alice/+/+",
    "reply/alice/phone/x",
    "reply/alice/phone/#",
    "presence/+/alice/#",
    "presence/+/alice/x",
    "presence/alice",
    // empty levels and case
    "",
    "/",
    "/inbox/alice",
    "inbox//alice",
    "inbox/alice//",
    "Inbox/alice",
    "INBOX/alice",
    // $-topics and shared subscriptions
    "$share/g/inbox/alice",
    "$share/g/#",
    "$share/alice/reply/alice/+",
    "$SYS/#",
    "$SYS/broker/clients",
    "$inbox/alice",
    // not topics of the contract at all
    "req/alice/phone",
    "hb/alice/phone",
    "alice",
    "foo/bar",
    // invalid filters
    "a/#/b",
    "a+",
    "inbox/alice+",
    "inbox/alice#",
    "inbox/ali+ce",
    "reply/alice/ph#",
    "#/inbox/alice",
    "inbox/alice\0",
];

#[test]
fn allowed_filters() {
    for filter in ALLOWED_FOR_ALICE {
        assert!(
            may_subscribe("alice", filter),
            "{filter:?} should be allowed"
        );
    }
}

#[test]
fn refused_filters() {
    for filter in REFUSED_FOR_ALICE {
        assert!(
            !may_subscribe("alice", filter),
            "{filter:?} should be refused"
        );
    }
}

#[test]
fn allowed_filters_are_refused_for_another_user() {
    for filter in ALLOWED_FOR_ALICE {
        assert!(!may_subscribe("bob", filter), "{filter:?} is alice's");
    }
}

#[test]
fn invalid_user_may_subscribe_nothing() {
    for user in ["", "+", "#", "a/b", "$SYS"] {
        assert!(!may_subscribe(user, &format!("inbox/{user}")), "{user:?}");
    }
}

#[test]
fn overlong_filter_is_refused() {
    let device = "d".repeat(MAX_TOPIC_BYTES);
    assert!(!may_subscribe("alice", &format!("reply/alice/{device}")));
    let device = "d".repeat(MAX_TOPIC_BYTES - "reply/alice/".len());
    assert!(may_subscribe("alice", &format!("reply/alice/{device}")));
}

#[test]
fn filter_validity() {
    for valid in [
        "#", "+", "/", "a//b", "+/+/#", "$SYS/#", "a/+/c", "/#", "+/",
    ] {
        assert!(is_valid_filter(valid), "{valid:?}");
    }
    for invalid in [
        "", "a/#/b", "a+", "a#", "#/a", "+a", "a/b#", "##", "++", "a\0",
    ] {
        assert!(!is_valid_filter(invalid), "{invalid:?}");
    }
}

#[test]
fn topic_name_validity() {
    assert!(is_valid_topic_name("a/b"));
    assert!(is_valid_topic_name("/"));
    assert!(is_valid_topic_name("$SYS/x"));
    for invalid in ["", "a/+", "a/#", "a\0b"] {
        assert!(!is_valid_topic_name(invalid), "{invalid:?}");
    }
}

#[test]
fn matching_table() {
    let cases = [
        ("#", "a", true),
        ("#", "a/b/c", true),
        ("#", "$SYS/x", false),
        ("+/x", "$a/x", false),
        ("$SYS/#", "$SYS/x", true),
        ("$SYS/+", "$SYS/x", true),
        ("a/#", "a", true),
        ("a/#", "a/b/c", true),
        ("a/#", "ab", false),
        ("a/+", "a", false),
        ("a/+", "a/", true),
        ("a/+", "a/b/c", false),
        ("+", "", false),
        ("+", "a", true),
        ("+", "/", false),
        ("+/+", "/", true),
        ("/+", "/x", true),
        ("a/b", "a/b/", false),
        ("a/b", "a/b", true),
        ("a/b", "A/b", false),
        ("inbox/+", "inbox/bob", true),
        ("presence/+/alice", "presence//alice", true),
        ("a/#/b", "a/x/b", false),
        ("a/b", "a/+", false),
    ];
    for (filter, topic, expected) in cases {
        assert_eq!(
            filter_matches(filter, topic),
            expected,
            "{filter:?} ~ {topic:?}"
        );
    }
}

#[test]
fn publish_classification() {
    use PublishTopic::*;
    let cases = [
        ("req/alice/phone", Request),
        ("hb/alice/phone", Heartbeat),
        ("req/alice/tablet", Forbidden),
        ("hb/alice/tablet", Forbidden),
        ("req/bob/phone", Forbidden),
        ("req/alice", Forbidden),
        ("req/alice/", Forbidden),
        ("req/alice/phone/", Forbidden),
        ("req/alice/phone/x", Forbidden),
        ("req/+/phone", Forbidden),
        ("req/alice/+", Forbidden),
        ("req/alice/#", Forbidden),
        ("/req/alice/phone", Forbidden),
        ("REQ/alice/phone", Forbidden),
        ("inbox/alice", Forbidden),
        ("reply/alice/phone", Forbidden),
        ("presence/alice/bob", Forbidden),
        ("$SYS/alice/phone", Forbidden),
        ("", Forbidden),
    ];
    for (topic, expected) in cases {
        assert_eq!(
            classify_publish("alice", "phone", topic),
            expected,
            "{topic:?}"
        );
    }
}

#[test]
fn publish_with_invalid_identity_is_forbidden() {
    assert_eq!(
        classify_publish("+", "+", "req/+/+"),
        PublishTopic::Forbidden
    );
    assert_eq!(
        classify_publish("alice", "", "req/alice/"),
        PublishTopic::Forbidden
    );
    assert_eq!(
        classify_publish("", "phone", "hb//phone"),
        PublishTopic::Forbidden
    );
}

/// An independent statement of the topics `user` may read.
fn is_own_topic(user: &str, topic: &str) -> bool {
    let levels: Vec<&str> = topic.split('/').collect();
    match levels.as_slice() {
        ["inbox", owner] => *owner == user,
        // `reply/{user}/#` also reaches `reply/{user}` and deeper levels:
        // topics nobody publishes to, and still the user's own.
        ["reply", owner, ..] => *owner == user,
        ["presence", _, observer] => *observer == user,
        _ => false,
    }
}

fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("inbox".to_owned()),
        Just("reply".to_owned()),
        Just("presence".to_owned()),
        Just("alice".to_owned()),
        Just("bob".to_owned()),
        Just("phone".to_owned()),
        Just(String::new()),
        Just("$share".to_owned()),
        Just("$SYS".to_owned()),
        Just("+".to_owned()),
        Just("#".to_owned()),
        "[a-z+#$]{0,3}",
    ]
}

fn levels(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..=max).prop_map(|levels| levels.join("/"))
}

fn topic() -> impl Strategy<Value = String> {
    levels(5).prop_filter("a topic name", |t| is_valid_topic_name(t))
}

/// A topic the filter matches by construction: `+` takes the next fill
/// level, `#` takes all remaining ones (possibly none: the parent topic).
fn instantiate(filter: &str, fill: &[String]) -> String {
    let mut fill = fill.iter();
    let mut levels: Vec<String> = Vec::new();
    for level in filter.split('/') {
        match level {
            "+" => levels.push(fill.next().cloned().unwrap_or_default()),
            "#" => levels.extend(fill.by_ref().cloned()),
            literal => levels.push(literal.to_owned()),
        }
    }
    levels.join("/")
}

fn fill() -> impl Strategy<Value = Vec<String>> {
    let level = prop_oneof![
        Just("alice".to_owned()),
        Just("bob".to_owned()),
        "[a-z$]{0,3}"
    ];
    prop::collection::vec(level, 0..4)
}

/// Filters close to the contract's topics, so that near misses are common.
fn contract_filter() -> impl Strategy<Value = String> {
    let first = prop_oneof![
        Just("inbox"),
        Just("reply"),
        Just("presence"),
        Just("+"),
        Just("#"),
        Just("$share"),
    ];
    let rest = prop_oneof![
        Just("alice"),
        Just("bob"),
        Just("+"),
        Just("#"),
        Just(""),
        Just("phone")
    ];
    (first, prop::collection::vec(rest, 0..3)).prop_map(|(first, rest)| {
        std::iter::once(first)
            .chain(rest)
            .collect::<Vec<_>>()
            .join("/")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8192))]

    #[test]
    fn topics_built_from_an_allowed_filter_are_own_topics(filter in contract_filter(), fill in fill()) {
        let topic = instantiate(&filter, &fill);
        let dollar_guard = topic.starts_with('$') && filter.starts_with(['+', '#']);
        if is_valid_filter(&filter) && is_valid_topic_name(&topic) && !dollar_guard {
            prop_assert!(filter_matches(&filter, &topic), "{filter:?} ~ {topic:?}");
        }
        for user in ["alice", "bob"] {
            if may_subscribe(user, &filter) && filter_matches(&filter, &topic) {
                prop_assert!(is_own_topic(user, &topic), "{filter:?} lets {user} read {topic:?}");
            }
        }
    }

    #[test]
    fn no_allowed_filter_matches_another_users_inbox(filter in prop_oneof![levels(4), contract_filter()]) {
        if may_subscribe("alice", &filter) {
            for topic in ["inbox/bob", "inbox/", "reply/bob/phone", "presence/alice/bob"] {
                prop_assert!(!filter_matches(&filter, topic), "{filter:?} matches {topic:?}");
            }
        }
    }
}

proptest! {
    #[test]
    fn allowed_filters_match_only_own_topics(
        user in prop_oneof![Just("alice"), Just("bob")],
        filter in levels(5),
        topic in topic(),
    ) {
        if may_subscribe(user, &filter) && filter_matches(&filter, &topic) {
            prop_assert!(is_own_topic(user, &topic), "{filter:?} lets {user} read {topic:?}");
        }
    }

    #[test]
    fn arbitrary_strings_never_panic(user in ".{0,8}", filter in ".{0,40}") {
        let allowed = may_subscribe(&user, &filter);
        if allowed {
            prop_assert!(is_valid_filter(&filter));
            prop_assert!(filter.contains(user.as_str()));
        }
        let _ = classify_publish(&user, "phone", &filter);
        let _ = filter_matches(&filter, &user);
    }

    #[test]
    fn own_topic_filters_are_allowed(device in "[A-Za-z0-9_-]{1,64}") {
        let reply = format!("reply/alice/{device}");
        let presence = format!("presence/{device}/alice");
        prop_assert!(may_subscribe("alice", &reply));
        prop_assert!(may_subscribe("alice", &presence));
        prop_assert!(filter_matches("reply/alice/+", &reply));
    }
}

#[test]
fn a_service_uses_its_own_topics_only() {
    let svc = "svc:billing";
    assert_eq!(
        classify_publish(svc, "w1", "req/svc:billing/w1"),
        PublishTopic::Request
    );
    assert_eq!(
        classify_publish(svc, "w1", "hb/svc:billing/w1"),
        PublishTopic::Heartbeat
    );
    for topic in ["req/svc:other/w1", "req/billing/w1", "req/svc:billing/w2"] {
        assert_eq!(
            classify_publish(svc, "w1", topic),
            PublishTopic::Forbidden,
            "{topic}"
        );
    }
    assert!(may_subscribe(svc, "inbox/svc:billing"));
    assert!(may_subscribe(svc, "reply/svc:billing/w1"));
    assert!(may_subscribe(svc, "reply/svc:billing/+"));
    for filter in [
        "inbox/billing",
        "inbox/svc:other",
        "inbox/+",
        "reply/svc:other/#",
        "#",
    ] {
        assert!(!may_subscribe(svc, filter), "{filter}");
    }
    // A user whose id looks like the service's name gets nothing of it.
    assert!(!may_subscribe("billing", "inbox/svc:billing"));
    assert!(!may_subscribe("svc:", "inbox/svc:"));
}

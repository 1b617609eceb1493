use toml::Table;

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn write_file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

#[test]
fn defaults_parse() {
    let c = Config::defaults();
    assert_eq!(c.data_dir, PathBuf::from("./data"));
    assert_eq!(c.mqtt_addr, "0.0.0.0:1883".parse().unwrap());
    assert_eq!(c.ws_addr, "0.0.0.0:8083".parse().unwrap());
    assert_eq!(c.http_addr, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(
        (c.tls_addr, c.tls_cert.clone(), c.tls_key.clone()),
        (None, None, None)
    );
    assert_eq!(c.connect_timeout(), Duration::from_secs(10));
    assert_eq!(c.max_connections, 100_000);
    assert_eq!(c.max_packet_size, 1_048_576);
    assert_eq!(c.inflight_window, 32);
    assert_eq!(c.max_group_members, 100);
    assert_eq!((c.max_users_per_request, c.max_friends), (1000, 1000));
    assert_eq!(
        c.chat_limits(),
        parley_chat_logic::limits::Limits::default()
    );
    assert_eq!(c.presence_timeout(), Duration::from_secs(30));
    assert_eq!(c.push_gateway, None);
    assert_eq!(c.push_max_attempts, 8);
    assert_eq!(c.push_timeout(), Duration::from_secs(10));
    assert!(c.allow_password_login);
    assert_eq!(c.commit_batch_max, 512);
    assert_eq!(c.engine_priority_boost, 10);
    assert_eq!(c.log, "info");
    assert!(!c.tls_enabled());
    assert_eq!(c.wss_addr, None);
    assert_eq!(c.tls_handshake_timeout(), Duration::from_secs(10));
    assert_eq!(c.token_ttl(), Duration::from_secs(30 * 24 * 3600));
    assert_eq!(
        (c.login_failures_per_user, c.login_failures_per_addr),
        (10, 100)
    );
    assert_eq!(c.login_failure_window(), Duration::from_secs(300));
    assert_eq!(
        (c.max_connecting_per_addr, c.max_devices_per_user),
        (4096, 100)
    );
    assert_eq!(
        (c.receive_maximum, c.request_rate, c.request_burst),
        (64, 2000, 4000)
    );
    assert_eq!(c.max_subscriptions, 512);
}

#[test]
fn every_key_is_documented_and_matches_the_struct() {
    for k in KEYS {
        let documented = DEFAULTS_TOML.lines().any(|l| {
            l.trim_start_matches(['#', ' '])
                .starts_with(&format!("{} = ", k.name))
        });
        assert!(documented, "{} missing from config/parley.toml", k.name);
    }
    let mut full = Config::defaults();
    full.tls_addr = Some("127.0.0.1:8883".parse().unwrap());
    full.wss_addr = Some("127.0.0.1:8084".parse().unwrap());
    full.discovery_tcp = Some("mqtt://h:1".into());
    full.discovery_tls = Some("mqtts://h:2".into());
    full.discovery_ws = Some("ws://h:3/mqtt".into());
    full.discovery_wss = Some("wss://h:4/mqtt".into());
    full.tls_cert = Some("c.pem".into());
    full.tls_key = Some("k.pem".into());
    full.push_gateway = Some("http://x".into());
    full.cluster_nats_urls = Some("nats://127.0.0.1:4222".into());
    full.cluster_node_id = Some("node-1".into());
    let table = Table::try_from(&full).unwrap();
    let fields: Vec<&str> = table.keys().map(String::as_str).collect();
    let mut keys: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
    let mut fields_sorted = fields.clone();
    fields_sorted.sort_unstable();
    keys.sort_unstable();
    assert_eq!(fields_sorted, keys);
}

#[test]
fn cluster_mode_needs_nats_urls_and_a_node_id() {
    let mut c = Config::defaults();
    assert_eq!(c.cluster_urls(), None, "single node by default");
    c.cluster_nats_urls = Some("nats://a:4222, nats://b:4222".into());
    let error = c.validate().unwrap_err().to_string();
    assert!(error.contains("cluster_node_id"), "{error}");
    c.cluster_node_id = Some("node 1".into());
    let error = c.validate().unwrap_err().to_string();
    assert!(error.contains("cluster_node_id"), "{error}");
    c.cluster_node_id = Some("node-1".into());
    c.validate().unwrap();
    assert_eq!(
        c.cluster_urls().unwrap(),
        ["nats://a:4222", "nats://b:4222"]
    );
    c.cluster_nats_urls = Some("http://a:4222".into());
    let error = c.validate().unwrap_err().to_string();
    assert!(error.contains("cluster_nats_urls"), "{error}");
    c.cluster_nats_urls = None;
    c.cluster_lease_ttl_secs = 1;
    let error = c.validate().unwrap_err().to_string();
    assert!(error.contains("cluster_lease_ttl_secs"), "{error}");
}

#[test]
fn file_overrides_defaults() {
    let file = write_file("mqtt_addr = \"127.0.0.1:1999\"\nmax_group_members = 200\n");
    let c = Config::load(Some(file.path()), &HashMap::new(), &[]).unwrap();
    assert_eq!(c.mqtt_addr, "127.0.0.1:1999".parse().unwrap());
    assert_eq!(c.max_group_members, 200);
    assert_eq!(c.ws_addr, Config::defaults().ws_addr);
}

#[test]
fn a_priority_boost_of_zero_turns_it_off() {
    let c = Config::load(None, &env(&[("PARLEY_ENGINE_PRIORITY_BOOST", "0")]), &[]).unwrap();
    assert_eq!(c.engine_priority_boost, 0);
}

#[test]
fn chat_limits_come_from_their_keys() {
    let file = write_file("max_users_per_request = 50\nmax_friends = 70\n");
    let vars = env(&[
        ("PARLEY_MAX_FRIENDS", "80"),
        ("PARLEY_MAX_GROUP_MEMBERS", "7"),
    ]);
    let c = Config::load(Some(file.path()), &vars, &[]).unwrap();
    let limits = c.chat_limits();
    assert_eq!(
        (
            limits.max_users_per_request,
            limits.max_friends,
            limits.max_group_members
        ),
        (50, 80, 7)
    );
    assert_eq!(limits.max_text_chars, 100_000);
    assert_eq!(limits.validate(), Ok(()));
}

#[test]
fn env_overrides_file() {
    let file = write_file("mqtt_addr = \"127.0.0.1:1999\"\npush_gateway = \"http://gw\"\n");
    let vars = env(&[
        ("PARLEY_MQTT_ADDR", "127.0.0.1:2000"),
        ("PARLEY_ALLOW_PASSWORD_LOGIN", "false"),
        ("PARLEY_PRESENCE_TIMEOUT_SECS", "45"),
        ("PARLEY_PUSH_GATEWAY", ""),
        ("PARLEY_PUSH_MAX_ATTEMPTS", "3"),
        ("PARLEY_PUSH_TIMEOUT_SECS", "2"),
        ("PARLEY_DATA_DIR", "/var/lib/parley"),
        ("OTHER", "ignored"),
    ]);
    let c = Config::load(Some(file.path()), &vars, &[]).unwrap();
    assert_eq!(c.mqtt_addr, "127.0.0.1:2000".parse().unwrap());
    assert!(!c.allow_password_login);
    assert_eq!(c.presence_timeout_secs, 45);
    assert_eq!(
        c.push_gateway, None,
        "an empty value unsets an optional key"
    );
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/parley"));
    assert_eq!(c.push_max_attempts, 3);
    assert_eq!(c.push_timeout(), Duration::from_secs(2));
}

#[test]
fn flags_override_env() {
    let vars = env(&[
        ("PARLEY_MQTT_ADDR", "127.0.0.1:2000"),
        ("PARLEY_HTTP_ADDR", "127.0.0.1:2001"),
    ]);
    let flags = [
        ("mqtt_addr", "127.0.0.1:3000".to_owned()),
        ("push_gateway", "https://gw/x".to_owned()),
    ];
    let c = Config::load(None, &vars, &flags).unwrap();
    assert_eq!(c.mqtt_addr, "127.0.0.1:3000".parse().unwrap());
    assert_eq!(c.http_addr, "127.0.0.1:2001".parse().unwrap());
    assert_eq!(c.push_gateway.as_deref(), Some("https://gw/x"));
}

#[test]
fn unknown_key_is_rejected_with_its_name() {
    let file = write_file("mqtt_adr = \"127.0.0.1:1\"\n");
    let err = Config::load(Some(file.path()), &HashMap::new(), &[]).unwrap_err();
    assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err:?}");
    assert_eq!(err.key(), Some("mqtt_adr"));
    assert!(err.to_string().contains("`mqtt_adr`"), "{err}");
}

#[test]
fn invalid_values_name_the_key() {
    let cases: Vec<(Option<&str>, HashMap<String, String>, &str)> = vec![
        (
            Some("max_connections = \"lots\"\n"),
            HashMap::new(),
            "max_connections",
        ),
        (
            Some("mqtt_addr = \"localhost\"\n"),
            HashMap::new(),
            "mqtt_addr",
        ),
        (
            Some("inflight_window = 70000\n"),
            HashMap::new(),
            "inflight_window",
        ),
        (
            None,
            env(&[("PARLEY_CONNECT_TIMEOUT_SECS", "-1")]),
            "connect_timeout_secs",
        ),
        (
            None,
            env(&[("PARLEY_ALLOW_PASSWORD_LOGIN", "yes")]),
            "allow_password_login",
        ),
        (
            None,
            env(&[("PARLEY_MAX_GROUP_MEMBERS", "501")]),
            "max_group_members",
        ),
        (
            None,
            env(&[("PARLEY_ENGINE_PRIORITY_BOOST", "21")]),
            "engine_priority_boost",
        ),
        (
            Some("max_group_members = 0\n"),
            HashMap::new(),
            "max_group_members",
        ),
        (
            None,
            env(&[("PARLEY_MAX_PACKET_SIZE", "1000")]),
            "max_packet_size",
        ),
        (
            None,
            env(&[("PARLEY_MAX_USERS_PER_REQUEST", "0")]),
            "max_users_per_request",
        ),
        (Some("max_friends = 0\n"), HashMap::new(), "max_friends"),
        (None, env(&[("PARLEY_MAX_FRIENDS", "many")]), "max_friends"),
        (
            None,
            env(&[("PARLEY_INFLIGHT_WINDOW", "0")]),
            "inflight_window",
        ),
        (
            None,
            env(&[("PARLEY_PUSH_GATEWAY", "ftp://x")]),
            "push_gateway",
        ),
        (
            None,
            env(&[("PARLEY_PUSH_GATEWAY", "https://")]),
            "push_gateway",
        ),
        (
            None,
            env(&[("PARLEY_PUSH_GATEWAY", "http://a b/notify")]),
            "push_gateway",
        ),
        (
            None,
            env(&[("PARLEY_PUSH_MAX_ATTEMPTS", "0")]),
            "push_max_attempts",
        ),
        (
            Some("push_timeout_secs = 0\n"),
            HashMap::new(),
            "push_timeout_secs",
        ),
        (
            None,
            env(&[("PARLEY_PUSH_TIMEOUT_SECS", "soon")]),
            "push_timeout_secs",
        ),
        (
            None,
            env(&[("PARLEY_TLS_ADDR", "0.0.0.0:8883")]),
            "tls_cert",
        ),
        (
            None,
            env(&[("PARLEY_WSS_ADDR", "0.0.0.0:8084")]),
            "tls_cert",
        ),
        (None, env(&[("PARLEY_TLS_CERT", "c.pem")]), "tls_key"),
        (
            None,
            env(&[("PARLEY_DISCOVERY_WSS", "ws://h:1/mqtt")]),
            "discovery_wss",
        ),
        (None, env(&[("PARLEY_REQUEST_RATE", "0")]), "request_rate"),
        (
            None,
            env(&[("PARLEY_RECEIVE_MAXIMUM", "70000")]),
            "receive_maximum",
        ),
        (None, env(&[("PARLEY_WS_ADDR", "0.0.0.0:1883")]), "ws_addr"),
        (None, env(&[("PARLEY_LOG", "info,=[")]), "log"),
    ];
    for (text, vars, key) in cases {
        let file = text.map(write_file);
        let err = Config::load(file.as_ref().map(|f| f.path()), &vars, &[]).unwrap_err();
        assert_eq!(err.key(), Some(key), "{err}");
        assert!(err.to_string().contains(&format!("`{key}`")), "{err}");
    }
}

#[test]
fn chat_limits_are_checked_by_their_own_rule() {
    let vars = env(&[("PARLEY_MAX_GROUP_MEMBERS", "501")]);
    let err = Config::load(None, &vars, &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid config key `max_group_members`: must be between 1 and 500, got 501"
    );
}

#[test]
fn syntax_error_names_the_file() {
    let file = write_file("mqtt_addr = \n");
    let err = Config::load(Some(file.path()), &HashMap::new(), &[]).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&file.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn missing_file_is_an_error() {
    let err = Config::load(
        Some(Path::new("/nonexistent/parley.toml")),
        &HashMap::new(),
        &[],
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
}

#[test]
fn unknown_env_vars_are_reported() {
    let vars = env(&[
        ("PARLEY_MQTT_ADDR", "127.0.0.1:1"),
        ("PARLEY_MQTT_ADR", "x"),
        ("PARLEY_CONFIG", "f"),
    ]);
    assert_eq!(unknown_env_vars(&vars), vec!["PARLEY_MQTT_ADR".to_owned()]);
    assert_eq!(env_var_name("mqtt_addr"), "PARLEY_MQTT_ADDR");
}

#[test]
fn for_tests_binds_loopback_port_zero() {
    let c = Config::for_tests(PathBuf::from("/tmp/x"));
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    assert_eq!((c.mqtt_addr, c.ws_addr, c.http_addr), (any, any, any));
    assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    c.validate().unwrap();
}

#[test]
fn gateway_urls_need_http_or_https_and_a_host() {
    for good in [
        "http://127.0.0.1:5000/_matrix/push/v1/notify",
        "https://push.example.com/_matrix/push/v1/notify",
        "http://gw",
    ] {
        assert!(parse_gateway_url(good).is_ok(), "{good}");
    }
    for bad in [
        "ftp://x",
        "http://",
        "https:///path",
        "push.example.com",
        "",
        "http://a b",
    ] {
        assert!(parse_gateway_url(bad).is_err(), "{bad}");
    }
}

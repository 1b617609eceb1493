//! `parley chat ...`: the chat command line, mounted by the broker's `parley`
//! binary as `parley chat <command>`.
//!
//! Every command connects as `--user` on `--device` (default `cli`), does one
//! thing and prints JSON, one value per line, on stdout: `send` and `group`
//! print the `Ack`, `sync` the page `{"events": [...], "more": bool}`,
//! `history` the page `{"messages": [...], "more": bool}`, and `listen` one
//! envelope per line until Ctrl-C (with `--presence`, friends' presence
//! updates too). `read`, `typing`, `friends`, `push` and `logout` print the
//! `Ack`; `presence` prints `{"users": [{"user", "online", "last_active_ms"}]}`.
//! A broker error prints `{"error": {"code", "message"}}` and the command fails.
//! The commands' arguments, as clap parses them, are in `cli/args.rs`.
//!
//! ```text
//! parley chat send --user alice --password pw @bob "hello"      # @bob = dm:alice:bob
//! parley chat listen --user bob --password pw --presence
//! parley chat history --user bob --password pw dm:alice:bob --limit 20
//! parley chat read --user bob --password pw @alice 1            # READ up to seq 1
//! parley chat friends add --user alice --password pw bob
//! parley chat presence --user alice --password pw bob
//! ```

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::v1::{Ack, Presence, ReceiptKind};
use crate::{json, Client, ClientError, PresenceUpdate};

mod args;

pub use args::{ChatCommand, ConnectArgs, FriendsCommand, GroupCommand};

/// Runs one chat command, printing JSON lines on stdout.
pub async fn run(cmd: ChatCommand) -> anyhow::Result<()> {
    run_to(cmd, &mut std::io::stdout()).await
}

/// [`run`] writing to `out` instead of stdout.
pub async fn run_to(cmd: ChatCommand, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let conn = cmd.conn().clone();
    let mut opts = conn.options()?;
    if let ChatCommand::Listen {
        durable, presence, ..
    } = cmd
    {
        opts = opts.clean_session(!durable).presence(presence);
    }
    let broker = conn.broker.clone();
    let client = Client::connect(opts)
        .await
        .with_context(|| format!("connecting to {broker} as {}:{}", conn.user, conn.device))?;
    let result = execute(&client, &conn, cmd, out).await;
    let _ = client.disconnect().await;
    match result {
        Err(ClientError::Server { code, message }) => {
            print_line(out, &json::error(code, &message))?;
            anyhow::bail!(
                "the broker refused the request: {} ({message})",
                code.as_str_name()
            )
        }
        other => Ok(other?),
    }
}

/// Sends the request of `cmd` and prints the reply as one JSON line
/// (`listen` prints many).
async fn execute(
    client: &Client,
    conn: &ConnectArgs,
    cmd: ChatCommand,
    out: &mut (dyn Write + Send),
) -> Result<(), ClientError> {
    let value = match cmd {
        ChatCommand::Send {
            channel,
            text,
            client_msg_id,
            ..
        } => json::ack(&send_message(client, &conn.channel(&channel), &text, client_msg_id).await?),
        ChatCommand::Sync { after, limit, .. } => {
            json::sync_page(&client.sync(after, limit).await?)
        }
        ChatCommand::History {
            channel,
            before,
            limit,
            ..
        } => history_page(client, &conn.channel(&channel), before, limit).await?,
        ChatCommand::Listen {
            count,
            for_secs,
            presence,
            ..
        } => return listen(client, count, for_secs, presence, out).await,
        ChatCommand::Group(group) => json::ack(&group_request(client, group).await?),
        ChatCommand::Read {
            channel,
            seq,
            delivered,
            ..
        } => json::ack(&send_receipt(client, &conn.channel(&channel), seq, delivered).await?),
        ChatCommand::Typing { channel, .. } => {
            json::ack(&client.typing(&conn.channel(&channel)).await?)
        }
        ChatCommand::Friends(friends) => json::ack(&friends_request(client, friends).await?),
        ChatCommand::Presence { users, .. } => presence_list(&client.query_presence(users).await?),
        ChatCommand::Push {
            platform, token, ..
        } => json::ack(&client.register_push(&platform, &token).await?),
        ChatCommand::Logout { .. } => json::ack(&client.logout().await?),
    };
    print_line(out, &value).map_err(|e| ClientError::Connection(format!("writing output: {e}")))
}

/// Sends `text` to `channel`, with `client_msg_id` if given (else a fresh one).
async fn send_message(
    client: &Client,
    channel: &str,
    text: &str,
    client_msg_id: Option<String>,
) -> Result<Ack, ClientError> {
    match client_msg_id {
        Some(id) => client.send_with_id(channel, &id, text).await,
        None => client.send(channel, text).await,
    }
}

/// The page of `channel` before `before` (newest first), as JSON:
/// `{"messages": [...], "more": bool}`.
async fn history_page(
    client: &Client,
    channel: &str,
    before: u64,
    limit: u32,
) -> Result<serde_json::Value, ClientError> {
    let page = client.history(channel, before, limit).await?;
    Ok(json::history_page(&page))
}

/// Marks `channel` read up to `seq` (delivered, with `delivered`).
async fn send_receipt(
    client: &Client,
    channel: &str,
    seq: u64,
    delivered: bool,
) -> Result<Ack, ClientError> {
    let kind = match delivered {
        true => ReceiptKind::Delivered,
        false => ReceiptKind::Read,
    };
    client.receipt(channel, seq, kind).await
}

async fn friends_request(client: &Client, cmd: FriendsCommand) -> Result<Ack, ClientError> {
    let none: [String; 0] = [];
    match cmd {
        FriendsCommand::Add { users, .. } => client.change_friends(users, none).await,
        FriendsCommand::Remove { users, .. } => client.change_friends(none, users).await,
    }
}

/// `{"users": [...]}`: the presence of each user asked for.
fn presence_list(users: &[Presence]) -> serde_json::Value {
    serde_json::json!({ "users": users.iter().map(json::presence).collect::<Vec<_>>() })
}

async fn group_request(client: &Client, cmd: GroupCommand) -> Result<Ack, ClientError> {
    let none: [String; 0] = [];
    match cmd {
        GroupCommand::Create {
            group_id,
            members,
            name,
            ..
        } => client.create_group(&group_id, &name, members).await,
        GroupCommand::Add {
            group_id, users, ..
        } => client.change_members(&group_id, users, none).await,
        GroupCommand::Remove {
            group_id, users, ..
        } => client.change_members(&group_id, none, users).await,
        GroupCommand::Leave { group_id, .. } => client.leave_group(&group_id).await,
    }
}

/// Prints envelopes (and presence updates, with `presence`) until Ctrl-C,
/// `count` envelopes, `for_secs` seconds, or the connection ends.
async fn listen(
    client: &Client,
    count: Option<u64>,
    for_secs: Option<u64>,
    presence: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), ClientError> {
    let deadline = for_secs.map(|secs| Instant::now() + Duration::from_secs(secs));
    let mut printed = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while count.is_none_or(|max| printed < max) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let next = tokio::select! {
            _ = &mut ctrl_c => break,
            next = client.next_envelope(Duration::from_millis(500)) => next?,
            update = client.next_presence(Duration::from_millis(500)), if presence => {
                if let Some(update) = update? {
                    print_line(out, &presence_update(&update))
                        .map_err(|e| ClientError::Connection(format!("writing output: {e}")))?;
                }
                continue;
            }
        };
        if let Some(envelope) = next {
            print_line(out, &json::envelope(&envelope))
                .map_err(|e| ClientError::Connection(format!("writing output: {e}")))?;
            printed += 1;
        }
    }
    Ok(())
}

/// A presence update: `{"presence": {...}, "subject", "retained"}`, or
/// `{"subject", "cleared": true}` when the topic was cleared.
fn presence_update(update: &PresenceUpdate) -> serde_json::Value {
    match &update.presence {
        Some(presence) => serde_json::json!({
            "presence": json::presence(presence),
            "subject": update.subject,
            "retained": update.retained,
        }),
        None => serde_json::json!({ "subject": update.subject, "cleared": true }),
    }
}

fn print_line(out: &mut (dyn Write + Send), value: &serde_json::Value) -> std::io::Result<()> {
    writeln!(out, "{value}")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Transport;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: ChatCommand,
    }

    fn parse(args: &[&str]) -> Result<ChatCommand, clap::Error> {
        let mut argv = vec!["parley-chat"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| cli.cmd)
    }

    #[test]
    fn command_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let help = Cli::command()
            .find_subcommand_mut("send")
            .unwrap()
            .render_help()
            .to_string();
        assert!(help.contains("--broker"), "{help}");
        assert!(help.contains("PARLEY_PASSWORD"), "{help}");
    }

    #[test]
    fn send_takes_channel_text_and_defaults() {
        let cmd = parse(&[
            "send",
            "--user",
            "alice",
            "--password",
            "pw",
            "@bob",
            "hi there",
        ])
        .unwrap();
        let ChatCommand::Send {
            conn,
            channel,
            text,
            client_msg_id,
        } = cmd
        else {
            panic!("not a send");
        };
        assert_eq!(conn.device, "cli");
        assert_eq!(conn.timeout, 10);
        assert_eq!(conn.channel(&channel), "dm:alice:bob");
        assert_eq!(text, "hi there");
        assert_eq!(client_msg_id, None);
        let opts = conn.options().unwrap();
        assert_eq!(opts.client_id(), "alice:cli");
        assert_eq!(opts.transport, Transport::Tcp);
    }

    #[test]
    fn sync_history_and_listen_flags() {
        let base = ["--user", "u", "--password", "p"];
        let mut args = vec!["sync", "--after", "41", "--limit", "5"];
        args.extend(base);
        assert!(matches!(
            parse(&args).unwrap(),
            ChatCommand::Sync {
                after: 41,
                limit: 5,
                ..
            }
        ));
        let mut args = vec!["history", "g:team", "--before", "9"];
        args.extend(base);
        match parse(&args).unwrap() {
            ChatCommand::History {
                channel,
                before,
                limit,
                ..
            } => assert_eq!((channel.as_str(), before, limit), ("g:team", 9, 0)),
            other => panic!("{other:?}"),
        }
        let mut args = vec!["listen", "--durable", "--count", "3", "--for", "2"];
        args.extend(base);
        assert!(matches!(
            parse(&args).unwrap(),
            ChatCommand::Listen {
                durable: true,
                count: Some(3),
                for_secs: Some(2),
                ..
            }
        ));
    }

    #[test]
    fn group_commands() {
        let base = ["--user", "u", "--password", "p"];
        let mut args = vec!["group", "create", "team", "bob", "carol", "--name", "Team"];
        args.extend(base);
        match parse(&args).unwrap() {
            ChatCommand::Group(GroupCommand::Create {
                group_id,
                members,
                name,
                ..
            }) => {
                assert_eq!(group_id, "team");
                assert_eq!(members, ["bob", "carol"]);
                assert_eq!(name, "Team");
            }
            other => panic!("{other:?}"),
        }
        let mut args = vec!["group", "add", "team"];
        args.extend(base);
        assert!(parse(&args).is_err(), "add needs at least one user");
        let mut args = vec!["group", "leave", "team"];
        args.extend(base);
        assert!(matches!(
            parse(&args).unwrap(),
            ChatCommand::Group(GroupCommand::Leave { .. })
        ));
    }

    #[test]
    fn broker_address_and_websocket() {
        let cmd = parse(&[
            "sync",
            "--user",
            "u",
            "--password",
            "p",
            "--broker",
            "ws://h:9/mqtt",
        ])
        .unwrap();
        let opts = cmd.conn().options().unwrap();
        assert_eq!((opts.host.as_str(), opts.port), ("h", 9));
        assert_eq!(opts.transport, Transport::WebSocket);
        let cmd = parse(&["sync", "--user", "u", "--password", "p", "--ws"]).unwrap();
        assert_eq!(
            cmd.conn().options().unwrap().transport,
            Transport::WebSocket
        );
        let cmd = parse(&["sync", "--user", "u", "--password", "p", "--broker", "nope"]).unwrap();
        assert!(cmd.conn().options().is_err());
    }

    #[test]
    fn tls_ca_switches_to_tls() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let ca = ca.display().to_string();
        let base = [
            "sync",
            "--user",
            "u",
            "--password",
            "p",
            "--tls-ca",
            ca.as_str(),
        ];
        let opts = parse(&base).unwrap().conn().options().unwrap();
        assert_eq!(opts.transport, Transport::Tls);
        assert!(opts.tls_ca.is_some());
        let mut args = base.to_vec();
        args.push("--ws");
        let opts = parse(&args).unwrap().conn().options().unwrap();
        assert_eq!(opts.transport, Transport::WebSocketTls);
        let mut args = base.to_vec();
        args.extend(["--broker", "wss://h:8084/mqtt"]);
        let opts = parse(&args).unwrap().conn().options().unwrap();
        assert_eq!((opts.transport, opts.port), (Transport::WebSocketTls, 8084));
        let cmd = parse(&[
            "sync",
            "--user",
            "u",
            "--password",
            "p",
            "--tls-ca",
            "/nonexistent.pem",
        ]);
        assert!(
            cmd.unwrap().conn().options().is_err(),
            "a missing CA file is an error"
        );
    }

    #[test]
    fn receipt_typing_friends_presence_push_and_logout_parse() {
        let base = ["--user", "alice", "--password", "p"];
        let with = |args: &[&'static str]| {
            let mut argv = args.to_vec();
            argv.extend(base);
            parse(&argv)
        };
        match with(&["read", "@bob", "7"]).unwrap() {
            ChatCommand::Read {
                conn,
                channel,
                seq,
                delivered,
            } => assert_eq!(
                (conn.channel(&channel).as_str(), seq, delivered),
                ("dm:alice:bob", 7, false)
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            with(&["read", "g:team", "3", "--delivered"]).unwrap(),
            ChatCommand::Read {
                seq: 3,
                delivered: true,
                ..
            }
        ));
        assert!(with(&["read", "g:team"]).is_err(), "read needs a seq");
        assert!(with(&["read", "g:team", "x"]).is_err(), "seq is a number");
        assert!(matches!(
            with(&["typing", "@bob"]).unwrap(),
            ChatCommand::Typing { channel, .. } if channel == "@bob"
        ));
        match with(&["friends", "add", "bob", "carol"]).unwrap() {
            ChatCommand::Friends(FriendsCommand::Add { users, .. }) => {
                assert_eq!(users, ["bob", "carol"])
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            with(&["friends", "remove", "bob"]).unwrap(),
            ChatCommand::Friends(FriendsCommand::Remove { .. })
        ));
        assert!(with(&["friends", "add"]).is_err(), "add needs a user");
        assert!(with(&["presence"]).is_err(), "presence needs a user");
        match with(&["push", "app", ""]).unwrap() {
            ChatCommand::Push {
                platform, token, ..
            } => assert_eq!((platform.as_str(), token.as_str()), ("app", "")),
            other => panic!("{other:?}"),
        }
        assert!(with(&["push", "app"]).is_err(), "push needs a token");
        let cmd = with(&["logout"]).unwrap();
        assert_eq!(cmd.conn().user, "alice");
        assert!(matches!(
            with(&["listen", "--presence"]).unwrap(),
            ChatCommand::Listen { presence: true, .. }
        ));
        assert!(matches!(
            with(&["listen"]).unwrap(),
            ChatCommand::Listen {
                presence: false,
                ..
            }
        ));
    }

    /// Against the fake broker: each new command's request and its one JSON line.
    mod against_fake_broker {
        use std::sync::Arc;

        use parley_proto::v1::{
            envelope, reply, request, Envelope, Error, ErrorCode, Presence, PresenceList, Reply,
        };
        use prost::Message;
        use serde_json::{json, Value};

        use super::*;
        use crate::fake_broker::{start, Script};

        fn reply_to(user: &str, request_id: &str, body: reply::Body) -> (String, Vec<u8>) {
            let reply = Reply {
                request_id: request_id.to_string(),
                body: Some(body),
            };
            (format!("reply/{user}/d"), reply.encode_to_vec())
        }

        /// Acks echo the request in `channel` (and the receipt kind in `seq`);
        /// presence of "mallory" is FORBIDDEN; on subscribing, bob's retained
        /// presence, carol's cleared topic and one inbox envelope.
        fn script() -> Script {
            let mut script = Script::answering(|user, req| {
                let ack = |channel: String, seq: u64| {
                    let ack = Ack {
                        channel,
                        seq,
                        ts_ms: 1,
                        duplicate: false,
                    };
                    vec![reply_to(user, &req.request_id, reply::Body::Ack(ack))]
                };
                match req.body {
                    Some(request::Body::Receipt(r)) => ack(r.channel, r.seq * 10 + r.kind as u64),
                    Some(request::Body::Typing(t)) => ack(format!("typing {}", t.channel), 0),
                    Some(request::Body::ChangeFriends(f)) => {
                        ack(format!("+{} -{}", f.add.join(","), f.remove.join(",")), 0)
                    }
                    Some(request::Body::RegisterPush(p)) => {
                        ack(format!("push {}/{}", p.platform, p.token), 0)
                    }
                    Some(request::Body::Logout(_)) => ack("logout".into(), 0),
                    Some(request::Body::QueryPresence(q))
                        if q.users.contains(&"mallory".into()) =>
                    {
                        let error = Error {
                            code: ErrorCode::Forbidden as i32,
                            message: "not a friend".into(),
                        };
                        vec![reply_to(user, &req.request_id, reply::Body::Error(error))]
                    }
                    Some(request::Body::QueryPresence(q)) => {
                        let users = q
                            .users
                            .into_iter()
                            .map(|u| Presence {
                                online: u == "bob",
                                user: u,
                                last_active_ms: 5,
                            })
                            .collect();
                        let list = reply::Body::Presence(PresenceList { users });
                        vec![reply_to(user, &req.request_id, list)]
                    }
                    _ => vec![],
                }
            });
            script.on_subscribe = Some(Arc::new(|user, filters| {
                let mut out = Vec::new();
                if filters.contains(&format!("presence/+/{user}")) {
                    let bob = Presence {
                        user: "bob".into(),
                        online: true,
                        last_active_ms: 3,
                    };
                    out.push((format!("presence/bob/{user}"), bob.encode_to_vec(), true));
                    out.push((format!("presence/carol/{user}"), Vec::new(), false));
                }
                if filters.contains(&format!("inbox/{user}")) {
                    let typing = Envelope {
                        inbox_seq: 0,
                        body: Some(envelope::Body::Typing(parley_proto::v1::TypingEvent {
                            channel: "dm:alice:bob".into(),
                            user: "bob".into(),
                        })),
                    };
                    out.push((format!("inbox/{user}"), typing.encode_to_vec(), false));
                }
                out
            }));
            script
        }

        /// Runs `parley chat ARGS` as alice on device d; the result and the lines printed.
        async fn chat(broker: &str, args: &[&str]) -> (anyhow::Result<()>, Vec<Value>) {
            let mut argv = args.to_vec();
            argv.extend([
                "--broker",
                broker,
                "--user",
                "alice",
                "--device",
                "d",
                "--password",
                "pw",
                "--timeout",
                "5",
            ]);
            let cmd = parse(&argv).unwrap();
            let mut out = Vec::new();
            let result = run_to(cmd, &mut out).await;
            let lines = String::from_utf8(out)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect();
            (result, lines)
        }

        async fn ack_of(broker: &str, args: &[&str]) -> (String, u64) {
            let (result, lines) = chat(broker, args).await;
            result.unwrap();
            assert_eq!(lines.len(), 1, "{lines:?}");
            let ack = &lines[0];
            assert_eq!(ack["ts_ms"], 1);
            (
                ack["channel"].as_str().unwrap().to_string(),
                ack["seq"].as_u64().unwrap(),
            )
        }

        #[tokio::test]
        async fn new_commands_print_their_acks() {
            let broker = start(script()).await.to_string();
            let b = broker.as_str();
            let read = ReceiptKind::Read as u64;
            let delivered = ReceiptKind::Delivered as u64;
            assert_eq!(
                ack_of(b, &["read", "@bob", "4"]).await,
                ("dm:alice:bob".into(), 40 + read)
            );
            assert_eq!(
                ack_of(b, &["read", "g:x", "4", "--delivered"]).await,
                ("g:x".into(), 40 + delivered)
            );
            assert_eq!(
                ack_of(b, &["typing", "@bob"]).await.0,
                "typing dm:alice:bob"
            );
            assert_eq!(
                ack_of(b, &["friends", "add", "bob", "carol"]).await.0,
                "+bob,carol -"
            );
            assert_eq!(ack_of(b, &["friends", "remove", "bob"]).await.0, "+ -bob");
            assert_eq!(ack_of(b, &["push", "app", "tok"]).await.0, "push app/tok");
            assert_eq!(ack_of(b, &["push", "app", ""]).await.0, "push app/");
            assert_eq!(ack_of(b, &["logout"]).await.0, "logout");
        }

        #[tokio::test]
        async fn presence_prints_the_list_or_the_error() {
            let broker = start(script()).await.to_string();
            let (result, lines) = chat(&broker, &["presence", "bob", "carol"]).await;
            result.unwrap();
            assert_eq!(
                lines,
                [json!({"users": [
                    {"user": "bob", "online": true, "last_active_ms": 5},
                    {"user": "carol", "online": false, "last_active_ms": 5},
                ]})]
            );
            let (result, lines) = chat(&broker, &["presence", "bob", "mallory"]).await;
            let err = result.unwrap_err().to_string();
            assert!(err.contains("FORBIDDEN"), "{err}");
            assert_eq!(
                lines,
                [json!({"error": {"code": "FORBIDDEN", "message": "not a friend"}})]
            );
        }

        #[tokio::test]
        async fn listen_with_presence_prints_presence_lines() {
            let broker = start(script()).await.to_string();
            let (result, lines) = chat(&broker, &["listen", "--presence", "--for", "1"]).await;
            result.unwrap();
            assert_eq!(lines.len(), 3, "{lines:?}");
            let typing =
                json!({"inbox_seq": 0, "typing": {"channel": "dm:alice:bob", "user": "bob"}});
            assert!(lines.contains(&typing), "{lines:?}");
            let presence: Vec<&Value> = lines
                .iter()
                .filter(|l| l.get("subject").is_some())
                .collect();
            assert_eq!(
                presence,
                [
                    &json!({
                        "presence": {"user": "bob", "online": true, "last_active_ms": 3},
                        "subject": "bob",
                        "retained": true,
                    }),
                    &json!({"subject": "carol", "cleared": true}),
                ]
            );
            // without --presence, only the envelope
            let (result, lines) = chat(&broker, &["listen", "--count", "1"]).await;
            result.unwrap();
            assert_eq!(lines, [typing]);
        }
    }

    #[test]
    fn password_is_required() {
        // Only meaningful when PARLEY_PASSWORD is not set in the test environment.
        if std::env::var_os("PARLEY_PASSWORD").is_none() {
            assert!(parse(&["sync", "--user", "u"]).is_err());
        }
    }
}

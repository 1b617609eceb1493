//! `parley chat ...`: the chat command line, mounted by the broker's `parley`
//! binary as `parley chat <command>`.
//!
//! Every command connects as `--user` on `--device` (default `cli`), does one
//! thing and prints JSON, one value per line, on stdout: `send` and `group`
//! print the `Ack`, `sync` the page `{"events": [...], "more": bool}`,
//! `history` the page `{"messages": [...], "more": bool}`, and `listen` one
//! envelope per line until Ctrl-C. A broker error prints
//! `{"error": {"code", "message"}}` and the command fails.
//!
//! ```text
//! parley chat send --user alice --password pw @bob "hello"      # @bob = dm:alice:bob
//! parley chat listen --user bob --password pw
//! parley chat history --user bob --password pw dm:alice:bob --limit 20
//! ```

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::{direct_channel, json, Client, ClientError, ClientOptions, Transport};

/// Where and who: the arguments every chat command takes.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Broker address: HOST:PORT, ws://HOST:PORT/mqtt for WebSocket,
    /// mqtts://HOST:PORT for TLS, wss://HOST:PORT/mqtt for secure WebSocket.
    #[arg(long, env = "PARLEY_BROKER", default_value = "127.0.0.1:1883")]
    pub broker: String,
    /// The user to act as (MQTT username).
    #[arg(long, env = "PARLEY_USER")]
    pub user: String,
    /// The device id; the MQTT client id is USER:DEVICE.
    #[arg(long, env = "PARLEY_DEVICE", default_value = "cli")]
    pub device: String,
    /// A session token from POST /v1/login, or the account password.
    #[arg(long, env = "PARLEY_PASSWORD", hide_env_values = true)]
    pub password: String,
    /// Use WebSocket (path /mqtt) even for a HOST:PORT address.
    #[arg(long)]
    pub ws: bool,
    /// Trust this CA certificate (PEM) and connect over TLS (secure
    /// WebSocket with --ws or a ws:// address). Without it, mqtts:// and
    /// wss:// addresses use the system's trusted roots.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Seconds to wait for the connection and for each reply.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
}

impl ConnectArgs {
    /// The client options these arguments describe.
    pub fn options(&self) -> Result<ClientOptions, ClientError> {
        let timeout = Duration::from_secs(self.timeout);
        let mut opts =
            ClientOptions::parse(&self.broker, &self.user, &self.device, &self.password)?
                .request_timeout(timeout)
                .connect_timeout(timeout);
        if self.ws {
            opts = opts.transport(Transport::WebSocket);
        }
        if let Some(ca) = &self.tls_ca {
            let secure = match opts.transport {
                Transport::WebSocket | Transport::WebSocketTls => Transport::WebSocketTls,
                Transport::Tcp | Transport::Tls => Transport::Tls,
            };
            opts = opts.transport(secure).tls_ca_file(ca)?;
        }
        Ok(opts)
    }

    /// `@bob` stands for the direct channel with bob; anything else is taken as is.
    pub fn channel(&self, channel: &str) -> String {
        match channel.strip_prefix('@') {
            Some(peer) => direct_channel(&self.user, peer),
            None => channel.to_string(),
        }
    }
}

/// `parley chat <command>`.
#[derive(Debug, Clone, Subcommand)]
pub enum ChatCommand {
    /// Send TEXT to CHANNEL (dm:a:b, g:group, or @user for the direct chat); prints the Ack.
    Send {
        /// Where and as whom to connect.
        #[command(flatten)]
        conn: ConnectArgs,
        /// dm:{a}:{b}, g:{group_id}, or @{user}.
        channel: String,
        /// The message text.
        text: String,
        /// Idempotency key; a retry with the same id is not stored twice (default: fresh).
        #[arg(long)]
        client_msg_id: Option<String>,
    },
    /// Fetch inbox events after an inbox_seq; prints {"events": [...], "more": bool}.
    Sync {
        /// Where and as whom to connect.
        #[command(flatten)]
        conn: ConnectArgs,
        /// The largest inbox_seq already seen (0: from the start).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many events (0: the broker's default, 100).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Page through a channel, newest first; prints {"messages": [...], "more": bool}.
    History {
        /// Where and as whom to connect.
        #[command(flatten)]
        conn: ConnectArgs,
        /// dm:{a}:{b}, g:{group_id}, or @{user}.
        channel: String,
        /// Only messages with a seq below this (0: the newest).
        #[arg(long, default_value_t = 0)]
        before: u64,
        /// At most this many messages (0: the broker's default).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Print each inbox envelope as one JSON line until Ctrl-C.
    Listen {
        /// Where and as whom to connect.
        #[command(flatten)]
        conn: ConnectArgs,
        /// Use a durable session (clean session off): missed envelopes are replayed on reconnect.
        #[arg(long)]
        durable: bool,
        /// Stop after this many envelopes.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long = "for", value_name = "SECS")]
        for_secs: Option<u64>,
    },
    /// Create groups and change their members.
    #[command(subcommand)]
    Group(GroupCommand),
}

/// `parley chat group <command>`.
#[derive(Debug, Clone, Subcommand)]
pub enum GroupCommand {
    /// Create GROUP_ID (channel g:GROUP_ID) with you as owner and MEMBERS.
    Create {
        /// Where and as whom to connect.
        #[command(flatten)]
        conn: ConnectArgs,
        /// 1 to 64 of [A-Za-z0-9_-].
        group_id: String,
        /// The other members.
        members: Vec<String>,
        /// Display name of the group.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Add USERS to GROUP_ID.
    Add {
        /// Where and as whom to connect.
        #[command(flatten)]
        conn: ConnectArgs,
        /// The group.
        group_id: String,
        /// Users to add.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Remove USERS from GROUP_ID (owner only).
    Remove {
        /// Where and as whom to connect.
        #[command(flatten)]
        conn: ConnectArgs,
        /// The group.
        group_id: String,
        /// Users to remove.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Leave GROUP_ID.
    Leave {
        /// Where and as whom to connect.
        #[command(flatten)]
        conn: ConnectArgs,
        /// The group.
        group_id: String,
    },
}

impl ChatCommand {
    /// The connection arguments of this command.
    pub fn conn(&self) -> &ConnectArgs {
        match self {
            ChatCommand::Send { conn, .. }
            | ChatCommand::Sync { conn, .. }
            | ChatCommand::History { conn, .. }
            | ChatCommand::Listen { conn, .. } => conn,
            ChatCommand::Group(group) => match group {
                GroupCommand::Create { conn, .. }
                | GroupCommand::Add { conn, .. }
                | GroupCommand::Remove { conn, .. }
                | GroupCommand::Leave { conn, .. } => conn,
            },
        }
    }
}

/// Runs one chat command, printing JSON lines on stdout.
pub async fn run(cmd: ChatCommand) -> anyhow::Result<()> {
    run_to(cmd, &mut std::io::stdout()).await
}

/// [`run`] writing to `out` instead of stdout.
pub async fn run_to(cmd: ChatCommand, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let conn = cmd.conn().clone();
    let mut opts = conn.options()?;
    if let ChatCommand::Listen { durable: true, .. } = cmd {
        opts = opts.clean_session(false);
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
        } => {
            let channel = conn.channel(&channel);
            let ack = match client_msg_id {
                Some(id) => client.send_with_id(&channel, &id, &text).await?,
                None => client.send(&channel, &text).await?,
            };
            json::ack(&ack)
        }
        ChatCommand::Sync { after, limit, .. } => {
            json::sync_page(&client.sync(after, limit).await?)
        }
        ChatCommand::History {
            channel,
            before,
            limit,
            ..
        } => {
            let page = client
                .history(&conn.channel(&channel), before, limit)
                .await?;
            json::history_page(&page)
        }
        ChatCommand::Listen {
            count, for_secs, ..
        } => return listen(client, count, for_secs, out).await,
        ChatCommand::Group(group) => json::ack(&group_request(client, group).await?),
    };
    print_line(out, &value).map_err(|e| ClientError::Connection(format!("writing output: {e}")))
}

async fn group_request(
    client: &Client,
    cmd: GroupCommand,
) -> Result<parley_proto::v1::Ack, ClientError> {
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

/// Prints envelopes until Ctrl-C, `count` envelopes, `for_secs` seconds, or the connection ends.
async fn listen(
    client: &Client,
    count: Option<u64>,
    for_secs: Option<u64>,
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
        };
        if let Some(envelope) = next {
            print_line(out, &json::envelope(&envelope))
                .map_err(|e| ClientError::Connection(format!("writing output: {e}")))?;
            printed += 1;
        }
    }
    Ok(())
}

fn print_line(out: &mut (dyn Write + Send), value: &serde_json::Value) -> std::io::Result<()> {
    writeln!(out, "{value}")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn password_is_required() {
        // Only meaningful when PARLEY_PASSWORD is not set in the test environment.
        if std::env::var_os("PARLEY_PASSWORD").is_none() {
            assert!(parse(&["sync", "--user", "u"]).is_err());
        }
    }
}

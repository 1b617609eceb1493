//! The arguments of `parley chat <command>`: [`ChatCommand`] and its
//! subcommands as clap parses them, and [`ConnectArgs`], where and as whom
//! every command connects.

use std::time::Duration;

use clap::{Args, Subcommand};

use crate::{direct_channel, ClientError, ClientOptions, Transport};

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
        /// Also print friends' presence updates, one JSON line each:
        /// {"presence": {...}, "subject", "retained"} or {"subject", "cleared": true}
        /// (they do not count toward --count).
        #[arg(long)]
        presence: bool,
    },
    /// Create groups and change their members.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Mark CHANNEL read (or delivered) up to SEQ; prints the Ack.
    Read {
        /// Where and as whom to connect.
        #[command(flatten)]
        conn: ConnectArgs,
        /// dm:{a}:{b}, g:{group_id}, or @{user}.
        channel: String,
        /// The newest seq read (or delivered).
        seq: u64,
        /// A DELIVERED receipt instead of READ.
        #[arg(long)]
        delivered: bool,
    },
    /// Tell the other members of CHANNEL that you are typing; prints the Ack.
    Typing {
        /// Where and as whom to connect.
        #[command(flatten)]
        conn: ConnectArgs,
        /// dm:{a}:{b}, g:{group_id}, or @{user}.
        channel: String,
    },
    /// Send or accept friend requests, or end friendships.
    #[command(subcommand)]
    Friends(FriendsCommand),
    /// The presence of USERS; prints {"users": [{"user", "online", "last_active_ms"}]}.
    Presence {
        /// Where and as whom to connect.
        #[command(flatten)]
        conn: ConnectArgs,
        /// Yourself, friends or members of your groups.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Register this device for push (an empty TOKEN unregisters it); prints the Ack.
    Push {
        /// Where and as whom to connect.
        #[command(flatten)]
        conn: ConnectArgs,
        /// The push gateway's app id.
        platform: String,
        /// The pushkey; "" unregisters.
        token: String,
    },
    /// Sign this device out (revokes the token it connected with); prints the Ack.
    Logout {
        /// Where and as whom to connect.
        #[command(flatten)]
        conn: ConnectArgs,
    },
}

/// `parley chat friends <command>`.
#[derive(Debug, Clone, Subcommand)]
pub enum FriendsCommand {
    /// Send friend requests to USERS, or accept theirs.
    Add {
        /// Where and as whom to connect.
        #[command(flatten)]
        conn: ConnectArgs,
        /// The users.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// End the friendships (or requests) with USERS.
    Remove {
        /// Where and as whom to connect.
        #[command(flatten)]
        conn: ConnectArgs,
        /// The users.
        #[arg(required = true)]
        users: Vec<String>,
    },
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
            | ChatCommand::Listen { conn, .. }
            | ChatCommand::Read { conn, .. }
            | ChatCommand::Typing { conn, .. }
            | ChatCommand::Presence { conn, .. }
            | ChatCommand::Push { conn, .. }
            | ChatCommand::Logout { conn } => conn,
            ChatCommand::Friends(FriendsCommand::Add { conn, .. })
            | ChatCommand::Friends(FriendsCommand::Remove { conn, .. }) => conn,
            ChatCommand::Group(group) => match group {
                GroupCommand::Create { conn, .. }
                | GroupCommand::Add { conn, .. }
                | GroupCommand::Remove { conn, .. }
                | GroupCommand::Leave { conn, .. } => conn,
            },
        }
    }
}

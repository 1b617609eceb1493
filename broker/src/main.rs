//! `parley`: the broker binary.
//!
//! - `parley serve [--config FILE] [--data-dir DIR] [--mqtt-addr ADDR] ...`
//!   runs the broker until SIGINT or SIGTERM, printing one
//!   `listening {mqtt|ws|http|tls|wss} ADDR` line per bound listener on
//!   stdout (logs go to stderr), then drains and flushes.
//! - `parley user add|list|passwd` manages accounts in the data dir of a
//!   stopped broker.
//! - `parley chat ...` is the command-line chat client (`parley_client::cli`).
//!
//! Configuration precedence: flags, then `PARLEY_*` environment variables,
//! then the config file (`--config` or `PARLEY_CONFIG`), then the built-in
//! defaults (see `parley_broker::config`).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use parley_broker::config::{self, Config, CONFIG_FILE_ENV};
use parley_broker::{accounts, Broker};
use parley_storage::{AccountKind, StorageError, Store};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc's malloc: the broker allocates many small,
/// short-lived buffers across threads (a fifth of its CPU went to glibc's
/// malloc/free under `parley-bench dm`), and glibc's per-thread arenas kept
/// freed memory that mimalloc returns. Build with `--no-default-features`
/// for glibc's malloc, which heap profilers (heaptrack) can follow.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `PARLEY_*` variables read by `parley chat`, not broker keys: no warning.
const CLIENT_ENV_VARS: &[&str] = &[
    "PARLEY_BROKER",
    "PARLEY_USER",
    "PARLEY_DEVICE",
    "PARLEY_PASSWORD",
];

#[derive(Debug, Parser)]
#[command(name = "parley", version, about = "Parley: a chat broker over MQTT")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Manage accounts in the data dir of a stopped broker.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage service accounts in the data dir of a stopped broker.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Chat from the command line (send, sync, history, listen, group, read, typing, friends, presence, push, logout).
    #[command(subcommand)]
    Chat(parley_client::cli::ChatCommand),
}

/// Where the configuration comes from.
#[derive(Debug, Args)]
struct ConfigArgs {
    /// Config file (TOML, keys of config/parley.toml) over the built-in defaults.
    #[arg(long, value_name = "FILE", env = CONFIG_FILE_ENV)]
    config: Option<PathBuf>,
    /// Data directory (key `data_dir`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// MQTT over TCP listener (key `mqtt_addr`).
    #[arg(long, value_name = "HOST:PORT")]
    mqtt_addr: Option<String>,
    /// MQTT over WebSocket listener, path /mqtt (key `ws_addr`).
    #[arg(long, value_name = "HOST:PORT")]
    ws_addr: Option<String>,
    /// HTTP API listener (key `http_addr`); HTTPS with --tls-cert and --tls-key.
    #[arg(long, value_name = "HOST:PORT")]
    http_addr: Option<String>,
    /// MQTT over TLS listener (key `tls_addr`; needs --tls-cert and --tls-key).
    #[arg(long, value_name = "HOST:PORT")]
    tls_addr: Option<String>,
    /// MQTT over secure WebSocket listener, path /mqtt (key `wss_addr`).
    #[arg(long, value_name = "HOST:PORT")]
    wss_addr: Option<String>,
    /// PEM certificate chain, leaf first (key `tls_cert`).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<String>,
    /// PEM private key of the certificate: PKCS#8, PKCS#1 or SEC1 (key `tls_key`).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<String>,
    /// Seconds of silence before a device is offline (key `presence_timeout_secs`).
    #[arg(long, value_name = "SECS")]
    presence_timeout: Option<String>,
    /// Matrix push gateway notify URL, e.g. http://gw:5000/_matrix/push/v1/notify (key `push_gateway`).
    #[arg(long, value_name = "URL")]
    push_gateway: Option<String>,
}

impl ServeArgs {
    /// The flags given, as `(config key, value)` overrides.
    fn overrides(&self) -> Vec<(&'static str, String)> {
        let flags = [
            ("data_dir", &self.config.data_dir),
            ("mqtt_addr", &self.mqtt_addr),
            ("ws_addr", &self.ws_addr),
            ("http_addr", &self.http_addr),
            ("tls_addr", &self.tls_addr),
            ("wss_addr", &self.wss_addr),
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
            ("presence_timeout_secs", &self.presence_timeout),
            ("push_gateway", &self.push_gateway),
        ];
        flags
            .into_iter()
            .filter_map(|(key, value)| value.clone().map(|v| (key, v)))
            .collect()
    }
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user account.
    Add {
        /// The user ids: 1 to 64 characters of A-Z a-z 0-9 _ - each
        /// (several at once, all with the same password, e.g. for load tests).
        #[arg(required = true, value_name = "USER_ID")]
        users: Vec<String>,
        #[arg(long)]
        password: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// List every account, one `ID KIND` line each.
    List {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Set the password of an existing account.
    Passwd {
        user: String,
        #[arg(long)]
        password: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Create the service account `svc:NAME`; prints its secret alone on
    /// the last line, once (only a digest of it is kept).
    Add {
        /// The service name: 1 to 64 characters of A-Z a-z 0-9 _ -.
        name: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

fn main() -> ExitCode {
    // first, before the runtime's threads and heaps touch any memory
    let small_pages = keep_memory_in_small_pages();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => runtime().and_then(|rt| rt.block_on(serve(args, small_pages))),
        Command::User(command) => user(command),
        Command::Service(command) => service(command),
        Command::Chat(command) => {
            runtime().and_then(|rt| rt.block_on(parley_client::cli::run(command)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("parley: {}", report(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the
/// message before it already contains (`#[error("storage: {0}")]` style).
fn report(error: &anyhow::Error) -> String {
    let mut line = error.to_string();
    let mut previous = line.clone();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !previous.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        previous = text;
    }
    line
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

/// The process environment, minus variables that are not valid UTF-8.
fn process_env() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

fn load_config(
    args: &ConfigArgs,
    env: &HashMap<String, String>,
    flags: &[(&str, String)],
) -> anyhow::Result<Config> {
    let config = Config::load(args.config.as_deref(), env, flags)?;
    Ok(config)
}

/// Runs the broker; `small_pages` is how [`keep_memory_in_small_pages`]
/// went (a failure is logged once tracing is up).
async fn serve(args: ServeArgs, small_pages: std::io::Result<()>) -> anyhow::Result<()> {
    let env = process_env();
    let config = load_config(&args.config, &env, &args.overrides())?;
    init_tracing(&config.log);
    if let Err(error) = small_pages {
        tracing::warn!(%error, "cannot turn transparent huge pages off: idle connections cost more memory");
    }
    for name in config::unknown_env_vars(&env) {
        if !CLIENT_ENV_VARS.contains(&name.as_str()) {
            tracing::warn!(var = %name, "ignoring environment variable that names no config key");
        }
    }
    tracing::info!(data_dir = %config.data_dir.display(), "starting broker");
    let shutdown = CancellationToken::new();
    let broker = Broker::start(config, shutdown.clone()).await?;
    announce("mqtt", broker.mqtt_addr());
    announce("ws", broker.ws_addr());
    announce("http", broker.http_addr());
    if let Some(addr) = broker.tls_addr() {
        announce("tls", addr);
    }
    if let Some(addr) = broker.wss_addr() {
        announce("wss", addr);
    }
    tokio::spawn(cancel_on_signal(shutdown));
    broker.wait().await;
    Ok(())
}

/// Keeps the broker's memory in small (4 KiB) pages: transparent huge
/// pages are turned off for the whole process, as Redis does. A 2 MiB page
/// is resident in full once one byte of it is touched; with them a fresh
/// broker held ~16 MiB more and each idle connection ~1.5 KB more
/// (bench/FINDINGS.md, item 14), for no CPU gain in dm or group.
///
/// Two halves of this one rule: this call covers every allocation from here
/// on (RocksDB's too), whatever the system's THP mode; mimalloc is built
/// with `no_thp` (the workspace's Cargo.toml) because its arenas are
/// reserved and advised for huge pages before `main` runs.
fn keep_memory_in_small_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    rustix::thread::disable_transparent_huge_pages(true)?;
    Ok(())
}

/// Logs a bound address and prints it on stdout for scripts and tests.
fn announce(kind: &str, addr: SocketAddr) {
    tracing::info!(kind, %addr, "listening");
    println!("listening {kind} {addr}");
}

/// Logs to stderr with `RUST_LOG` if set, else the configured filter.
fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM; a second one exits at
/// once without draining.
async fn cancel_on_signal(shutdown: CancellationToken) {
    if let Err(error) = next_signal().await {
        tracing::error!(%error, "cannot listen for signals; stop the broker with SIGKILL");
        return;
    }
    tracing::info!("shutting down: draining connections and flushing the store");
    shutdown.cancel();
    if next_signal().await.is_ok() {
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(130);
    }
}

#[cfg(unix)]
async fn next_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}

#[cfg(not(unix))]
async fn next_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}

fn user(command: UserCommand) -> anyhow::Result<()> {
    let env = process_env();
    match command {
        UserCommand::Add {
            users,
            password,
            config,
        } => {
            let store = open_store(&config, &env)?;
            for user in users {
                accounts::add_user(&store, &user, &password)?;
                println!("created user {user}");
            }
        }
        UserCommand::List { config } => {
            let store = open_store(&config, &env)?;
            for account in accounts::list(&store)? {
                let kind = match account.kind {
                    AccountKind::User => "user",
                    AccountKind::Service => "service",
                };
                println!("{} {kind}", account.id);
            }
        }
        UserCommand::Passwd {
            user,
            password,
            config,
        } => {
            let store = open_store(&config, &env)?;
            accounts::set_password(&store, &user, &password)?;
            println!("changed the password of {user}");
        }
    }
    Ok(())
}

fn service(command: ServiceCommand) -> anyhow::Result<()> {
    let env = process_env();
    match command {
        ServiceCommand::Add { name, config } => {
            let store = open_store(&config, &env)?;
            let secret = accounts::add_service(&store, &name)?;
            println!("created service account svc:{name}");
            println!(
                "its secret (the CONNECT password and HTTP bearer of svc:{name}), shown once:"
            );
            println!("{secret}");
        }
    }
    Ok(())
}

/// Opens the configured data dir; a running broker holding it is a clear
/// error, not a RocksDB message.
fn open_store(args: &ConfigArgs, env: &HashMap<String, String>) -> anyhow::Result<Store> {
    let flags: Vec<(&str, String)> = args
        .data_dir
        .iter()
        .map(|d| ("data_dir", d.clone()))
        .collect();
    let config = load_config(args, env, &flags)?;
    match Store::open(&config.data_dir) {
        Ok(store) => Ok(store),
        Err(StorageError::Locked(path)) => Err(anyhow::anyhow!(
            "the data dir {} is in use by a running broker: stop it first, or manage accounts \
             through the broker's HTTP API (POST /v1/register, POST /v1/password)",
            path.display()
        )),
        Err(error) => Err(error)
            .with_context(|| format!("cannot open the data dir {}", config.data_dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("parley").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn report_skips_causes_already_in_the_message() {
        let io = std::io::Error::other("disk on fire");
        let error = anyhow::Error::new(io)
            .context("storage: disk on fire")
            .context("cannot open the data dir /d");
        assert_eq!(
            report(&error),
            "cannot open the data dir /d: storage: disk on fire"
        );
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_flags_become_config_overrides() {
        let cli = parse(&[
            "serve",
            "--data-dir",
            "/d",
            "--mqtt-addr",
            "127.0.0.1:1",
            "--presence-timeout",
            "5",
        ]);
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        let overrides = args.overrides();
        assert_eq!(
            overrides,
            [
                ("data_dir", "/d".to_owned()),
                ("mqtt_addr", "127.0.0.1:1".to_owned()),
                ("presence_timeout_secs", "5".to_owned()),
            ]
        );
        let config = Config::load(None, &HashMap::new(), &overrides).unwrap();
        assert_eq!(config.presence_timeout_secs, 5);
    }

    #[test]
    fn tls_flags_become_config_overrides() {
        let cli = parse(&[
            "serve",
            "--tls-addr",
            "127.0.0.1:8883",
            "--wss-addr",
            "127.0.0.1:8084",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ]);
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        let overrides = args.overrides();
        let config = Config::load(None, &HashMap::new(), &overrides).unwrap();
        assert_eq!(config.tls_addr, Some("127.0.0.1:8883".parse().unwrap()));
        assert_eq!(config.wss_addr, Some("127.0.0.1:8084".parse().unwrap()));
        assert_eq!(config.tls_cert.as_deref(), Some(Path::new("c.pem")));
        assert_eq!(config.tls_key.as_deref(), Some(Path::new("k.pem")));
    }

    #[test]
    fn user_commands_parse() {
        let cli = parse(&[
            "user",
            "add",
            "alice",
            "--password",
            "pw",
            "--data-dir",
            "/d",
        ]);
        let Command::User(UserCommand::Add {
            users,
            password,
            config,
        }) = cli.command
        else {
            panic!()
        };
        assert_eq!(
            (
                users.join(",").as_str(),
                password.as_str(),
                config.data_dir.as_deref()
            ),
            ("alice", "pw", Some("/d"))
        );
        assert!(matches!(
            parse(&["user", "list"]).command,
            Command::User(UserCommand::List { .. })
        ));
        let cli = parse(&["user", "passwd", "alice", "--password", "new"]);
        assert!(matches!(
            cli.command,
            Command::User(UserCommand::Passwd { .. })
        ));
    }

    #[test]
    fn service_add_prints_the_secret_alone_on_the_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let cli = parse(&[
            "service",
            "add",
            "billing",
            "--data-dir",
            &dir.path().display().to_string(),
        ]);
        let Command::Service(command) = cli.command else {
            panic!("not service")
        };
        service(command).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let accounts = accounts::list(&store).unwrap();
        assert_eq!(accounts[0].id, "svc:billing");
        assert_eq!(accounts[0].kind, AccountKind::Service);
    }

    #[test]
    fn user_commands_refuse_a_locked_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let _running = Store::open(dir.path()).unwrap();
        let args = ConfigArgs {
            config: None,
            data_dir: Some(dir.path().display().to_string()),
        };
        let error = open_store(&args, &HashMap::new()).unwrap_err().to_string();
        assert!(
            error.contains("in use by a running broker") && error.contains("HTTP API"),
            "{error}"
        );
    }
}

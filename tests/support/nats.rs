//! A NATS JetStream cluster on loopback for tests: `n` real `nats-server`
//! processes (Debian's `nats-server` package), each with its own config
//! file, JetStream store dir and log file in one temporary directory.
//!
//! Owns: picking free loopback ports, writing the configs, starting the
//! servers as child processes, waiting (by polling, never by a fixed sleep)
//! until JetStream answers cluster-wide, killing (SIGKILL) and restarting
//! single servers on the same config and store, and showing the servers'
//! logs in failure messages ([`NatsCluster::log_tail`]).
//! Must not: mock NATS. Every client talks to the real servers over
//! sockets. Dropping a [`NatsCluster`] kills every server and deletes the
//! directory.
//!
//! ```no_run
//! # async fn demo() {
//! let cluster = parley_tests::nats::NatsCluster::start(3).await;
//! let client = cluster.client().await;
//! let js = async_nats::jetstream::new(client);
//! # let _ = js;
//! # }
//! ```

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long [`NatsCluster::start`] and [`NatsCluster::restart`] may take
/// before the test fails (a healthy cluster is ready in a few seconds).
pub const START_LIMIT: Duration = Duration::from_secs(30);

/// The cluster name in every server's `cluster` block.
pub const CLUSTER_NAME: &str = "parley-test";

/// How long one request of a client made by the harness may take (the
/// JetStream API calls included: async-nats times them out with the
/// client's request timeout, 10 s by default), so that polling loops retry
/// quickly while a server or a stream leader is away. Also the connect
/// timeout of those clients.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one readiness probe (a JetStream request while the cluster
/// forms or a server rejoins) may take: the first requests to a forming
/// cluster go unanswered, and every probe is idempotent, so it is retried
/// soon rather than waited for.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause between two readiness probes.
const POLL: Duration = Duration::from_millis(50);

/// How many times [`NatsCluster::start`] picks new ports when a server
/// could not bind the ones picked (another process took one in between).
const PORT_ATTEMPTS: usize = 3;

/// Lines of each server's log quoted in a failure message.
const TAIL_LINES: usize = 30;

/// Environment variable naming the `nats-server` binary to use instead of
/// the one found on `PATH` (or in `/usr/sbin`, `/usr/bin`).
pub const BINARY_ENV: &str = "NATS_SERVER_BIN";

/// `n` `nats-server`s clustered over loopback routes, JetStream on, with
/// their configs, stores and logs in a temporary directory.
pub struct NatsCluster {
    dir: TempDir,
    binary: PathBuf,
    servers: Vec<Server>,
}

/// One server: its fixed ports and files, and its process while running.
struct Server {
    name: String,
    port: u16,
    route_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl NatsCluster {
    /// Starts `n` servers (`n0`, `n1`, ...) and waits until JetStream is
    /// ready cluster-wide: a throwaway stream replicated on every server
    /// (at most 5, JetStream's limit) can be created (and is deleted
    /// again). Panics, quoting the servers' logs,
    /// when that takes longer than [`START_LIMIT`].
    pub async fn start(n: usize) -> NatsCluster {
        assert!(n >= 1, "a NATS cluster needs at least one server");
        crate::init_tracing();
        let binary = nats_server_binary().to_owned();
        let began = Instant::now();
        let deadline = began + START_LIMIT;
        let mut attempt = 1;
        loop {
            let mut cluster = NatsCluster::spawn(n, binary.clone());
            match cluster.wait_ready(deadline).await {
                Ok(()) => {
                    tracing::info!(
                        servers = n,
                        urls = %cluster.url_list(),
                        elapsed = ?began.elapsed(),
                        "NATS JetStream cluster ready"
                    );
                    return cluster;
                }
                Err(error)
                    if attempt < PORT_ATTEMPTS
                        && Instant::now() < deadline
                        && cluster.port_clash() =>
                {
                    tracing::warn!(%error, attempt, "a nats-server lost its port, retrying on new ports");
                    attempt += 1;
                }
                Err(error) => panic!(
                    "NATS cluster of {n} did not become ready within {START_LIMIT:?}: {error}\n{}",
                    cluster.logs()
                ),
            }
        }
    }

    /// How many servers the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether the cluster has no servers (never: `start` needs one).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The `server_name` of server `i` (`n{i}`), as JetStream reports it in
    /// stream and consumer cluster info.
    pub fn server_name(&self, i: usize) -> &str {
        &self.server(i).name
    }

    /// The index of the server called `name` (see [`NatsCluster::server_name`]).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.name == name)
    }

    /// `nats://127.0.0.1:PORT` of server `i` (the same across restarts).
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.server(i).port)
    }

    /// Every server's client URL, in server order.
    pub fn urls(&self) -> Vec<String> {
        (0..self.servers.len()).map(|i| self.url(i)).collect()
    }

    /// [`NatsCluster::urls`] joined with commas, as in
    /// `PARLEY_CLUSTER_NATS_URLS`.
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// The cluster (route) port of server `i`.
    pub fn route_port(&self, i: usize) -> u16 {
        self.server(i).route_port
    }

    /// The temporary directory holding configs (`nX.conf`), stores (`nX/`)
    /// and logs (`nX.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether server `i` is running (started and not killed).
    pub fn is_running(&mut self, i: usize) -> bool {
        let server = &mut self.servers[i];
        match server.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                server.child = None;
                false
            }
            None => false,
        }
    }

    /// A client connected to any of the servers (and reconnecting to the
    /// others when its server goes away), with [`client_options`].
    pub async fn client(&self) -> async_nats::Client {
        client_options()
            .connect(self.urls())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot connect to NATS at {}: {e}\n{}",
                    self.url_list(),
                    self.logs()
                )
            })
    }

    /// A client connected to server `i` only ([`client_options`]): servers
    /// announced by the cluster are ignored, so it never fails over to
    /// another one.
    pub async fn client_of(&self, i: usize) -> async_nats::Client {
        connect_only(&self.url(i)).await.unwrap_or_else(|e| {
            panic!(
                "cannot connect to NATS server {i} at {}: {e}\n{}",
                self.url(i),
                self.log_tail(i, TAIL_LINES)
            )
        })
    }

    /// Kills server `i` with SIGKILL (no lame-duck mode, no flush) and
    /// waits until the process has exited. Does nothing when it is not
    /// running.
    pub async fn kill(&mut self, i: usize) {
        let Some(mut child) = self.servers[i].child.take() else {
            return;
        };
        // start_kill fails only when the process has already been reaped.
        let _ = child.start_kill();
        let status = child
            .wait()
            .await
            .unwrap_or_else(|e| panic!("waiting for nats-server {i} to exit: {e}"));
        tracing::info!(server = %self.servers[i].name, %status, "nats-server killed");
    }

    /// Starts server `i` again (killing it first if it still runs) with the
    /// same config, ports and store dir, and waits until its client port
    /// accepts connections and JetStream answers through it. Panics,
    /// quoting its log, after [`START_LIMIT`].
    pub async fn restart(&mut self, i: usize) {
        self.kill(i).await;
        let began = Instant::now();
        let deadline = began + START_LIMIT;
        self.launch(i)
            .unwrap_or_else(|e| panic!("cannot start nats-server {i}: {e}"));
        let url = self.url(i);
        let mut client: Option<async_nats::Client> = None;
        loop {
            if let Some(status) = self.exited(i) {
                panic!(
                    "nats-server {i} exited ({status}) while restarting\n{}",
                    self.log_tail(i, TAIL_LINES)
                );
            }
            let last_error = match &client {
                None => match connect_only(&url).await {
                    Ok(c) => {
                        client = Some(c);
                        continue;
                    }
                    Err(e) => format!("connect to {url}: {e}"),
                },
                Some(c) => match jetstream_answers(c).await {
                    Ok(()) => {
                        tracing::info!(server = %self.servers[i].name, elapsed = ?began.elapsed(), "nats-server restarted");
                        return;
                    }
                    Err(e) => format!("JetStream through {url}: {e}"),
                },
            };
            if Instant::now() >= deadline {
                panic!(
                    "nats-server {i} did not answer JetStream requests within {START_LIMIT:?} of its restart: {last_error}\n{}",
                    self.log_tail(i, TAIL_LINES)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The last `lines` lines of server `i`'s log (every run of it; a
    /// restart appends), for failure messages.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let server = self.server(i);
        let text = match std::fs::read_to_string(&server.log) {
            Ok(text) => text,
            Err(e) => return format!("(no log at {}: {e})", server.log.display()),
        };
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        all[from..].join("\n")
    }

    /// The log tails of every server, headed by their names.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, server) in self.servers.iter().enumerate() {
            let _ = writeln!(
                out,
                "--- {} ({}) log, last {TAIL_LINES} lines ---\n{}",
                server.name,
                self.url(i),
                self.log_tail(i, TAIL_LINES)
            );
        }
        out
    }

    fn server(&self, i: usize) -> &Server {
        self.servers
            .get(i)
            .unwrap_or_else(|| panic!("no NATS server {i}: the cluster has {}", self.servers.len()))
    }

    /// Picks the ports, writes the configs and starts every server.
    fn spawn(n: usize, binary: PathBuf) -> NatsCluster {
        let dir = tempfile::Builder::new()
            .prefix("parley-nats-")
            .tempdir()
            .expect("create a temp dir for the NATS cluster");
        let ports = free_ports(2 * n);
        let (client_ports, route_ports) = ports.split_at(n);
        let servers = (0..n)
            .map(|i| {
                let name = format!("n{i}");
                let config = dir.path().join(format!("{name}.conf"));
                let store = dir.path().join(&name);
                let routes: Vec<u16> = (0..n).filter(|&j| j != i).map(|j| route_ports[j]).collect();
                let text = server_config(&name, client_ports[i], route_ports[i], &routes, &store);
                std::fs::write(&config, text)
                    .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
                Server {
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    port: client_ports[i],
                    route_port: route_ports[i],
                    config,
                    child: None,
                }
            })
            .collect();
        let mut cluster = NatsCluster {
            dir,
            binary,
            servers,
        };
        for i in 0..n {
            cluster
                .launch(i)
                .unwrap_or_else(|e| panic!("cannot start nats-server {i}: {e}"));
        }
        cluster
    }

    /// Starts server `i`'s process, its output appended to its log.
    fn launch(&mut self, i: usize) -> std::io::Result<()> {
        let server = &mut self.servers[i];
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&server.log)?;
        writeln!(log, "=== parley test harness: starting {} ===", server.name)?;
        let stderr = log.try_clone()?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&server.config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()?;
        server.child = Some(child);
        Ok(())
    }

    /// The exit status of server `i` if its process has ended.
    fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let child = self.servers[i].child.as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// Polls until a stream replicated on `min(n, 5)` servers can be created
    /// (then deletes it), or a server exits, or `deadline` passes.
    async fn wait_ready(&mut self, deadline: Instant) -> Result<(), String> {
        let replicas = self.servers.len().min(5);
        let probe = stream::Config {
            name: "PARLEY_HARNESS_READY".to_owned(),
            subjects: vec!["parley.harness.ready".to_owned()],
            num_replicas: replicas,
            storage: stream::StorageType::Memory,
            ..Default::default()
        };
        let mut client: Option<async_nats::Client> = None;
        let mut last_error = String::from("no probe finished");
        loop {
            for i in 0..self.servers.len() {
                if let Some(status) = self.exited(i) {
                    return Err(format!("nats-server {i} exited ({status}) during startup"));
                }
            }
            if client.is_none() {
                let options = client_options().request_timeout(Some(PROBE_TIMEOUT));
                match options.connect(self.urls()).await {
                    Ok(c) => client = Some(c),
                    Err(e) => last_error = format!("connect: {e}"),
                }
            }
            if let Some(client) = &client {
                let js = jetstream::new(client.clone());
                match js.get_or_create_stream(probe.clone()).await {
                    Ok(_) => return delete_probe(&js, &probe.name, deadline).await,
                    Err(e) => {
                        let error = format!("create an R{replicas} stream: {e}");
                        if error != last_error {
                            tracing::debug!(%error, "NATS cluster not ready yet");
                        }
                        last_error = error;
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(last_error);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether a server that exited says in its log that its port was taken.
    fn port_clash(&mut self) -> bool {
        (0..self.servers.len()).any(|i| {
            self.exited(i).is_some()
                && self
                    .log_tail(i, TAIL_LINES)
                    .contains("address already in use")
        })
    }
}

impl Drop for NatsCluster {
    /// SIGKILLs every server and waits (briefly) for the processes to end,
    /// so that the temp dir is not deleted under a live server.
    fn drop(&mut self) {
        let mut children: Vec<Child> = self
            .servers
            .iter_mut()
            .filter_map(|s| s.child.take())
            .collect();
        for child in &mut children {
            let _ = child.start_kill();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for child in &mut children {
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// The config file of one server.
fn server_config(name: &str, port: u16, route_port: u16, routes: &[u16], store: &Path) -> String {
    let mut text = format!(
        "# Written by parley_tests::nats for one test run.\n\
         server_name: {name}\n\
         listen: 127.0.0.1:{port}\n\
         max_payload: 8MB\n\
         \n\
         jetstream {{\n\
         \x20 store_dir: \"{store}\"\n\
         \x20 max_memory_store: 64MB\n\
         \x20 max_file_store: 1GB\n\
         }}\n",
        store = store.display(),
    );
    // A single server runs JetStream unclustered: a cluster block without
    // routes would wait for peers that never come.
    if !routes.is_empty() {
        let _ = write!(
            text,
            "\ncluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{route_port}\n  routes: [\n"
        );
        for port in routes {
            let _ = writeln!(text, "    nats-route://127.0.0.1:{port}");
        }
        text.push_str("  ]\n}\n");
    }
    text
}

/// `count` distinct free loopback ports: all are bound at once (so they
/// differ), read, and released for the servers to bind.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// Options of the harness's clients: connect and request timeouts of
/// [`REQUEST_TIMEOUT`].
pub fn client_options() -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new()
        .connection_timeout(REQUEST_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT))
}

/// Connects to `url` only (no discovered servers).
async fn connect_only(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    client_options()
        .ignore_discovered_servers()
        .connect(url)
        .await
}

/// Whether JetStream answers `$JS.API.INFO` (the account info) through
/// `client`'s server without an error. A raw request: async-nats 0.42's
/// `Context::query_account` cannot parse nats-server 2.9's answer.
async fn jetstream_answers(client: &async_nats::Client) -> Result<(), String> {
    let reply = tokio::time::timeout(
        PROBE_TIMEOUT,
        client.request("$JS.API.INFO", bytes::Bytes::new()),
    )
    .await
    .map_err(|_| format!("no answer within {PROBE_TIMEOUT:?}"))?
    .map_err(|e| e.to_string())?;
    let answer: serde_json::Value = serde_json::from_slice(&reply.payload)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&reply.payload)))?;
    match answer.get("error") {
        None => Ok(()),
        Some(error) => Err(error.to_string()),
    }
}

/// Deletes the readiness probe stream, retrying until it is gone.
async fn delete_probe(
    js: &jetstream::Context,
    name: &str,
    deadline: Instant,
) -> Result<(), String> {
    loop {
        let error = match js.delete_stream(name).await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if let jetstream::context::DeleteStreamErrorKind::JetStream(inner) = error.kind() {
            if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("delete the probe stream {name}: {error}"));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The `nats-server` binary: `$NATS_SERVER_BIN`, else the first on `PATH`,
/// else `/usr/sbin` or `/usr/bin` (Debian installs it in `/usr/sbin`, which
/// is not on every user's `PATH`). Checked once with `--version`; panics
/// with how to install it when it is missing.
pub fn nats_server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let binary = find_binary().unwrap_or_else(|| {
            panic!(
                "nats-server not found (${BINARY_ENV}, PATH, /usr/sbin, /usr/bin): \
                 install Debian's nats-server: apt-get install nats-server"
            )
        });
        match std::process::Command::new(&binary)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {
                let version = String::from_utf8_lossy(&out.stdout);
                tracing::debug!(binary = %binary.display(), version = %version.trim(), "nats-server found");
                binary
            }
            Ok(out) => panic!(
                "`{} --version` failed ({}): {}; install Debian's nats-server: apt-get install nats-server",
                binary.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!(
                "cannot run `{} --version`: {e}; install Debian's nats-server: apt-get install nats-server",
                binary.display()
            ),
        }
    })
}

fn find_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(BINARY_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    File::open(path)
        .and_then(|f| f.metadata())
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
